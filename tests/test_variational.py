"""VariationalDequantizer: the bound, its sign, shapes, devices, dtypes, errors and training."""

import io
import math

import pytest
import torch
from torch import nn

pytest.importorskip("nflows")
from nflows.distributions.base import Distribution
from nflows.distributions import StandardNormal as NflowsStandardNormal
from nflows.flows import Flow
from nflows.transforms import CompositeTransform, ReversePermutation
from nflows.transforms.coupling import AffineCouplingTransform
from nflows.nn.nets import ResidualNet

from flowext import Logit, Scale, bits_per_dim, dequantization_pipeline, quantize
from flowext._numerics import noise_margin
from flowext.nflows import StandardNormal, TransformAdapter, UniformDequantizer, VariationalDequantizer


class LinearDensityNoise(Distribution):
    """Noise v = logit(u) with u of density 2u on (0, 1), whatever the context."""

    def sample_and_log_prob(self, num_samples, context=None):
        batch = context.shape[0]
        u = torch.rand(batch, num_samples, 1, dtype=torch.float64).sqrt()
        v = torch.logit(u)
        # log q_v(v) = log q_u(u) + log sigmoid'(v) = log 2u + log u + log(1 - u).
        log_q_v = (torch.log(2 * u) + torch.log(u) + torch.log1p(-u)).squeeze(-1)
        return v, log_q_v


def test_bound_with_linear_noise_density():
    # One dimension, K = 256, a model uniform on [0, 256): the bound is -log 256 - E[log 2u].
    dequantizer = VariationalDequantizer(256, LinearDensityNoise(), context_net=nn.Flatten())
    dequantizer.double()
    x = torch.randint(0, 256, (400_000, 1)).double()

    y, logabsdet = dequantizer(x)
    bound = -math.log(256) + logabsdet

    # Per draw: -log q(u'|x) = -log(2 sigmoid(v)) + log(1 - 2m), with sigmoid(v) = (u' - m) / (1 - 2m).
    m = noise_margin(256, torch.float64)
    sigmoid_v = (y - x - m) / (1 - 2 * m)
    torch.testing.assert_close(logabsdet, -torch.log(2 * sigmoid_v).squeeze(-1) + math.log1p(-2 * m))

    # E[log 2u] = log 2 - 1/2 under density 2u, with standard deviation 1/2 per draw.
    expected = -math.log(256) - (math.log(2) - 0.5)
    assert expected == pytest.approx(-5.738325, abs=1e-6)
    standard_error = 0.5 / math.sqrt(len(x))
    assert abs(float(bound.mean()) - expected) < 4 * standard_error
    assert float(bits_per_dim(bound.mean(), 1)) == pytest.approx(8.278652, abs=4 * standard_error / math.log(2))
    # A sign error would give 7.72 bits, below the 8 bits of the uniform model itself.
    assert float(bits_per_dim(bound.mean(), 1)) > 8


@pytest.mark.parametrize("shape", [(64,), (1, 8, 8)], ids=["vectors", "images"])
def test_forward_shapes_and_bins(shape):
    dequantizer = VariationalDequantizer.with_coupling_flow(17, shape)
    x = torch.randint(0, 17, (5, *shape)).float()

    y, logabsdet = dequantizer(x)
    x_back, inv_logabsdet = dequantizer.inverse(y)

    assert y.shape == x.shape
    assert logabsdet.shape == (5,)
    assert bool((y > x).all())
    assert bool((y < x + 1).all())
    assert torch.equal(x_back, x)
    assert torch.equal(inv_logabsdet, torch.zeros(5))


