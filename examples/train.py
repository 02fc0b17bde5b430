"""Train a RealNVP-style flow on integer images with uniform or variational dequantization.

Examples:
    python examples/train.py                                   # digits, uniform noise
    python examples/train.py --dequantization variational --out runs/digits-variational
    python examples/train.py --dataset photos --epochs 10      # 8x8 RGB patches, K = 256
    python examples/train.py --idx-images train-images-idx3-ubyte
    python -m torch.distributed.run --nproc_per_node 2 examples/train.py --device cpu

Run `python examples/train.py --help` for every option. Invalid input (options, data files,
checkpoints, an output folder that cannot be written) ends the program with one message on
stderr and exit status 2, before anything is written. A training loss that becomes NaN or
infinite ends it with exit status 1. SIGINT and SIGTERM stop it with exit status 130 and 143.
It then removes the temporary file it was writing, and checkpoint_last.pt contains the last
completed epoch.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# The reusable parts live in the flowtrain package next to this script.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from flowtrain.data import num_bins_range_problem  # noqa: E402
from flowtrain.errors import UsageError  # noqa: E402
from flowtrain.model import DEQUANTIZATIONS, MAX_NUM_BINS, FlowConfig  # noqa: E402

PROGRAM = "train.py"
# More threads than this only add overhead, and very large counts make OpenBLAS fail to start.
MAX_THREADS = 4 * (os.cpu_count() or 1)
# Adam's first step divides --lr by 1 - beta1 = 0.1 and converts it to a float32 scalar, which
# overflows above 3.4e38, so --lr and --max-grad-norm stay below a tenth of that.
MAX_FLOAT = 3.4e37
# Seeds run from 0 to 2**32 - 1. The data sampler adds the epoch to the seed, which must stay
# below 2**64 for torch's generator.
MAX_SEED = 2**32 - 1
# The architecture defaults come from FlowConfig, so that the parser and the dataclass agree.
# Shape and levels come from the data; these placeholders are never used.
_DEFAULTS = FlowConfig(shape=(1, 2, 2), num_bins=2)


def _integer_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


def _num_bins(text: str) -> int:
    value = _integer_at_least(2)(text)
    if value > MAX_NUM_BINS:
        raise argparse.ArgumentTypeError(num_bins_range_problem(value))
    return value


def _threads(text: str) -> int:
    value = _integer_at_least(1)(text)
    if value > MAX_THREADS:
        raise argparse.ArgumentTypeError(
            f"expected an integer from 1 to {MAX_THREADS} (4 per CPU core of this machine), got {value}"
        )
    return value


def _seed(text: str) -> int:
    value = _integer_at_least(0)(text)
    if value > MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to {MAX_SEED}, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not 0 < value <= MAX_FLOAT:
        raise argparse.ArgumentTypeError(f"expected a positive number up to {MAX_FLOAT:.4g}, got {text!r}")
    return value


def _alpha(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


class _HelpFormatter(argparse.HelpFormatter):
    """Help formatter that shows a default unless the help text already describes it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        described = "%(default)" in text or "default" in text.lower()
        if not described and action.default not in (None, False, argparse.SUPPRESS):
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser, with help text that gives each option's unit."""
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description=(
            "Train a normalizing flow (affine couplings with checkerboard masks, in the style of "
            "RealNVP) on integer images with uniform or variational dequantization, and report "
            "test bits per dimension (bpd). Outputs go to --out: metrics.json, samples.png, "
            "dequantization.png, training_curve.png and checkpoints. Runs under "
            "`python -m torch.distributed.run --nproc_per_node N` with DistributedDataParallel."
        ),
        formatter_class=_HelpFormatter,
    )

    data = parser.add_argument_group("data (nothing is downloaded)")
    data.add_argument(
        "--dataset",
        choices=("digits", "photos", "idx"),
        default=None,
        help="digits: scikit-learn's 1,797 8x8 digits, 17 levels. photos: patches of "
        "scikit-learn's two 427x640 sample photos, 256 levels, split by region so that test "
        "patches share no pixel with training patches. idx: the uint8 images of --idx-images, "
        "256 levels. Default: idx when --idx-images is given, else digits.",
    )
    data.add_argument(
        "--idx-images",
        metavar="PATH",
        default=None,
        help="IDX file of uint8 images (magic number 0x00000803, as in MNIST's "
        "train-images-idx3-ubyte), plain or gzip-compressed; split 80/10/10 percent at random",
    )
    data.add_argument("--patch-size", type=_integer_at_least(2), default=8, help="side of the photo patches, in pixels (2 to 32)")
    data.add_argument("--grayscale", action="store_true", help="convert photo patches to 1 gray channel (default: 3 RGB channels)")
    data.add_argument(
        "--num-bins",
        type=_num_bins,
        default=None,
        help=f"number of levels K, from 2 to {MAX_NUM_BINS} (the finest bins float32 resolves); "
        "every pixel value must be below it. Default: 17 for the digits, 256 for photos and IDX files",
    )

    model = parser.add_argument_group("model")
    model.add_argument("--dequantization", choices=DEQUANTIZATIONS, default="uniform", help="noise u added to the integers: uniform in each bin, or learned q(u|x)")
    model.add_argument("--num-layers", type=_integer_at_least(1), default=_DEFAULTS.num_layers, help="checkerboard coupling layers of the main flow")
    model.add_argument("--hidden-channels", type=_integer_at_least(1), default=_DEFAULTS.hidden_channels, help="channels of the hidden layers of each coupling network")
    model.add_argument("--num-blocks", type=_integer_at_least(0), default=_DEFAULTS.num_blocks, help="residual blocks (two 3x3 convolutions each) of each coupling network")
    model.add_argument(
        "--channel-masks",
        action=argparse.BooleanOptionalAction,
        default=_DEFAULTS.channel_masks,
        help="add a coupling that splits the channels after every second checkerboard layer (images of 2 or more channels only)",
    )
    model.add_argument("--alpha", type=_alpha, default=_DEFAULTS.alpha, help="squashing constant of the logit layer, in [0, 1)")
    model.add_argument("--noise-layers", type=_integer_at_least(1), default=_DEFAULTS.noise_layers, help="coupling layers of the noise flow q(u|x) (variational only)")
    model.add_argument(
        "--noise-hidden-channels",
        type=_integer_at_least(1),
        default=_DEFAULTS.noise_hidden_channels,
        help="hidden channels of the noise flow and of its context network (variational only)",
    )
    model.add_argument(
        "--context-channels",
        type=_integer_at_least(1),
        default=_DEFAULTS.context_channels,
        help="channels of the feature map of x that conditions q(u|x) (variational only)",
    )

    training = parser.add_argument_group("training")
    training.add_argument("--epochs", type=_integer_at_least(1), default=20, help="total epochs, counting those of a resumed checkpoint")
    training.add_argument("--batch-size", type=_integer_at_least(1), default=64, help="images per optimization step and process")
    training.add_argument("--lr", type=_positive_float, default=1e-3, help="Adam learning rate")
    training.add_argument("--max-grad-norm", type=_positive_float, default=100.0, help="gradients with a larger L2 norm are scaled down to this norm (loss in bits per dimension)")
    training.add_argument(
        "--steps-per-epoch",
        type=_integer_at_least(1),
        default=None,
        help="stop each epoch after this many steps (default: one full pass over the training images)",
    )
    training.add_argument("--seed", type=_seed, default=0, help=f"seed of initialization, shuffling and noise, 0 to {MAX_SEED} (the data split uses a fixed seed)")
    training.add_argument("--resume", metavar="PATH", default=None, help="continue from a checkpoint_last.pt or checkpoint_best.pt written by this program, up to --epochs")

    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument("--iw-samples", type=_integer_at_least(1), default=64, help="noise draws M per test image for the importance-weighted bpd")
    evaluation.add_argument(
        "--eval-batch-size",
        type=_integer_at_least(1),
        default=256,
        help="largest number of images per call of the flow's log_prob in evaluation, repeated draws included (bounds memory)",
    )
    evaluation.add_argument("--num-sample-images", type=_integer_at_least(1), default=64, help="images drawn from the model for samples.png and for the sampling time")

    system = parser.add_argument_group("output and system")
    system.add_argument("--out", metavar="DIR", default="runs/train", help="output folder, created if missing; only rank 0 writes to it")
    system.add_argument(
        "--device",
        choices=("cpu", "cuda", "mps"),
        default=None,
        help="device to train on. Default: cuda when available, else cpu. Under torchrun each CUDA process uses the GPU of its local rank",
    )
    system.add_argument(
        "--threads",
        type=_threads,
        default=None,
        help=f"CPU threads of each process (torch.set_num_threads), 1 to {MAX_THREADS}; default: PyTorch's choice",
    )
    system.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="show a tqdm progress bar with the running training bpd on stderr")
    system.add_argument(
        "--digest-dir",
        metavar="DIR",
        default=None,
        help="for tests: every rank writes rankN.sha256, the SHA-256 of its parameters after training, to DIR",
    )
    return parser


