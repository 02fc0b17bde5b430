"""Dequantize: values, dtypes, margin, log-det, the quantizer and input validation."""

import math

import pytest
import torch

from flowext import Dequantize
from flowext._numerics import noise_margin
from helpers import elementwise_jacobian


def test_dequantize_uint8_gives_float32_in_bins():
    x = torch.tensor([0, 128, 255], dtype=torch.uint8)

    y = Dequantize(256)(x)

    assert y.dtype == torch.float32
    assert bool((y >= x.float()).all())
    assert bool((y < x.float() + 1).all())


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int32, torch.int64, torch.bool], ids=str)
def test_dequantize_integer_inputs(dtype):
    x = torch.tensor([0, 1, 1, 0]).to(dtype)

    y = Dequantize(2)(x)

    assert y.dtype == torch.float32
    assert torch.equal(Dequantize(2).inv(y), x.float())


def test_dequantize_float_input_keeps_dtype():
    x = torch.tensor([0.0, 5.0, 16.0], dtype=torch.float64)

    y = Dequantize(17)(x)

    assert y.dtype == torch.float64
    assert torch.equal(Dequantize(17).inv(y), x)


def test_dequantize_requested_dtype():
    y = Dequantize(17, dtype=torch.float64)(torch.tensor([3, 4]))

    assert y.dtype == torch.float64


@pytest.mark.parametrize(
    ("dtype", "num_bins"),
    [(torch.bfloat16, 256), (torch.bfloat16, 3), (torch.float16, 256), (torch.float16, 17)],
    ids=str,
)
def test_dequantize_rejects_dtype_that_cannot_resolve_bins(dtype, num_bins):
    with pytest.raises(ValueError, match=rf"dtype {dtype} cannot resolve num_bins={num_bins}"):
        Dequantize(num_bins, dtype=dtype)
    with pytest.raises(ValueError, match="Pass a wider dtype, such as dtype=torch.float64"):
        Dequantize(num_bins)(torch.zeros(3, dtype=dtype))


@pytest.mark.parametrize(("dtype", "num_bins"), [(torch.bfloat16, 2), (torch.float16, 16)], ids=str)
def test_dequantize_low_precision_where_resolvable(dtype, num_bins):
    x = torch.arange(num_bins).repeat(50)
    t = Dequantize(num_bins, dtype=dtype)

    y = t(x)

    assert y.dtype == dtype
    assert torch.equal(t.inv(y), x.to(dtype))


def test_dequantize_log_det_is_log_of_noise_derivative():
    # y = x + m + (1 - 2m) u, so log|dy/du| = log(1 - 2m) is -log q(u|x).
    t = Dequantize(256, dtype=torch.float64)
    x = torch.tensor([0.0, 17.0, 255.0], dtype=torch.float64)
    u = torch.tensor([0.0, 0.5, 0.999], dtype=torch.float64)

    diagonal, off_diagonal = elementwise_jacobian(lambda v: t.apply_noise(x, v), u)
    y = t.apply_noise(x, u)

    torch.testing.assert_close(t.log_abs_det_jacobian(x, y), diagonal.log())
    torch.testing.assert_close(t.inv.log_abs_det_jacobian(y, x), -diagonal.log())
    assert off_diagonal == 0


def test_dequantize_margin_size():
    m32 = noise_margin(256, torch.float32)
    m64 = noise_margin(256, torch.float64)

    assert m32 == pytest.approx(4 * 256 * torch.finfo(torch.float32).eps)
    assert m64 == pytest.approx(4 * 256 * torch.finfo(torch.float64).eps)
    ladj = Dequantize(256).log_abs_det_jacobian(torch.zeros(1), torch.zeros(1))
    torch.testing.assert_close(ladj, torch.tensor([math.log1p(-2 * m32)]))


