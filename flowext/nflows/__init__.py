"""nflows integration: an adapter for torch transforms, uniform and variational dequantizers.

Importing this module needs nflows (`pip install flowext[nflows]`).
"""

from flowext.nflows.adapter import TransformAdapter, UniformDequantizer
from flowext.nflows.base import StandardNormal
from flowext.nflows.variational import VariationalDequantizer, conditional_noise_flow

__all__ = [
    "StandardNormal",
    "TransformAdapter",
    "UniformDequantizer",
    "VariationalDequantizer",
    "conditional_noise_flow",
]
