"""Test bits per dimension with one noise draw and with M importance-weighted draws, and timing.

Each rank evaluates every world_size-th image of the set, and the sums are added over the
ranks, so a run under torchrun reports the same numbers as one process (up to the noise).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from nflows.flows.base import Flow

from flowext import bits_per_dim, importance_weighted_log_likelihood
from flowtrain.distributed import DistributedContext, all_reduce_sum

__all__ = ["Evaluation", "evaluate_bpd", "evaluate_iw_bpd", "time_sampling"]


@dataclass(frozen=True)
class Evaluation:
    """Bits per dimension over a set of images and the time per call of `flow.log_prob`."""

    bpd: float
    seconds_per_batch: float
    num_batches: int


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _reduce(log_likelihood_sum: float, count: int, seconds: float, calls: int, num_dims: int, context: DistributedContext) -> Evaluation:
    sums = torch.tensor([log_likelihood_sum, float(count), seconds, float(calls)], dtype=torch.float64)
    sums = all_reduce_sum(sums, context)
    mean_log_likelihood = float(sums[0] / sums[1])
    calls_total = max(1.0, float(sums[3]))
    return Evaluation(
        bpd=float(bits_per_dim(mean_log_likelihood, num_dims)),
        seconds_per_batch=float(sums[2]) / calls_total,
        num_batches=int(sums[3]),
    )


@torch.no_grad()
def evaluate_bpd(
    flow: Flow, images: torch.Tensor, *, batch_size: int, context: DistributedContext
) -> Evaluation:
    """Return the bits per dimension of the one-draw bound, averaged over `images`.

    Each image gets one dequantization draw u, so the result is an unbiased estimate of the
    bound E_q[log p(x + u) - log q(u | x)], which is above the model's true bits per dimension.
    """
    flow.eval()
    shard = images[context.rank :: context.world_size]
    num_dims = int(images[0].numel())
    total, calls, seconds = 0.0, 0, 0.0
    for batch in shard.split(batch_size):
        _synchronize(batch.device)
        start = time.perf_counter()
        log_likelihood = flow.log_prob(batch)
        total += float(log_likelihood.detach().cpu().double().sum())
        seconds += time.perf_counter() - start
        calls += 1
    return _reduce(total, len(shard), seconds, calls, num_dims, context)


@torch.no_grad()
def evaluate_iw_bpd(
    flow: Flow,
    images: torch.Tensor,
    *,
    num_samples: int,
    batch_size: int,
    context: DistributedContext,
) -> Evaluation:
    """Return the bits per dimension of the importance-weighted bound with M = `num_samples`.

    flowext's `importance_weighted_log_likelihood` combines M draws per image with a
    log-mean-exp. No call of `flow.log_prob` receives more than `batch_size` images, counting
    each repeated draw of an image as one image.
    """
    flow.eval()
    shard = images[context.rank :: context.world_size]
    num_dims = int(images[0].numel())
    calls = 0

    def log_prob(batch: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        return flow.log_prob(batch)

    total, seconds = 0.0, 0.0
    for chunk in shard.split(batch_size):
        _synchronize(chunk.device)
        start = time.perf_counter()
        estimate = importance_weighted_log_likelihood(log_prob, chunk, num_samples, batch_size=batch_size)
        total += float(estimate.detach().cpu().double().sum())
        seconds += time.perf_counter() - start
    return _reduce(total, len(shard), seconds, calls, num_dims, context)


@torch.no_grad()
def time_sampling(flow: Flow, num_images: int, *, repeats: int = 3) -> tuple[torch.Tensor, float]:
    """Draw `num_images` images `repeats` times; return the last draw and the mean seconds per draw.

    The images are integers (as floats) in {0, ..., K - 1}: the flow's last inverse step is the
    dequantizer's, which quantizes.
    """
    flow.eval()
    device = next(flow.parameters()).device
    samples = flow.sample(num_images)  # warm-up, not timed
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        samples = flow.sample(num_images)
    _synchronize(device)
    return samples, (time.perf_counter() - start) / repeats
