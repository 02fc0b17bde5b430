"""The flow: a dequantizer, flowext's Scale and Logit, and RealNVP-style affine couplings.

`build_flow` returns an nflows `Flow` whose `log_prob(x)` takes integer images as a float
tensor (N, C, H, W) and returns one sample of the dequantization bound
log p(x + u) - log q(u | x) per image, in nats.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from nflows.flows.base import Flow
from nflows.transforms.base import CompositeTransform
from nflows.transforms.base import Transform as NflowsTransform
from nflows.transforms.coupling import AffineCouplingTransform
from torch import nn

from flowext import Logit, Scale
from flowext._numerics import resolvable_bins
from flowext.nflows import StandardNormal, TransformAdapter, UniformDequantizer, VariationalDequantizer
from flowtrain.coupling import CheckerboardAffineCoupling, ConvNet

__all__ = ["DEQUANTIZATIONS", "MAX_NUM_BINS", "FlowConfig", "LogLikelihood", "build_flow", "count_parameters"]

DEQUANTIZATIONS = ("uniform", "variational")

#: The largest number of levels K the flow supports. It computes in float32, and for larger K
#: the float32 spacing near K is too coarse to keep the dequantization noise inside each bin.
MAX_NUM_BINS = resolvable_bins(torch.float32)


@dataclass(frozen=True)
class FlowConfig:
    """Architecture of the flow; stored in checkpoints to rebuild the same model.

    Attributes:
        shape: Shape (C, H, W) of one image.
        num_bins: The number of levels K.
        dequantization: "uniform" or "variational".
        num_layers: Checkerboard coupling layers of the main flow.
        hidden_channels: Hidden channels of each coupling network of the main flow.
        num_blocks: Residual blocks of each coupling network.
        channel_masks: Whether to add a channel-mask coupling after every second checkerboard
            layer (only for images of 2 channels or more).
        alpha: Squashing constant of flowext's `Logit`, in [0, 1).
        noise_layers: Checkerboard coupling layers of the noise flow q(u | x).
        noise_hidden_channels: Hidden channels of the noise flow's networks and context network.
        context_channels: Channels of the feature map of x that conditions the noise flow.
    """

    shape: tuple[int, int, int]
    num_bins: int
    dequantization: str = "uniform"
    num_layers: int = 6
    hidden_channels: int = 32
    num_blocks: int = 1
    channel_masks: bool = True
    alpha: float = 0.05
    noise_layers: int = 2
    noise_hidden_channels: int = 16
    context_channels: int = 8

    def to_dict(self) -> dict:
        """Return the configuration as plain types (lists for tuples), for JSON and checkpoints."""
        values = asdict(self)
        values["shape"] = list(self.shape)
        return values

    @classmethod
    def from_dict(cls, values: dict) -> FlowConfig:
        """Rebuild a configuration stored by `to_dict`."""
        values = dict(values)
        values["shape"] = tuple(values["shape"])
        return cls(**values)


def coupling_layers(
    shape: tuple[int, int, int],
    num_layers: int,
    *,
    hidden_channels: int,
    num_blocks: int,
    channel_masks: bool,
    context_channels: int = 0,
) -> list[NflowsTransform]:
    """Build alternating checkerboard couplings, with channel couplings for colour images.

    With `channel_masks` and 2 or more channels, a coupling that splits the channels
    (nflows' `AffineCouplingTransform`) follows every second checkerboard layer, its mask
    alternating between the even and the odd channels.
    """
    channels = shape[0]
    layers: list[NflowsTransform] = []
    for index in range(num_layers):
        layers.append(
            CheckerboardAffineCoupling(
                shape,
                parity=index % 2,
                hidden_channels=hidden_channels,
                num_blocks=num_blocks,
                context_channels=context_channels,
            )
        )
        if channel_masks and channels > 1 and index % 2 == 1:
            mask = (torch.arange(channels) % 2 == (index // 2) % 2).to(torch.int64) * 2 - 1

            def make_net(in_channels: int, out_channels: int) -> nn.Module:
                return ConvNet(in_channels, out_channels, hidden_channels, num_blocks, context_channels)

            layers.append(AffineCouplingTransform(mask, make_net))
    return layers


def build_noise_flow(config: FlowConfig) -> Flow:
    """Build the conditional flow over v for q(u | x); its context is a feature map of x."""
    layers = coupling_layers(
        config.shape,
        config.noise_layers,
        hidden_channels=config.noise_hidden_channels,
        num_blocks=1,
        channel_masks=config.channel_masks,
        context_channels=config.context_channels,
    )
    return Flow(CompositeTransform(layers), StandardNormal(list(config.shape)))


def build_context_net(config: FlowConfig) -> nn.Module:
    """Build the network from the normalized image (C, H, W) to its context feature map."""
    channels, hidden = config.shape[0], config.noise_hidden_channels
    return nn.Sequential(
        nn.Conv2d(channels, hidden, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(hidden, hidden, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(hidden, config.context_channels, 3, padding=1),
    )


def build_dequantizer(config: FlowConfig) -> NflowsTransform:
    """Build the uniform or the variational dequantizer that `config` names."""
    if config.dequantization == "uniform":
        return UniformDequantizer(config.num_bins, logit_alpha=config.alpha)
    if config.dequantization == "variational":
        return VariationalDequantizer(
            config.num_bins, build_noise_flow(config), build_context_net(config), logit_alpha=config.alpha
        )
    raise ValueError(f"dequantization must be one of {DEQUANTIZATIONS}, got {config.dequantization!r}")


def build_flow(config: FlowConfig) -> Flow:
    """Build the flow that `config` describes, with freshly initialized parameters.

    The transforms, in the data-to-noise direction: the dequantizer (x to x + u), flowext's
    `Scale(1 / K)` and `Logit(alpha)` with `event_dim=3` (to logit space, log-det per image),
    then the coupling layers. The base distribution is a standard normal over (C, H, W).
    The dequantizer is the flow's first transform, reachable as `flow._transform._transforms[0]`
    and through `dequantizer_of(flow)`.
    """
    transforms: list[NflowsTransform] = [
        build_dequantizer(config),
        TransformAdapter(Scale(1.0 / config.num_bins, event_dim=3, cache_size=0)),
        TransformAdapter(Logit(config.alpha, event_dim=3, cache_size=0)),
        *coupling_layers(
            config.shape,
            config.num_layers,
            hidden_channels=config.hidden_channels,
            num_blocks=config.num_blocks,
            channel_masks=config.channel_masks,
        ),
    ]
    return Flow(CompositeTransform(transforms), StandardNormal(list(config.shape)))


def dequantizer_of(flow: Flow) -> NflowsTransform:
    """Return the dequantizer, the first transform of a flow from `build_flow`."""
    return flow._transform._transforms[0]


def count_parameters(module: nn.Module) -> int:
    """Return the number of trainable parameters of `module`."""
    return sum(parameter.numel() for parameter in module.parameters() if parameter.requires_grad)


class LogLikelihood(nn.Module):
    """Module whose forward pass is `flow.log_prob`, so that DistributedDataParallel can wrap it.

    nflows' `Flow.forward` raises, and DistributedDataParallel synchronizes gradients only for
    computations that go through the forward pass of the module it wraps.
    """

    def __init__(self, flow: Flow) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.flow.log_prob(images)

