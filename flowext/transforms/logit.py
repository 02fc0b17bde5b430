"""The logit with alpha squashing."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.distributions import constraints

from flowext._checks import check_alpha
from flowext._constraints import OpenInterval
from flowext.transforms._base import REQUIRED, ElementwiseTransform

__all__ = ["Logit"]


class Logit(ElementwiseTransform):
    r"""Transform via the map $y = \operatorname{logit}(\alpha/2 + (1 - \alpha)\,x)$.

    With $s = \alpha/2 + (1 - \alpha)\,x$, the squash that keeps $[0, 1]$ away from the poles:

    - forward: $y = \log s - \log(1 - s)$
    - inverse: $x = (\sigma(y) - \alpha/2) / (1 - \alpha)$
    - forward log-det: $\log(1 - \alpha) - \log s - \log(1 - s)$ per element
    - inverse log-det: $-\log(1 - \alpha) - y - 2\,\operatorname{softplus}(-y)$ per element

    The codomain is $[-L, L]$ with $L = \log((1 - \alpha/2) / (\alpha/2))$; `alpha = 0` is the
    plain logit, which maps 0 and 1 to $-\infty$ and $+\infty$ (never NaN). Its domain is then
    the open interval $(0, 1)$, so a distribution with `validate_args=True` rejects data at
    exactly 0 or 1, where the density of a model in logit space is not defined.

    Like torch's transforms, `Logit` does not read its input to check it: a
    `TransformedDistribution` with `validate_args=True` checks the data against the domain.
    Inputs outside $[0, 1]$ give NaN once $s$ leaves $(0, 1)$. Integer and bool inputs are
    converted to torch's default dtype first.

    The forward computes $1 - s$ as $\alpha/2 + (1 - \alpha)(1 - x)$, so `Logit(1 - x)` equals
    `-Logit(x)` exactly wherever $1 - x$ is exact. The inverse evaluates the sigmoid at
    $-|y|$ and mirrors the result for $y > 0$, which keeps it accurate near both 0 and 1.

    Args:
        alpha: The squashing constant $\alpha$ in $[0, 1)$.
        event_dim: Number of rightmost dimensions that form one event.
        cache_size: 1 (the default) to remember the last input and output, 0 for no cache.

    Raises:
        ValueError: If `alpha` is outside $[0, 1)$.

    Examples:
        >>> t = Logit(alpha=0.05)
        >>> x = torch.tensor([0.0, 1.0, 0.5])
        >>> y, ladj = t.call_and_ladj(x)
        >>> y
        tensor([-3.6636,  3.6636,  0.0000])
        >>> ladj
        tensor([3.6629, 3.6629, 1.3350])
        >>> t.inv(y)
        tensor([0.0000, 1.0000, 0.5000])
    """

    bijective = True
    sign = 1
    default_cache_size = 1

    def __init__(self, alpha: float = 0.05, *, event_dim: int = 0, cache_size: int = 1) -> None:
        super().__init__(event_dim=event_dim, cache_size=cache_size)
        self.alpha = check_alpha(alpha)
        self._half_alpha = self.alpha / 2
        self._slope = 1.0 - self.alpha
        self._log_slope = math.log1p(-self.alpha)

    def _params(self) -> list[tuple[str, Any, Any]]:
        # REQUIRED as the default: the repr always shows alpha, default or not.
        return [("alpha", self.alpha, REQUIRED)]

    @property
    def bound(self) -> float:
        r"""The bound $L = \log((1 - \alpha/2) / (\alpha/2))$ of the codomain; inf for alpha 0."""
        if self.alpha == 0.0:
            return math.inf
        # log(alpha) - log(2) rather than log(alpha / 2), which underflows for the smallest alpha.
        return math.log1p(-self._half_alpha) - (math.log(self.alpha) - math.log(2.0))

    def _domain_constraint(self) -> constraints.Constraint:
        if self.alpha == 0.0:
            # The plain logit maps 0 and 1 to -inf and +inf, where no density is defined.
            return OpenInterval(0.0, 1.0)
        return constraints.unit_interval

    def _codomain_constraint(self) -> constraints.Constraint:
        if self.alpha == 0.0:
            return constraints.real
        return constraints.interval(-self.bound, self.bound)

    def _log_squashed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return log s and log(1 - s), computing 1 - s from 1 - x for exact symmetry."""
        if not x.is_floating_point():
            # 1 - x would wrap around in unsigned integers and fail on bool.
            x = x.to(torch.get_default_dtype())
        if self.alpha == 0.0:
            return torch.log(x), torch.log(1 - x)
        # The in-place steps round as the out-of-place formulas do and allocate less; autograd
        # needs neither their inputs nor their outputs.
        s = torch.mul(x, self._slope).add_(self._half_alpha)
        one_minus_s = torch.rsub(x, 1).mul_(self._slope).add_(self._half_alpha)
        if torch.is_grad_enabled() and x.requires_grad:
            # The gradient of log needs its input, so that input stays.
            return torch.log(s), torch.log(one_minus_s)
        return s.log_(), one_minus_s.log_()

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        log_s, log_one_minus_s = self._log_squashed(x)
        return log_s - log_one_minus_s

    def _elementwise_ladj(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # From the input, where it is exact: y is rounded, x is not.
        log_s, log_one_minus_s = self._log_squashed(x)
        return self._log_slope - log_s - log_one_minus_s

    def _call_with_ladj(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The value and the log-det share both logarithms. Once y exists, the log-det
        # (log(1 - alpha) - log s) - log(1 - s) is built in place on log s. Autograd needs the
        # input of log, not its output, and -a + c rounds as c - a does.
        log_s, log_one_minus_s = self._log_squashed(x)
        y = log_s - log_one_minus_s
        ladj = log_s.neg_().add_(self._log_slope).sub_(log_one_minus_s)
        return y, ladj

    @staticmethod
    def _fold(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return h = 1 where y > 0 and 0 elsewhere, and -|y| computed as y (1 - 2h).

        The product gives -|y| exactly, and its gradient is 1 at y = 0, where the gradient of
        abs is 0 and would make the gradient of the whole inverse vanish. h is built from
        arithmetic rather than a boolean mask, since selecting with a mask costs several times
        more on the CPU. NaN stays NaN.
        """
        upper = torch.sign(y.detach()).clamp(min=0)
        return upper, y * upper.mul(-2).add_(1)

    def _inverse_parts(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return x, -|y| and exp(-|y|), which the inverse log-det reuses."""
        if not y.is_floating_point():
            y = y.to(torch.get_default_dtype())
        upper, negative = self._fold(y)
        decay = torch.exp(negative)

        # sigmoid(-|y|) lies in (0, 1/2], where it has its full relative precision. For y > 0,
        # x = 1 - (sigmoid(-y) - alpha/2) / (1 - alpha), the mirror image of the y <= 0 branch.
        lower = decay / (1 + decay)
        if self.alpha != 0.0:
            # In place: the division saved its inputs for autograd, not its output.
            lower = lower.sub_(self._half_alpha).div_(self._slope)
        # (1 - lower) h + lower (1 - h): each product is exact and one of them is 0, so this
        # selects one branch exactly. In place on 1 - lower, which autograd does not need.
        x = torch.rsub(lower, 1).mul_(upper).add_(lower * torch.rsub(upper, 1))
        return x, negative, decay

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        return self._inverse_parts(y)[0]

    def _inverse_with_ladj(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, negative, decay = self._inverse_parts(y)
        # This is _inverse_ladj_from_parts computed in place, with the same rounding. log1p may
        # overwrite its input when autograd does not need that input.
        if torch.is_grad_enabled() and decay.requires_grad:
            softplus = torch.log1p(decay)
        else:
            softplus = decay.log1p_()
        return x, softplus.mul_(-2).add_(negative).sub_(self._log_slope)

    def _inverse_elementwise_ladj(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if not y.is_floating_point():
            y = y.to(torch.get_default_dtype())
        negative = self._fold(y)[1]
        return self._inverse_ladj_from_parts(negative, torch.exp(negative))

    def _inverse_ladj_from_parts(self, negative: torch.Tensor, decay: torch.Tensor) -> torch.Tensor:
        # log sigmoid'(y) = -|y| - 2 log(1 + exp(-|y|)), symmetric in y and finite for any
        # finite y; -inf at y = +-inf.
        return negative - 2 * torch.log1p(decay) - self._log_slope
