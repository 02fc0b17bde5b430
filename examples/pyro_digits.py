"""Fit a Pyro coupling flow to scikit-learn's 8x8 digits (17 levels), dequantized two ways.

The model is a Pyro `TransformedDistribution` over the 64 pixels of a flattened digit. It
starts from a standard normal base and applies coupling layers from
`pyro.distributions.transforms` (`spline_coupling` or `affine_coupling`) with fixed
permutations between them. The flowext layers `Logit(alpha).inv` and `Scale(1 / 17).inv`
follow, and a dequantization step comes last:

- uniform: `Dequantize(17).inv`, noise uniform in each bin;
- learned: `flowext.pyro.VariationalDequantization`, noise from a conditional flow $q(u|x)$
  trained along with the model (variational dequantization).

Each variant is trained by maximum likelihood with Pyro's SVI for the same number of steps,
batch size and learning rate, from the same seed. With `Trace_ELBO` and an empty guide, the
loss is minus the model's log-likelihood bound on the batch. The script reports the test bits per
dimension from one dequantization draw per image and the importance-weighted estimate of
`flowext.importance_weighted_log_likelihood`, and prints the transforms of the observed site
of a `pyro.poutine.trace` of the model.

Run `python examples/pyro_digits.py --help` for the options; the digits ship with scikit-learn,
so nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable

import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as pyro_transforms
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam
from sklearn.datasets import load_digits
from torch import nn

from flowext import Dequantize, Logit, Scale, bits_per_dim, importance_weighted_log_likelihood
from flowext.pyro import VariationalDequantization

NUM_BINS = 17
NUM_PIXELS = 64
NUM_TRAIN = 1500


# numpy's legacy seeding, which pyro.set_rng_seed calls, takes seeds from 0 to 2**32 - 1.
MAX_SEED = 2**32 - 1
# More threads than this only add overhead, and very large counts make OpenBLAS fail to start.
MAX_THREADS = 4 * (os.cpu_count() or 1)

EXIT_DIVERGED = 1
# Adam's first step divides the learning rate by 1 - beta1 = 0.1 and converts it to a float32
# scalar, which overflows above 3.4e38.
MAX_LR = 3.4e37


class TrainingDiverged(Exception):
    """Training made the loss or the model's log-likelihood NaN or infinite."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Fit a Pyro coupling flow to the 8x8 digits with uniform and with learned "
            "(variational) dequantization, and report test bits per dimension."
        ),
        epilog=(
            "Exit status: 0 on success, 2 for invalid options, and "
            f"{EXIT_DIVERGED} if training diverges (the loss or the log-likelihood becomes NaN or "
            "infinite), for example with a too large --lr."
        ),
    )
    parser.add_argument(
        "--dequantization",
        choices=["uniform", "learned", "both"],
        default="both",
        help="which dequantization step ends the model (default: both, trained one after the other)",
    )
    parser.add_argument("--steps", type=int, default=1500, help="SVI steps per model (default: 1500)")
    parser.add_argument("--batch-size", type=int, default=128, help="images per SVI step (default: 128)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: 1e-3)")
    parser.add_argument(
        "--coupling",
        choices=["spline", "affine"],
        default="affine",
        help="coupling layers of the main flow, from pyro.distributions.transforms (default: affine)",
    )
    parser.add_argument("--layers", type=int, default=4, help="coupling layers of the main flow (default: 4)")
    parser.add_argument(
        "--hidden", type=int, default=64, help="hidden units per layer of the coupling networks (default: 64)"
    )
    parser.add_argument(
        "--noise-layers",
        type=int,
        default=4,
        help="coupling layers of the learned noise flow q(u|x) (default: 4)",
    )
    parser.add_argument(
        "--noise-hidden",
        type=int,
        default=64,
        help="hidden units of the learned noise flow and its context network (default: 64)",
    )
    parser.add_argument("--alpha", type=float, default=0.05, help="squashing constant of Logit, in [0, 1) (default: 0.05)")
    parser.add_argument(
        "--iw-samples",
        type=int,
        default=128,
        help="dequantization draws per test image for the importance-weighted estimate (default: 128)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help=f"seed of the data split, initialization and noise, 0 to {MAX_SEED} (default: 0)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help=f"torch CPU threads, 1 to {MAX_THREADS} (default: 1, because networks this small gain little from more)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object instead of a table")
    args = parser.parse_args(argv)

    for name in ("steps", "batch_size", "layers", "hidden", "noise_layers", "noise_hidden", "iw_samples", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.threads > MAX_THREADS:
        parser.error(f"--threads must be at most {MAX_THREADS} (4 per CPU core of this machine), got {args.threads}")
    if not 0 < args.lr <= MAX_LR:
        parser.error(f"--lr must be a positive number up to {MAX_LR:.4g}, got {args.lr}")
    if not 0 <= args.alpha < 1:
        parser.error(f"--alpha must be a number in [0, 1), got {args.alpha}")
    if not 0 <= args.seed <= MAX_SEED:
        parser.error(f"--seed must be an integer from 0 to {MAX_SEED}, got {args.seed}")
    return args


def load_data(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the training and test digits as float tensors of integers, shape (N, 64)."""
    images = torch.as_tensor(load_digits().images, dtype=torch.float32).reshape(-1, NUM_PIXELS)
    permutation = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    return images[permutation[:NUM_TRAIN]], images[permutation[NUM_TRAIN:]]


def build_transforms(args: argparse.Namespace, dequantization: str) -> list[torch.distributions.Transform]:
    """Build the transforms of the model, from the base side to the data."""
    transforms: list[torch.distributions.Transform] = []
    for _ in range(args.layers):
        if args.coupling == "spline":
            layer = pyro_transforms.spline_coupling(NUM_PIXELS, hidden_dims=[args.hidden, args.hidden])
        else:
            layer = pyro_transforms.affine_coupling(NUM_PIXELS, hidden_dims=[args.hidden, args.hidden])
        transforms.append(layer)
        transforms.append(pyro_transforms.Permute(torch.randperm(NUM_PIXELS)))

    transforms += [Logit(args.alpha).inv, Scale(1 / NUM_BINS).inv]
    if dequantization == "learned":
        transforms.append(
            VariationalDequantization.with_coupling_flow(
                NUM_BINS,
                (NUM_PIXELS,),
                hidden_features=args.noise_hidden,
                num_layers=args.noise_layers,
                logit_alpha=args.alpha,
            )
        )
    else:
        # The noise margin depends on alpha only above 1/2, so below it this is Dequantize(17).
        transforms.append(Dequantize(NUM_BINS, logit_alpha=args.alpha if args.alpha > 0.5 else 0.0).inv)
    return transforms


def make_model(transforms: list[torch.distributions.Transform]) -> Callable[[torch.Tensor], None]:
    """Return a Pyro model that scores a batch of digits under the flow."""
    modules = nn.ModuleList([t for t in transforms if isinstance(t, nn.Module)])

    def model(batch: torch.Tensor) -> None:
        pyro.module("flow", modules)
        base = dist.Normal(torch.zeros(NUM_PIXELS), 1.0).to_event(1)
        digits = dist.TransformedDistribution(base, transforms)
        with pyro.plate("images", len(batch)):
            pyro.sample("x", digits, obs=batch)

    return model


def empty_guide(batch: torch.Tensor) -> None:
    """Define no latent variables, so that SVI with this guide maximizes the likelihood."""


def observed_distribution(model: Callable[[torch.Tensor], None], batch: torch.Tensor) -> dist.TransformedDistribution:
    """Trace the model once and return the distribution of its observed site."""
    trace = pyro.poutine.trace(model).get_trace(batch)
    return trace.nodes["x"]["fn"]


def describe_trace(model: Callable[[torch.Tensor], None], batch: torch.Tensor) -> list[str]:
    """Return the transforms of the observed site, by name, as a trace of the model shows them."""
    fn = observed_distribution(model, batch)
    return [repr(t) for t in fn.transforms]


def evaluate(
    model: Callable[[torch.Tensor], None], test: torch.Tensor, iw_samples: int
) -> tuple[float, float]:
    """Return the test bits per dimension, from one draw per image and importance-weighted."""
    digits = observed_distribution(model, test[:1])
    with torch.no_grad():
        one_draw = importance_weighted_log_likelihood(digits.log_prob, test, num_samples=1)
        weighted = importance_weighted_log_likelihood(
            digits.log_prob, test, num_samples=iw_samples, batch_size=8192
        )
    return float(bits_per_dim(one_draw.mean(), NUM_PIXELS)), float(bits_per_dim(weighted.mean(), NUM_PIXELS))


def log_likelihood_is_finite(model: Callable[[torch.Tensor], None], batch: torch.Tensor) -> bool:
    """Return whether the model gives every image of `batch` a finite log-likelihood bound.

    Pyro's and torch's argument checks are off here, so NaN values yield False instead of a
    ValueError. torch's random state is restored afterwards, so the check does not change
    the noise of later steps.
    """
    with torch.no_grad(), torch.random.fork_rng(devices=[]), pyro.validation_enabled(False):
        return bool(torch.isfinite(observed_distribution(model, batch).log_prob(batch)).all())


def train_and_evaluate(
    args: argparse.Namespace, dequantization: str, train: torch.Tensor, test: torch.Tensor
) -> dict[str, object]:
    """Train one variant with SVI and return its measurements."""
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    transforms = build_transforms(args, dequantization)
    model = make_model(transforms)
    svi = SVI(model, empty_guide, Adam({"lr": args.lr}), Trace_ELBO())

    def diverged(steps: int) -> TrainingDiverged:
        return TrainingDiverged(
            f"training of the {dequantization} model diverged: after {steps} SVI step{'' if steps == 1 else 's'} "
            f"its log-likelihood bound of a training batch is NaN or infinite. Pass a smaller --lr than {args.lr}."
        )

    generator = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    train_bpd = math.nan
    for step in range(1, args.steps + 1):
        batch = train[torch.randint(0, len(train), (args.batch_size,), generator=generator)]
        try:
            loss = svi.step(batch)  # minus the summed log-likelihood bound of the batch, in nats
        except ValueError:
            # Pyro rejects NaN values at the observed site with a ValueError and a long trace.
            # Any other ValueError is a bug and propagates.
            if log_likelihood_is_finite(model, batch):
                raise
            raise diverged(step - 1) from None
        train_bpd = loss / (args.batch_size * NUM_PIXELS * math.log(2))
        if not math.isfinite(train_bpd):
            raise diverged(step - 1)
    train_seconds = time.perf_counter() - start
    # The last step's loss was computed before its update, so check the final parameters too.
    if not log_likelihood_is_finite(model, batch):
        raise diverged(args.steps)

    one_draw_bpd, iw_bpd = evaluate(model, test, args.iw_samples)
    num_parameters = sum(p.numel() for p in pyro.get_param_store().values())
    return {
        "dequantization": dequantization,
        "steps": args.steps,
        "parameters": num_parameters,
        "train_seconds": round(train_seconds, 1),
        "last_batch_train_bpd": round(train_bpd, 4),
        "test_bpd_one_draw": round(one_draw_bpd, 4),
        "test_bpd_iw": round(iw_bpd, 4),
        "iw_samples": args.iw_samples,
        "trace_transforms": describe_trace(model, test[:2]),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)

    train, test = load_data(args.seed)
    variants = ["uniform", "learned"] if args.dequantization == "both" else [args.dequantization]
    try:
        results = [train_and_evaluate(args, variant, train, test) for variant in variants]
    except TrainingDiverged as error:
        print(f"pyro_digits.py: error: {error}", file=sys.stderr)
        return EXIT_DIVERGED

    if args.json:
        print(json.dumps({"test_images": len(test), "results": results}))
        return 0

    print(f"{len(test)} test images, {args.steps} SVI steps of {args.batch_size} images, {args.coupling} coupling")
    header = f"{'dequantization':<16}{'parameters':>12}{'train s':>10}{'bpd 1 draw':>12}{'bpd IW':>10}"
    print(header)
    for result in results:
        print(
            f"{result['dequantization']:<16}{result['parameters']:>12d}{result['train_seconds']:>10.1f}"
            f"{result['test_bpd_one_draw']:>12.4f}{result['test_bpd_iw']:>10.4f}"
        )
    print(f"bpd IW: importance-weighted with {args.iw_samples} draws per image")
    for result in results:
        print(f"transforms of site 'x' in a trace of the {result['dequantization']} model:")
        for name in result["trace_transforms"]:
            print(f"  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
