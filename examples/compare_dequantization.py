"""Train the same flow with uniform and with variational dequantization, and compare them.

`make demo` runs this script. It starts examples/train.py twice, once per dequantization,
with the same main flow, epochs and seed. The two runs go side by side, each with half of the
CPU cores. The script then prints a table of test bits per dimension, importance-weighted test
bits per dimension, parameters and training time from each run's metrics.json.

Usage:
    python examples/compare_dequantization.py [--out DIR] [--sequential] [-- TRAIN_OPTIONS...]

Options after `--` go to both runs of train.py, e.g. `-- --dataset photos --batch-size 32`.
The options this script sets for each run (--dequantization, --out, --epochs, --threads and
--progress) are rejected there; use this script's --out, --epochs and --threads instead.

Exit status: 0 on success, 2 for invalid options, that of a failed run otherwise, and 130 or
143 when SIGINT or SIGTERM stopped the script (the runs receive the same signal).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PROGRAM = "compare_dequantization.py"
TRAIN_SCRIPT = Path(__file__).resolve().parent / "train.py"
DEQUANTIZATIONS = ("uniform", "variational")
MAX_THREADS = 4 * (os.cpu_count() or 1)

# train.py options that this script sets for each run, and why they cannot be passed after --.
RESERVED_OPTIONS = {
    "--dequantization": "this script runs train.py once with --dequantization uniform and once with variational",
    "--out": "the runs write to DIR/uniform and DIR/variational; pass --out DIR before --",
    "--epochs": "this script passes its own --epochs to both runs; pass --epochs before --",
    "--threads": "this script passes its own --threads to both runs; pass --threads before --",
    "--progress": "this script passes --no-progress, because the runs write to log files",
    "--no-progress": "this script passes --no-progress already",
    "--help": "the runs write to log files, where the help would not show; run python examples/train.py --help",
}


def _integer_in_range(minimum: int, maximum: int | None = None):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum or (maximum is not None and value > maximum):
            bounds = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
            raise argparse.ArgumentTypeError(f"expected an integer {bounds}, got {text!r}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compare_dequantization.py",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", metavar="DIR", default="runs/demo", help="parent folder of the two run folders, DIR/uniform and DIR/variational")
    parser.add_argument("--epochs", type=_integer_in_range(1), default=20, help="epochs of each run")
    parser.add_argument(
        "--threads",
        type=_integer_in_range(1, MAX_THREADS),
        default=max(1, (os.cpu_count() or 2) // 2),
        help=f"CPU threads of each run (train.py --threads), 1 to {MAX_THREADS}; the default is half of this machine's cores",
    )
    parser.add_argument("--sequential", action="store_true", help="run one training after the other instead of side by side")
    parser.add_argument("train_options", nargs=argparse.REMAINDER, help="options after -- are passed to both runs of train.py")
    return parser


def run_folder(out: Path, dequantization: str) -> Path:
    """Return the output folder of the run with `dequantization`."""
    return out / dequantization


def train_options(remainder: list[str]) -> list[str]:
    """Return the options for train.py: those after the first `--`."""
    return remainder[1:] if remainder[:1] == ["--"] else remainder


def reserved_option(token: str, train_option_strings: list[str]) -> str | None:
    """Return the reserved train.py option that `token` names, or None.

    Accepts both `--option value` and `--option=value`, and resolves unique prefixes the way
    train.py's argparse parser does, so `--deq` names --dequantization.
    """
    if not token.startswith("--") or token == "--":
        return None
    name = token.split("=", 1)[0]
    matches = [name] if name in train_option_strings else [option for option in train_option_strings if option.startswith(name)]
    if len(matches) == 1 and matches[0] in RESERVED_OPTIONS:
        return matches[0]
    return None


def check_train_options(parser: argparse.ArgumentParser, options: list[str]) -> None:
    """Reject train.py options after `--` that this script sets for each run itself."""
    sys.path.insert(0, str(TRAIN_SCRIPT.parent))
    from train import build_parser as build_train_parser

    train_option_strings = [option for action in build_train_parser()._actions for option in action.option_strings]
    for token in options:
        reserved = "--help" if token == "-h" else reserved_option(token, train_option_strings)
        if reserved is not None:
            parser.error(f"train.py option {token} after -- is not allowed: {RESERVED_OPTIONS[reserved]}")


def start_run(options: argparse.Namespace, dequantization: str) -> tuple[subprocess.Popen, Path]:
    """Start one training run; its output goes to DIR/<dequantization>.log."""
    extra = train_options(options.train_options)
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
                metrics["dequantization"],
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
        f"{first['epochs']} epoch{'' if first['epochs'] == 1 else 's'}; the two runs took "
        f"{wall_seconds:.0f} s of wall-clock time"
    )
    for row in (header, tuple("-" * width for width in widths), *rows):
        print("  ".join(value.ljust(width) for value, width in zip(row, widths)).rstrip())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    options = parser.parse_args(argv)
    if options.out == "":
        parser.error("argument --out: expected a folder path, got an empty string")
    check_train_options(parser, train_options(options.train_options))
    out = Path(options.out)

    if out.exists() and not out.is_dir():
        print(f"{PROGRAM}: error: --out {str(out)!r} is an existing file, not a folder. Pass a folder path.", file=sys.stderr)
        return 2
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        print(f"{PROGRAM}: error: cannot create --out {str(out)!r}: {error.strerror}. Pass a folder you can write to.", file=sys.stderr)
        return 2

    started = time.perf_counter()
    started_at = time.time()
    # The handler only records the signal, and the loops below check for it. A signal can then
    # arrive at any moment, even between starting a run and recording it, and every started
    # run is still stopped.
    received: list[signal.Signals] = []

    def record(number: int, frame: object) -> None:
        received.append(signal.Signals(number))

    previous_handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    for number, handler in previous_handlers.items():
        # A signal that the parent process set to be ignored stays ignored.
        if handler is not signal.SIG_IGN:
            signal.signal(number, record)
    running: dict[str, tuple[subprocess.Popen, Path]] = {}
    try:
        statuses = run_all(options, running, received)
        if received:
            stop_runs(running, received[0])
            print(f"{PROGRAM}: stopped by {received[0].name}. The runs' logs are in {out}.", file=sys.stderr)
            return 128 + received[0]
    finally:
        for number, handler in previous_handlers.items():
            signal.signal(number, handler)
    wall_seconds = time.perf_counter() - started

    failed = {name: (status, log) for name, (status, log) in statuses.items() if status != 0}
    for name, (status, log_path) in failed.items():
        print(f"{PROGRAM}: error: the {name} run failed with exit status {status}; its output is in {log_path}:", file=sys.stderr)
        print(log_path.read_text(encoding="utf-8")[-2000:], file=sys.stderr)
    if failed:
        return max(status for status, _ in failed.values())

    # A metrics.json older than this invocation is from an earlier run into the same folder.
    for name, (_, log_path) in statuses.items():
        metrics_path = run_folder(out, name) / "metrics.json"
        if not metrics_path.is_file() or metrics_path.stat().st_mtime < started_at - 1.0:
            print(f"{PROGRAM}: error: the {name} run ended without writing {metrics_path}; its output is in {log_path}.", file=sys.stderr)
            return 1

    print_table(out, wall_seconds)
    return 0


def run_all(
    options: argparse.Namespace, running: dict[str, tuple[subprocess.Popen, Path]], received: list[signal.Signals]
) -> dict[str, tuple[int, Path]]:
    """Run both trainings and return each one's exit status and log path.

    `running` receives every started process, so that the caller can stop them. The function
    returns early, without starting further runs, once `received` contains a signal.
    """
    order = [[name] for name in DEQUANTIZATIONS] if options.sequential else [list(DEQUANTIZATIONS)]
    statuses = {}
    for group in order:
        for dequantization in group:
            if received:
                return statuses
            running[dequantization] = start_run(options, dequantization)
        for dequantization in group:
            process, log_path = running[dequantization]
            while (status := process.poll()) is None:
                if received:
                    return statuses
                try:
                    process.wait(timeout=0.2)
                except subprocess.TimeoutExpired:
                    pass
            statuses[dequantization] = (status, log_path)
    return statuses


def stop_runs(running: dict[str, tuple[subprocess.Popen, Path]], number: signal.Signals) -> None:
    """Send signal `number` to the runs that are still going, and wait for them to exit.

    A SIGINT from a terminal reaches the runs too, and train.py ignores the second copy.
    """
    for process, _ in running.values():
        if process.poll() is None:
            process.send_signal(number)
    for process, _ in running.values():
        process.wait()


if __name__ == "__main__":
    sys.exit(main())
