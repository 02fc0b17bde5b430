"""The training program's checkerboard coupling layer and flow: log-dets against autograd."""

import math
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("nflows")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from flowtrain.coupling import CheckerboardAffineCoupling, checkerboard_mask  # noqa: E402
from flowtrain.model import FlowConfig, LogLikelihood, build_flow, count_parameters, dequantizer_of  # noqa: E402
from flowtrain.training import train_step  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    # The layers are tiny, and on a busy machine extra threads only wait for each other.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def randomized_layer(shape, parity, context_channels=0):
    """A coupling layer in float64 whose output convolution is not zero, so it is not the identity."""
    layer = CheckerboardAffineCoupling(shape, parity, hidden_channels=8, num_blocks=1, context_channels=context_channels)
    layer = layer.double()
    with torch.no_grad():
        layer.net.output_layer.weight.normal_(0.0, 0.3)
        layer.net.output_layer.bias.normal_(0.0, 0.3)
    return layer


def autograd_log_det(fn, image):
    """log|det J| of fn at one image (C, H, W), from the full autograd Jacobian."""
    flat = image.reshape(-1)

    def flat_fn(values):
        return fn(values.reshape(1, *image.shape)).reshape(-1)

    jacobian = torch.autograd.functional.jacobian(flat_fn, flat)
    return torch.linalg.slogdet(jacobian)[1]


def test_checkerboard_mask_alternates():
    mask = checkerboard_mask(3, 4, parity=0)

    assert mask.shape == (1, 1, 3, 4)
    assert mask[0, 0].tolist() == [[1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0]]
    assert torch.equal(checkerboard_mask(3, 4, parity=1), 1 - mask)


@pytest.mark.parametrize("shape", [(1, 4, 4), (3, 3, 4)], ids=["gray", "rgb-odd-height"])
@pytest.mark.parametrize("parity", [0, 1])
def test_coupling_log_det_matches_autograd(shape, parity):
    torch.manual_seed(3)
    layer = randomized_layer(shape, parity)
    images = torch.randn(3, *shape, dtype=torch.float64)

    _, log_det = layer(images)

    for index in range(len(images)):
        expected = autograd_log_det(lambda batch: layer(batch)[0], images[index])
        torch.testing.assert_close(log_det[index], expected, rtol=1e-10, atol=1e-10)
    assert bool(log_det.abs().max() > 0.1)


def test_coupling_inverse_log_det_matches_autograd():
    torch.manual_seed(4)
    layer = randomized_layer((1, 4, 4), 0)
    outputs = torch.randn(2, 1, 4, 4, dtype=torch.float64)

    _, log_det = layer.inverse(outputs)

    for index in range(len(outputs)):
        expected = autograd_log_det(lambda batch: layer.inverse(batch)[0], outputs[index])
        torch.testing.assert_close(log_det[index], expected, rtol=1e-10, atol=1e-10)


def test_conditional_coupling_log_det_matches_autograd():
    torch.manual_seed(5)
    layer = randomized_layer((1, 4, 4), 1, context_channels=2)
    images = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    context = torch.randn(2, 2, 4, 4, dtype=torch.float64)

    _, log_det = layer(images, context)

    for index in range(len(images)):
        one_context = context[index : index + 1]
        expected = autograd_log_det(lambda batch: layer(batch, one_context)[0], images[index])
        torch.testing.assert_close(log_det[index], expected, rtol=1e-10, atol=1e-10)


def test_coupling_inverse_round_trip():
    torch.manual_seed(6)
    layer = randomized_layer((3, 4, 4), 0, context_channels=2)
    images = torch.randn(5, 3, 4, 4, dtype=torch.float64)
    context = torch.randn(5, 2, 4, 4, dtype=torch.float64)

    outputs, log_det = layer(images, context)
    restored, inverse_log_det = layer.inverse(outputs, context)

    torch.testing.assert_close(restored, images, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(inverse_log_det, -log_det, rtol=1e-12, atol=1e-12)


def test_coupling_keeps_masked_pixels():
    torch.manual_seed(7)
    layer = randomized_layer((1, 4, 4), 0)
    images = torch.randn(2, 1, 4, 4, dtype=torch.float64)

    outputs, _ = layer(images)

    kept = layer.mask.bool().expand_as(images)
    assert torch.equal(outputs[kept], images[kept])
    assert not torch.allclose(outputs[~kept], images[~kept])


def test_new_coupling_is_identity():
    layer = CheckerboardAffineCoupling((1, 4, 4), 0, hidden_channels=8)
    images = torch.randn(2, 1, 4, 4)

    outputs, log_det = layer(images)

    assert torch.equal(outputs, images)
    assert torch.equal(log_det, torch.zeros(2))


def test_coupling_rejects_wrong_shape():
    layer = CheckerboardAffineCoupling((1, 4, 4), 0, hidden_channels=8)

    with pytest.raises(ValueError, match=r"expects images of shape \(N, 1, 4, 4\), got \(2, 1, 5, 5\)"):
        layer(torch.zeros(2, 1, 5, 5))


@pytest.mark.parametrize("dequantization", ["uniform", "variational"])
def test_flow_log_prob_matches_autograd_after_dequantization(dequantization):
    # Draw the noise once, then compare the log-det of the transforms after the dequantizer
    # (Scale, Logit and the couplings) with autograd.
    torch.manual_seed(8)
    config = FlowConfig(
        shape=(3, 4, 4), num_bins=17, dequantization=dequantization, num_layers=2, hidden_channels=8,
        noise_layers=1, noise_hidden_channels=4, context_channels=2,
    )
    flow = build_flow(config).double()
    for layer in flow._transform._transforms[1:]:
        for parameter in layer.parameters():
            torch.nn.init.normal_(parameter, 0.0, 0.1)
    images = torch.randint(0, 17, (2, 3, 4, 4)).double()
    dequantized, _ = dequantizer_of(flow)(images)
    rest = flow._transform._transforms[1:]

    def to_noise(batch):
        for transform in rest:
            batch, _ = transform(batch)
        return batch

    total = torch.zeros(2, dtype=torch.float64)
    noise = dequantized
    for transform in rest:
        noise, log_det = transform(noise)
        total = total + log_det

    for index in range(2):
        expected = autograd_log_det(to_noise, dequantized[index])
        torch.testing.assert_close(total[index], expected, rtol=1e-8, atol=1e-8)


def test_train_step_lowers_loss():
    torch.manual_seed(9)
    config = FlowConfig(shape=(1, 4, 4), num_bins=5, num_layers=2, hidden_channels=8)
    flow = build_flow(config)
    model = LogLikelihood(flow)
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-2)
    images = torch.randint(0, 2, (64, 1, 4, 4)).float()

    losses = [train_step(model, optimizer, images, num_dims=16, max_grad_norm=100.0) for _ in range(30)]

    assert all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < losses[0] - 0.3
    assert count_parameters(flow) > 0
