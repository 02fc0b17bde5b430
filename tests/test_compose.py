"""Compose and the dequantization pipeline: one-pass log-det, no re-drawn noise, autograd."""

import math
import pickle

import pytest
import torch
from torch.distributions import ComposeTransform, Transform

from flowext import Compose, Dequantize, Logit, Scale, dequantization_pipeline
from flowext._numerics import noise_margin
from helpers import elementwise_jacobian


def test_pipeline_log_det_matches_autograd_through_the_noise():
    # The chain as a function of the uniform draws u: y = Logit(Scale(x + m + (1 - 2m) u)).
    num_bins, alpha = 17, 0.05
    t = dequantization_pipeline(num_bins, alpha, dtype=torch.float64)
    dequantize, scale, logit = t.parts
    x = torch.arange(num_bins, dtype=torch.float64)
    u = torch.rand(num_bins, dtype=torch.float64)

    def chain(noise):
        return logit(scale(dequantize.apply_noise(x, noise)))

    diagonal, off_diagonal = elementwise_jacobian(chain, u)
    y = chain(u)

    torch.testing.assert_close(t.log_abs_det_jacobian(x, y), diagonal.abs().log())
    assert off_diagonal == 0


def test_pipeline_log_det_formula():
    num_bins, alpha = 256, 0.05
    t = dequantization_pipeline(num_bins, alpha, dtype=torch.float64)
    x = torch.randint(0, num_bins, (1000,))

    y, ladj = t.call_and_ladj(x)

    s = torch.sigmoid(y)
    m = noise_margin(num_bins, torch.float64)
    expected = math.log1p(-2 * m) - math.log(num_bins) + math.log1p(-alpha) - torch.log(s) - torch.log1p(-s)
    torch.testing.assert_close(ladj, expected)


def test_compose_log_det_does_not_redraw_noise():
    t = dequantization_pipeline(17, 0.05, dtype=torch.float64)
    x = torch.randint(0, 17, (500,))

    y, ladj = t.call_and_ladj(x)

    # torch's ComposeTransform re-runs Dequantize on x here and pairs the log-det with other
    # noise; Compose recovers the intermediate values from y.
    torch.testing.assert_close(t.log_abs_det_jacobian(x, y), ladj)
    redrawn = ComposeTransform(list(t.parts)).log_abs_det_jacobian(x, y)
    assert not torch.allclose(redrawn, ladj)


def test_compose_inverse_log_det_is_negated():
    t = dequantization_pipeline(17, 0.05, dtype=torch.float64)
    z = torch.randn(300, dtype=torch.float64)

    x, inv_ladj = t.inv.call_and_ladj(z)

    torch.testing.assert_close(t.inv.log_abs_det_jacobian(z, x), inv_ladj)
    assert isinstance(t.inv, Compose)
    assert t.inv.inv is t


def test_compose_event_dims_sum_log_det():
    t = dequantization_pipeline(256, 0.05, event_dim=3)
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)

    y, ladj = t.call_and_ladj(x)

    assert ladj.shape == (2,)
    torch.testing.assert_close(t.log_abs_det_jacobian(x, y), ladj)


def test_compose_with_mixed_event_dims():
    t = Compose([Scale(2.0), Logit(0.0, event_dim=1)])
    x = torch.rand(3, 4, dtype=torch.float64) / 2

    y, ladj = t.call_and_ladj(x)

    assert t.domain.event_dim == 1
    assert ladj.shape == (3,)
    torch.testing.assert_close(t.log_abs_det_jacobian(x, y), ladj)
    torch.testing.assert_close(ladj, Scale(2.0, event_dim=1).log_abs_det_jacobian(x, 2 * x) + Logit(0.0, event_dim=1).log_abs_det_jacobian(2 * x, y))


def test_compose_with_torch_transform_parts():
    from torch.distributions.transforms import ExpTransform

    t = Compose([Scale(0.5), ExpTransform()])
    x = torch.randn(6, dtype=torch.float64)

    y, ladj = t.call_and_ladj(x)

    torch.testing.assert_close(y, torch.exp(x / 2))
    torch.testing.assert_close(ladj, math.log(0.5) + x / 2)


def test_pipeline_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_bins must be an integer >= 2"):
        dequantization_pipeline(1)
    with pytest.raises(ValueError, match="alpha must be a real number in"):
        dequantization_pipeline(17, alpha=1.0)


def test_compose_cache_propagates_to_parts():
    t = Compose([Scale(2.0, cache_size=0), Logit(0.0, cache_size=0)], cache_size=1)

    assert all(part._cache_size == 1 for part in t.parts)
    assert t.with_cache(1) is t
    assert t.with_cache(0)._cache_size == 0


def test_dequantize_in_compose_is_not_cached():
    t = dequantization_pipeline(17)
    x = torch.zeros(100, dtype=torch.long)

    assert not torch.equal(t(x), t(x))
    assert isinstance(t.parts[0], Dequantize)


def test_compose_unpickled_before_first_call():
    # The dims to sum are computed on first use, so a pickle written before any call, as older
    # versions wrote it, contains none and still works.
    t = dequantization_pipeline(17, event_dim=1)
    loaded = pickle.loads(pickle.dumps(t))
    x = torch.randint(0, 17, (4, 3))

    assert "_sum_dims" not in loaded.__dict__
    y, ladj = loaded.call_and_ladj(x)
    assert ladj.shape == (4,)
    torch.testing.assert_close(loaded.log_abs_det_jacobian(x, y), ladj)


class _Doubling(Transform):
    """A minimal transform that defines neither domain nor codomain."""

    bijective = True

    def _call(self, x):
        return 2 * x

    def _inverse(self, y):
        return y / 2


def test_compose_accepts_parts_without_constraints():
    t = Compose([_Doubling(), _Doubling()])

    assert torch.equal(t(torch.tensor([1.0])), torch.tensor([4.0]))
    assert torch.equal(t.inv(torch.tensor([4.0])), torch.tensor([1.0]))
