"""The inverse of a flowext transform, as returned by `transform.inv`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch.distributions import Transform, constraints

if TYPE_CHECKING:
    from flowext.transforms._base import ElementwiseTransform

__all__ = ["InverseTransform"]


class InverseTransform(Transform):
    """Inverse of an `ElementwiseTransform`; its forward map is the base transform's inverse.

    Unlike torch's private inverse class, it survives `pickle` and `copy.deepcopy` without Pyro
    installed (torch drops the link to the base transform when pickling), and it offers
    `call_and_ladj`, the one-pass call that zuko's `NormalizingFlow` uses for sampling.

    Args:
        base: The transform to invert.
    """

    def __init__(self, base: ElementwiseTransform) -> None:
        # The cache belongs to the base transform: torch transforms share one cache in both
        # directions, so `t.inv(t(x))` returns the cached `x`.
        super().__init__(cache_size=base._cache_size)
        self._inv: ElementwiseTransform = base

    def __getstate__(self) -> dict[str, Any]:
        # Keep the link to the base transform, which torch's Transform.__getstate__ drops.
        return self.__dict__.copy()

    @property
    def base(self) -> ElementwiseTransform:
        """The transform this object inverts."""
        return self._inv

    @property
    def inv(self) -> ElementwiseTransform:  # type: ignore[override]
        return self._inv

    @property
    def domain(self) -> constraints.Constraint:  # type: ignore[override]
        return self._inv.codomain

    @property
    def codomain(self) -> constraints.Constraint:  # type: ignore[override]
        return self._inv.domain

    @property
    def bijective(self) -> bool:  # type: ignore[override]
        return self._inv.bijective

    @property
    def sign(self) -> int | torch.Tensor:  # type: ignore[override]
        return self._inv.sign

    @property
    def event_dim(self) -> int:
        return self._inv.event_dim

    def with_cache(self, cache_size: int = 1) -> Transform:
        return self._inv.with_cache(cache_size).inv

    def __eq__(self, other: object) -> bool:
        return isinstance(other, InverseTransform) and self._inv == other._inv

    def __repr__(self) -> str:
        return f"{self._inv!r}.inv"

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        return self._inv._inv_call(y)

    def log_abs_det_jacobian(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # Computed from y, the input of this direction, rather than as minus the forward
        # log-det at x: for Logit, x may lie outside [0, 1] when y is outside [-L, L].
        return self._inv._inverse_log_abs_det_jacobian(y, x)

    def call_and_ladj(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the inverse of `y` and the log-det of the inverse map, in one pass."""
        return self._inv._inverse_call_and_ladj(y)

    def forward_shape(self, shape: torch.Size) -> torch.Size:
        return self._inv.inverse_shape(shape)

    def inverse_shape(self, shape: torch.Size) -> torch.Size:
        return self._inv.forward_shape(shape)
