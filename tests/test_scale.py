"""Scale: values, log-dets against autograd, sign, tensor factors and integer inputs."""

import copy
import math
import re

import pytest
import torch

from flowext import Scale
from helpers import elementwise_jacobian

FACTORS = [1 / 256, 1 / 17, -2.0, 3]


@pytest.mark.parametrize("factor", FACTORS, ids=lambda c: f"factor={c:g}")
def test_scale_log_det_matches_autograd(factor):
    t = Scale(factor)
    x = torch.linspace(-5, 300, 37, dtype=torch.float64)

    diagonal, off_diagonal = elementwise_jacobian(t, x)
    inv_diagonal, inv_off_diagonal = elementwise_jacobian(t.inv, t(x))

    torch.testing.assert_close(t.log_abs_det_jacobian(x, t(x)), diagonal.abs().log())
    torch.testing.assert_close(t.inv.log_abs_det_jacobian(t(x), x), inv_diagonal.abs().log())
    assert off_diagonal == 0
    assert inv_off_diagonal == 0


@pytest.mark.parametrize("factor", FACTORS, ids=lambda c: f"factor={c:g}")
def test_scale_call_and_ladj_matches_separate_calls(factor):
    t = Scale(factor, event_dim=1, cache_size=0)
    x = torch.randn(5, 4, dtype=torch.float64)

    y, ladj = t.call_and_ladj(x)
    x_back, inv_ladj = t.inv.call_and_ladj(y)

    assert torch.equal(y, t(x))
    assert torch.equal(ladj, t.log_abs_det_jacobian(x, y))
    assert ladj.shape == (5,)
    torch.testing.assert_close(ladj, torch.full((5,), 4 * math.log(abs(factor)), dtype=torch.float64))
    torch.testing.assert_close(inv_ladj, -ladj)
    torch.testing.assert_close(x_back, x)


def test_scale_long_input_gives_float_log_det():
    t = Scale(1 / 256)
    x = torch.arange(4)

    y, ladj = t.call_and_ladj(x)

    assert y.dtype == torch.float32
    assert ladj.dtype == torch.float32
    torch.testing.assert_close(ladj, torch.full((4,), -5.545177), atol=1e-6, rtol=0)


def test_scale_integer_input_is_scaled_in_float():
    # In uint8, 2 * 200 would wrap around to 144.
    y, ladj = Scale(2).call_and_ladj(torch.tensor([0, 100, 200], dtype=torch.uint8))

    assert y.dtype == torch.get_default_dtype()
    torch.testing.assert_close(y, torch.tensor([0.0, 200.0, 400.0]))
    torch.testing.assert_close(ladj, torch.full((3,), math.log(2.0)))
    torch.testing.assert_close(Scale(-1).inv(torch.tensor([56], dtype=torch.uint8)), torch.tensor([-56.0]))


@pytest.mark.parametrize("factor", [1e-50, 1e300], ids=["underflow", "overflow"])
def test_scale_factor_outside_dtype_range_raises(factor):
    x = torch.ones(2)

    with pytest.raises(ValueError, match=rf"factor={re.escape(repr(factor))} is outside the normal range of torch.float32"):
        Scale(factor)(x)
    with pytest.raises(ValueError, match="outside the normal range of torch.float32"):
        Scale(torch.tensor([1.0, factor], dtype=torch.float64)).call_and_ladj(x)
    assert bool(torch.isfinite(Scale(factor)(x.double())).all())


def test_scale_sign():
    assert Scale(-2.0).sign == -1
    assert Scale(0.5).sign == 1
    assert Scale(-2.0).inv.sign == -1
    assert torch.equal(Scale(torch.tensor([-1.0, 2.0])).sign, torch.tensor([-1.0, 1.0]))


def test_scale_tensor_factor_follows_input():
    factor = torch.tensor([0.5, -4.0], dtype=torch.float64)
    t = Scale(factor, event_dim=1)
    x = torch.ones(3, 2, dtype=torch.float32)

    y, ladj = t.call_and_ladj(x)

    assert y.dtype == torch.float32
    assert ladj.dtype == torch.float32
    torch.testing.assert_close(y, torch.tensor([[0.5, -4.0]]).expand(3, 2))
    torch.testing.assert_close(ladj, torch.full((3,), math.log(0.5) + math.log(4.0)))
    diagonal, _ = elementwise_jacobian(Scale(factor), x.double())
    torch.testing.assert_close(
        Scale(factor).log_abs_det_jacobian(x.double(), Scale(factor)(x.double())),
        diagonal.abs().log(),
    )


def test_scale_inverse_undoes_rounded_reciprocal():
    # y / c inverts y = c x more closely than y * K when c = 1 / K is rounded.
    t = Scale(1 / 17, cache_size=0)
    x = torch.arange(0, 17 * 2**10, dtype=torch.float32) / 2**10

    assert torch.equal(t.inv(t(x)).floor(), x.floor())


def test_scale_learnable_factor_in_another_dtype():
    # The factor is converted at each call: its current value, its gradient, and copies work.
    factor = torch.nn.Parameter(torch.tensor(2.0))
    t = Scale(factor, cache_size=0)
    x = torch.ones(3, dtype=torch.float64)

    t(x).sum().backward()
    t(x).sum().backward()
    with torch.no_grad():
        factor.fill_(3.0)

    assert torch.equal(t(x), torch.full((3,), 3.0, dtype=torch.float64))
    assert float(factor.grad) == 6.0
    assert torch.equal(copy.deepcopy(t)(x), t(x))


def test_scale_tensor_factor_after_inference_mode():
    t = Scale(torch.tensor(0.5), cache_size=0)
    with torch.inference_mode():
        t(torch.ones(2, dtype=torch.float64))
    x = torch.ones(2, dtype=torch.float64, requires_grad=True)

    t(x).sum().backward()

    assert torch.equal(x.grad, torch.full((2,), 0.5, dtype=torch.float64))


def test_scale_checks_a_factor_changed_in_place():
    factor = torch.tensor(2.0, dtype=torch.float64)
    t = Scale(factor, cache_size=0)
    t(torch.ones(3))

    factor.data.fill_(1e-50)
    with pytest.raises(ValueError, match="outside the normal range of torch.float32"):
        t(torch.ones(3))
    factor.data.fill_(0.0)
    with pytest.raises(ValueError, match="factor must contain nonzero finite values, but it was changed in place and now contains 0.0"):
        t(torch.ones(3, dtype=torch.float64))
