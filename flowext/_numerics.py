"""Floating-point limits of dequantized data.

Dequantization places each integer `x` in the bin [x, x + 1). After a `Scale` and a `Logit` and
their inverses, a value within a few units in the last place of a bin edge can come back on the
other side of the edge, so quantizing it gives a neighbouring integer. Measured on float32 and
float64 on the CPU over the 400 values next to every edge, for K in {2, 17, 256, 4096} and
alpha in {0, 1e-6, 0.05, 0.3}, the largest distance from an edge that still failed was 1.0 K eps,
with eps the machine epsilon of the dtype (tests/test_margin.py repeats the scan). flowext keeps
the noise at least `NOISE_MARGIN_ULPS` K eps away from both edges and accounts for this in the
log-det.

A Logit with a large alpha squashes [0, 1] into a narrow interval around 1/2, where float
spacing is coarser by the factor 1 / (1 - alpha) relative to the data. The measured failing
distance grows as at most about 0.6 K eps / (1 - alpha) (5.7 K eps for alpha = 0.9 and
K = 4096, 37 K eps for alpha = 0.99 and K = 256, in float32), so for alpha above 1/2 the
margin grows by the factor 1 / (2 (1 - alpha)); up to alpha = 1/2 it does not change.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "MAX_MARGIN",
    "NOISE_MARGIN_ULPS",
    "log1m_two_margin",
    "margin_factor",
    "noise_margin",
    "resolvable_bins",
]

#: Distance from a bin edge, in units of K eps, that dequantization noise keeps.
NOISE_MARGIN_ULPS = 4.0

#: Largest margin allowed, as a fraction of a bin. A dtype that needs more cannot resolve the bins.
MAX_MARGIN = 1.0 / 16.0


def margin_factor(alpha: float = 0.0) -> float:
    """Return the factor by which a Logit with squashing constant `alpha` widens the margin."""
    return max(1.0, 0.5 / (1.0 - alpha))


def resolvable_bins(dtype: torch.dtype, alpha: float = 0.0) -> int:
    """Return the largest number of bins that `dtype` resolves with the noise margin.

    `alpha` is the squashing constant of the Logit that follows the dequantization.
    """
    eps = torch.finfo(dtype).eps
    return int(MAX_MARGIN / (NOISE_MARGIN_ULPS * eps * margin_factor(alpha)))


def noise_margin(num_bins: int, dtype: torch.dtype, alpha: float = 0.0) -> float:
    """Return the margin m that keeps noise in [m, 1 - m] for `num_bins` bins in `dtype`.

    The noise u' = m + (1 - 2m) u, with u uniform on [0, 1), has density 1 / (1 - 2m) on
    [m, 1 - m], so its log-det contribution -log q(u'|x) is log(1 - 2m) per element. `alpha`
    is the squashing constant of the Logit that follows; above 1/2 it widens the margin.

    Raises:
        ValueError: If `dtype` cannot represent `num_bins` bins with that margin.
    """
    eps = torch.finfo(dtype).eps
    margin = NOISE_MARGIN_ULPS * num_bins * eps
    factor = margin_factor(alpha)
    if factor != 1.0:
        margin *= factor
    if margin > MAX_MARGIN and resolvable_bins(dtype, alpha) < 2:
        raise ValueError(
            f"dtype {dtype} cannot resolve any number of bins followed by Logit(alpha={alpha}): "
            f"that alpha leaves too few {dtype} values between alpha/2 and 1 - alpha/2. Pass a "
            f"smaller alpha or a wider dtype, such as dtype=torch.float64."
        )
    if margin > MAX_MARGIN:
        spacing = 2.0 ** math.floor(math.log2(num_bins - 1)) * eps if num_bins > 1 else eps
        after_logit = f" followed by Logit(alpha={alpha})" if factor != 1.0 else ""
        raise ValueError(
            f"dtype {dtype} cannot resolve num_bins={num_bins}{after_logit}: its spacing near "
            f"{num_bins - 1} is {spacing:g}, too coarse to keep the noise inside each bin "
            f"({dtype} supports num_bins <= {resolvable_bins(dtype, alpha)} here). Pass a wider "
            f"dtype, such as dtype=torch.float64, or quantize the data to fewer levels."
        )
    return margin


def log1m_two_margin(num_bins: int, dtype: torch.dtype, alpha: float = 0.0) -> float:
    """Return log(1 - 2m), the per-element log-det of margin-squeezed uniform noise."""
    return math.log1p(-2.0 * noise_margin(num_bins, dtype, alpha))
