"""Variational dequantization as a Pyro `TransformModule` that wraps the nflows dequantizer."""

from __future__ import annotations

import weakref
from typing import Any

import torch
from pyro.distributions.torch_transform import TransformModule
from torch.distributions import constraints

from flowext._checks import check_cache_size, check_event_dim, check_shape
from flowext.nflows.variational import VariationalDequantizer
from flowext.transforms.dequantize import quantize

__all__ = ["VariationalDequantization"]


class VariationalDequantization(TransformModule):
    r"""Pyro transform from continuous values to integer data, dequantized by a learned $q(u \mid x)$.

    It takes the place of `Dequantize(K).inv` as the last transform of a Pyro or torch
    `TransformedDistribution`, which maps base samples to data. With $z$ the continuous value
    and $x$ the integer data:

    - forward (sampling): $x = \operatorname{clamp}(\lfloor z \rfloor, 0, K - 1)$
    - inverse (scoring): $z = x + u$ with a fresh draw $u \sim q(u \mid x)$ on every call
    - log-det of the forward, `log_abs_det_jacobian(z, x)`: $\log q(u \mid x)$, one value per
      event of `event_dim` dimensions

    `TransformedDistribution.log_prob` subtracts the log-det of each transform, so on integer
    data it returns one sample of the variational dequantization bound

    $$\log P(x) \ge \mathbb{E}_{u \sim q(u \mid x)}[\log p(x + u) - \log q(u \mid x)],$$

    where $p$ is the density of the rest of the model at $z = x + u$. The sign convention is
    that of `Dequantize(K).inv`, whose log-det is $-\log(1 - 2m) = \log q$ for its uniform $q$.
    The wrapped `flowext.nflows.VariationalDequantizer` maps the other way (data to noise) and
    reports $-\log q(u \mid x)$, so both give the same bound for the same draw of $u$. The
    noise is reparameterized: the gradient of the bound sample trains $q$ along with the model.

    $q(u \mid x)$ is the one of the wrapped module, with its parameters: train it from nflows
    or from Pyro and use it in the other. Register it with `pyro.module` (it is a
    `torch.nn.Module`) so that Pyro's optimizers update it.

    Torch's `TransformedDistribution.log_prob` calls the inverse, then the log-det as a
    separate call. The inverse therefore keeps $\log q$ of its latest draw, for the tensor it
    returned, and the log-det call with that tensor uses it and clears it. A log-det call with
    any other $z$ evaluates $\log q(z - x \mid x)$ with the noise flow's `log_prob` instead.
    That value is $-\infty$ where $z - x$ lies outside the noise interval $[m, 1 - m]$, with $m$
    the margin of `Dequantize`. Such calls come from copies of $z$ and from torch's
    `ComposeTransform`, which recomputes $z$ when the transforms before this one have no cache.

    Each inverse call draws one $u$ per example of the value it receives. Pyro's vectorized
    particles (`vectorize_particles=True`) broadcast an observed value, so they share one draw.

    The map is not bijective, so `sign` raises `NotImplementedError`, and so do the `cdf` and
    `icdf` of a distribution that uses it.

    Args:
        dequantizer: The variational dequantizer whose $q(u \mid x)$ and parameters this
            transform uses. Its `validate_args` decides whether the inverse checks that the
            data are integers in $[0, K - 1]$.
        event_dim: Number of rightmost dimensions of one example, at least 1: 1 for vectors,
            3 for images (C, H, W). $q(u \mid x)$ is a joint density over one example, so the
            log-det has the shape of the data without these dimensions. The dimensions before
            them may have any shape.
        cache_size: 0 (the default) or 1. With 1, calling the forward (quantization) again on
            the same tensor returns the cached result. The inverse never uses the cache, because
            every score needs a fresh draw from $q$.

    Raises:
        ValueError: If `dequantizer` is not a `flowext.nflows.VariationalDequantizer`, if
            `event_dim` is not an integer >= 1 or if `cache_size` is not 0 or 1.

    Examples:
        >>> import pyro
        >>> import pyro.distributions as dist
        >>> from flowext import Logit, Scale
        >>> dequantization = VariationalDequantization.with_coupling_flow(17, (64,))
        >>> dequantization
        VariationalDequantization(num_bins=17, event_dim=1)
        >>> model = dist.TransformedDistribution(
        ...     dist.Normal(torch.zeros(64), 1.0).to_event(1),
        ...     [Logit(0.05).inv, Scale(1 / 17).inv, dequantization],
        ... )
        >>> x = model.sample((5,))
        >>> bool(((x == x.floor()) & (x >= 0) & (x <= 16)).all())
        True
        >>> bound = model.log_prob(x)  # log p(x + u) - log q(u|x), one draw per example
        >>> bound.shape
        torch.Size([5])
        >>> bool((model.log_prob(x) != bound).all())  # fresh noise on every call
        True
        >>> _ = pyro.module("dequantization", dequantization)  # train q with Pyro
    """

    bijective = False

    def __init__(
        self,
        dequantizer: VariationalDequantizer,
        *,
        event_dim: int = 1,
        cache_size: int = 0,
    ) -> None:
        super().__init__(cache_size=check_cache_size(cache_size))
        if not isinstance(dequantizer, VariationalDequantizer):
            raise ValueError(
                f"dequantizer must be a flowext.nflows.VariationalDequantizer, got "
                f"{type(dequantizer).__name__}; build one with "
                f"VariationalDequantizer.with_coupling_flow(num_bins, shape)"
            )
        event_dim = check_event_dim(event_dim)
        if event_dim < 1:
            raise ValueError(
                "event_dim must be an integer >= 1 (q(u|x) is a joint density over the elements "
                "of one example), got 0; use 1 for vectors and 3 for images (C, H, W)"
            )

        self.dequantizer = dequantizer
        self._event_dim = event_dim
        # (weak reference to the tensor returned by the latest inverse, log q of its draw).
        self._pending: tuple[weakref.ref, torch.Tensor] | None = None

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
    ) -> VariationalDequantization:
        """Build the transform around `VariationalDequantizer.with_coupling_flow`.

        `event_dim` is the length of `shape`, so one example is one event.

        Args:
            num_bins: The number of levels $K$.
            shape: Shape of one example, without the batch dimensions, e.g. (64,) or (1, 8, 8).
            hidden_features: Width of the hidden layers.
            context_features: Number of context features.
            num_layers: Number of coupling layers of the noise flow.
            validate_args: Whether to check that the data are integers in $[0, K - 1]$.
            logit_alpha: The squashing constant of the `Logit` that follows; above 1/2 it
                widens the noise margin (see `Dequantize`).
        """
        shape = check_shape(shape)
        dequantizer = VariationalDequantizer.with_coupling_flow(
            num_bins,
            shape,
            hidden_features=hidden_features,
            context_features=context_features,
            num_layers=num_layers,
            validate_args=validate_args,
            logit_alpha=logit_alpha,
        )
        return cls(dequantizer, event_dim=len(shape))

    # -- Properties that torch and Pyro read ------------------------------------------------

    @property
    def num_bins(self) -> int:
        """The number of levels $K$ of the wrapped dequantizer."""
        return self.dequantizer.num_bins

    @property
    def event_dim(self) -> int:
        return self._event_dim

    @property
    def domain(self) -> constraints.Constraint:  # type: ignore[override]
        return constraints.independent(
            constraints.half_open_interval(0.0, float(self.num_bins)), self._event_dim
        )

    @property
    def codomain(self) -> constraints.Constraint:  # type: ignore[override]
        return constraints.independent(
            constraints.integer_interval(0, self.num_bins - 1), self._event_dim
        )

    @property
    def sign(self) -> int:  # type: ignore[override]
        raise NotImplementedError(
            "VariationalDequantization is not bijective (it maps each bin to one integer), so "
            "the sign of its Jacobian is undefined; cdf and icdf of a distribution that uses it "
            "are too."
        )

    def with_cache(self, cache_size: int = 1) -> VariationalDequantization:
        """Return this transform with the cache size `cache_size`, sharing the same $q$."""
        cache_size = check_cache_size(cache_size)
        if cache_size == self._cache_size:
            return self
        return type(self)(self.dequantizer, event_dim=self._event_dim, cache_size=cache_size)

    # -- The map, its inverse and the log-det -----------------------------------------------

    def _split_shape(self, value: torch.Tensor, name: str) -> tuple[torch.Size, torch.Size]:
        """Return the batch shape and the event shape of `value`."""
        if value.dim() < self._event_dim:
            raise ValueError(
                f"{name} must have at least event_dim={self._event_dim} dimensions, got shape "
                f"{tuple(value.shape)}"
            )
        cut = value.dim() - self._event_dim
        return value.shape[:cut], value.shape[cut:]

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        return quantize(x, self.num_bins)

    def _inv_call(self, y: torch.Tensor) -> torch.Tensor:
        # Torch's cache would return the previous draw for the same data tensor.
        return self._inverse(y)

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        batch_shape, event_shape = self._split_shape(y, "the data")

        # The dequantizer draws one u per example of a flat batch.
        continuous, minus_log_q = self.dequantizer(y.reshape(-1, *event_shape))
        z = continuous.reshape(y.shape)
        log_q = -minus_log_q.reshape(batch_shape)

        self._pending = (weakref.ref(z), log_q)
        return z

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Return $\\log q(x - y \\mid y)$ for the continuous values `x` and the data `y`.

        For the tensor returned by the latest inverse call, this is the $\\log q$ of that draw,
        used once. For any other `x` it is evaluated with the noise flow.
        """
        pending = self._pending
        if pending is not None and pending[0]() is x:
            self._pending = None
            return pending[1]
        return self._noise_log_prob(y, x)

    def _noise_log_prob(self, data: torch.Tensor, continuous: torch.Tensor) -> torch.Tensor:
        """Evaluate log q(u|x) at u = continuous - data, -inf outside the noise interval."""
        batch_shape, event_shape = self._split_shape(data, "the data")
        if continuous.shape != data.shape:
            raise ValueError(
                f"the continuous values and the data must have the same shape, got "
                f"{tuple(continuous.shape)} and {tuple(data.shape)}"
            )

        dtype = self.dequantizer.working_dtype(continuous)
        data = data.reshape(-1, *event_shape).to(dtype)
        noise = continuous.reshape(data.shape).to(dtype) - data
        return self.dequantizer.log_q(data, noise).reshape(batch_shape)

    # -- Printing and pickling --------------------------------------------------------------

    def __repr__(self) -> str:
        fields = [f"num_bins={self.num_bins}", f"event_dim={self._event_dim}"]
        if self._cache_size:
            fields.append(f"cache_size={self._cache_size}")
        return f"{type(self).__name__}({', '.join(fields)})"

    def __getstate__(self) -> dict[str, Any]:
        # The pending draw and the caches belong to one computation, and a weak reference
        # cannot be pickled.
        state = self.__dict__.copy()
        state["_pending"] = None
        state["_inv"] = None
        if self._cache_size == 1:
            state["_cached_x_y"] = (None, None)
        return state
