"""Multiplication by a constant factor."""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch.distributions import constraints

from flowext.transforms._base import REQUIRED, ElementwiseTransform

__all__ = ["Scale"]


def _check_factor(factor: object) -> float | torch.Tensor:
    rule = "a finite, nonzero real number or a tensor of them"
    if isinstance(factor, torch.Tensor):
        if factor.is_complex() or factor.dtype == torch.bool:
            raise ValueError(f"factor must be {rule}, got a tensor of dtype {factor.dtype}")
        if not factor.is_meta:
            invalid = ~torch.isfinite(factor) | (factor == 0)
            if bool(invalid.any()):
                first = factor[invalid].flatten()[0].item()
                raise ValueError(f"factor must be {rule}, got a tensor containing {first!r}")
        return factor

    if isinstance(factor, bool) or not isinstance(factor, numbers.Real):
        raise ValueError(f"factor must be {rule}, got {factor!r}")
    if not math.isfinite(factor) or factor == 0:
        raise ValueError(f"factor must be {rule}, got {factor!r}")
    return factor


class Scale(ElementwiseTransform):
    r"""Transform via the map $y = c\,x$ with a constant, nonzero factor $c$.

    - forward: $y = c\,x$
    - inverse: $x = y / c$
    - forward log-det: $\log |\partial y / \partial x| = \log |c|$ per element
    - inverse log-det: $-\log |c|$ per element

    `Scale(1 / K)` maps dequantized data in $[0, K)$ to $[0, 1)$ and contributes $-\log K$ per
    dimension, the change of units from bins to the unit interval.

    Args:
        factor: The factor $c$: a nonzero finite number, or a tensor of them that broadcasts
            with the input. A tensor factor is moved to the input's device (and, for floating
            inputs, its dtype) at each call.
        event_dim: Number of rightmost dimensions that form one event.
        cache_size: 1 (the default) to remember the last input and output, 0 for no cache.

    Raises:
        ValueError: If `factor` is zero, NaN or infinite.

    Examples:
        >>> t = Scale(1 / 256)
        >>> x = torch.tensor([0.0, 128.0, 255.5])
        >>> t(x)
        tensor([0.0000, 0.5000, 0.9980])
        >>> t.log_abs_det_jacobian(x, t(x))
        tensor([-5.5452, -5.5452, -5.5452])
    """

    bijective = True

    def __init__(
        self, factor: float | torch.Tensor, *, event_dim: int = 0, cache_size: int = 1
    ) -> None:
        super().__init__(event_dim=event_dim, cache_size=cache_size)
        self.factor = _check_factor(factor)

    def _params(self) -> list[tuple[str, Any, Any]]:
        return [("factor", self.factor, REQUIRED)]

    def _domain_constraint(self) -> constraints.Constraint:
        return constraints.real

    def _codomain_constraint(self) -> constraints.Constraint:
        return constraints.real

    @property
    def sign(self) -> int | torch.Tensor:  # type: ignore[override]
        if isinstance(self.factor, torch.Tensor):
            return self.factor.sign()
        return 1 if self.factor > 0 else -1

    def _factor_like(self, x: torch.Tensor) -> float | torch.Tensor:
        factor = self.factor
        if not isinstance(factor, torch.Tensor):
            return factor
        if x.is_floating_point():
            return factor.to(device=x.device, dtype=x.dtype)
        return factor.to(device=x.device)

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        return x * self._factor_like(x)

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        # Divide rather than multiply by 1 / c: when c is a rounded 1 / K, y / c undoes the
        # forward product more closely than y * K does.
        return y / self._factor_like(y)

    def _elementwise_ladj(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | float:
        factor = self._factor_like(y)
        if not isinstance(factor, torch.Tensor):
            return math.log(abs(factor))

        ladj = factor.abs().log()
        if y.is_floating_point():
            ladj = ladj.to(y.dtype)
        return ladj.expand(y.shape)
