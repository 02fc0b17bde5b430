"""Floating-point limits of dequantized data.

Dequantization places each integer `x` in the bin [x, x + 1). After a `Scale` and a `Logit` and
their inverses, a value within a few units in the last place of a bin edge can come back on the
other side of the edge, so quantizing it gives a neighbouring integer. Measured on float32 and
float64 on the CPU over the 400 values next to every edge, for K in {2, 17, 256, 4096} and
alpha in {0, 1e-6, 0.05, 0.3}, the largest distance from an edge that still failed was 1.0 K eps,
with eps the machine epsilon of the dtype (tests/test_margin.py repeats the scan). flowext keeps
the noise at least `NOISE_MARGIN_ULPS` K eps away from both edges and accounts for this in the
log-det.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "MAX_MARGIN",
    "NOISE_MARGIN_ULPS",
    "log1m_two_margin",
    "noise_margin",
    "resolvable_bins",
]

#: Distance from a bin edge, in units of K eps, that dequantization noise keeps.
NOISE_MARGIN_ULPS = 4.0

#: Largest margin allowed, as a fraction of a bin. A dtype that needs more cannot resolve the bins.
MAX_MARGIN = 1.0 / 16.0


def resolvable_bins(dtype: torch.dtype) -> int:
    """Return the largest number of bins that `dtype` resolves with the noise margin."""
    eps = torch.finfo(dtype).eps
    return int(MAX_MARGIN / (NOISE_MARGIN_ULPS * eps))


def noise_margin(num_bins: int, dtype: torch.dtype) -> float:
    """Return the margin m that keeps noise in [m, 1 - m] for `num_bins` bins in `dtype`.

    The noise u' = m + (1 - 2m) u, with u uniform on [0, 1), has density 1 / (1 - 2m) on
    [m, 1 - m], so its log-det contribution -log q(u'|x) is log(1 - 2m) per element.

    Raises:
        ValueError: If `dtype` cannot represent `num_bins` bins with that margin.
    """
    eps = torch.finfo(dtype).eps
    margin = NOISE_MARGIN_ULPS * num_bins * eps
    if margin > MAX_MARGIN:
        spacing = 2.0 ** math.floor(math.log2(num_bins - 1)) * eps if num_bins > 1 else eps
        raise ValueError(
            f"dtype {dtype} cannot resolve num_bins={num_bins}: its spacing near {num_bins - 1} "
            f"is {spacing:g}, too coarse to keep the noise inside each bin. "
            f"Use torch.float32 or torch.float64 ({dtype} supports num_bins <= "
            f"{resolvable_bins(dtype)})."
        )
    return margin


def log1m_two_margin(num_bins: int, dtype: torch.dtype) -> float:
    """Return log(1 - 2m), the per-element log-det of margin-squeezed uniform noise."""
    return math.log1p(-2.0 * noise_margin(num_bins, dtype))