def test_dequantize_extreme_noise_stays_in_bin():
    t = Dequantize(256)
    x = torch.arange(256)
    below_one = torch.nextafter(torch.tensor(1.0), torch.tensor(0.0))

    low = t.apply_noise(x, torch.zeros(256))
    high = t.apply_noise(x, below_one.expand(256))

    assert bool((low > x).all())
    assert bool((high < x + 1).all())


def test_dequantize_event_dim_log_det_shape():
    t = Dequantize(17, event_dim=2)
    x = torch.randint(0, 17, (3, 8, 8))

    y, ladj = t.call_and_ladj(x)

    assert ladj.shape == (3,)
    torch.testing.assert_close(ladj, torch.full((3,), 64 * math.log1p(-2 * noise_margin(17, torch.float32))))
    assert torch.equal(ladj, t.log_abs_det_jacobian(x, y))


def test_dequantize_generator_makes_noise_reproducible():
    x = torch.zeros(10, dtype=torch.long)

    first = Dequantize(17, generator=torch.Generator().manual_seed(1))(x)
    second = Dequantize(17, generator=torch.Generator().manual_seed(1))(x)
    third = Dequantize(17, generator=torch.Generator().manual_seed(2))(x)

    assert torch.equal(first, second)
    assert not torch.equal(first, third)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_dequantize_forward_matches_apply_noise(dtype):
    # The forward adds the noise in place; it must round exactly as x + (m + (1 - 2m) u) does.
    x = torch.randint(0, 256, (4096,)).to(dtype)
    noise = torch.rand(x.shape, dtype=dtype, generator=torch.Generator().manual_seed(3))

    y = Dequantize(256, generator=torch.Generator().manual_seed(3))(x)

    assert torch.equal(y, Dequantize(256).apply_noise(x, noise))


@pytest.mark.parametrize("randomness", ["same", "different"])
def test_dequantize_under_vmap(randomness):
    # With randomness="same" the noise is not batched while the data are.
    x = torch.randint(0, 256, (5, 7)).double()

    y = torch.func.vmap(Dequantize(256, validate_args=False), randomness=randomness)(x)

    assert y.shape == x.shape
    assert torch.equal(torch.floor(y), x)
    # The same noise for every row, up to the rounding of x + u in float64.
    same_noise = torch.allclose(y[0] - x[0], y[1] - x[1], rtol=0, atol=1e-9)
    assert same_noise == (randomness == "same")


def test_dequantize_draws_fresh_noise_each_call():
    t = Dequantize(17)
    x = torch.zeros(100, dtype=torch.long)

    assert not torch.equal(t(x), t(x))
    assert not torch.equal(t.call_and_ladj(x)[0], t.call_and_ladj(x)[0])


def test_dequantize_does_not_modify_input():
    x = torch.tensor([1.0, 2.0, 3.0])
    before = x.clone()

    Dequantize(17)(x)
    Dequantize(17).apply_noise(x, torch.rand(3))

    assert torch.equal(x, before)


def test_dequantize_quantizer_clamps():
    y = torch.tensor([-0.5, 0.0, 16.99, 17.0, 40.0])

    assert torch.equal(Dequantize(17).inv(y), torch.tensor([0.0, 0.0, 16.0, 16.0, 16.0]))


@pytest.mark.parametrize(
    "bad", [17, -1, 3.5, math.nan, math.inf], ids=lambda v: f"value={v}"
)
def test_dequantize_rejects_invalid_data(bad):
    x = torch.tensor([0.0, 1.0, bad])

    with pytest.raises(ValueError, match=r"Dequantize\(num_bins=17\) expects integers in \[0, 16\], got"):
        Dequantize(17)(x)


def test_dequantize_error_names_the_value():
    with pytest.raises(ValueError, match=r"got 17 \(1 of 3 elements"):
        Dequantize(17)(torch.tensor([0, 17, 16]))


def test_dequantize_validation_can_be_disabled():
    y = Dequantize(17, validate_args=False)(torch.tensor([17]))

    assert bool((y >= 17).all())


