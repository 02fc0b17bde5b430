"""One optimization step and one training epoch, for one process or under DDP."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from flowtrain.distributed import DistributedContext, all_reduce_sum

__all__ = ["derive_seed", "epoch_sampler", "train_epoch", "train_step"]

_STAGES = {"init": 0, "train": 1, "evaluate": 2, "test": 3}


def derive_seed(seed: int, stage: str, epoch: int = 0, rank: int = 0) -> int:
    """Return a seed for one stage, epoch and rank, derived from the run's seed.

    Each epoch reseeds torch's global generator, which draws the dequantization noise, so a
    run resumed from a checkpoint draws the same noise as an uninterrupted run. Ranks get
    different seeds, so that they draw different noise.
    """
    sequence = np.random.SeedSequence([seed, _STAGES[stage], epoch, rank])
    return int(sequence.generate_state(1, dtype=np.uint64)[0] >> 1)


def epoch_sampler(num_examples: int, context: DistributedContext, seed: int) -> DistributedSampler:
    """Return a sampler that shuffles the training set each epoch and gives each rank its shard.

    With several processes, the shards have equal sizes (the sampler repeats a few examples
    to fill them), so every rank takes the same number of steps.
    """
    return DistributedSampler(
        range(num_examples),
        num_replicas=context.world_size,
        rank=context.rank,
        shuffle=True,
        seed=seed,
    )


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    *,
    num_dims: int,
    max_grad_norm: float,
) -> float:
    """Take one Adam step on the mean negative bound of a batch, in bits per dimension.

    Args:
        model: A module whose forward pass returns log p(x + u) - log q(u | x) per image
            (`LogLikelihood`, or DistributedDataParallel around it).
        optimizer: The optimizer of the model's parameters.
        images: Integer images as a float tensor (N, C, H, W) on the model's device.
        num_dims: Dimensions D of one image.
        max_grad_norm: Largest gradient norm; larger gradients are scaled down to it.

    Returns:
        The batch's loss before the step, in bits per dimension.
    """
    model.train()
    log_likelihood = model(images)
    loss = -log_likelihood.mean() / (num_dims * math.log(2.0))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return float(loss.detach())


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    sampler: DistributedSampler,
    *,
    epoch: int,
    batch_size: int,
    num_dims: int,
    max_grad_norm: float,
    max_steps: int | None,
    seed: int,
    context: DistributedContext,
    progress: bool,
) -> float:
    """Train for one pass over this rank's shard, or `max_steps` steps, and return the mean loss.

    The returned mean training loss, in bits per dimension, is averaged over all ranks. Rank 0
    shows a tqdm progress bar with the running mean when `progress` is true.

    Raises:
        FloatingPointError: If a loss is NaN or infinite.
    """
    sampler.set_epoch(epoch)
    torch.manual_seed(derive_seed(seed, "train", epoch, context.rank))
    indices = torch.tensor(list(sampler), dtype=torch.int64)
    batches = list(indices.split(batch_size))
    if max_steps is not None:
        batches = batches[:max_steps]

    bar = tqdm(
        total=len(batches),
        desc=f"epoch {epoch + 1}",
        unit="step",
        disable=not (progress and context.is_main),
        leave=False,
        dynamic_ncols=True,
    )
    total = 0.0
    with bar:
        for step, batch_indices in enumerate(batches, start=1):
            loss = train_step(
                model,
                optimizer,
                images[batch_indices.to(images.device)],
                num_dims=num_dims,
                max_grad_norm=max_grad_norm,
            )
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"the training loss became {loss} at step {step} of epoch {epoch + 1}; "
                    f"lower --lr or --max-grad-norm"
                )
            total += loss
            bar.update(1)
            bar.set_postfix(bpd=f"{total / step:.4f}", refresh=False)

    sums = torch.tensor([total, float(len(batches))], dtype=torch.float64)
    sums = all_reduce_sum(sums, context)
    return float(sums[0] / sums[1])
