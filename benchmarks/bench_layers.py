"""Benchmark flowext's layers against the same formulas written by hand, in torch and in nflows.

Prints Markdown tables of time and peak memory, for the pipeline Dequantize -> Scale(1/K) ->
Logit(alpha) with its per-example log-det: eager, under torch.compile (with graph breaks), in
the inverse direction, with a variational instead of a uniform dequantizer, and inside a
training step of the demo model. Candidates of a table are timed in the same process, in
interleaved rounds; see `benchmarks.measure.time_interleaved`.

Run from the repository root:

    python -m benchmarks.bench_layers            # full run, a few minutes on a CPU
    python -m benchmarks.bench_layers --quick    # smoke run with tiny shapes
    python -m benchmarks.bench_layers --device cuda

NOTE: the CUDA path has not been run yet. It synchronizes around each timed block and measures
memory with torch.cuda.max_memory_allocated, but no figures on a GPU back it.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Sequence

import torch

from benchmarks.compiled import quiet_dynamo
from benchmarks.report import load_average
from benchmarks.sections import (
    section_agreement,
    section_compiled,
    section_dequantizers,
    section_forward,
    section_inverse,
    section_setup,
    section_training,
)
from benchmarks.settings import DEFAULT_SHAPES, QUICK_SHAPES, SECTIONS, Results, Settings, emit
from benchmarks.targets import section_targets


def parse_settings(argv: Sequence[str]) -> Settings:
    """Parse the command line into the settings of a run. Invalid options exit with status 2."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_layers",
        description="Benchmark flowext's layers against hand-written formulas, torch and nflows.",
    )
    parser.add_argument(
        "--device", default="cpu", help="torch device to run on, e.g. cpu or cuda (default: cpu)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: tiny shapes, 3 rounds of 1 ms, one shape under torch.compile",
    )
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated sections to run, from {', '.join(SECTIONS)} (default: all)",
    )
    parser.add_argument(
        "--rounds", type=int, help="timing rounds per table (default: 21, quick: 3)"
    )
    parser.add_argument(
        "--block-ms",
        type=float,
        help="milliseconds each candidate runs per round (default: 25, quick: 1)",
    )
    parser.add_argument(
        "--compile-backend",
        default="inductor",
        help="torch.compile backend (default: inductor). 'eager' skips Inductor's code generation",
    )
    parser.add_argument(
        "--threads", type=int, help="CPU threads for torch (default: torch's default)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the data and the models (default: 0)"
    )
    args = parser.parse_args(argv)

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(
            f"--device {args.device} requested, but torch {torch.__version__} finds no CUDA "
            f"device; run on a machine with CUDA, or with --device cpu"
        )
    sections = tuple(name.strip() for name in args.sections.split(",") if name.strip())
    unknown = [name for name in sections if name not in SECTIONS]
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)

    quick = args.quick
    return Settings(
        device=torch.device(args.device),
        shapes=QUICK_SHAPES if quick else DEFAULT_SHAPES,
        sections=sections,
        num_bins=256,
        alpha=0.05,
        rounds=args.rounds or (3 if quick else 21),
        warmup=1 if quick else 3,
        block_seconds=(args.block_ms or (1.0 if quick else 25.0)) / 1e3,
        compile_backend=args.compile_backend,
        compile_shapes=QUICK_SHAPES[:1] if quick else DEFAULT_SHAPES,
        roundtrip_batches=1 if quick else 20,
        train_batch=16 if quick else 64,
        train_steps=2 if quick else 8,
        seed=args.seed,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sections that the command line selects and print their tables."""
    argv = list(sys.argv[1:] if argv is None else argv)
    settings = parse_settings(argv)
    command = shlex.join(["python", "-m", "benchmarks.bench_layers", *argv])
    quiet_dynamo()
    torch.manual_seed(settings.seed)
    started = time.perf_counter()

    emit("# flowext layer benchmarks")
    emit()
    section_setup(settings, command)
    results = Results()
    if "agreement" in settings.sections:
        section_agreement(settings)
    if "forward" in settings.sections:
        section_forward(settings, results)
    if "compiled" in settings.sections:
        section_compiled(settings, results)
    if "inverse" in settings.sections:
        section_inverse(settings)
    if "dequantizers" in settings.sections:
        section_dequantizers(settings)
    if "training" in settings.sections:
        section_training(settings, results)
    section_targets(results)
    emit(
        f"Finished in {time.perf_counter() - started:.0f} s; load average (1, 5, 15 min) at "
        f"the end: {load_average()}."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
