"""Helpers shared by the tests: autograd Jacobians of elementwise maps."""

from __future__ import annotations

import torch


def elementwise_jacobian(fn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the diagonal of the Jacobian of `fn` at `x` and the largest off-diagonal entry.

    `fn` maps a tensor to a tensor of the same shape; the Jacobian is taken of the flattened map.
    """
    flat = x.detach().reshape(-1)

    def flat_fn(v: torch.Tensor) -> torch.Tensor:
        return fn(v.reshape(x.shape)).reshape(-1)

    jac = torch.autograd.functional.jacobian(flat_fn, flat)
    diagonal = torch.diagonal(jac)
    off_diagonal = jac - torch.diag_embed(diagonal)
    return diagonal.reshape(x.shape), off_diagonal.abs().max()
