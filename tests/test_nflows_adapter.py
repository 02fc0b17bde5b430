"""TransformAdapter and UniformDequantizer inside nflows flows."""

import math

import pytest
import torch

pytest.importorskip("nflows")
from nflows.distributions import StandardNormal as NflowsStandardNormal
from nflows.flows import Flow
from nflows.transforms import CompositeTransform
from torch.distributions.transforms import ReshapeTransform
from torch.distributions.transforms import AffineTransform, SigmoidTransform

from flowext import Compose, Logit, Scale, dequantization_pipeline
from flowext._numerics import noise_margin
from flowext.nflows import TransformAdapter, UniformDequantizer
from helpers import elementwise_jacobian


@pytest.mark.parametrize("shape", [(5, 6), (5, 2, 3, 4)], ids=["vectors", "images"])
@pytest.mark.parametrize("event_dim", [0, 1])
def test_adapter_sums_log_det_per_example(shape, event_dim):
    t = Compose([Scale(1 / 17, event_dim=event_dim), Logit(0.05, event_dim=event_dim)])
    layer = TransformAdapter(t)
    x = torch.rand(shape, dtype=torch.float64) * 17

    z, logabsdet = layer(x)
    x_back, inv_logabsdet = layer.inverse(z)

    assert logabsdet.shape == (shape[0],)
    expected = t.log_abs_det_jacobian(x, z).reshape(shape[0], -1).sum(-1)
    torch.testing.assert_close(logabsdet, expected)
    torch.testing.assert_close(inv_logabsdet, -logabsdet)
    torch.testing.assert_close(x_back, x)


def test_adapter_log_det_matches_autograd():
    t = Compose([Scale(1 / 17), Logit(0.05)])
    layer = TransformAdapter(t)
    x = torch.rand(1, 7, dtype=torch.float64) * 17

    diagonal, off_diagonal = elementwise_jacobian(lambda v: layer(v)[0], x)
    _, logabsdet = layer(x)

    torch.testing.assert_close(logabsdet, diagonal.abs().log().sum(-1))
    assert off_diagonal == 0


def test_adapter_wraps_torch_builtins():
    layer = TransformAdapter(SigmoidTransform().inv)
    x = torch.rand(4, 3, dtype=torch.float64)

    z, logabsdet = layer(x)

    torch.testing.assert_close(z, torch.logit(x))
    torch.testing.assert_close(logabsdet, (-torch.log(x) - torch.log1p(-x)).sum(-1))
    assert TransformAdapter(AffineTransform(0.0, 2.0))(x)[1].shape == (4,)


def test_adapter_rejects_non_transform():
    with pytest.raises(ValueError, match="transform must be a torch.distributions.Transform, got Linear"):
        TransformAdapter(torch.nn.Linear(2, 2))


def test_adapter_rejects_log_det_summed_over_batch():
    layer = TransformAdapter(Logit(0.05, event_dim=2))

    with pytest.raises(ValueError, match="summed its log-det over the batch dimension"):
        layer(torch.rand(4, 3))


def test_uniform_dequantizer_log_det_and_quantization():
    layer = UniformDequantizer(256)
    x = torch.randint(0, 256, (6, 3, 4, 4), dtype=torch.uint8)

    y, logabsdet = layer(x)
    x_back, inverse_logabsdet = layer.inverse(y)

    m = noise_margin(256, torch.float32)
    torch.testing.assert_close(logabsdet, torch.full((6,), 48 * math.log1p(-2 * m)))
    assert torch.equal(x_back, x.float())
    # Quantization reports a log-det of zero, as VariationalDequantizer's inverse does.
    assert torch.equal(inverse_logabsdet, torch.zeros(6))


def test_flow_with_uniform_dequantizer_gives_eight_bits_for_uniform_model():
    # Uniform on [0, 1)^D after Scale(1/256): log p(x + u) = 0 - D log 256 + D log(1 - 2m).
    num_dims = 3 * 32 * 32
    layer = TransformAdapter(dequantization_pipeline(256, dtype=torch.float64).parts[0])
    scale = TransformAdapter(Scale(1 / 256))
    x = torch.randint(0, 256, (2, 3, 32, 32))

    y, ladj_dequantize = layer(x)
    _, ladj_scale = scale(y)
    log_likelihood = 0.0 + ladj_dequantize + ladj_scale

    bits = -log_likelihood / (num_dims * math.log(2))
    torch.testing.assert_close(bits, torch.full((2,), 8.0, dtype=torch.float64), atol=1e-9, rtol=0)


def test_flow_on_images_matches_flow_on_vectors():
    pipeline = dequantization_pipeline(17, 0.05, event_dim=3)
    image_flow = Flow(
        CompositeTransform([TransformAdapter(pipeline), TransformAdapter(ReshapeTransform((1, 8, 8), (64,)))]),
        NflowsStandardNormal([64]),
    )
    vector_flow = Flow(TransformAdapter(dequantization_pipeline(17, 0.05, event_dim=1)), NflowsStandardNormal([64]))
    # nflows' CompositeTransform sums log-dets in the dtype of the input, so integer data go in
    # as floats.
    x = torch.randint(0, 17, (4, 1, 8, 8)).float()

    torch.manual_seed(3)
    image_log_prob = image_flow.log_prob(x)
    torch.manual_seed(3)
    vector_log_prob = vector_flow.log_prob(x.reshape(4, 64))

    torch.testing.assert_close(image_log_prob, vector_log_prob)