def parse_options(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line and apply the rules that span several options."""
    parser = build_parser()
    options = parser.parse_args(argv)
    if options.dataset is None:
        options.dataset = "idx" if options.idx_images is not None else "digits"
    if options.idx_images is not None and options.dataset != "idx":
        parser.error(f"--idx-images applies to --dataset idx only, got --dataset {options.dataset}; drop one of them")
    if options.dataset == "idx" and options.idx_images is None:
        parser.error("--dataset idx needs --idx-images PATH, the IDX image file to train on")
    if options.out == "":
        parser.error("argument --out: expected a folder path, got an empty string")
    if options.digest_dir == "":
        parser.error("argument --digest-dir: expected a folder path, got an empty string")
    return options


class Terminated(BaseException):
    """Raised in the main thread when the process receives SIGTERM.

    It derives from BaseException, as KeyboardInterrupt does, so that `except Exception`
    blocks let it pass and only cleanup code (`finally`, context managers) runs on its way out.
    """


@contextmanager
def _stop_on_signals(received: list[signal.Signals], keep_ignored: bool) -> Iterator[None]:
    """Turn SIGINT and SIGTERM into exceptions in the main thread, for the duration of the block.

    SIGINT raises KeyboardInterrupt and SIGTERM raises `Terminated`, so the cleanup code on the
    way out runs: the atomic writer removes its temporary file. The handler appends the signal
    to `received` first, because cleanup code may replace the exception with another one (as
    torch.save does when its writer is interrupted). After the first signal, further SIGINT and
    SIGTERM are ignored, so that a second one cannot interrupt that cleanup. Signals that the
    parent process set to be ignored stay ignored. The block restores the previous handlers,
    unless a signal arrived and `keep_ignored` is set: a script that exits next keeps them
    ignored, so that a second signal cannot cut its exit short.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    exceptions = {signal.SIGINT: KeyboardInterrupt, signal.SIGTERM: Terminated}
    previous = {number: signal.getsignal(number) for number in exceptions}

    def stop(number: int, frame: object) -> None:
        for other in exceptions:
            signal.signal(other, signal.SIG_IGN)
        received.append(signal.Signals(number))
        raise exceptions[number]()

    try:
        for number, handler in previous.items():
            if handler is not signal.SIG_IGN:
                signal.signal(number, stop)
        yield
    finally:
        if not (received and keep_ignored):
            for number, handler in previous.items():
                signal.signal(number, handler)


def _report_interruption(name: str, out: str) -> None:
    checkpoint = Path(out) / "checkpoint_last.pt"
    message = f"{PROGRAM}: stopped by {name}."
    if checkpoint.is_file():
        message += f" {checkpoint} contains the last completed epoch; continue with --resume {checkpoint} and the same options."
    print(message, file=sys.stderr)


def main(argv: list[str] | None = None, *, exiting: bool = False) -> int:
    """Run the program and return its exit status.

    The status is 0 on success, 2 for invalid input, 1 if the training loss became NaN or
    infinite, and 128 plus the signal number (130, 143) when SIGINT or SIGTERM stopped it.
    Pass `exiting=True` when the process exits right after: SIGINT and SIGTERM then stay
    ignored after a first one. Otherwise the caller gets its signal handlers back.
    """
    options = parse_options(argv)

    from flowtrain.distributed import world_from_environment
    from flowtrain.run import run_training

    rank = world_from_environment()[0]
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(message)s", stream=sys.stderr)
    # NOTE: a signal that arrives while the modules are still importing, before the handlers
    # below exist, gets Python's default behaviour instead of the exit statuses 130 and 143.
    received: list[signal.Signals] = []
    try:
        with _stop_on_signals(received, keep_ignored=exiting):
            metrics = run_training(options)
    except BaseException as error:
        if received:
            _report_interruption(received[0].name, options.out)
            return 128 + received[0]
        if isinstance(error, UsageError):
            print(f"{PROGRAM}: error: {error}", file=sys.stderr)
            return 2
        if isinstance(error, FloatingPointError):
            print(f"{PROGRAM}: error: {error}", file=sys.stderr)
            return 1
        raise

    if metrics is not None:
        print(
            f"{metrics['dataset']}, {metrics['dequantization']} dequantization: "
            f"test {metrics['test_bpd']:.4f} bpd (one draw), "
            f"{metrics['test_iw_bpd']:.4f} bpd (importance-weighted, M = {metrics['iw_samples']}); "
            f"{metrics['parameters']['total']} parameters, {metrics['train_seconds']:.1f} s of training; "
            f"outputs in {options.out}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(exiting=True))
