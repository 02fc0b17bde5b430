"""Train the same flow with uniform and with variational dequantization, and compare them.

`make demo` runs this script. It starts examples/train.py twice, once per dequantization,
with the same main flow, epochs and seed. The two runs go side by side, each with half of the
CPU cores. The script then prints a table of test bits per dimension, importance-weighted test
bits per dimension, parameters and training time from each run's metrics.json.

Usage:
    python examples/compare_dequantization.py [--out DIR] [--sequential] [-- TRAIN_OPTIONS...]

Options after `--` go to both runs of train.py, e.g. `-- --dataset photos --epochs 10`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

TRAIN_SCRIPT = Path(__file__).resolve().parent / "train.py"
DEQUANTIZATIONS = ("uniform", "variational")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compare_dequantization.py",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", metavar="DIR", default="runs/demo", help="parent folder of the two run folders, DIR/uniform and DIR/variational")
    parser.add_argument("--epochs", type=int, default=20, help="epochs of each run")
    parser.add_argument(
        "--threads",
        type=int,
        default=max(1, (os.cpu_count() or 2) // 2),
        help="CPU threads of each run (train.py --threads); the default is half of this machine's cores",
    )
    parser.add_argument("--sequential", action="store_true", help="run one training after the other instead of side by side")
    parser.add_argument("train_options", nargs=argparse.REMAINDER, help="options after -- are passed to both runs of train.py")
    return parser


def run_folder(out: Path, dequantization: str) -> Path:
    """Return the output folder of the run with `dequantization`."""
    return out / dequantization


def start_run(options: argparse.Namespace, dequantization: str) -> tuple[subprocess.Popen, Path]:
    """Start one training run; its output goes to DIR/<dequantization>.log."""
    extra = [option for option in options.train_options if option != "--"]
    folder = run_folder(Path(options.out), dequantization)
    command = [
        sys.executable, str(TRAIN_SCRIPT),
        "--dequantization", dequantization,
        "--epochs", str(options.epochs),
        "--threads", str(options.threads),
        "--out", str(folder),
        "--no-progress",
        *extra,
    ]
    log_path = Path(options.out) / f"{dequantization}.log"
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    return process, log_path


def print_table(out: Path, wall_seconds: float) -> None:
    """Print one row per dequantization from the runs' metrics.json files."""
    rows = []
    for dequantization in DEQUANTIZATIONS:
        metrics = json.loads((run_folder(out, dequantization) / "metrics.json").read_text())
        rows.append(
            (
                dequantization,
                f"{metrics['test_bpd']:.4f}",
                f"{metrics['test_iw_bpd']:.4f}",
                f"{metrics['parameters']['total']:,}",
                f"{metrics['train_seconds']:.0f} s",
            )
        )
    first = json.loads((run_folder(out, DEQUANTIZATIONS[0]) / "metrics.json").read_text())
    header = ("dequantization", "test bpd", f"IW test bpd (M={first['iw_samples']})", "parameters", "training time")
    widths = [max(len(row[column]) for row in (header, *rows)) for column in range(len(header))]

    print(
        f"\n{first['dataset']}: {first['num_images']['test']} test images, K = {first['num_bins']}, "
        f"{first['epochs']} epochs; the two runs took {wall_seconds:.0f} s of wall-clock time"
    )
    print("  ".join(name.ljust(width) for name, width in zip(header, widths)))
    print("  ".join("-" * width for width in widths))
    for row in rows:
        print("  ".join(value.ljust(width) for value, width in zip(row, widths)))


def main(argv: list[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    out = Path(options.out)
    started = time.perf_counter()

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        print(f"compare_dequantization.py: error: cannot create --out {str(out)!r}: {error.strerror}. Pass a folder you can write to.", file=sys.stderr)
        return 2

    statuses = {}
    if options.sequential:
        for dequantization in DEQUANTIZATIONS:
            process, log_path = start_run(options, dequantization)
            statuses[dequantization] = (process.wait(), log_path)
    else:
        running = {dequantization: start_run(options, dequantization) for dequantization in DEQUANTIZATIONS}
        for dequantization, (process, log_path) in running.items():
            statuses[dequantization] = (process.wait(), log_path)
    wall_seconds = time.perf_counter() - started

    failed = {name: (status, log) for name, (status, log) in statuses.items() if status != 0}
    for name, (status, log_path) in failed.items():
        print(f"compare_dequantization.py: error: the {name} run failed with exit status {status}; its output is in {log_path}:", file=sys.stderr)
        print(log_path.read_text(encoding="utf-8")[-2000:], file=sys.stderr)
    if failed:
        return max(status for status, _ in failed.values())

    print_table(out, wall_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
