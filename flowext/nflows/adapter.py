"""An nflows transform that wraps any torch transform."""

from __future__ import annotations

import torch
from nflows.transforms.base import Transform as NflowsTransform
from torch.distributions import Transform

from flowext.transforms.compose import call_and_ladj
from flowext.transforms.dequantize import Dequantize

__all__ = ["TransformAdapter", "UniformDequantizer"]


def sum_per_example(ladj: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """Sum a log-det over every dimension but the first (batch) one, giving shape [batch]."""
    if inputs.dim() == 0:
        raise ValueError("inputs must have a batch dimension, got a 0-dimensional tensor")
    if ladj.dim() == 0:
        raise ValueError(
            f"the wrapped transform summed its log-det over the batch dimension too (inputs of "
            f"shape {tuple(inputs.shape)} gave a scalar); use an event_dim below {inputs.dim()}"
        )
    if ladj.dim() == 1:
        return ladj
    return ladj.sum(dim=tuple(range(1, ladj.dim())))


class TransformAdapter(NflowsTransform):
    r"""nflows transform that applies a torch `Transform` in nflows' data-to-noise direction.

    - forward: `(outputs, logabsdet) = (t(x), log|det J_t(x)|)`
    - inverse: `(t.inv(z), log|det J_{t^{-1}}(z)|)`

    `logabsdet` has shape [batch]: the wrapped transform's log-det summed over every dimension
    but the first, so vectors (B, D) and images (B, C, H, W) both work. The transform's
    `call_and_ladj` is used where it exists, so flowext layers take one pass. The context is
    ignored.

    Args:
        transform: Any `torch.distributions.Transform`: a flowext layer, a `Compose` of them or
            one of torch's own.

    Examples:
        >>> from flowext import Logit
        >>> layer = TransformAdapter(Logit(alpha=0.05))
        >>> z, logabsdet = layer(torch.full((2, 1, 2, 2), 0.5))
        >>> logabsdet
        tensor([5.3400, 5.3400])
    """

    def __init__(self, transform: Transform) -> None:
        super().__init__()
        if not isinstance(transform, Transform):
            raise ValueError(
                f"transform must be a torch.distributions.Transform, got {type(transform).__name__}"
            )
        self.transform = transform

    def extra_repr(self) -> str:
        return repr(self.transform)

    def forward(
        self, inputs: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        outputs, ladj = call_and_ladj(self.transform, inputs)
        return outputs, sum_per_example(ladj, inputs)

    def inverse(
        self, inputs: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        outputs, ladj = call_and_ladj(self.transform.inv, inputs)
        return outputs, sum_per_example(ladj, inputs)


class UniformDequantizer(TransformAdapter):
    r"""nflows transform for uniform dequantization: `TransformAdapter(Dequantize(K))`.

    - forward: $y = x + u$ with $u \sim \mathcal{U}[m, 1 - m]$, logabsdet $D \log(1 - 2m)$
    - inverse: $x = \operatorname{clamp}(\lfloor y \rfloor, 0, K - 1)$, logabsdet 0

    As the first transform of an nflows `Flow`, it makes `Flow.log_prob(x)` one sample of the
    dequantization bound $\log p(x + u) - \log q(u \mid x)$ with $q$ uniform on the bin (up to
    the margin $m$ that `Dequantize` explains). nflows' `CompositeTransform` adds log-dets in
    the dtype of its input, so pass integer data as a floating tensor (`x.float()`).

    Quantization has no density, so the inverse reports a log-det of zero, as
    `VariationalDequantizer` does: `Flow.sample_and_log_prob` then returns the model's density
    at the continuous sample, before quantization.

    Args:
        num_bins: The number of levels $K$.
        dtype: Output dtype; see `Dequantize`.
        generator: Random number generator for the noise; see `Dequantize`.
        validate_args: Whether to check that the data are integers in $[0, K - 1]$.
        logit_alpha: The squashing constant $\alpha$ of the `Logit` that follows, in $[0, 1)$;
            above 1/2 it widens the noise margin (see `Dequantize`).
    """

    def __init__(
        self,
        num_bins: int,
        *,
        dtype: torch.dtype | None = None,
        generator: torch.Generator | None = None,
        validate_args: bool = True,
        logit_alpha: float = 0.0,
    ) -> None:
        super().__init__(
            Dequantize(
                num_bins, dtype=dtype, generator=generator, validate_args=validate_args, logit_alpha=logit_alpha
            )
        )

    def inverse(
        self, inputs: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (clamp(floor(y), 0, K - 1), 0): quantization, with a log-det of zero."""
        return self.transform.inv(inputs), inputs.new_zeros(inputs.shape[:1])