def test_dequantize_apply_noise_rejects_noise_outside_unit_interval():
    with pytest.raises(ValueError, match=r"noise must lie in \[0, 1\), got 1.0"):
        Dequantize(17).apply_noise(torch.tensor([1]), torch.tensor([1.0]))


def test_dequantize_is_not_bijective_and_has_no_sign():
    t = Dequantize(17)

    assert not t.bijective
    assert not t.inv.bijective
    with pytest.raises(NotImplementedError, match="not bijective"):
        t.sign
    with pytest.raises(NotImplementedError, match="not bijective"):
        t.inv.sign


def test_dequantize_constraints():
    t = Dequantize(17)

    assert bool(t.domain.check(torch.tensor(16.0)))
    assert not bool(t.domain.check(torch.tensor(17.0)))
    assert not bool(t.domain.check(torch.tensor(3.5)))
    assert bool(t.codomain.check(torch.tensor(16.99)))
    assert not bool(t.codomain.check(torch.tensor(17.0)))
    assert t.domain.is_discrete


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16], ids=str)
def test_dequantize_validates_small_integer_dtypes(dtype):
    # num_bins - 1 can exceed the dtype's range; the check must neither overflow nor pass bad data.
    top = min(torch.iinfo(dtype).max, 999)
    t = Dequantize(1000)

    assert t(torch.tensor([0, top], dtype=dtype)).shape == (2,)
    if torch.iinfo(dtype).min < 0:
        with pytest.raises(ValueError, match=r"expects integers in \[0, 999\], got -1"):
            t(torch.tensor([3, -1], dtype=dtype))
    with pytest.raises(ValueError, match=r"expects integers in \[0, 99\], got 100"):
        Dequantize(100)(torch.tensor([3, 100], dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64], ids=str)
def test_quantize_keeps_integer_dtypes(dtype):
    y = torch.tensor([0, 5, 255]).to(dtype)

    assert torch.equal(Dequantize(300).inv(y), y)
    assert torch.equal(Dequantize(17).inv(y), torch.tensor([0, 5, 16]).to(dtype))


def test_quantize_bool_and_bad_num_bins():
    from flowext import quantize

    assert torch.equal(Dequantize(17).inv(torch.tensor([True, False])), torch.tensor([True, False]))
    with pytest.raises(ValueError, match="num_bins must be an integer >= 2"):
        quantize(torch.tensor([0.5]), 0)


@pytest.mark.parametrize("noise", [torch.rand(2), [0.5, 0.5, 0.5]], ids=["shape", "list"])
def test_apply_noise_rejects_noise_of_other_shape(noise):
    with pytest.raises(ValueError, match=r"noise must be a tensor of the shape of x, \(3,\)"):
        Dequantize(17).apply_noise(torch.tensor([1, 2, 3]), noise)


def test_call_checks_event_dims():
    with pytest.raises(ValueError, match=r"event_dim=2 needs inputs with at least 2 dimensions, got shape \(3,\)"):
        Dequantize(17, event_dim=2)(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=r"event_dim=2 needs inputs with at least 2 dimensions"):
        Dequantize(17, event_dim=2).inv(torch.tensor([1.5, 2.5]))


def test_dequantize_logit_alpha_widens_the_margin():
    wide = Dequantize(256, logit_alpha=0.99)
    x = torch.zeros(4, dtype=torch.long)

    assert wide != Dequantize(256)
    assert wide == Dequantize(256, logit_alpha=0.99)
    assert "logit_alpha=0.99" in repr(wide)
    assert float(wide.log_abs_det_jacobian(x, wide(x))[0]) == pytest.approx(math.log1p(-2 * noise_margin(256, torch.float32, 0.99)))
    with pytest.raises(ValueError, match=r"logit_alpha must be a real number in \[0, 1\), got 1.0"):
        Dequantize(256, logit_alpha=1.0)
