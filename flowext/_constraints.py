"""Constraints that torch.distributions.constraints does not provide."""

from __future__ import annotations

import torch
from torch.distributions import constraints

__all__ = ["OpenInterval"]


class OpenInterval(constraints.Constraint):
    """The open interval (lower, upper), without its end points."""

    def __init__(self, lower_bound: float, upper_bound: float) -> None:
        self.lower_bound = lower_bound
        self.upper_bound = upper_bound
        super().__init__()

    def check(self, value: torch.Tensor) -> torch.Tensor:
        return (self.lower_bound < value) & (value < self.upper_bound)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(lower_bound={self.lower_bound}, "
            f"upper_bound={self.upper_bound})"
        )
