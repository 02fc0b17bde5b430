"""Property-based checks over shapes, values and dtypes."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flowext import Dequantize, Logit, Scale, dequantization_pipeline

shapes = st.lists(st.integers(1, 4), min_size=0, max_size=4).map(tuple)
float_dtypes = st.sampled_from([torch.float32, torch.float64])
alphas = st.one_of(st.just(0.0), st.floats(1e-8, 0.9))
bins = st.sampled_from([2, 3, 17, 255, 256, 1000])
seeds = st.integers(0, 2**31 - 1)


@settings(max_examples=60, deadline=None)
@given(shape=shapes, dtype=float_dtypes, alpha=alphas, seed=seeds)
def test_logit_inverse_recovers_input(shape, dtype, alpha, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, dtype=dtype, generator=generator)
    t = Logit(alpha, cache_size=0)

    y, ladj = t.call_and_ladj(x)
    x_back, inv_ladj = t.inv.call_and_ladj(y)

    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(x_back, x, atol=tolerance, rtol=0)
    torch.testing.assert_close(inv_ladj, -ladj, atol=1e-3 if dtype == torch.float32 else 1e-9, rtol=1e-5)
    assert not bool(torch.isnan(y).any())


@settings(max_examples=60, deadline=None)
@given(shape=shapes, dtype=float_dtypes, alpha=alphas, event_dim=st.integers(0, 4), seed=seeds)
def test_logit_log_det_sums_over_event_dims(shape, dtype, alpha, event_dim, seed):
    event_dim = min(event_dim, len(shape))
    x = torch.rand(shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))

    summed = Logit(alpha, event_dim=event_dim).call_and_ladj(x)[1]
    elementwise = Logit(alpha).call_and_ladj(x)[1]

    assert summed.shape == shape[: len(shape) - event_dim]
    expected = elementwise.sum(dim=tuple(range(-event_dim, 0))) if event_dim else elementwise
    torch.testing.assert_close(summed, expected)


@settings(max_examples=60, deadline=None)
@given(
    factor=st.one_of(st.floats(-1e3, -1e-3), st.floats(1e-3, 1e3)),
    shape=shapes,
    dtype=float_dtypes,
    seed=seeds,
)
def test_scale_log_det_is_log_abs_factor(factor, shape, dtype, seed):
    x = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))

    y, ladj = Scale(factor).call_and_ladj(x)

    torch.testing.assert_close(ladj, torch.full(shape, math.log(abs(factor)), dtype=dtype))
    torch.testing.assert_close(Scale(factor).inv(y), x)


@settings(max_examples=80, deadline=None)
@given(num_bins=bins, shape=shapes, dtype=float_dtypes, alpha=alphas, seed=seeds)
def test_pipeline_quantizes_back_exactly(num_bins, shape, dtype, alpha, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(0, num_bins, shape, generator=generator)
    t = dequantization_pipeline(num_bins, alpha, dtype=dtype, generator=generator)

    y, ladj = t.call_and_ladj(x)

    assert y.dtype == dtype
    assert torch.equal(t.inv(y.clone()), x.to(dtype))  # the clone bypasses the caches
    torch.testing.assert_close(t.log_abs_det_jacobian(x, y), ladj)


@settings(max_examples=60, deadline=None)
@given(num_bins=bins, shape=shapes, dtype=float_dtypes, seed=seeds)
def test_dequantize_output_stays_in_bin(num_bins, shape, dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(0, num_bins, shape, generator=generator)

    y = Dequantize(num_bins, dtype=dtype, generator=generator)(x)

    assert bool((y > x).all())
    assert bool((y < x + 1).all())
