"""The base class that the flowext transforms share."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.distributions import Transform, constraints

from flowext._checks import check_cache_size, check_event_dim
from flowext.transforms._inverse import InverseTransform

__all__ = ["ElementwiseTransform", "sum_rightmost"]

#: Marks a constructor parameter that has no default, so `__repr__` always shows it.
REQUIRED = object()


def sum_rightmost(value: torch.Tensor, dims: int) -> torch.Tensor:
    """Sum `value` over its `dims` rightmost dimensions (none when `dims` is 0)."""
    if dims == 0:
        return value
    return value.sum(dim=tuple(range(-dims, 0)))


class ElementwiseTransform(Transform):
    """Elementwise map whose log-det is summed over the `event_dim` rightmost dimensions.

    Subclasses implement `_call`, `_inverse` and `_elementwise_ladj`, and may fuse the map with
    its log-det in `_call_with_ladj` and `_inverse_with_ladj` when the two share work. This class
    adds what torch, Pyro and zuko expect of a transform: `call_and_ladj`, `with_cache`,
    equality, `__repr__`, `event_dim`, constraints wrapped for `event_dim`, and pickling that
    keeps the link between a transform and its inverse.

    Args:
        event_dim: Number of rightmost dimensions that form one event. The log-det is summed
            over them, so it has the shape of the input without those dimensions.
        cache_size: 1 to remember the last input and output, so that `t.inv(t(x))` returns
            `x` itself; 0 for no cache.
    """

    #: The cache size of a transform built without one; `__repr__` shows any other.
    default_cache_size = 0

    def __init__(self, event_dim: int = 0, cache_size: int = 0) -> None:
        super().__init__(cache_size=check_cache_size(cache_size))
        self._event_dim = check_event_dim(event_dim)

    # -- What subclasses define -------------------------------------------------------------

    def _params(self) -> list[tuple[str, Any, Any]]:
        """List (name, value, default) for each constructor parameter but the shared ones."""
        raise NotImplementedError

    def _domain_constraint(self) -> constraints.Constraint:
        raise NotImplementedError

    def _codomain_constraint(self) -> constraints.Constraint:
        raise NotImplementedError

    def _elementwise_ladj(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | float:
        """Return log|dy/dx| for each element, or one float when it is the same for all."""
        raise NotImplementedError

    def _inverse_elementwise_ladj(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor | float:
        """Return log|dx/dy| for each element of the inverse map y -> x.

        Subclasses override it to compute from `y`, the input of the inverse: `x` was rounded
        and may lie where the forward formula breaks down.
        """
        return _negate(self._elementwise_ladj(x, y))

    def _call_with_ladj(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | float]:
        y = self._call(x)
        return y, self._elementwise_ladj(x, y)

    def _inverse_with_ladj(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | float]:
        x = self._inverse(y)
        return x, self._inverse_elementwise_ladj(y, x)

    # -- Shape, constraints and the summed log-det ------------------------------------------

    @property
    def event_dim(self) -> int:
        return self._event_dim

    @property
    def domain(self) -> constraints.Constraint:  # type: ignore[override]
        return _independent(self._domain_constraint(), self._event_dim)

    @property
    def codomain(self) -> constraints.Constraint:  # type: ignore[override]
        return _independent(self._codomain_constraint(), self._event_dim)

    def _check_dims(self, value: torch.Tensor) -> None:
        event_dim = self._event_dim
        if event_dim and isinstance(value, torch.Tensor) and value.dim() < event_dim:
            raise ValueError(
                f"{type(self).__name__} with event_dim={event_dim} needs inputs with at least "
                f"{event_dim} dimensions, got shape {tuple(value.shape)}"
            )

    def _check_input(self, value: object) -> None:
        """Check that a call receives a real tensor with enough dimensions."""
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{type(self).__name__} expects a torch.Tensor, got {type(value).__name__}")
        if value.is_complex():
            raise ValueError(f"{type(self).__name__} expects real data, got dtype {value.dtype}")
        self._check_dims(value)

    def _sum_event(self, ladj: torch.Tensor | float, reference: torch.Tensor) -> torch.Tensor:
        """Sum an elementwise log-det over the event dimensions of `reference`."""
        event_dim = self._event_dim
        self._check_dims(reference)

        if isinstance(ladj, torch.Tensor):
            return sum_rightmost(ladj, event_dim)

        # A constant log-det: one value per event, without materializing the elements.
        batch_shape = reference.shape[: reference.dim() - event_dim]
        event_size = math.prod(reference.shape[reference.dim() - event_dim :])
        dtype = reference.dtype if reference.dtype.is_floating_point else None
        return torch.full(
            batch_shape, ladj * event_size, dtype=dtype or torch.get_default_dtype(),
            device=reference.device,
        )

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        self._check_input(y)
        return self._sum_event(self._elementwise_ladj(x, y), y)

    def _inverse_log_abs_det_jacobian(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        self._check_input(y)
        self._check_input(x)
        return self._sum_event(self._inverse_elementwise_ladj(y, x), x)

    # -- Calls, sharing one cache -------------------------------------------------------------

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return super().__call__(x)

    def _inv_call(self, y: torch.Tensor) -> torch.Tensor:
        self._check_input(y)
        return super()._inv_call(y)

    def call_and_ladj(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return `t(x)` and the log-det of the map at `x`, in one pass.

        zuko's `NormalizingFlow` and flowext's nflows adapter call this method. It uses and
        fills the same cache as `__call__`.
        """
        self._check_input(x)
        if self._cache_size == 1:
            x_old, y_old = self._cached_x_y
            if x is x_old:
                return y_old, self.log_abs_det_jacobian(x, y_old)

        y, ladj = self._call_with_ladj(x)
        if self._cache_size == 1:
            self._cached_x_y = x, y
        return y, self._sum_event(ladj, y)

    def _inverse_call_and_ladj(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_input(y)
        if self._cache_size == 1:
            x_old, y_old = self._cached_x_y
            if y is y_old:
                return x_old, self._inverse_log_abs_det_jacobian(y, x_old)

        x, ladj = self._inverse_with_ladj(y)
        if self._cache_size == 1:
            self._cached_x_y = x, y
        return x, self._sum_event(ladj, x)

    # -- Inverse, cache, equality, printing, pickling ----------------------------------------

    @property
    def inv(self) -> Transform:
        inverse = self._inv
        if inverse is None:
            inverse = InverseTransform(self)
            self._inv = inverse
        return inverse

    def _init_kwargs(self) -> dict[str, Any]:
        kwargs = {name: value for name, value, _ in self._params()}
        kwargs["event_dim"] = self._event_dim
        return kwargs

    def with_cache(self, cache_size: int = 1) -> Transform:
        """Return this transform with the cache size `cache_size` (0 or 1)."""
        cache_size = check_cache_size(cache_size)
        if cache_size == self._cache_size:
            return self
        return type(self)(**self._init_kwargs(), cache_size=cache_size)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return False
        mine, theirs = self._init_kwargs(), other._init_kwargs()  # type: ignore[attr-defined]
        return all(_same_value(mine[name], theirs[name]) for name in mine)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        shown = [
            f"{name}={value!r}"
            for name, value, default in self._params()
            if default is REQUIRED or not _same_value(value, default)
        ]
        if self._event_dim:
            shown.append(f"event_dim={self._event_dim}")
        if self._cache_size != self.default_cache_size:
            shown.append(f"cache_size={self._cache_size}")
        return f"{type(self).__name__}({', '.join(shown)})"

    def __getstate__(self) -> dict[str, Any]:
        # Keep the link to the inverse, so that `t.inv.inv is t` holds after unpickling, and
        # drop cached tensors, which belong to one computation.
        state = self.__dict__.copy()
        if self._cache_size == 1:
            state["_cached_x_y"] = (None, None)
        return state


def _negate(ladj: torch.Tensor | float) -> torch.Tensor | float:
    return -ladj


def _independent(constraint: constraints.Constraint, event_dim: int) -> constraints.Constraint:
    if event_dim == 0:
        return constraint
    return constraints.independent(constraint, event_dim)


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return False
        if a.shape != b.shape or a.dtype != b.dtype or a.device != b.device:
            return False
        if a.is_meta:
            # Meta tensors hold no values to compare.
            return a is b
        return bool(torch.equal(a, b))
    if isinstance(a, torch.Generator) or isinstance(b, torch.Generator):
        return a is b
    return bool(a == b)
