"""Helpers shared by the tests: autograd Jacobians and checks of the docs pages' text."""

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


def assert_quoted(text: str, snippet: str) -> None:
    """Assert that `snippet` appears in `text`, where any run of whitespace matches any other."""
    assert " ".join(snippet.split()) in " ".join(text.split()), f"the page does not show {snippet!r}"


def table_rows(text: str, first_cell: str) -> list[list[str]]:
    """Return the cells of every Markdown table row whose first cell is `first_cell`."""
    rows = []
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_cell:
            rows.append(cells)
    assert rows, f"no table row starting with {first_cell!r}"
    return rows
