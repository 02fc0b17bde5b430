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
