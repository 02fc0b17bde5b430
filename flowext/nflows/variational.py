"""Variational dequantization as an nflows transform (Flow++, Ho et al. 2019)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from nflows.flows.base import Flow
from nflows.transforms.base import CompositeTransform
from nflows.transforms.base import Transform as NflowsTransform
from nflows.transforms.coupling import AffineCouplingTransform
from nflows.nn.nets import ResidualNet
from torch import nn

from flowext._checks import check_alpha, check_num_bins, check_positive_int, check_real_tensor, check_shape
from flowext._numerics import noise_margin
from flowext.nflows.base import StandardNormal
from flowext.transforms.dequantize import check_integer_data, quantize

__all__ = ["VariationalDequantizer", "conditional_noise_flow"]


class VariationalDequantizer(NflowsTransform):
    r"""nflows transform that adds learned noise: $y = x + u$ with $u \sim q(u \mid x)$.

    The noise is $u = m + (1 - 2m)\,\sigma(v)$, where $v$ is drawn from a conditional nflows
    flow $q_v(v \mid h)$ whose context $h$ is a feature map of the normalized data
    $2x / (K - 1) - 1$, and $m$ is the margin of `Dequantize` that keeps $u$ away from the bin
    edges in the working dtype. By the change of variables through the sigmoid,

    $$\log q(u \mid x) = \log q_v(v \mid h) + \sum_i [\operatorname{softplus}(v_i)
    + \operatorname{softplus}(-v_i)] - D \log(1 - 2m).$$

    - forward: $(x + u,\ -\log q(u \mid x))$, the log-det of shape [batch]
    - inverse: $(\operatorname{clamp}(\lfloor y \rfloor, 0, K - 1),\ 0)$

    As the first transform of an nflows `Flow`, it makes `Flow.log_prob(x)` one sample of the
    variational dequantization bound
    $\log P(x) \ge \mathbb{E}_{q}[\log p(x + u) - \log q(u \mid x)]$, and the gradient of that
    sample trains $q$ along with the model (the noise is reparameterized). The sign matters:
    the log-det is $-\log q$, which is positive where $q$ is below the uniform density.

    nflows' `CompositeTransform` adds log-dets in the dtype of its input, so pass integer data
    as a floating tensor (`x.float()`) to a flow that contains this transform.

    Quantization has no density, so the inverse reports a log-det of zero:
    `Flow.sample_and_log_prob` then returns the model's density at the continuous sample,
    before quantization.

    Args:
        num_bins: The number of levels $K$.
        noise_flow: A conditional nflows `Flow` over $v$. `noise_flow.sample_and_log_prob(1,
            context=h)` must return samples with $D$ elements per example, $D$ being the
            number of elements of one data example. Its base distribution must sample in the
            flow's dtype for `.to(torch.float64)` to work; `flowext.nflows.StandardNormal` does,
            nflows' own does not.
        context_net: Module (or other callable) that maps the normalized data (the shape of
            the input) to the context $h$. By default the normalized data are the context.
        event_shape: Shape of one data example, without the batch dimension. When given,
            `forward` checks its input against it. `with_coupling_flow` sets it.
        noise_shape: Shape of one sample of `noise_flow`, without the batch dimension, which
            `log_q` needs to evaluate the flow's density. By default a flat vector of $D$
            elements. Sampling works with any shape of $D$ elements.
        validate_args: Whether to check that the data are integers in $[0, K - 1]$.
        logit_alpha: The squashing constant $\alpha$ of the `Logit` that follows, in $[0, 1)$;
            above 1/2 it widens the noise margin (see `Dequantize`).

    Raises:
        ValueError: From `forward`, if the data are not integers in $[0, K - 1]$, if
            `context_net` returns a batch of another size, or if `noise_flow` returns samples
            with another number of elements per example.
    """

    def __init__(
        self,
        num_bins: int,
        noise_flow: Flow,
        context_net: nn.Module | None = None,
        *,
        event_shape: tuple[int, ...] | None = None,
        noise_shape: tuple[int, ...] | None = None,
        validate_args: bool = True,
        logit_alpha: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_bins = check_num_bins(num_bins)
        self.logit_alpha = check_alpha(logit_alpha, "logit_alpha")
        if not isinstance(noise_flow, nn.Module) or not hasattr(noise_flow, "sample_and_log_prob"):
            raise ValueError(
                f"noise_flow must be an nflows Flow (a module with sample_and_log_prob), got "
                f"{type(noise_flow).__name__}"
            )
        self.noise_flow = noise_flow
        if context_net is not None and not callable(context_net):
            raise ValueError(
                f"context_net must be a torch.nn.Module (or another callable) or None, got "
                f"{type(context_net).__name__}"
            )
        self.context_net = context_net if context_net is not None else nn.Identity()
        self.event_shape = None if event_shape is None else check_shape(event_shape, "event_shape")
        self.noise_shape = None if noise_shape is None else check_shape(noise_shape, "noise_shape")
        if not isinstance(validate_args, bool):
            raise ValueError(f"validate_args must be True or False, got {validate_args!r}")
        self.validate_args = validate_args

    @classmethod
    def with_coupling_flow(
        cls,
        num_bins: int,
        shape: tuple[int, ...] | torch.Size,
        *,
        hidden_features: int = 64,
        context_features: int = 32,
        num_layers: int = 4,
        validate_args: bool = True,
        logit_alpha: float = 0.0,
    ) -> VariationalDequantizer:
        """Build a dequantizer whose $q_v$ is an affine coupling flow conditioned on an MLP.

        The context network flattens the normalized example and maps it through one hidden
        layer to `context_features` features; the noise flow is `conditional_noise_flow` over
        the flattened example.

        Args:
            num_bins: The number of levels $K$.
            shape: Shape of one example, without the batch dimension, e.g. (1, 8, 8).
            hidden_features: Width of the hidden layers.
            context_features: Number of context features.
            num_layers: Number of coupling layers.
            validate_args: Whether to check that the data are integers in $[0, K - 1]$.
            logit_alpha: The squashing constant of the `Logit` that follows; see the class.

        Examples:
            >>> dequantizer = VariationalDequantizer.with_coupling_flow(17, (1, 8, 8))
            >>> y, logabsdet = dequantizer(torch.randint(0, 17, (5, 1, 8, 8)))
            >>> y.shape, logabsdet.shape
            (torch.Size([5, 1, 8, 8]), torch.Size([5]))
        """
        shape = check_shape(shape)
        num_features = math.prod(shape)
        if num_features < 2:
            raise ValueError(
                f"shape must describe at least 2 elements for coupling layers, got {shape}"
            )
        hidden_features = check_positive_int(hidden_features, "hidden_features")
        context_features = check_positive_int(context_features, "context_features")
        context_net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(num_features, hidden_features),
            nn.ReLU(),
            nn.Linear(hidden_features, context_features),
        )
        noise_flow = conditional_noise_flow(
            num_features,
            context_features,
            hidden_features=hidden_features,
            num_layers=num_layers,
        )
        return cls(
            num_bins,
            noise_flow,
            context_net,
            event_shape=shape,
            noise_shape=(num_features,),
            validate_args=validate_args,
            logit_alpha=logit_alpha,
        )

    def working_dtype(self, inputs: torch.Tensor) -> torch.dtype:
        """Return the dtype of the computation: the module's, else that of floating `inputs`.

        Modules without floating-point tensors and integer inputs give torch's default dtype.
        """
        for tensor in (*self.parameters(), *self.buffers()):
            if tensor.is_floating_point():
                return tensor.dtype
        if inputs.is_floating_point():
            return inputs.dtype
        return torch.get_default_dtype()

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Map integer data in [0, K - 1] to [-1, 1], the input of the context network."""
        return x * (2.0 / (self.num_bins - 1)) - 1.0

    def _context(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        context = self.context_net(self.normalize(x))
        if context.shape[0] != batch:
            raise ValueError(
                f"context_net must keep the batch size: it returned shape "
                f"{tuple(context.shape)} for {batch} examples of shape {tuple(x.shape[1:])}"
            )
        return context

    def sample_noise(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw u ~ q(u|x) once per example and return (u, log q(u|x) of shape [batch]).

        `x` holds integers, already in the working dtype.
        """
        batch = x.shape[0]
        num_elements = math.prod(x.shape[1:])
        margin = noise_margin(self.num_bins, x.dtype, self.logit_alpha)
        if batch == 0:
            return torch.zeros_like(x), x.new_zeros(0)

        v, log_q_v = self.noise_flow.sample_and_log_prob(1, context=self._context(x))
        if v.numel() != batch * num_elements:
            raise ValueError(
                f"noise_flow must return {num_elements} elements per example (the size of one "
                f"data example of shape {tuple(x.shape[1:])}), got samples of shape "
                f"{tuple(v.shape)} for {batch} examples"
            )
        v = v.reshape(x.shape)
        log_q = log_q_v.reshape(batch) + self._log_q_correction(v, margin)

        noise = torch.sigmoid(v) * (1.0 - 2.0 * margin) + margin
        return noise, log_q

    def log_q(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Return log q(u|x) for given noise u, of shape [batch]; -inf outside [m, 1 - m].

        An example whose noise holds NaN gets NaN.

        This evaluates the noise flow's density at v = logit((u - m) / (1 - 2m)), so it needs
        `noise_shape` to match the noise flow (a flat vector unless set otherwise). At the
        endpoints m and 1 - m, where the logit is infinite, it uses the nearest value inside,
        so it can differ there from the log q that `sample_noise` reported for the same draw.

        Args:
            x: A batch of integer data, with the batch dimension first.
            noise: The noise u, of the same shape as `x`.

        Raises:
            ValueError: If `noise` and `x` differ in shape.
        """
        check_real_tensor(x, "x")
        check_real_tensor(noise, "noise")
        if noise.shape != x.shape:
            raise ValueError(
                f"noise must have the shape of x, got {tuple(noise.shape)} and {tuple(x.shape)}"
            )
        dtype = self.working_dtype(noise)
        x, noise = x.to(dtype), noise.to(dtype)
        batch = x.shape[0]
        margin = noise_margin(self.num_bins, dtype, self.logit_alpha)
        if batch == 0:
            return x.new_zeros(0)

        # Invert u = m + (1 - 2m) sigmoid(v). Points outside the interval get a placeholder v
        # and log q = -inf at the end.
        squashed = (noise - margin) / (1.0 - 2.0 * margin)
        outside = ((squashed < 0) | (squashed > 1)).reshape(batch, -1).any(-1)
        not_a_number = squashed.isnan().reshape(batch, -1).any(-1)

        # Rounding puts the noise of large |v| exactly on m or 1 - m (in float32 for v above
        # about 17), where the logit is infinite. Those points are evaluated at the nearest
        # value inside, so a draw never scores -inf.
        info = torch.finfo(dtype)
        v = torch.logit(squashed.nan_to_num(0.5).clamp(info.tiny, 1.0 - info.eps / 2))

        noise_shape = self.noise_shape or (math.prod(x.shape[1:]),)
        log_q_v = self.noise_flow.log_prob(v.reshape(batch, *noise_shape), context=self._context(x))
        log_q = log_q_v.reshape(batch) + self._log_q_correction(v, margin)
        log_q = torch.where(outside, -math.inf, log_q)
        return torch.where(not_a_number, math.nan, log_q)

    def _log_q_correction(self, v: torch.Tensor, margin: float) -> torch.Tensor:
        """Return log q(u|x) - log q_v(v|h) per example: the sigmoid and the margin terms."""
        # log q(u|x) = log q_v(v|h) - sum log sigmoid'(v) - D log(1 - 2m), where
        # -log sigmoid'(v) = softplus(v) + softplus(-v).
        batch = v.shape[0]
        num_elements = math.prod(v.shape[1:])
        sigmoid_log_det = (F.softplus(v) + F.softplus(-v)).reshape(batch, num_elements).sum(-1)
        return sigmoid_log_det - num_elements * math.log1p(-2.0 * margin)

    def forward(
        self, inputs: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (x + u, -log q(u|x)); the flow's own `context` is not used."""
        check_real_tensor(inputs, "inputs")
        if inputs.dim() < 1:
            raise ValueError("inputs must have a batch dimension, got a 0-dimensional tensor")
        if self.event_shape is not None and tuple(inputs.shape[1:]) != self.event_shape:
            raise ValueError(
                f"inputs must hold examples of shape {self.event_shape} after the batch "
                f"dimension, got shape {tuple(inputs.shape)}"
            )
        if self.validate_args:
            check_integer_data(inputs, self.num_bins, f"VariationalDequantizer(num_bins={self.num_bins})")

        x = inputs.to(self.working_dtype(inputs))
        noise, log_q = self.sample_noise(x)
        return x + noise, -log_q

    def inverse(
        self, inputs: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (clamp(floor(y), 0, K - 1), 0): quantization, with a log-det of zero."""
        check_real_tensor(inputs, "inputs")
        return quantize(inputs, self.num_bins), inputs.new_zeros(inputs.shape[:1])

    def extra_repr(self) -> str:
        return f"num_bins={self.num_bins}"


def conditional_noise_flow(
    num_features: int,
    context_features: int,
    *,
    hidden_features: int = 64,
    num_layers: int = 4,
    num_blocks: int = 2,
) -> Flow:
    """Build a conditional nflows flow of affine coupling layers over vectors.

    Each layer transforms half of the features with a scale and shift computed by a residual
    network from the other half and the context; the halves alternate between layers. The base
    distribution is `flowext.nflows.StandardNormal`, which samples in the flow's dtype.

    Args:
        num_features: Number of features $D$ of one sample.
        context_features: Number of context features.
        hidden_features: Width of the residual networks.
        num_layers: Number of coupling layers.
        num_blocks: Number of residual blocks per network.
    """
    num_features = check_positive_int(num_features, "num_features")
    num_layers = check_positive_int(num_layers, "num_layers")
    if num_features < 2:
        raise ValueError(f"num_features must be at least 2 for coupling layers, got {num_features}")

    def make_net(in_features: int, out_features: int) -> nn.Module:
        return ResidualNet(
            in_features,
            out_features,
            hidden_features=hidden_features,
            context_features=context_features,
            num_blocks=num_blocks,
        )

    layers = []
    for index in range(num_layers):
        mask = torch.arange(num_features) % 2 == index % 2
        layers.append(AffineCouplingTransform(mask.to(torch.int64) * 2 - 1, make_net))
    return Flow(CompositeTransform(layers), StandardNormal([num_features]))
