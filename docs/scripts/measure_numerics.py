"""Measure the float32 round trip and the symmetries that the numerics page quotes.

Run it from the repository root:

    python docs/scripts/measure_numerics.py

It prints four Markdown tables. The first counts round-trip failures on random draws, and the
second gives the largest distance from a bin edge at which the round trip still fails. The
third counts where Logit and its inverse break their symmetries, and the fourth how often
Scale's inverse misses its input. The round trip is Dequantize,
Scale(1/K), Logit(alpha), their inverses and floor, computed with the plain formulas, with
flowext's and with each of flowext's four safeguards turned off on its own.
tests/test_docs_formulas.py calls these functions and checks the numbers on the page.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time

import torch

from flowext import Logit, Scale
from flowext._numerics import noise_margin

DRAWS = 4 * 10**6
SEED = 0
DRAW_CONFIGS = ((17, 0.05), (256, 0.0), (256, 0.05))
EDGE_BINS = (2, 17, 256, 4096)
EDGE_ALPHAS = (0.0, 1e-6, 0.05, 0.3)
EDGE_ULPS = 16
EDGE_DISTANCES = torch.linspace(0, 3, 31, dtype=torch.float64)  # in units of K eps
SCALE_BINS = (17, 255, 1000)


@dataclasses.dataclass(frozen=True)
class Safeguards:
    """Switches for flowext's four safeguards in a round trip, all on by default."""

    margin: bool = True  # noise in [m, 1 - m] with m = 4 K eps, not [0, 1)
    mirrored_complement: bool = True  # 1 - s computed as alpha/2 + (1 - alpha)(1 - x)
    mirrored_sigmoid: bool = True  # the inverse evaluates sigmoid(-|y|) and mirrors it
    divide_by_factor: bool = True  # Scale's inverse divides by c = 1/K, not multiplies by K


VARIANTS = {
    "plain formulas": Safeguards(False, False, False, False),
    "flowext": Safeguards(),
    "flowext without the margin": Safeguards(margin=False),
    "flowext without the mirrored 1 - s": Safeguards(mirrored_complement=False),
    "flowext without the mirrored sigmoid": Safeguards(mirrored_sigmoid=False),
    "flowext with y * K in Scale's inverse": Safeguards(divide_by_factor=False),
}


def round_trip(
    x: torch.Tensor, u: torch.Tensor, num_bins: int, alpha: float, safeguards: Safeguards
) -> torch.Tensor:
    """Return the integers that `x` quantizes back to, for noise draws `u` in [0, 1)."""
    if safeguards.margin:
        margin = noise_margin(num_bins, x.dtype)
        u = u * (1.0 - 2.0 * margin) + margin
    factor = 1.0 / num_bins
    unit = (x + u) * factor

    s = unit * (1.0 - alpha) + alpha / 2
    if safeguards.mirrored_complement:
        one_minus_s = (1 - unit) * (1.0 - alpha) + alpha / 2
    else:
        one_minus_s = 1 - s
    y = torch.log(s) - torch.log(one_minus_s)

    if safeguards.mirrored_sigmoid:
        # sigmoid(-|y|) computed as Logit's inverse does, from exp(-|y|).
        decay = torch.exp(torch.where(y > 0, -y, y))
        lower = decay / (1 + decay)
        lower = (lower - alpha / 2) / (1.0 - alpha)
        unit_back = torch.where(y > 0, 1 - lower, lower)
    else:
        unit_back = (torch.sigmoid(y) - alpha / 2) / (1.0 - alpha)

    if safeguards.divide_by_factor:
        back = unit_back / factor
    else:
        back = unit_back * num_bins
    return torch.floor(back).clamp(0, num_bins - 1)