def test_images_and_vectors_give_the_same_bound():
    torch.manual_seed(7)
    vector = VariationalDequantizer.with_coupling_flow(17, (64,))
    image = VariationalDequantizer.with_coupling_flow(17, (1, 8, 8))
    image.load_state_dict(vector.state_dict())
    x = torch.randint(0, 17, (6, 1, 8, 8)).float()

    torch.manual_seed(1)
    y_image, ladj_image = image(x)
    torch.manual_seed(1)
    y_vector, ladj_vector = vector(x.reshape(6, 64))

    torch.testing.assert_close(ladj_image, ladj_vector)
    torch.testing.assert_close(y_image.reshape(6, 64), y_vector)


def test_log_det_is_minus_log_q_from_the_noise_flow():
    # Recompute log q(u|x) from the noise flow's own log_prob at v = logit((u - m) / (1 - 2m)).
    dequantizer = VariationalDequantizer.with_coupling_flow(17, (8,)).double()
    x = torch.randint(0, 17, (10, 8)).double()

    y, logabsdet = dequantizer(x)

    m = noise_margin(17, torch.float64)
    u = (y - x - m) / (1 - 2 * m)
    v = torch.logit(u)
    context = dequantizer.context_net(dequantizer.normalize(x))
    log_q_v = dequantizer.noise_flow.log_prob(v, context=context)
    log_q = log_q_v - torch.log(u * (1 - u)).sum(-1) - 8 * math.log1p(-2 * m)
    torch.testing.assert_close(logabsdet, -log_q, rtol=1e-6, atol=1e-6)


def test_gradient_reaches_noise_flow():
    dequantizer = VariationalDequantizer.with_coupling_flow(17, (8,))
    x = torch.randint(0, 17, (10, 8)).float()

    y, logabsdet = dequantizer(x)
    (y.sum() + logabsdet.sum()).backward()

    grads = [p.grad for p in dequantizer.parameters()]
    assert all(g is not None for g in grads)
    assert any(bool(g.abs().sum() > 0) for g in grads)


def test_float64_and_meta():
    dequantizer = VariationalDequantizer.with_coupling_flow(17, (8,))
    x = torch.randint(0, 17, (4, 8))

    y64, ladj64 = dequantizer.to(torch.float64)(x)
    assert y64.dtype == torch.float64
    assert ladj64.dtype == torch.float64

    meta = dequantizer.to("meta")
    y_meta, ladj_meta = meta(x.to("meta"))
    assert y_meta.device.type == "meta"
    assert ladj_meta.shape == (4,)


def test_state_dict_round_trip_with_weights_only():
    source = VariationalDequantizer.with_coupling_flow(17, (8,))
    target = VariationalDequantizer.with_coupling_flow(17, (8,))
    buffer = io.BytesIO()

    torch.save(source.state_dict(), buffer)
    buffer.seek(0)
    target.load_state_dict(torch.load(buffer, weights_only=True))

    x = torch.randint(0, 17, (3, 8)).float()
    torch.manual_seed(5)
    expected = source(x)
    torch.manual_seed(5)
    actual = target(x)
    torch.testing.assert_close(actual, expected)


@pytest.mark.parametrize("bad", [17.0, -1.0, 2.5, math.nan], ids=lambda v: f"value={v}")
def test_rejects_invalid_data(bad):
    dequantizer = VariationalDequantizer.with_coupling_flow(17, (2,))

    with pytest.raises(ValueError, match=r"VariationalDequantizer\(num_bins=17\) expects integers in \[0, 16\]"):
        dequantizer(torch.tensor([[0.0, bad]]))


def test_rejects_context_net_that_changes_batch():
    noise_flow = Flow(
        AffineCouplingTransform(torch.tensor([1, -1]), lambda i, o: ResidualNet(i, o, 8, context_features=2)),
        StandardNormal([2]),
    )
    dequantizer = VariationalDequantizer(17, noise_flow, context_net=lambda x: x.reshape(1, -1)[:, :2])

    with pytest.raises(ValueError, match=r"context_net must keep the batch size: it returned shape \(1, 2\) for 3 examples"):
        dequantizer(torch.zeros(3, 2))


