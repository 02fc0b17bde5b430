"""Bits per dimension and the importance-weighted likelihood bound."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from flowext._checks import check_positive_int

__all__ = ["bits_per_dim", "importance_weighted_log_likelihood"]


def bits_per_dim(log_likelihood: torch.Tensor | float, num_dims: int) -> torch.Tensor | float:
    r"""Convert a log-likelihood in nats to bits per dimension: $-\log P(x) / (D \ln 2)$.

    The log-likelihood is that of the integer data, so it includes every log-det of the chain,
    `Scale(1 / K)`'s $-D \log K$ among them. A model uniform over the $K^D$ values gives
    $\log_2 K$.

    Args:
        log_likelihood: $\log P(x)$ in nats, a number or a tensor of them (one per example).
        num_dims: The number of dimensions $D$ of one example, e.g. 3 * 32 * 32.

    Returns:
        Bits per dimension, of the same type and shape as `log_likelihood`.

    Raises:
        ValueError: If `num_dims` is not an integer >= 1.

    Examples:
        >>> bits_per_dim(-3072 * math.log(256), 3072)
        8.0
    """
    num_dims = check_positive_int(num_dims, "num_dims")
    return -log_likelihood / (num_dims * math.log(2.0))


def importance_weighted_log_likelihood(
    log_prob: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    num_samples: int,
    *,
    batch_size: int | None = None,
) -> torch.Tensor:
    r"""Estimate $\log P(x)$ with $M$ dequantization draws per example.

    With `log_prob(x)` returning one sample $\log p(x + u) - \log q(u \mid x)$ of the
    dequantization bound per example, each call drawing fresh noise, the estimate is

    $$\log \frac{1}{M} \sum_{m=1}^{M} \frac{p(x + u_m)}{q(u_m \mid x)},
    \quad u_m \sim q(u \mid x),$$

    computed with `logsumexp`. It is a lower bound on $\log P(x)$ in expectation that grows
    with $M$ and reaches $\log P(x)$ as $M \to \infty$; $M = 1$ is the usual one-draw bound.

    The draws are evaluated in chunks: each call to `log_prob` receives at most `batch_size`
    examples, that is `x` repeated `batch_size // len(x)` times (at least once), so memory
    stays bounded whatever $M$ is. Wrap the call in `torch.no_grad()` when no gradient is
    needed.

    Args:
        log_prob: Function from a batch of integer data to one bound sample per example, such as
            an nflows `Flow.log_prob` whose first transform is a dequantizer, or the `log_prob`
            of a torch or Pyro distribution summed over the event dimensions.
        x: A batch of integer data, with the batch dimension first.
        num_samples: The number of draws $M$ per example.
        batch_size: The largest batch passed to `log_prob`; by default `len(x)`, one draw per
            call.

    Returns:
        The estimate for each example, shape [batch].

    Raises:
        ValueError: If `num_samples` or `batch_size` is not an integer >= 1, or if `log_prob`
            returns a shape other than [number of examples it received].

    Examples:
        >>> from torch.distributions import Normal
        >>> from flowext import dequantization_pipeline
        >>> pipeline = dequantization_pipeline(17, event_dim=1)
        >>> def log_prob(batch):
        ...     z, log_det = pipeline.call_and_ladj(batch)
        ...     return Normal(0.0, 1.0).log_prob(z).sum(-1) + log_det
        >>> x = torch.randint(0, 17, (3, 4))
        >>> importance_weighted_log_likelihood(log_prob, x, num_samples=100).shape
        torch.Size([3])
    """
    num_samples = check_positive_int(num_samples, "num_samples")
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"x must hold at least one example along dimension 0, got shape {tuple(x.shape)}")
    num_examples = x.shape[0]
    batch_size = num_examples if batch_size is None else check_positive_int(batch_size, "batch_size")
    draws_per_call = max(1, batch_size // num_examples)

    total: torch.Tensor | None = None
    remaining = num_samples
    while remaining > 0:
        draws = min(draws_per_call, remaining)
        repeated = x.unsqueeze(0).expand(draws, *x.shape).reshape(draws * num_examples, *x.shape[1:])

        values = log_prob(repeated)
        if not isinstance(values, torch.Tensor) or values.shape != (draws * num_examples,):
            shape = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
            raise ValueError(
                f"log_prob must return one value per example, shape ({draws * num_examples},) "
                f"for a batch of {draws * num_examples}, got {shape}; sum it over the event "
                f"dimensions"
            )

        chunk = torch.logsumexp(values.reshape(draws, num_examples), dim=0)
        total = chunk if total is None else torch.logaddexp(total, chunk)
        remaining -= draws

    return total - math.log(num_samples)  # type: ignore[operator]