def count_draw_failures(num_bins: int, alpha: float) -> dict[str, int]:
    """Return, for each variant, how many of `DRAWS` random integers come back as another."""
    generator = torch.Generator().manual_seed(SEED)
    x = torch.randint(0, num_bins, (DRAWS,), generator=generator).float()
    u = torch.rand(DRAWS, generator=generator)
    return {
        name: int((round_trip(x, u, num_bins, alpha, safeguards) != x).sum())
        for name, safeguards in VARIANTS.items()
    }


def count_rounding_up(num_bins: int, alpha: float) -> tuple[int, int]:
    """Count the random draws below the top bin where x + u rounds up to x + 1.

    Returns that count and how many of those draws the plain formulas send to another integer.
    """
    generator = torch.Generator().manual_seed(SEED)
    x = torch.randint(0, num_bins, (DRAWS,), generator=generator).float()
    u = torch.rand(DRAWS, generator=generator)
    rounded_up = (x + u >= x + 1) & (x < num_bins - 1)
    failed = round_trip(x, u, num_bins, alpha, VARIANTS["plain formulas"]) != x
    return int(rounded_up.sum()), int((rounded_up & failed).sum())


def edge_values(num_bins: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Return integers x and values of their bins [x, x + 1) close to either edge.

    The values are the `EDGE_ULPS` representable numbers next to each edge and the numbers at
    the distances `EDGE_DISTANCES` (in units of K eps) from each edge, rounded to `dtype`.
    """
    x = torch.arange(num_bins, dtype=dtype)
    above_lower = [x]
    below_upper = [torch.nextafter(x + 1, x)]
    for _ in range(EDGE_ULPS - 1):
        above_lower.append(torch.nextafter(above_lower[-1], x + 1))
        below_upper.append(torch.nextafter(below_upper[-1], x))
    for distance in (EDGE_DISTANCES * num_bins * torch.finfo(dtype).eps).tolist():
        above_lower.append(x + distance)
        below_upper.append(torch.minimum(x + 1 - distance, below_upper[0]))
    values = torch.cat(above_lower + below_upper)
    return x.repeat(len(above_lower) + len(below_upper)), values


def largest_failing_distance(
    num_bins: int, alpha: float, dtype: torch.dtype, safeguards: Safeguards
) -> float:
    """Return the largest distance from a bin edge, in units of K eps, that fails the round trip.

    The values are placed directly, without noise or margin, so that the result shows how wide
    a margin the formulas need. Returns 0 when no value near an edge fails.
    """
    x, values = edge_values(num_bins, dtype)
    no_margin = dataclasses.replace(safeguards, margin=False)
    failed = round_trip(x, values - x, num_bins, alpha, no_margin) != x
    if not bool(failed.any()):
        return 0.0
    distance = torch.minimum(values - x, x + 1 - values)[failed].max().item()
    return distance / (num_bins * torch.finfo(dtype).eps)


def worst_edge_distances() -> dict[tuple[str, torch.dtype], float]:
    """Return the largest failing distance over `EDGE_BINS` and `EDGE_ALPHAS`, per variant."""
    names = ("plain formulas", "flowext", "flowext without the mirrored sigmoid")
    return {
        (name, dtype): max(
            largest_failing_distance(k, a, dtype, VARIANTS[name])
            for k in EDGE_BINS
            for a in EDGE_ALPHAS
        )
        for name in names
        for dtype in (torch.float32, torch.float64)
    }


def logit_symmetry_failures(alpha: float = 0.05) -> dict[str, tuple[int, int]]:
    """Count grid points where Logit and its inverse break their symmetries, in float32.

    Returns (failures, grid size) for: Logit(1 - x) == -Logit(x) with 1 - s and with flowext,
    and the inverse at y > 0 rounded correctly, with sigmoid(y) and with flowext's mirror.
    """
    logit = Logit(alpha, cache_size=0)

    x = torch.arange(2**16 + 1, dtype=torch.float32) / 2**16  # 1 - x is exact on this grid
    s = x * (1 - alpha) + alpha / 2
    s_mirror = (1 - x) * (1 - alpha) + alpha / 2
    plain = torch.log(s) - torch.log(1 - s)
    plain_mirror = torch.log(s_mirror) - torch.log(1 - s_mirror)

    y = torch.linspace(0, 16, 200_001, dtype=torch.float32)[1:]
    exact = ((torch.sigmoid(y.double()) - alpha / 2) / (1 - alpha)).float()
    plain_inverse = (torch.sigmoid(y) - alpha / 2) / (1 - alpha)

    return {
        "antisymmetry, 1 - s": (int((plain_mirror != -plain).sum()), x.numel()),
        "antisymmetry, flowext": (int((logit(1 - x) != -logit(x)).sum()), x.numel()),
        "inverse not correctly rounded, sigmoid(y)": (
            int((plain_inverse != exact).sum()),
            y.numel(),
        ),
        "inverse not correctly rounded, flowext": (
            int((logit.inv(y) != exact).sum()),
            y.numel(),
        ),
    }


def scale_inverse_failures(num_bins: int) -> dict[str, tuple[int, int]]:
    """Count the values v on a float32 grid in [0, K) with inverse(v * c) != v, c = fl(1/K)."""
    values = torch.arange(num_bins * 2**8, dtype=torch.float32) / 2**8
    factor = 1.0 / num_bins
    scale = Scale(factor, cache_size=0)
    product = scale(values)
    return {
        "y * K": (int((product * num_bins != values).sum()), values.numel()),
        "y / c (flowext)": (int((scale.inv(product) != values).sum()), values.numel()),
    }


def print_tables() -> None:
    """Print every measurement as Markdown tables."""
    header = " | ".join(f"K = {k}, alpha = {a}" for k, a in DRAW_CONFIGS)
    print(f"Round-trip failures in {DRAWS:,} draws (per million in brackets), float32\n")
    print(f"| variant | {header} |")
    print("| --- |" + " ---: |" * len(DRAW_CONFIGS))
    counts = {config: count_draw_failures(*config) for config in DRAW_CONFIGS}
    for name in VARIANTS:
        cells = " | ".join(
            f"{counts[c][name]} ({counts[c][name] / DRAWS * 1e6:.2f})" for c in DRAW_CONFIGS
        )
        print(f"| {name} | {cells} |")
    rounding = [count_rounding_up(*config) for config in DRAW_CONFIGS]
    print(f"| x + u rounds up to x + 1 | {' | '.join(str(up) for up, _ in rounding)} |")
    print(f"| ... and the plain formulas fail | {' | '.join(str(f) for _, f in rounding)} |")

    print("\nLargest failing distance from a bin edge, in units of K eps\n")
    print("| formulas | float32 | float64 |")
    print("| --- | ---: | ---: |")
    distances = worst_edge_distances()
    for name in dict.fromkeys(name for name, _ in distances):
        row = " | ".join(f"{distances[name, d]:.2f}" for d in (torch.float32, torch.float64))
        print(f"| {name} | {row} |")

    print("\nSymmetry of Logit(alpha = 0.05), float32\n")
    print("| check | failures | grid points |")
    print("| --- | ---: | ---: |")
    for name, (failures, size) in logit_symmetry_failures().items():
        print(f"| {name} | {failures} | {size} |")

    print("\nScale(1/K): values that the inverse does not return exactly, float32\n")
    print("| K | y * K | y / c (flowext) | grid points |")
    print("| ---: | ---: | ---: | ---: |")
    for num_bins in SCALE_BINS:
        result = scale_inverse_failures(num_bins)
        size = result["y * K"][1]
        print(f"| {num_bins} | {result['y * K'][0]} | {result['y / c (flowext)'][0]} | {size} |")


def main() -> None:
    start = time.perf_counter()
    print_tables()
    print(
        f"\ntorch {torch.__version__}, {time.perf_counter() - start:.1f} s, "
        f"log2 of the draws {math.log2(DRAWS):.1f}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
