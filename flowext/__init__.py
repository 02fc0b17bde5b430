"""Layers for normalizing flows on discrete data, with exact log-determinants.

The transforms are `torch.distributions.Transform` subclasses that map data to latent space in
their forward direction, like nflows and zuko. In a Pyro or torch `TransformedDistribution`, pass
their inverses (`Logit(alpha).inv`). The nflows integration lives in `flowext.nflows`.
"""

from flowext.metrics import bits_per_dim, importance_weighted_log_likelihood
from flowext.transforms import (
    Compose,
    Dequantize,
    ElementwiseTransform,
    InverseTransform,
    Logit,
    Scale,
    call_and_ladj,
    dequantization_pipeline,
    quantize,
)

__version__ = "0.1.0"

__all__ = [
    "Compose",
    "Dequantize",
    "ElementwiseTransform",
    "InverseTransform",
    "Logit",
    "Scale",
    "__version__",
    "bits_per_dim",
    "call_and_ladj",
    "dequantization_pipeline",
    "importance_weighted_log_likelihood",
    "quantize",
]
