"""Uniform dequantization of integer data."""

from __future__ import annotations

from typing import Any

import torch
from torch.distributions import constraints

from flowext._checks import check_alpha, check_float_dtype, check_num_bins
from flowext._numerics import log1m_two_margin, noise_margin
from flowext.transforms._base import REQUIRED, ElementwiseTransform

__all__ = ["Dequantize", "check_integer_data", "quantize"]


def check_integer_data(x: torch.Tensor, num_bins: int, owner: str) -> None:
    """Raise `ValueError` unless every element of `x` is an integer in [0, num_bins - 1].

    Meta tensors hold no values and pass unchecked, and so do bool tensors, whose values 0 and 1
    are valid for any number of bins.
    """
    if x.is_meta or x.dtype == torch.bool:
        return

    # An element is valid when clamping to [0, K - 1] (and, for floats, rounding down) leaves it
    # unchanged. NaN fails too, since NaN != NaN. Three passes over the data in all.
    upper = num_bins - 1
    if not x.is_floating_point():
        upper = min(upper, torch.iinfo(x.dtype).max)  # a bound the dtype can hold
    valid_value = x.clamp(0, upper)
    if x.is_floating_point():
        valid_value = valid_value.floor_()
    invalid = valid_value != x
    if not bool(invalid.any()):
        return

    count = int(invalid.sum())
    first = x[invalid].flatten()[0].item()
    raise ValueError(
        f"{owner} expects integers in [0, {num_bins - 1}], got {first!r} "
        f"({count} of {x.numel()} elements are outside that set). Quantize or clip the data, "
        f"or set num_bins to the number of levels the data has."
    )


def quantize(y: torch.Tensor, num_bins: int) -> torch.Tensor:
    """Return clamp(floor(y), 0, num_bins - 1), the bin that each element of `y` lies in.

    Integer inputs keep their dtype and are only clamped; bool inputs are returned as a copy.

    Raises:
        ValueError: If `num_bins` is not an integer >= 2.
    """
    num_bins = check_num_bins(num_bins)
    if y.dtype == torch.bool:
        return y.clone()
    if not y.is_floating_point():
        return y.clamp(0, min(num_bins - 1, torch.iinfo(y.dtype).max))
    return torch.floor(y).clamp_(0, num_bins - 1)


