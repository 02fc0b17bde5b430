"""Uniform and variational dequantization in front of the same nflows transforms."""

from __future__ import annotations

from nflows.transforms.base import CompositeTransform
from nflows.transforms.base import Transform as NflowsTransform

from flowext import Logit, Scale
from flowext.nflows import TransformAdapter, UniformDequantizer, VariationalDequantizer

__all__ = ["UNIFORM", "VARIATIONAL", "with_each_dequantizer"]

UNIFORM = "UniformDequantizer"
VARIATIONAL = "VariationalDequantizer.with_coupling_flow"


def scale_and_logit(num_bins: int, alpha: float, event_dim: int) -> list[NflowsTransform]:
    """Return flowext's Scale(1/K) and Logit(alpha) as nflows transforms, without caches."""
    return [
        TransformAdapter(Scale(1.0 / num_bins, event_dim=event_dim, cache_size=0)),
        TransformAdapter(Logit(alpha, event_dim=event_dim, cache_size=0)),
    ]


def with_each_dequantizer(
    num_bins: int, example_shape: tuple[int, ...], rest: list[NflowsTransform]
) -> dict[str, CompositeTransform]:
    """Put each dequantizer in front of the same transforms `rest`.

    Both dequantizers skip the data check (`validate_args=False`), so that the comparison is
    about the noise alone. The variational one has its default networks: an MLP context
    network and 4 affine coupling layers of width 64.
    """
    uniform = UniformDequantizer(num_bins, validate_args=False)
    variational = VariationalDequantizer.with_coupling_flow(
        num_bins, example_shape, validate_args=False
    )
    return {
        UNIFORM: CompositeTransform([uniform, *rest]),
        VARIATIONAL: CompositeTransform([variational, *rest]),
    }
