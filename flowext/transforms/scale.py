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
            with the input. A tensor factor is converted to the input's device and dtype at
            each call, so a learnable factor keeps its gradient and its current value. Its range
            is checked at each call, which synchronizes with an accelerator. Integer inputs are scaled in torch's default dtype, so that the product
            cannot overflow. A factor that is 0 or infinite in the input's dtype (1e-50 in
            float32, say) raises `ValueError` at the call.
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
    default_cache_size = 1

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
        """Return the factor in the device and dtype of the floating tensor `x`.

        Raises:
            ValueError: If the factor becomes zero or infinite in that dtype.
        """
        factor = self.factor
        info = torch.finfo(x.dtype)
        if not isinstance(factor, torch.Tensor):
            if not info.tiny <= abs(factor) <= info.max:
                raise ValueError(
                    f"factor={factor!r} is outside the normal range of {x.dtype} "
                    f"[{info.tiny:g}, {info.max:g}], where it would become 0 or inf; use data "
                    f"of a wider dtype such as torch.float64"
                )
            return factor

        # Converted and checked on every call, because autograd must record the conversion of a
        # learnable factor and the factor may have changed in place since the last call.
        converted = factor.to(device=x.device, dtype=x.dtype)
        if converted.is_meta:
            return converted
        magnitude = converted.abs()
        if bool(((magnitude < info.tiny) | (magnitude > info.max)).any()):
            own = factor.detach()
            invalid = ~torch.isfinite(own) | (own == 0)
            if bool(invalid.any()):
                first = own[invalid].flatten()[0].item()
                raise ValueError(
                    f"factor must contain nonzero finite values, but it was changed in place and now "
                    f"contains {first!r}. Set a nonzero finite factor."
                )
            raise ValueError(
                f"factor contains values outside the normal range of {x.dtype} "
                f"[{info.tiny:g}, {info.max:g}], where they would become 0 or inf; use "
                f"data of a wider dtype such as torch.float64"
            )
        return converted

    @staticmethod
    def _as_floating(x: torch.Tensor) -> torch.Tensor:
        # Integer data are scaled in floating point, so that no product overflows or rounds.
        if x.is_floating_point():
            return x
        return x.to(torch.get_default_dtype())

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        x = self._as_floating(x)
        return x * self._factor_like(x)

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        # Divide rather than multiply by 1 / c: when c is a rounded 1 / K, y / c undoes the
        # forward product more closely than y * K does.
        y = self._as_floating(y)
        return y / self._factor_like(y)

    def _elementwise_ladj(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | float:
        factor = self._factor_like(self._as_floating(y))
        if not isinstance(factor, torch.Tensor):
            return math.log(abs(factor))
        return factor.abs().log().expand(y.shape)