class Dequantize(ElementwiseTransform):
    r"""Transform via the map $y = x + u$ with noise $u$ drawn uniformly inside the bin of $x$.

    With $K$ bins and a margin $m$ of a few units in the last place (see below):

    - forward: $y = x + u$, $u \sim \mathcal{U}[m, 1 - m]$, so $y \in [x, x + 1)$
    - inverse: $x = \operatorname{clamp}(\lfloor y \rfloor, 0, K - 1)$
    - forward log-det: $-\log q(u \mid x) = \log(1 - 2m)$ per element
    - inverse log-det: $-\log(1 - 2m)$ per element

    The map is not bijective: the inverse (quantization) is a surjection and the forward is a
    stochastic right inverse of it. In a flow's log-likelihood the forward log-det turns
    $\log p(x + u)$ into one sample of the dequantization bound
    $\log P(x) \ge \mathbb{E}_u[\log p(x + u) - \log q(u \mid x)]$.

    The margin $m = 4 K \epsilon$, with $\epsilon$ the machine epsilon of the output dtype,
    keeps every noisy value far enough from the bin edges that `Scale(1 / K)`, `Logit` and their
    inverses bring it back to the same bin, so quantization recovers $x$ exactly. It is about
    1.2e-4 for float32 and K = 256 (a log-det of -2.4e-4 nats per element) and 2.3e-13 for
    float64. A dtype whose margin would exceed 1/16 of a bin cannot resolve the bins and raises
    `ValueError`: float16 supports $K \le 16$, bfloat16 $K = 2$. A `Logit` with
    $\alpha > 1/2$ after it loses more precision, and `logit_alpha` widens the margin by
    $1 / (2 (1 - \alpha))$ for it; `dequantization_pipeline` sets it.

    Args:
        num_bins: The number of levels $K$; data take values in $\{0, \dots, K - 1\}$.
        event_dim: Number of rightmost dimensions that form one event.
        dtype: Floating-point dtype of the output. By default a floating input keeps its dtype
            and an integer or bool input becomes torch's default dtype (float32 unless changed).
        generator: A `torch.Generator` on the data's device that draws the noise, for
            reproducible results. By default the global generator is used.
        validate_args: Check that the input holds integers in $[0, K - 1]$ and raise
            `ValueError` otherwise. The check synchronizes with an accelerator; turn it off in
            compiled or performance-critical code that guarantees valid input.
        cache_size: 0 (the default) for no cache, so that each call draws fresh noise. With 1,
            calling the transform again on the same tensor object returns the same noise.
        logit_alpha: The squashing constant $\alpha$ of a `Logit` that follows, in $[0, 1)$.
            Above 1/2 it widens the noise margin so that the round trip stays exact.

    Raises:
        ValueError: If `num_bins` is not an integer >= 2 or `dtype` cannot resolve its bins.

    Examples:
        >>> t = Dequantize(num_bins=256)
        >>> x = torch.tensor([0, 128, 255], dtype=torch.uint8)
        >>> y = t(x)
        >>> y.dtype
        torch.float32
        >>> noise = y - x
        >>> bool(((noise >= 0) & (noise < 1)).all())
        True
        >>> t.inv(y)
        tensor([  0., 128., 255.])
    """

    bijective = False

    def __init__(
        self,
        num_bins: int,
        *,
        event_dim: int = 0,
        dtype: torch.dtype | None = None,
        generator: torch.Generator | None = None,
        validate_args: bool = True,
        cache_size: int = 0,
        logit_alpha: float = 0.0,
    ) -> None:
        super().__init__(event_dim=event_dim, cache_size=cache_size)
        self.num_bins = check_num_bins(num_bins)
        self.logit_alpha = check_alpha(logit_alpha, "logit_alpha")

        if dtype is not None:
            dtype = check_float_dtype(dtype)
            noise_margin(self.num_bins, dtype, self.logit_alpha)
        self.dtype = dtype

        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator or None, got {generator!r}")
        self.generator = generator

        if not isinstance(validate_args, bool):
            raise ValueError(f"validate_args must be True or False, got {validate_args!r}")
        self.validate_args = validate_args

    def _params(self) -> list[tuple[str, Any, Any]]:
        return [
            ("num_bins", self.num_bins, REQUIRED),
            ("dtype", self.dtype, None),
            ("generator", self.generator, None),
            ("validate_args", self.validate_args, True),
            ("logit_alpha", self.logit_alpha, 0.0),
        ]

    def _domain_constraint(self) -> constraints.Constraint:
        return constraints.integer_interval(0, self.num_bins - 1)

    def _codomain_constraint(self) -> constraints.Constraint:
        return constraints.half_open_interval(0.0, float(self.num_bins))

    @property
    def sign(self) -> int:  # type: ignore[override]
        raise NotImplementedError(
            "Dequantize is not bijective (it maps each integer to a whole bin), so the sign of "
            "its Jacobian is undefined; cdf and icdf of a distribution that uses it are too."
        )

    def _output_dtype(self, x: torch.Tensor) -> torch.dtype:
        if self.dtype is not None:
            return self.dtype
        if x.is_floating_point():
            return x.dtype
        if x.is_complex():
            raise ValueError(f"Dequantize expects real integer data, got dtype {x.dtype}")
        return torch.get_default_dtype()

    def _prepare(self, x: torch.Tensor) -> tuple[torch.dtype, float]:
        """Check the data and return the output dtype and its noise margin."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"Dequantize expects a torch.Tensor, got {type(x).__name__}")

        dtype = self._output_dtype(x)
        margin = noise_margin(self.num_bins, dtype, self.logit_alpha)
        if self.validate_args:
            check_integer_data(x, self.num_bins, f"Dequantize(num_bins={self.num_bins})")
        return dtype, margin

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        dtype, margin = self._prepare(x)

        generator = self.generator
        if generator is not None and x.is_meta:
            generator = None
        elif generator is not None and generator.device.type != x.device.type:
            raise ValueError(
                f"generator is on {generator.device} but the data is on {x.device}; "
                f"create the generator on the data's device"
            )

        noise = torch.rand(x.shape, dtype=dtype, device=x.device, generator=generator)
        # Out of place at the end: under torch.func.vmap with randomness="same" the noise is
        # not batched while x is, and adding x in place into the noise would fail.
        return x.to(dtype) + noise.mul_(1.0 - 2.0 * margin).add_(margin)

    def apply_noise(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        r"""Return $x + m + (1 - 2m)\,u$ for given uniform draws $u$ in $[0, 1)$.

        This is the forward map with the noise supplied by the caller, for quasi-random or
        antithetic draws and for tests of the extreme values $u = 0$ and the largest float
        below 1. Its derivative with respect to $u$ is $1 - 2m$, the log-det of the forward.

        Raises:
            ValueError: If `noise` is not a tensor of the shape of `x`, or if `validate_args`
                is set and `x` holds values other than integers in $[0, K - 1]$ or `noise`
                holds values outside $[0, 1)$.
        """
        if isinstance(noise, torch.Tensor) and noise.is_complex():
            raise ValueError(f"noise must contain real values in [0, 1), got dtype {noise.dtype}")
        if not isinstance(noise, torch.Tensor) or noise.shape != x.shape:
            shape = tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
            raise ValueError(
                f"noise must be a tensor of the shape of x, {tuple(x.shape)}, got {shape}"
            )
        dtype, margin = self._prepare(x)
        if self.validate_args and not noise.is_meta:
            outside = ~((noise >= 0) & (noise < 1))
            if bool(outside.any()):
                first = noise[outside].flatten()[0].item()
                raise ValueError(f"noise must lie in [0, 1), got {first!r}")
        return x.to(dtype) + (noise.to(dtype) * (1.0 - 2.0 * margin) + margin)

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        return quantize(y, self.num_bins)

    def _elementwise_ladj(self, x: torch.Tensor, y: torch.Tensor) -> float:
        dtype = y.dtype if y.is_floating_point() else torch.get_default_dtype()
        return log1m_two_margin(self.num_bins, dtype, self.logit_alpha)
