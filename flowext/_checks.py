"""Validation of constructor arguments.

Each check raises `ValueError` (or `TypeError` for a value of the wrong kind) with a message that
names the parameter, states the rule and repeats the value received.
"""

from __future__ import annotations

import math
import numbers
import operator

import torch

__all__ = [
    "check_alpha",
    "check_cache_size",
    "check_event_dim",
    "check_float_dtype",
    "check_num_bins",
    "check_positive_int",
    "check_real_tensor",
    "check_shape",
]


def _as_int(value: object, name: str, rule: str) -> int:
    # bool is an int subclass, but True as a number of bins is a bug in the caller.
    if isinstance(value, bool):
        raise ValueError(f"{name} must be {rule}, got {value!r}")

    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{name} must be {rule}, got {value!r}") from None


def check_num_bins(value: object, name: str = "num_bins") -> int:
    """Return `value` as an int if it is an integer >= 2."""
    rule = "an integer >= 2 (the number of discrete levels)"
    number = _as_int(value, name, rule)
    if number < 2:
        raise ValueError(f"{name} must be {rule}, got {value!r}")
    return number


def check_positive_int(value: object, name: str) -> int:
    """Return `value` as an int if it is an integer >= 1."""
    rule = "an integer >= 1"
    number = _as_int(value, name, rule)
    if number < 1:
        raise ValueError(f"{name} must be {rule}, got {value!r}")
    return number


def check_event_dim(value: object) -> int:
    """Return `value` as an int if it is an integer >= 0."""
    rule = "an integer >= 0 (the number of rightmost dimensions summed in the log-det)"
    number = _as_int(value, "event_dim", rule)
    if number < 0:
        raise ValueError(f"event_dim must be {rule}, got {value!r}")
    return number


def check_cache_size(value: object) -> int:
    """Return `value` as an int if it is 0 or 1, the cache sizes torch transforms support."""
    number = _as_int(value, "cache_size", "0 or 1")
    if number not in (0, 1):
        raise ValueError(f"cache_size must be 0 or 1, got {value!r}")
    return number


def check_alpha(value: object, name: str = "alpha") -> float:
    """Return `value` as a float if it is a real number in [0, 1)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_meta:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number in [0, 1), got {value!r}")

    alpha = float(value)
    if not (math.isfinite(alpha) and 0.0 <= alpha < 1.0):
        raise ValueError(f"{name} must be a real number in [0, 1), got {value!r}")
    return alpha


def check_float_dtype(value: object, name: str = "dtype") -> torch.dtype:
    """Return `value` if it is a real floating-point torch dtype."""
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ValueError(
            f"{name} must be a floating-point torch.dtype such as torch.float32, got {value!r}"
        )
    return value


def check_shape(value: object, name: str = "shape") -> tuple[int, ...]:
    """Return `value` as a tuple of ints if it is a sequence of integers >= 1."""
    rule = "a sequence of integers >= 1, the shape of one example such as (64,) or (1, 8, 8)"
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"{name} must be {rule}, got {value!r}")
    try:
        sizes = tuple(_as_int(size, name, rule) for size in value)  # type: ignore[union-attr]
    except ValueError:
        raise ValueError(f"{name} must be {rule}, got {value!r}") from None
    if not sizes or any(size < 1 for size in sizes):
        raise ValueError(f"{name} must be {rule}, got {value!r}")
    return sizes


def check_real_tensor(value: object, name: str) -> None:
    """Check that `value` is a tensor of real (not complex) values."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.is_complex():
        raise ValueError(f"{name} must contain real values, got dtype {value.dtype}")
