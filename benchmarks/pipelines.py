"""The pipeline Dequantize -> Scale(1/K) -> Logit(alpha) written four ways, in both directions.

Every candidate offers the same three calls on a batch whose first dimension is the batch:

- `forward(x)`: integer data (as floats) to `(z, log-det per example)`, noise included;
- `tail(y)`: the deterministic part, dequantized values to `(z, log-det per example)`;
- `inverse(z)`: logit space back to `(integers as floats, log-det per example)`.

The forward log-det counts the noise term -log q(u | x), which is 0 for noise uniform on the
whole bin (the hand-written, torch and nflows candidates) and log(1 - 2m) per element for
flowext, whose noise keeps a margin m from the bin edges.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from nflows.transforms.base import CompositeTransform
from nflows.transforms.nonlinearities import Logit as NflowsLogit
from nflows.transforms.standard import PointwiseAffineTransform
from torch.distributions import AffineTransform, ComposeTransform, SigmoidTransform

from flowext import Compose, dequantization_pipeline

__all__ = [
    "NFLOWS_EPS",
    "Candidate",
    "FlowextPipeline",
    "NflowsPipeline",
    "TorchPipeline",
    "TutorialFormulas",
    "build_candidates",
    "noise_only",
    "reference_tail",
]

#: Clamping constant of nflows' Logit: its default.
NFLOWS_EPS = 1e-6

Pair = tuple[torch.Tensor, torch.Tensor]


def _event_dims(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(range(1, x.dim()))


class Candidate:
    """One way to write the pipeline. Subclasses define `name`, `tail` and `inverse`."""

    name: str

    def forward(self, x: torch.Tensor) -> Pair:
        return self.tail(x + torch.rand_like(x))

    def tail(self, y: torch.Tensor) -> Pair:
        raise NotImplementedError

    def inverse(self, z: torch.Tensor) -> Pair:
        raise NotImplementedError


class TutorialFormulas(Candidate):
    """The formulas in eager torch, as the UvA deep-learning tutorial on normalizing flows
    writes its dequantization layer.

    The log-det is a per-example tensor that each step adds its term to. The squash step
    computes log z and log(1 - z) once for the log-det and again for the value.
    """

    name = "hand-written"

    def __init__(self, num_bins: int, alpha: float) -> None:
        self.num_bins = num_bins
        self.alpha = alpha

    def tail(self, y: torch.Tensor) -> Pair:
        num_dims = y[0].numel()
        log_det = torch.zeros(y.shape[0], dtype=y.dtype, device=y.device)

        z = y / self.num_bins
        log_det = log_det - math.log(self.num_bins) * num_dims

        z = z * (1 - self.alpha) + 0.5 * self.alpha
        log_det = log_det + math.log(1 - self.alpha) * num_dims
        log_det = log_det + (-torch.log(z) - torch.log(1 - z)).sum(dim=_event_dims(y))
        z = torch.log(z) - torch.log(1 - z)
        return z, log_det

    def inverse(self, z: torch.Tensor) -> Pair:
        num_dims = z[0].numel()
        log_det = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)

        # log sigmoid'(z) = -z - 2 softplus(-z)
        log_det = log_det + (-z - 2 * F.softplus(-z)).sum(dim=_event_dims(z))
        s = torch.sigmoid(z)
        s = (s - 0.5 * self.alpha) / (1 - self.alpha)
        log_det = log_det - math.log(1 - self.alpha) * num_dims

        y = s * self.num_bins
        log_det = log_det + math.log(self.num_bins) * num_dims
        return torch.floor(y).clamp(min=0, max=self.num_bins - 1), log_det


class TorchPipeline(Candidate):
    """torch's own transforms: AffineTransform(0, 1/K), AffineTransform(alpha/2, 1 - alpha) and
    SigmoidTransform().inv in a ComposeTransform with a cache of size 1.

    The cache lets `log_abs_det_jacobian(y, z)` reuse the intermediate values of the call that
    produced `z` instead of computing them again. The log-det is elementwise (every part has
    event_dim 0) and summed per example here. SigmoidTransform's inverse clamps its input to
    [tiny, 1 - eps] of the dtype and computes its log-det from the output, as
    softplus(z) + softplus(-z).
    """

    name = "torch transforms"

    def __init__(self, num_bins: int, alpha: float) -> None:
        self.num_bins = num_bins
        self.transform = ComposeTransform(
            [
                AffineTransform(0.0, 1.0 / num_bins),
                AffineTransform(alpha / 2, 1.0 - alpha),
                SigmoidTransform().inv,
            ],
            cache_size=1,
        )

    def tail(self, y: torch.Tensor) -> Pair:
        z = self.transform(y)
        log_det = self.transform.log_abs_det_jacobian(y, z)
        return z, log_det.sum(dim=_event_dims(y))

    def inverse(self, z: torch.Tensor) -> Pair:
        inverse = self.transform.inv
        y = inverse(z)
        log_det = inverse.log_abs_det_jacobian(z, y).sum(dim=_event_dims(z))
        return torch.floor(y).clamp(min=0, max=self.num_bins - 1), log_det


class NflowsPipeline(Candidate):
    """nflows 0.14: PointwiseAffineTransform(0, 1/K), PointwiseAffineTransform(alpha/2,
    1 - alpha) and Logit() in a CompositeTransform.

    nflows' Logit is the inverse of its Sigmoid transform. Its forward raises
    InputOutsideDomain when any input lies outside [0, 1], a check that reads the data (a
    device synchronization). It then clamps the input s to [eps, 1 - eps] with eps = 1e-6,
    returns z = log s - log1p(-s) and computes the log-det from the output, as softplus(z) +
    softplus(-z) = -log s - log(1 - s) summed per example. Where the clamp applies, that
    log-det belongs to the clamped value, not to the true slope of the map, which is 0
    there. With alpha = 0.05 the squashed values stay in [0.025, 0.975] and the clamp never
    applies.
    """

    name = "nflows"

    def __init__(self, num_bins: int, alpha: float, device: torch.device) -> None:
        self.num_bins = num_bins
        logit = NflowsLogit(eps=NFLOWS_EPS)
        # The temperature of nflows' Sigmoid is a plain tensor attribute, not a buffer, so
        # `.to(device)` would leave it on the CPU.
        logit._transform.temperature = logit._transform.temperature.to(device)
        self.transform = CompositeTransform(
            [
                PointwiseAffineTransform(0.0, 1.0 / num_bins),
                PointwiseAffineTransform(alpha / 2, 1.0 - alpha),
                logit,
            ]
        ).to(device)

    def tail(self, y: torch.Tensor) -> Pair:
        return self.transform(y)

    def inverse(self, z: torch.Tensor) -> Pair:
        y, log_det = self.transform.inverse(z)
        return torch.floor(y).clamp(min=0, max=self.num_bins - 1), log_det


class FlowextPipeline(Candidate):
    """flowext's `dequantization_pipeline(K, alpha, event_dim=..., validate_args=...)`."""

    def __init__(self, num_bins: int, alpha: float, event_dim: int, validate_args: bool) -> None:
        self.name = f"flowext (validate_args={validate_args})"
        self.num_bins = num_bins
        self.pipeline = dequantization_pipeline(
            num_bins, alpha, event_dim=event_dim, validate_args=validate_args
        )
        self._tail = Compose(self.pipeline.parts[1:])

    def forward(self, x: torch.Tensor) -> Pair:
        return self.pipeline.call_and_ladj(x)

    def tail(self, y: torch.Tensor) -> Pair:
        return self._tail.call_and_ladj(y)

    def inverse(self, z: torch.Tensor) -> Pair:
        return self.pipeline.inv.call_and_ladj(z)