def test_rejects_noise_flow_of_wrong_size():
    built = VariationalDequantizer.with_coupling_flow(17, (4,))
    # Without event_shape, the data shape is checked only against the noise flow's samples.
    dequantizer = VariationalDequantizer(17, built.noise_flow, nn.Sequential(nn.Flatten(), nn.Linear(3, 32)))

    with pytest.raises(ValueError, match=r"noise_flow must return 3 elements per example .* got samples of shape \(2, 1, 4\)"):
        dequantizer(torch.zeros(2, 3))


def test_rejects_non_flow_noise_model():
    with pytest.raises(ValueError, match="noise_flow must be an nflows Flow"):
        VariationalDequantizer(17, nn.Linear(2, 2))


def test_does_not_modify_input():
    dequantizer = VariationalDequantizer.with_coupling_flow(17, (4,))
    x = torch.randint(0, 17, (3, 4)).float()
    before = x.clone()

    dequantizer(x)
    dequantizer.inverse(x + 0.5)

    assert torch.equal(x, before)


def test_digits_model_trains_and_loss_falls():
    sklearn = pytest.importorskip("sklearn.datasets")
    images = torch.as_tensor(sklearn.load_digits().images, dtype=torch.float32)[:512].reshape(512, 1, 8, 8)
    torch.manual_seed(0)

    def coupling(index):
        mask = (torch.arange(64) % 2 == index % 2).to(torch.int64) * 2 - 1
        return AffineCouplingTransform(mask, lambda i, o: ResidualNet(i, o, 64, num_blocks=1))

    flow = Flow(
        CompositeTransform(
            [
                VariationalDequantizer.with_coupling_flow(17, (1, 8, 8), hidden_features=32, num_layers=2),
                TransformAdapter(dequantization_pipeline(17).parts[1]),  # Scale(1/17)
                TransformAdapter(dequantization_pipeline(17).parts[2]),  # Logit(0.05)
                TransformAdapter(torch.distributions.transforms.ReshapeTransform((1, 8, 8), (64,))),
                *[t for index in range(4) for t in (coupling(index), ReversePermutation(64))],
            ]
        ),
        NflowsStandardNormal([64]),
    )
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-3)

    losses = []
    for _ in range(150):
        batch = images[torch.randint(0, 512, (64,))]
        loss = -flow.log_prob(batch).mean() / 64
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())

    first = sum(losses[:20]) / 20
    last = sum(losses[-20:]) / 20
    assert last < first - 0.3
    assert math.isfinite(last)


def test_empty_batch():
    dequantizer = VariationalDequantizer.with_coupling_flow(17, (8,))

    y, logabsdet = dequantizer(torch.zeros(0, 8))

    assert y.shape == (0, 8)
    assert logabsdet.shape == (0,)


def test_log_q_matches_the_draw_and_is_minus_inf_outside():
    dequantizer = VariationalDequantizer.with_coupling_flow(17, (1, 2, 3)).double()
    x = torch.randint(0, 17, (5, 1, 2, 3)).double()

    noise, log_q = dequantizer.sample_noise(x)

    torch.testing.assert_close(dequantizer.log_q(x, noise), log_q, rtol=1e-6, atol=1e-6)
    outside = noise.clone()
    outside[0, 0, 0, 0] = 0.0
    assert dequantizer.log_q(x, outside)[0] == -math.inf
    assert bool(torch.isfinite(dequantizer.log_q(x, outside)[1:]).all())
    with pytest.raises(ValueError, match=r"noise must have the shape of x, got \(5, 6\) and \(5, 1, 2, 3\)"):
        dequantizer.log_q(x, noise.reshape(5, 6))


