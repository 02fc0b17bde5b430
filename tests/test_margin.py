"""The noise margin covers the round-trip error next to every bin edge."""

import pytest
import torch

from flowext import Logit, Scale, quantize
from flowext._numerics import NOISE_MARGIN_ULPS, noise_margin, resolvable_bins

STEPS = 400  # representable values walked from each edge into the bin


def worst_failing_distance(num_bins: int, alpha: float, dtype: torch.dtype) -> float:
    """Return the largest distance from a bin edge, in bins, at which the round trip fails."""
    scale, logit = Scale(1 / num_bins, cache_size=0), Logit(alpha, cache_size=0)
    x = torch.arange(num_bins, dtype=dtype)
    low, high = x.clone(), torch.nextafter(x + 1, x)
    values = []
    for _ in range(STEPS):
        values += [low, high]
        low, high = torch.nextafter(low, x + 1), torch.nextafter(high, x)
    v = torch.stack(values)

    back = quantize(scale.inv(logit.inv(logit(scale(v)))), num_bins)
    failed = back != x.expand_as(v)
    if not bool(failed.any()):
        return 0.0
    offset = (v - x)[failed]
    return float(torch.minimum(offset, 1 - offset).max())


@pytest.mark.parametrize("num_bins", [2, 17, 256, 4096], ids=lambda k: f"K={k}")
@pytest.mark.parametrize("alpha", [0.0, 1e-6, 0.05, 0.3], ids=lambda a: f"alpha={a}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_margin_exceeds_round_trip_error(num_bins, alpha, dtype):
    eps = torch.finfo(dtype).eps

    worst = worst_failing_distance(num_bins, alpha, dtype)

    # Measured on the CPU: at most 1.0 K eps. The margin of 4 K eps leaves a factor of 4 for
    # other hardware's rounding.
    assert worst <= 1.0 * num_bins * eps
    assert noise_margin(num_bins, dtype) == NOISE_MARGIN_ULPS * num_bins * eps


def test_edges_fail_without_margin():
    # Without a margin the values next to the edges do come back in the wrong bin.
    assert worst_failing_distance(256, 0.05, torch.float32) > 0


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [(torch.bfloat16, 2), (torch.float16, 16), (torch.float32, 2**17), (torch.float64, 2**46)],
    ids=str,
)
def test_resolvable_bins_per_dtype(dtype, expected):
    assert resolvable_bins(dtype) == expected


def worst_failing_distance_on_grid(num_bins: int, alpha: float, dtype: torch.dtype, reach: float) -> float:
    """Return the largest failing distance from a bin edge, in bins, on a grid up to `reach` bins.

    The grid is linear in the distance, so it reaches as far from the edges of small integers
    as from those of large ones, which the walk over representable values does not.
    """
    generator = torch.Generator().manual_seed(num_bins)
    x = torch.cat([torch.arange(min(num_bins, 64)), torch.arange(max(0, num_bins - 64), num_bins), torch.randint(0, num_bins, (64,), generator=generator)])
    x = torch.unique(x).to(dtype)[:, None]
    offsets = torch.linspace(0, reach, 20001, dtype=torch.float64).to(dtype)[None, :]
    scale, logit = Scale(1 / num_bins, cache_size=0), Logit(alpha, cache_size=0)
    worst = 0.0
    for v in (x + offsets, torch.minimum(x + 1 - offsets, torch.nextafter(x + 1, x))):
        back = quantize(scale.inv(logit.inv(logit(scale(v)))), num_bins)
        failed = back != x.expand_as(v)
        if bool(failed.any()):
            offset = (v - x)[failed]
            worst = max(worst, float(torch.minimum(offset, 1 - offset).max()))
    return worst


@pytest.mark.parametrize("num_bins", [17, 256, 4096], ids=lambda k: f"K={k}")
@pytest.mark.parametrize("alpha", [0.3, 0.5, 0.7, 0.9, 0.99], ids=lambda a: f"alpha={a}")
def test_margin_grows_with_large_alpha(num_bins, alpha):
    dtype = torch.float32
    eps = torch.finfo(dtype).eps
    if num_bins > resolvable_bins(dtype, alpha):
        with pytest.raises(ValueError, match=rf"followed by Logit\(alpha={alpha}\)"):
            noise_margin(num_bins, dtype, alpha)
        return

    margin = noise_margin(num_bins, dtype, alpha)
    worst = worst_failing_distance_on_grid(num_bins, alpha, dtype, reach=2 * margin)

    # Measured: at most about 0.6 K eps / (1 - alpha). The margin keeps a factor of 3.
    assert worst <= margin / 3
    assert margin == NOISE_MARGIN_ULPS * num_bins * eps * max(1.0, 0.5 / (1 - alpha))
    # Without the widening, a Logit with a large alpha loses integers next to the edges.
    if alpha >= 0.9 and num_bins >= 256:
        assert worst_failing_distance_on_grid(num_bins, alpha, dtype, reach=2 * margin) > noise_margin(num_bins, dtype)


def test_margin_is_unchanged_up_to_alpha_one_half():
    for alpha in (0.0, 0.05, 0.3, 0.5):
        assert noise_margin(256, torch.float32, alpha) == noise_margin(256, torch.float32)


def test_margin_alpha_too_close_to_one():
    with pytest.raises(ValueError, match=r"cannot resolve any number of bins followed by Logit\(alpha=0.999999\)"):
        noise_margin(2, torch.float32, 0.999999)