def build_candidates(
    num_bins: int, alpha: float, event_dim: int, device: torch.device
) -> list[Candidate]:
    """Build the candidates, the hand-written formulas (the reference) first."""
    return [
        TutorialFormulas(num_bins, alpha),
        FlowextPipeline(num_bins, alpha, event_dim, validate_args=True),
        FlowextPipeline(num_bins, alpha, event_dim, validate_args=False),
        TorchPipeline(num_bins, alpha),
        NflowsPipeline(num_bins, alpha, device),
    ]


def noise_only(x: torch.Tensor) -> torch.Tensor:
    """Return x plus uniform noise, the one draw that every candidate's forward makes.

    No pipeline can take less time than this draw, so its time is the floor of the forward.
    """
    return x + torch.rand_like(x)


def reference_tail(y: torch.Tensor, num_bins: int, alpha: float) -> Pair:
    """Compute the deterministic part in float64, as the reference for the agreement check."""
    y = y.double()
    s = y / num_bins * (1 - alpha) + alpha / 2
    log_s, log_one_minus_s = torch.log(s), torch.log1p(-s)
    z = log_s - log_one_minus_s
    constant = (math.log1p(-alpha) - math.log(num_bins)) * y[0].numel()
    log_det = constant + (-log_s - log_one_minus_s).sum(dim=_event_dims(y))
    return z, log_det
