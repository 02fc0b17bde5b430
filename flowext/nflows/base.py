"""A standard normal base distribution for nflows that samples in the module's dtype."""

from __future__ import annotations

import torch
from nflows.distributions.normal import StandardNormal as NflowsStandardNormal

__all__ = ["StandardNormal"]


class StandardNormal(NflowsStandardNormal):
    """nflows' `StandardNormal` that draws samples in its own dtype and device.

    nflows 0.14 draws its samples in torch's default dtype, so a flow converted with
    `.to(torch.float64)` fails with mixed dtypes when it samples. This subclass keeps a
    floating-point buffer that follows `.to(...)` and draws in its dtype, on the device of the
    context when one is given.

    Args:
        shape: Shape of one sample, without the batch dimension.
    """

    def __init__(self, shape: tuple[int, ...] | torch.Size) -> None:
        super().__init__(shape)
        self.register_buffer("_dtype_anchor", torch.zeros(()), persistent=False)

    def _sample(self, num_samples: int, context: torch.Tensor | None) -> torch.Tensor:
        dtype = self._dtype_anchor.dtype
        if context is None:
            return torch.randn(num_samples, *self._shape, dtype=dtype, device=self._dtype_anchor.device)

        context_size = context.shape[0]
        samples = torch.randn(
            context_size * num_samples, *self._shape, dtype=dtype, device=context.device
        )
        return samples.reshape(context_size, num_samples, *self._shape)
