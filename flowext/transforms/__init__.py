"""Transforms that map discrete data to an unbounded continuous space, as torch transforms."""

from flowext.transforms._base import ElementwiseTransform
from flowext.transforms._inverse import InverseTransform
from flowext.transforms.compose import Compose, call_and_ladj, dequantization_pipeline
from flowext.transforms.dequantize import Dequantize, quantize
from flowext.transforms.logit import Logit
from flowext.transforms.scale import Scale

__all__ = [
    "Compose",
    "Dequantize",
    "ElementwiseTransform",
    "InverseTransform",
    "Logit",
    "Scale",
    "call_and_ladj",
    "dequantization_pipeline",
    "quantize",
]
