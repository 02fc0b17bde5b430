"""Composition of transforms, and the standard dequantization pipeline."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.distributions import ComposeTransform, Transform

from flowext._checks import check_alpha, check_cache_size, check_num_bins
from flowext.transforms._base import sum_rightmost
from flowext.transforms.dequantize import Dequantize
from flowext.transforms.logit import Logit
from flowext.transforms.scale import Scale

__all__ = ["Compose", "call_and_ladj", "dequantization_pipeline"]


def call_and_ladj(transform: Transform, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return `transform(x)` and its log-det, in one pass where the transform offers one."""
    method = getattr(transform, "call_and_ladj", None)
    if method is not None:
        return method(x)
    y = transform(x)
    return y, transform.log_abs_det_jacobian(x, y)


class Compose(ComposeTransform):
    r"""Transform via the chain $f = f_n \circ \dots \circ f_1$, with the log-dets added up.

    - forward: $y = f_n(\dots f_1(x))$
    - inverse: $x = f_1^{-1}(\dots f_n^{-1}(y))$
    - forward log-det: $\sum_i \log |\det J_{f_i}|$ at the intermediate values
    - inverse log-det: minus the forward log-det

    It differs from torch's `ComposeTransform` in three ways that matter for a stochastic first
    step such as `Dequantize`:

    - `call_and_ladj(x)` computes the output and the log-det in one pass.
    - `log_abs_det_jacobian(x, y)` recovers the intermediate values by inverting the bijective
      parts from `y` backwards, instead of calling the parts on `x` again, which would draw new
      noise and pair the log-det with values other than those that produced `y`.
    - `inv` is a `Compose` too, and pickling keeps the link between the two.

    Args:
        parts: The transforms $f_1, \dots, f_n$, in the order they apply.
        cache_size: 1 to give every part a cache of size 1, 0 to leave the parts as they are.

    Examples:
        >>> t = Compose([Scale(2.0), Logit(alpha=0.0)])
        >>> x = torch.tensor([0.25])
        >>> y, ladj = t.call_and_ladj(x)
        >>> y, ladj
        (tensor([0.]), tensor([2.0794]))
    """

    def __init__(self, parts: Sequence[Transform], cache_size: int = 0) -> None:
        if isinstance(parts, Transform) or not hasattr(parts, "__iter__"):
            raise ValueError(
                f"parts must be a sequence of transforms, got {type(parts).__name__}; wrap a "
                f"single transform in a list"
            )
        parts = list(parts)
        if not parts:
            raise ValueError("parts must hold at least one transform, got an empty sequence")
        for index, part in enumerate(parts):
            if not isinstance(part, Transform):
                raise ValueError(
                    f"parts must hold torch.distributions.Transform objects, got "
                    f"{type(part).__name__} at index {index}"
                )
        super().__init__(parts, cache_size=check_cache_size(cache_size))

    def _log_det_sum_dims(self) -> list[int]:
        """Return how many rightmost dims of each part's log-det belong to the chain's event.

        They are computed on first use and kept, because torch rebuilds the constraints
        behind `event_dim` on every access. A Compose unpickled from an older flowext has no
        stored value and computes it here.
        """
        dims = self.__dict__.get("_sum_dims")
        if dims is None:
            event_dim = self.domain.event_dim
            dims = []
            for part in self.parts:
                dims.append(event_dim - part.domain.event_dim)
                event_dim += part.codomain.event_dim - part.domain.event_dim
            self._sum_dims = dims
        return dims

    @property
    def inv(self) -> Compose:  # type: ignore[override]
        inverse = self._inv
        if inverse is None:
            inverse = Compose([part.inv for part in reversed(self.parts)])
            inverse._inv = self
            self._inv = inverse
        return inverse  # type: ignore[return-value]

    def with_cache(self, cache_size: int = 1) -> Compose:
        if self._cache_size == check_cache_size(cache_size):
            return self
        return Compose(self.parts, cache_size=cache_size)

    def __getstate__(self) -> dict[str, Any]:
        # Keep the link to the inverse, which torch's Transform.__getstate__ drops.
        state = self.__dict__.copy()
        if self._cache_size == 1:
            state["_cached_x_y"] = (None, None)
        return state

    def __repr__(self) -> str:
        return f"Compose([{', '.join(repr(part) for part in self.parts)}])"

    def call_and_ladj(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the output and the summed log-det, calling each part once."""
        total: torch.Tensor | int = 0
        for part, sum_dims in zip(self.parts, self._log_det_sum_dims()):
            x, ladj = call_and_ladj(part, x)
            total = total + sum_rightmost(ladj, sum_dims)
        return x, total  # type: ignore[return-value]

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        parts = self.parts
        values: list[torch.Tensor | None] = [None] * (len(parts) + 1)
        values[0], values[-1] = x, y

        # Walk back from y through the bijective tail. Parts with a cache return the very
        # tensors that the forward call produced.
        first_unknown = len(parts) - 1
        while first_unknown > 0 and parts[first_unknown].bijective:
            values[first_unknown] = parts[first_unknown].inv(values[first_unknown + 1])
            first_unknown -= 1

        # What remains in front of a non-bijective part is recomputed from x, as torch does.
        for index in range(first_unknown):
            values[index + 1] = parts[index](values[index])

        total: torch.Tensor | int = 0
        for index, (part, sum_dims) in enumerate(zip(parts, self._log_det_sum_dims())):
            ladj = part.log_abs_det_jacobian(values[index], values[index + 1])
            total = total + sum_rightmost(ladj, sum_dims)
        return total  # type: ignore[return-value]


def dequantization_pipeline(
    num_bins: int,
    alpha: float = 0.05,
    *,
    event_dim: int = 0,
    dtype: torch.dtype | None = None,
    generator: torch.Generator | None = None,
    validate_args: bool = True,
) -> Compose:
    r"""Build `Compose([Dequantize(K), Scale(1 / K), Logit(alpha)])`, data to logit space.

    The log-det of the chain is
    $\log(1 - 2m) - \log K + \log(1 - \alpha) - \log s - \log(1 - s)$ per element, with $m$ the
    noise margin of `Dequantize` (built with `logit_alpha=alpha` where $\alpha > 1/2$, which
    widens it) and $s$ the squashed value of `Logit`. In a Pyro
    `TransformedDistribution`, pass `dequantization_pipeline(K).inv` as the last transform.

    Args:
        num_bins: The number of levels $K$.
        alpha: The squashing constant of `Logit`, in $[0, 1)$.
        event_dim: Number of rightmost dimensions that form one event, for every part.
        dtype: Output dtype of `Dequantize`.
        generator: Random number generator of `Dequantize`.
        validate_args: Whether `Dequantize` checks that its input holds valid integers.

    Examples:
        >>> t = dequantization_pipeline(num_bins=17, alpha=0.05)
        >>> x = torch.tensor([[0, 8, 16]])
        >>> y, ladj = t.call_and_ladj(x)
        >>> y.shape, ladj.shape
        (torch.Size([1, 3]), torch.Size([1, 3]))
        >>> t.inv(y)
        tensor([[ 0.,  8., 16.]])
    """
    num_bins = check_num_bins(num_bins)
    alpha = check_alpha(alpha)
    return Compose(
        [
            Dequantize(
                num_bins,
                event_dim=event_dim,
                dtype=dtype,
                generator=generator,
                validate_args=validate_args,
                # Only an alpha above 1/2 widens the margin, so below it Dequantize(K) stays plain.
                logit_alpha=alpha if alpha > 0.5 else 0.0,
            ),
            Scale(1.0 / num_bins, event_dim=event_dim),
            Logit(alpha, event_dim=event_dim),
        ]
    )
