"""Invalid arguments raise errors that name the parameter, the rule and the value."""

import math

import numpy as np
import pytest
import torch

from flowext import Dequantize, Logit, Scale


@pytest.mark.parametrize("value", [1, 0, -3, 2.5, 17.0, "17", None, True], ids=repr)
def test_num_bins_must_be_integer_at_least_two(value):
    with pytest.raises(ValueError, match=rf"num_bins must be an integer >= 2 .*got {value!r}"):
        Dequantize(value)


def test_num_bins_accepts_numpy_integers():
    assert Dequantize(np.int64(17)).num_bins == 17


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5, math.nan, math.inf, "0.05", None, True], ids=repr)
def test_alpha_must_lie_in_unit_interval(value):
    with pytest.raises(ValueError, match=rf"alpha must be a real number in \[0, 1\), got {value!r}"):
        Logit(value)


def test_alpha_accepts_scalar_tensor():
    assert Logit(torch.tensor(0.05)).alpha == pytest.approx(0.05)


@pytest.mark.parametrize("value", [0, 0.0, math.nan, math.inf, -math.inf, "2", True], ids=repr)
def test_factor_must_be_finite_and_nonzero(value):
    with pytest.raises(ValueError, match=rf"factor must be a finite, nonzero real number .*got {value!r}"):
        Scale(value)


@pytest.mark.parametrize("value", [0.0, math.nan, math.inf])
def test_tensor_factor_must_be_finite_and_nonzero(value):
    with pytest.raises(ValueError, match="factor must be a finite, nonzero real number"):
        Scale(torch.tensor([1.0, value]))


@pytest.mark.parametrize("cls", [lambda **kw: Dequantize(17, **kw), lambda **kw: Scale(2.0, **kw), lambda **kw: Logit(0.05, **kw)])
@pytest.mark.parametrize("value", [-1, 1.5, "1"], ids=repr)
def test_event_dim_must_be_nonnegative_integer(cls, value):
    with pytest.raises(ValueError, match=rf"event_dim must be an integer >= 0 .*got {value!r}"):
        cls(event_dim=value)


@pytest.mark.parametrize("value", [2, -1, 0.5])
def test_cache_size_must_be_zero_or_one(value):
    with pytest.raises(ValueError, match=rf"cache_size must be 0 or 1, got {value!r}"):
        Logit(0.05, cache_size=value)


@pytest.mark.parametrize("value", [torch.int32, "float32", torch.complex64])
def test_dequantize_dtype_must_be_float(value):
    with pytest.raises(ValueError, match="dtype must be a floating-point torch.dtype"):
        Dequantize(17, dtype=value)


def test_dequantize_generator_type():
    with pytest.raises(ValueError, match="generator must be a torch.Generator or None, got 3"):
        Dequantize(17, generator=3)


def test_dequantize_generator_device_mismatch():
    t = Dequantize(17, generator=torch.Generator())

    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="generator is on cpu but the data is on cuda"):
            t(torch.zeros(3, device="cuda"))
    assert t(torch.zeros(3)).shape == (3,)


def test_dequantize_rejects_non_tensor_input():
    with pytest.raises(TypeError, match="Dequantize expects a torch.Tensor, got list"):
        Dequantize(17)([1, 2])


def test_dequantize_validate_args_must_be_bool():
    with pytest.raises(ValueError, match="validate_args must be True or False, got 'yes'"):
        Dequantize(17, validate_args="yes")


def test_no_assert_statements_for_user_input():
    import pathlib

    import flowext

    root = pathlib.Path(flowext.__file__).parent
    offenders = [
        f"{path.relative_to(root)}:{number}"
        for path in root.rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if line.strip().startswith("assert ")
    ]
    assert offenders == []


@pytest.mark.parametrize("make", [lambda: Scale(2.0), lambda: Logit(0.05), lambda: Dequantize(17)], ids=["Scale", "Logit", "Dequantize"])
@pytest.mark.parametrize("call", ["forward", "inverse", "call_and_ladj", "inverse_call_and_ladj"])
def test_calls_reject_non_tensors_and_complex_data(make, call):
    t = make()
    method = {
        "forward": t,
        "inverse": t.inv,
        "call_and_ladj": t.call_and_ladj,
        "inverse_call_and_ladj": t.inv.call_and_ladj,
    }[call]
    name = type(t).__name__

    with pytest.raises(TypeError, match=f"{name} expects a torch.Tensor, got list"):
        method([0.5, 0.25])
    with pytest.raises(ValueError, match=rf"{name} expects real data, got dtype torch.complex64"):
        method(torch.tensor([0.5 + 0.5j]))



@pytest.mark.parametrize("make", [lambda: Scale(2.0), lambda: Logit(0.05), lambda: Dequantize(17)], ids=["Scale", "Logit", "Dequantize"])
def test_log_det_rejects_invalid_inputs(make):
    t = make()
    name = type(t).__name__
    z = torch.tensor([0.5 + 0.5j])

    for method in (t.log_abs_det_jacobian, t.inv.log_abs_det_jacobian):
        with pytest.raises(TypeError, match=f"{name} expects a torch.Tensor, got list"):
            method([0.5], torch.tensor([0.5]))
        with pytest.raises(ValueError, match=rf"{name} expects real data, got dtype torch.complex64"):
            method(z, z)


def test_apply_noise_rejects_complex_noise():
    with pytest.raises(ValueError, match="noise must contain real values in \\[0, 1\\), got dtype torch.complex64"):
        Dequantize(4, validate_args=False).apply_noise(torch.tensor([1.0]), torch.tensor([0.5 + 0.5j]))
