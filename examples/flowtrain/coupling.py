"""Affine coupling on images with a checkerboard mask, as an nflows transform.

nflows 0.14's `CouplingTransform` splits 4-D inputs along the channel dimension only, which
leaves nothing to split in a 1-channel image. `CheckerboardAffineCoupling` splits the pixels
instead: the pixels of one colour of a checkerboard pass unchanged and condition a
convolutional network, which gives a scale and a shift for every pixel of the other colour.
"""

from __future__ import annotations

import torch
from nflows.transforms.base import Transform
from torch import nn

__all__ = ["CheckerboardAffineCoupling", "ConvNet", "checkerboard_mask"]


def checkerboard_mask(height: int, width: int, parity: int) -> torch.Tensor:
    """Return a (1, 1, height, width) float mask: 1 where (row + column) % 2 == parity."""
    rows = torch.arange(height).unsqueeze(1)
    columns = torch.arange(width).unsqueeze(0)
    return ((rows + columns) % 2 == parity).to(torch.get_default_dtype()).reshape(1, 1, height, width)


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with a ReLU before each, added to the input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs + self.layers(inputs)


class ConvNet(nn.Module):
    """Convolutional network that keeps the image size: 3x3 convolutions and residual blocks.

    The last convolution starts at zero, so a coupling layer that uses the network starts as
    the identity map. `forward(inputs, context)` concatenates the context feature map, if any,
    to the inputs along the channel dimension; nflows' coupling layers call it that way.

    Args:
        in_channels: Channels of the inputs.
        out_channels: Channels of the output.
        hidden_channels: Channels of the hidden layers.
        num_blocks: Number of residual blocks.
        context_channels: Channels of the context feature map, 0 for none.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden_channels: int,
        num_blocks: int,
        context_channels: int = 0,
    ) -> None:
        super().__init__()
        self.context_channels = context_channels
        self.input_layer = nn.Conv2d(in_channels + context_channels, hidden_channels, 3, padding=1)
        self.blocks = nn.Sequential(*[ResidualBlock(hidden_channels) for _ in range(num_blocks)])
        self.output_layer = nn.Conv2d(hidden_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.output_layer.weight)
        nn.init.zeros_(self.output_layer.bias)

    def forward(self, inputs: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if self.context_channels:
            if context is None:
                raise ValueError(f"this network expects a context of {self.context_channels} channels, got None")
            inputs = torch.cat([inputs, context], dim=1)
        hidden = self.blocks(self.input_layer(inputs))
        return self.output_layer(torch.relu(hidden))


class CheckerboardAffineCoupling(Transform):
    r"""nflows transform: affine coupling of images (N, C, H, W) with a checkerboard mask.

    With the mask $b$ (1 on the pixels that pass unchanged, broadcast over the channels):

    - forward: $y = b \odot x + (1 - b) \odot (x \odot e^{s} + t)$, with
      $(s, t) = \mathrm{net}(b \odot x, b, \text{context})$
    - log-det: $\sum (1 - b) \odot s$ over each image, exact because the Jacobian is
      triangular: $y$ on the masked pixels depends on $x$ there only through $e^{s}$, and
      $s$ and $t$ depend only on the unchanged pixels
    - inverse: $x = b \odot y + (1 - b) \odot (y - t) \odot e^{-s}$, with the same $(s, t)$

    The log-scale is bounded softly, $s = c \tanh(\tilde s / c)$ with $c$ = `max_log_scale`,
    so one layer scales by at most $e^{c}$, which keeps the first steps of training stable.
    The network also receives the mask as an input channel, so it can tell the two kinds of
    pixels apart at the image border, where zero padding hides the pattern.

    Args:
        shape: Shape (C, H, W) of one image.
        parity: 0 or 1, which colour of the checkerboard passes unchanged.
        hidden_channels: Channels of the network's hidden layers.
        num_blocks: Residual blocks of the network.
        context_channels: Channels of a context feature map of size H x W that conditions
            the layer (0 for an unconditional layer). nflows passes it as `context`.
        max_log_scale: The bound $c$ of the log-scale.
    """

    def __init__(
        self,
        shape: tuple[int, int, int],
        parity: int,
        *,
        hidden_channels: int = 64,
        num_blocks: int = 2,
        context_channels: int = 0,
        max_log_scale: float = 3.0,
    ) -> None:
        super().__init__()
        channels, height, width = shape
        if parity not in (0, 1):
            raise ValueError(f"parity must be 0 or 1, got {parity!r}")
        if height * width < 2:
            raise ValueError(f"a checkerboard mask needs at least 2 pixels, got an image of {height}x{width}")
        self.channels = channels
        self.max_log_scale = max_log_scale
        self.register_buffer("mask", checkerboard_mask(height, width, parity))
        self.net = ConvNet(channels + 1, 2 * channels, hidden_channels, num_blocks, context_channels)

    def extra_repr(self) -> str:
        parity = int(self.mask[0, 0, 0, 0].item() == 0)
        return f"channels={self.channels}, parity={parity}, max_log_scale={self.max_log_scale}"

    def _scale_and_shift(
        self, fixed: torch.Tensor, context: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the log-scale s and the shift t, both zero on the unchanged pixels."""
        mask = self.mask.expand(fixed.shape[0], 1, *fixed.shape[2:])
        raw = self.net(torch.cat([fixed, mask], dim=1), context)
        raw_log_scale, shift = raw.chunk(2, dim=1)
        log_scale = self.max_log_scale * torch.tanh(raw_log_scale / self.max_log_scale)
        free = 1.0 - self.mask
        return log_scale * free, shift * free

    def forward(
        self, inputs: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_shape(inputs)
        log_scale, shift = self._scale_and_shift(inputs * self.mask, context)
        outputs = inputs * torch.exp(log_scale) + shift
        return outputs, log_scale.flatten(1).sum(1)

    def inverse(
        self, inputs: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_shape(inputs)
        log_scale, shift = self._scale_and_shift(inputs * self.mask, context)
        outputs = (inputs - shift) * torch.exp(-log_scale)
        return outputs, -log_scale.flatten(1).sum(1)

    def _check_shape(self, inputs: torch.Tensor) -> None:
        expected = (self.channels, *self.mask.shape[2:])
        if inputs.dim() != 4 or tuple(inputs.shape[1:]) != expected:
            raise ValueError(
                f"CheckerboardAffineCoupling expects images of shape (N, {expected[0]}, "
                f"{expected[1]}, {expected[2]}), got {tuple(inputs.shape)}"
            )