def test_log_q_of_nan_noise_is_nan():
    dequantizer = VariationalDequantizer.with_coupling_flow(17, (4,))
    noise = torch.full((2, 4), 0.5)
    noise[1, 2] = math.nan

    log_q = dequantizer.log_q(torch.zeros(2, 4), noise)

    assert math.isfinite(log_q[0].item())
    assert math.isnan(log_q[1].item())


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        (4, "shape must be a sequence of integers >= 1"),
        ((0,), "shape must be a sequence of integers >= 1"),
        ((-2, 3), "shape must be a sequence of integers >= 1"),
        ((), "shape must be a sequence of integers >= 1"),
        ((1,), r"shape must describe at least 2 elements for coupling layers, got \(1,\)"),
    ],
    ids=repr,
)
def test_with_coupling_flow_rejects_bad_shape(shape, message):
    with pytest.raises(ValueError, match=message):
        VariationalDequantizer.with_coupling_flow(17, shape)


def test_forward_checks_example_shape():
    dequantizer = VariationalDequantizer.with_coupling_flow(17, (4,))

    with pytest.raises(ValueError, match=r"inputs must hold examples of shape \(4,\) after the batch dimension, got shape \(2, 5\)"):
        dequantizer(torch.zeros(2, 5))


def test_constructor_rejects_bad_context_net_and_noise_shape():
    noise_flow = VariationalDequantizer.with_coupling_flow(17, (4,)).noise_flow

    with pytest.raises(ValueError, match="context_net must be a torch.nn.Module .* got str"):
        VariationalDequantizer(17, noise_flow, context_net="x")
    with pytest.raises(ValueError, match="noise_shape must be a sequence of integers >= 1"):
        VariationalDequantizer(17, noise_flow, noise_shape="abc")
    with pytest.raises(ValueError, match="noise_shape must be a sequence of integers >= 1"):
        VariationalDequantizer(17, noise_flow, noise_shape=5)



def _round_trip_failures(dequantizer, num_bins: int, alpha: float, x: torch.Tensor) -> int:
    """Count the elements that Scale(1/K), Logit(alpha) and their inverses move to another bin."""
    y, _ = dequantizer(x)
    scale, logit = Scale(1 / num_bins, cache_size=0), Logit(alpha, cache_size=0)
    back = quantize(scale.inv(logit.inv(logit(scale(y.detach())).clone())), num_bins)
    return int((back != x).sum())


def test_variational_dequantizer_widens_the_margin_for_large_alpha():
    torch.manual_seed(0)
    num_bins, alpha = 256, 0.99
    dequantizer = VariationalDequantizer.with_coupling_flow(num_bins, (8,), logit_alpha=alpha, validate_args=False)
    x = torch.randint(0, num_bins, (20000, 8)).float()

    with torch.no_grad():
        failures = _round_trip_failures(dequantizer, num_bins, alpha, x)
        y, _ = dequantizer(x)

    margin = noise_margin(num_bins, torch.float32, alpha)
    assert failures == 0
    assert margin > noise_margin(num_bins, torch.float32)
    assert float((y - x).min()) >= margin * (1 - 1e-3)


def test_uniform_dequantizer_widens_the_margin_for_large_alpha():
    num_bins, alpha = 256, 0.99
    x = torch.randint(0, num_bins, (200000,)).float()[:, None]

    assert _round_trip_failures(UniformDequantizer(num_bins, logit_alpha=alpha), num_bins, alpha, x) == 0
    assert _round_trip_failures(UniformDequantizer(num_bins), num_bins, alpha, x) > 0


def test_variational_dequantizer_rejects_non_tensors_and_complex_data():
    dequantizer = VariationalDequantizer.with_coupling_flow(17, (4,))
    z = torch.zeros(2, 4, dtype=torch.complex64)

    for call in (dequantizer.forward, dequantizer.inverse):
        with pytest.raises(TypeError, match="inputs must be a torch.Tensor, got list"):
            call([[1, 2, 3, 4]])
        with pytest.raises(ValueError, match="inputs must contain real values, got dtype torch.complex64"):
            call(z)
    with pytest.raises(ValueError, match="noise must contain real values, got dtype torch.complex64"):
        dequantizer.log_q(torch.zeros(2, 4), z)
