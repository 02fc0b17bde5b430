"""Settings of a benchmark run, and the helpers that every section uses."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from benchmarks.compiled import GraphBreaks
from benchmarks.measure import Timing, peak_memory_bytes, time_interleaved
from benchmarks.pipelines import Candidate, build_candidates
from benchmarks.report import format_mib, format_ms, format_ratio

DEFAULT_SHAPES = ((128, 1, 28, 28), (64, 3, 32, 32), (4096, 64))
QUICK_SHAPES = ((8, 1, 6, 6), (4, 3, 4, 4), (32, 8))
SECTIONS = ("agreement", "forward", "compiled", "inverse", "dequantizers", "training")

HAND = "hand-written"
FLOWEXT_CHECKED = "flowext (validate_args=True)"
FLOWEXT_UNCHECKED = "flowext (validate_args=False)"
TORCH = "torch transforms"
NOISE_ONLY = "noise only: x + rand_like(x)"


@dataclass(frozen=True)
class Settings:
    """Sections, shapes and repetitions of a run."""

    device: torch.device
    shapes: tuple[tuple[int, ...], ...]
    sections: tuple[str, ...]
    num_bins: int
    alpha: float
    rounds: int
    warmup: int
    block_seconds: float
    compile_backend: str
    compile_shapes: tuple[tuple[int, ...], ...]
    roundtrip_batches: int
    train_batch: int
    train_steps: int
    seed: int

    @property
    def timing(self) -> dict:
        return {"rounds": self.rounds, "warmup": self.warmup, "block_seconds": self.block_seconds}


@dataclass
class Results:
    """Figures that the targets section compares, filled in by the sections that run."""

    eager: dict[str, dict[str, Timing]] = field(default_factory=dict)
    compiled: dict[str, dict[str, Timing]] = field(default_factory=dict)
    layer_breaks: dict[str, GraphBreaks] = field(default_factory=dict)
    training_share: float | None = None


def shape_text(shape: Sequence[int]) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def integer_batch(shape: tuple[int, ...], settings: Settings) -> torch.Tensor:
    """Return float32 integers in [0, K - 1] of `shape`, the same on every run."""
    generator = torch.Generator().manual_seed(settings.seed)
    data = torch.randint(0, settings.num_bins, shape, generator=generator)
    return data.to(device=settings.device, dtype=torch.float32)


def candidates_for(shape: tuple[int, ...], settings: Settings) -> list[Candidate]:
    return build_candidates(settings.num_bins, settings.alpha, len(shape) - 1, settings.device)


def emit(text: str = "") -> None:
    print(text, flush=True)


def timing_rows(
    label: str,
    calls: dict[str, Callable[[], object]],
    reference: str,
    settings: Settings,
    extra: dict[str, list[str]] | None = None,
) -> tuple[dict[str, Timing], list[list[str]]]:
    """Time `calls`, measure each one's peak memory, and return the timings and table rows."""
    timings = time_interleaved(calls, reference, settings.device, **settings.timing)
    rows = []
    for name, timing in timings.items():
        peak = peak_memory_bytes(calls[name], settings.device)
        rows.append(
            [
                label,
                name,
                *(extra or {}).get(name, []),
                format_ms(timing.median),
                format_ms(timing.minimum),
                format_ms(timing.maximum),
                format_ratio(timing.ratio),
                format_mib(peak),
            ]
        )
    return timings, rows


TIME_HEADERS = ["median ms", "min ms", "max ms"]
