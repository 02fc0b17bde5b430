"""The variational dequantization page and the nflows guide: their formulas and quoted numbers.

Each number that docs/theory/variational-dequantization.md or docs/guides/nflows.md quotes is
recomputed here, from the closed form where there is one and through flowext otherwise, so a
page with a wrong number fails. The derived identities are checked against flowext and
autograd in float64.
"""

import math
import pathlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("nflows")
from nflows.distributions import StandardNormal as NflowsStandardNormal
from nflows.distributions.base import Distribution
from nflows.flows import Flow
from nflows.nn.nets import ResidualNet
from nflows.transforms import CompositeTransform, ReversePermutation
from nflows.transforms.coupling import AffineCouplingTransform
from torch.distributions.transforms import ReshapeTransform

from flowext import Logit, Scale, bits_per_dim, importance_weighted_log_likelihood
from flowext._numerics import noise_margin
from flowext.nflows import StandardNormal, TransformAdapter, UniformDequantizer, VariationalDequantizer
from helpers import assert_quoted, table_rows

ROOT = pathlib.Path(__file__).resolve().parent.parent
THEORY_PAGE = ROOT / "docs" / "theory" / "variational-dequantization.md"
GUIDE_PAGE = ROOT / "docs" / "guides" / "nflows.md"
NUM_BINS = 256


class PowerNoise(Distribution):
    """Noise v = logit(s) whose s has the density (a + 1) s^a on (0, 1) per element.

    a = 0 makes v standard logistic, so that u is uniform, and a = 1 gives q(u|x) = 2u. The draw
    s = U^(1 / (a + 1)) is differentiable in a. The context only sets the batch size.
    """

    def __init__(self, a: float, features: int = 1):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a, dtype=torch.float64))
        self.features = features

    def _sample(self, num_samples, context):
        uniform = torch.rand(context.shape[0], num_samples, self.features, dtype=torch.float64)
        return torch.logit(uniform ** (1 / (self.a + 1)))

    def _log_prob(self, v, context):
        log_s, log_one_minus_s = -F.softplus(-v), -F.softplus(v)
        return (torch.log1p(self.a) + (self.a + 1) * log_s + log_one_minus_s).sum(-1)


def power_dequantizer(a: float, features: int = 1) -> VariationalDequantizer:
    return VariationalDequantizer(NUM_BINS, PowerNoise(a, features), context_net=nn.Identity())


def exact_power_bound(a: float) -> float:
    """Return the bound for the model uniform on [0, 256) and q(u|x) = (a + 1) u^a, no margin."""
    return -math.log(NUM_BINS) - math.log1p(a) + a / (a + 1)


# -- The worked number ---------------------------------------------------------------------


def test_worked_number_table():
    text = THEORY_PAGE.read_text()
    log_p = -math.log(NUM_BINS)
    gap = math.log(2) - 0.5
    bound = log_p - gap
    wrong_sign = log_p + gap

    # E_q[log q] for q = 2u, by the midpoint rule, against the closed form log 2 - 1/2.
    points = 1_000_000
    u = (torch.arange(points, dtype=torch.float64) + 0.5) / points
    assert (2 * u * torch.log(2 * u)).mean().item() == pytest.approx(gap, abs=1e-9)
    assert exact_power_bound(1.0) == pytest.approx(bound, rel=1e-15)

    assert_quoted(text, f"= {gap:.6f} \\text{{ nats}}")
    for label, nats in [
        ("$\\log P(x) = -\\log 256$", log_p),
        ("bound, $-\\log 256 - (\\log 2 - 1/2)$", bound),
        ("sign error, $-\\log 256 + (\\log 2 - 1/2)$", wrong_sign),
    ]:
        (row,) = table_rows(text, label)
        assert row[1] == f"{nats:.6f}"
        assert row[2] == f"{bits_per_dim(nats, 1):.6f}"
    assert bits_per_dim(wrong_sign, 1) < 8 < bits_per_dim(bound, 1)

    assert_quoted(text, f"costs {bits_per_dim(bound, 1) - 8:.6f} bits more")
    assert_quoted(text, f"2 e^{{-1/2}} = {2 * math.exp(-0.5):.6f}$")
    assert NUM_BINS * math.exp(wrong_sign) == pytest.approx(2 * math.exp(-0.5), rel=1e-12)

    margin_term = math.log1p(-2 * noise_margin(NUM_BINS, torch.float64))
    mantissa, exponent = f"{margin_term:.1e}".split("e")
    assert_quoted(text, f"$K = 256$ that is ${mantissa} \\times 10^{{{int(exponent)}}}$ nats")


@pytest.mark.parametrize("a", [0.0, 0.25, 1.0, 3.0])
def test_power_noise_bound_never_above_log_p(a):
    # log(1 + a) >= a / (1 + a), so no q of the family beats log P(x) = -log 256.
    assert exact_power_bound(a) <= -math.log(NUM_BINS)

    torch.manual_seed(0)
    x = torch.randint(0, NUM_BINS, (400_000, 1)).double()
    with torch.no_grad():
        _, minus_log_q = power_dequantizer(a)(x)
    bound = -math.log(NUM_BINS) + minus_log_q
    standard_error = bound.std().item() / math.sqrt(len(x))

    margin_term = math.log1p(-2 * noise_margin(NUM_BINS, torch.float64))
    expected = exact_power_bound(a) + margin_term
    assert bound.mean().item() == pytest.approx(expected, abs=5 * standard_error + 1e-12)


def test_linear_noise_log_det_per_draw():
    # -log q(u|x) = -log(2 s) + log(1 - 2m) with s = (u - m) / (1 - 2m): the log-det is -log q.
    dequantizer = power_dequantizer(1.0)
    x = torch.randint(0, NUM_BINS, (1000, 1)).double()

    y, minus_log_q = dequantizer(x)

    margin = noise_margin(NUM_BINS, torch.float64)
    s = (y - x - margin) / (1 - 2 * margin)
    expected = -torch.log(2 * s).squeeze(-1) + math.log1p(-2 * margin)
    torch.testing.assert_close(minus_log_q, expected)


def test_logistic_noise_gives_uniform_log_det():
    # q_v = sigma' cancels the sigmoid term: log q(u|x) = -D log(1 - 2m), Dequantize's density.
    features = 5
    dequantizer = power_dequantizer(0.0, features)
    x = torch.randint(0, NUM_BINS, (100, features)).double()

    _, minus_log_q = dequantizer(x)

    per_example = features * math.log1p(-2 * noise_margin(NUM_BINS, torch.float64))
    torch.testing.assert_close(minus_log_q, torch.full((100,), per_example, dtype=torch.float64))


# -- log q through the sigmoid -------------------------------------------------------------


@pytest.mark.parametrize("shape", [(6,), (1, 2, 3)], ids=["vectors", "images"])
def test_log_q_identity_against_autograd(shape):
    torch.manual_seed(0)
    num_bins = 17
    dequantizer = VariationalDequantizer.with_coupling_flow(num_bins, shape, hidden_features=16, num_layers=2)
    dequantizer = dequantizer.double()
    x = torch.randint(0, num_bins, (7, *shape)).double()
    margin = noise_margin(num_bins, torch.float64)
    num_elements = math.prod(shape)

    context = dequantizer.context_net(dequantizer.normalize(x))
    torch.manual_seed(1)
    v, log_q_v = dequantizer.noise_flow.sample_and_log_prob(1, context=context)
    v, log_q_v = v.reshape(x.shape).detach().requires_grad_(), log_q_v.reshape(7)

    u = margin + (1 - 2 * margin) * torch.sigmoid(v)
    (slope,) = torch.autograd.grad(u.sum(), v)
    v = v.detach()

    # The slope of u = m + (1 - 2m) sigmoid(v) and its log, the sigmoid and margin terms.
    torch.testing.assert_close(slope, (1 - 2 * margin) * torch.sigmoid(v) * torch.sigmoid(-v))
    torch.testing.assert_close(slope.log(), math.log1p(-2 * margin) - F.softplus(v) - F.softplus(-v))

    log_q = log_q_v - slope.log().reshape(7, -1).sum(-1)
    formula = (
        log_q_v
        + (F.softplus(v) + F.softplus(-v)).reshape(7, -1).sum(-1)
        - num_elements * math.log1p(-2 * margin)
    )
    torch.testing.assert_close(formula, log_q)

    torch.manual_seed(1)
    noise, sampled_log_q = dequantizer.sample_noise(x)
    torch.manual_seed(1)
    y, minus_log_q = dequantizer(x)
    torch.testing.assert_close(noise, u.detach())
    torch.testing.assert_close(sampled_log_q, log_q)
    torch.testing.assert_close(y, x + noise)
    torch.testing.assert_close(minus_log_q, -log_q)
    torch.testing.assert_close(dequantizer.log_q(x, noise), log_q)


def test_log_q_is_minus_inf_outside_interval():
    dequantizer = VariationalDequantizer.with_coupling_flow(17, (4,), hidden_features=8, num_layers=2).double()
    x = torch.randint(0, 17, (3, 4)).double()
    margin = noise_margin(17, torch.float64)
    noise = torch.full((3, 4), 0.5, dtype=torch.float64)
    noise[0, 1] = margin / 2
    noise[1, 2] = 1.0

    log_q = dequantizer.log_q(x, noise)

    assert log_q[0].item() == -math.inf
    assert log_q[1].item() == -math.inf
    assert math.isfinite(log_q[2].item())


def test_flow_log_prob_adds_minus_log_q():
    # Flow.log_prob adds the dequantizer's log-det: log p(x + u) - log q(u|x) for the same draw.
    torch.manual_seed(0)
    num_bins, dims = 17, 6
    dequantizer = VariationalDequantizer.with_coupling_flow(num_bins, (dims,), hidden_features=8, num_layers=2)
    rest = CompositeTransform([TransformAdapter(Scale(1 / num_bins)), TransformAdapter(Logit(0.05))])
    flow = Flow(CompositeTransform([dequantizer, rest]), StandardNormal([dims])).double()
    x = torch.randint(0, num_bins, (5, dims)).double()

    torch.manual_seed(1)
    log_prob = flow.log_prob(x)
    torch.manual_seed(1)
    y, minus_log_q = dequantizer(x)
    z, rest_log_det = rest(y)
    log_p = StandardNormal([dims]).double().log_prob(z) + rest_log_det

    torch.testing.assert_close(log_prob, log_p + minus_log_q)
    log_q = dequantizer.log_q(x, y - x)
    torch.testing.assert_close(log_prob, log_p - log_q)


# -- The importance-weighted estimate ------------------------------------------------------


def test_importance_weighted_table():
    text = THEORY_PAGE.read_text()
    total_draws = 4_000_000
    generator = torch.Generator().manual_seed(0)

    previous_gap = math.inf
    for num_draws in (1, 4, 16, 64):
        repeats = total_draws // num_draws
        # Weights w = p(x + u) / q(u|x) = 1 / (512 u), with u = sqrt(U) of density 2u.
        u = torch.rand(repeats, num_draws, dtype=torch.float64, generator=generator).sqrt()
        log_w = -torch.log(2 * NUM_BINS * u)
        estimates = torch.logsumexp(log_w, dim=1) - math.log(num_draws)
        gap = -math.log(NUM_BINS) - estimates.mean().item()
        standard_error = estimates.std().item() / math.sqrt(repeats)

        (row,) = table_rows(text, str(num_draws))
        tolerance = 5 * standard_error + 5e-4
        assert float(row[1]) == pytest.approx(gap, abs=tolerance)
        # M times the gap, from the quoted gap: both columns are rounded.
        assert float(row[2]) == pytest.approx(num_draws * float(row[1]), abs=num_draws * 5e-4 + 5e-3)
        # The page used 64 million draws, 16 times as many, so its standard errors are a quarter.
        assert standard_error / 4 < 2e-4
        assert gap < previous_gap
        previous_gap = gap

    assert float(table_rows(text, "1")[0][1]) == pytest.approx(math.log(2) - 0.5, abs=5e-4)
    assert_quoted(text, "64 million draws for each $M$")


def test_importance_weighted_estimate_through_flowext():
    # flowext's estimator on the dequantizer gives the gap of the table for M = 4.
    torch.manual_seed(0)
    dequantizer = power_dequantizer(1.0)
    x = torch.randint(0, NUM_BINS, (100_000, 1)).double()
    log_p = -math.log(NUM_BINS)

    with torch.no_grad():
        estimates = importance_weighted_log_likelihood(
            lambda batch: log_p + dequantizer(batch)[1], x, 4, batch_size=400_000
        )
    gap = log_p - estimates.mean().item()
    standard_error = estimates.std().item() / math.sqrt(len(x))

    (row,) = table_rows(THEORY_PAGE.read_text(), "4")
    assert gap == pytest.approx(float(row[1]), abs=5 * standard_error + 5e-4)


# -- Reparameterization --------------------------------------------------------------------


@pytest.mark.parametrize("a", [0.5, 1.0, 2.0])
def test_gradient_pathwise_and_detached(a):
    torch.manual_seed(0)
    dequantizer = power_dequantizer(a)
    parameter = dequantizer.noise_flow.a
    x = torch.randint(0, NUM_BINS, (400_000, 1)).double()

    y, minus_log_q = dequantizer(x)
    # Per-draw gradients come from one backward pass over the sum, since draws do not interact.
    bound = -math.log(NUM_BINS) + minus_log_q
    (pathwise_sum,) = torch.autograd.grad(bound.sum(), parameter)
    detached = -math.log(NUM_BINS) - dequantizer.log_q(x, (y - x).detach())
    (detached_sum,) = torch.autograd.grad(detached.sum(), parameter)

    # Per draw, at fixed U, d/da of -log q is -1/(a + 1) - log U / (a + 1)^2, of variance
    # 1 / (a + 1)^4. At fixed u it is -1/(a + 1) - log s, of variance 1 / (a + 1)^2.
    pathwise_error = 1 / ((a + 1) ** 2 * math.sqrt(len(x)))
    detached_error = 1 / ((a + 1) * math.sqrt(len(x)))
    expected = -a / (a + 1) ** 2
    assert pathwise_sum.item() / len(x) == pytest.approx(expected, abs=5 * pathwise_error)
    assert detached_sum.item() / len(x) == pytest.approx(0.0, abs=5 * detached_error)

    # The closed form of the bound has that derivative.
    step = 1e-6
    slope = (exact_power_bound(a + step) - exact_power_bound(a - step)) / (2 * step)
    assert slope == pytest.approx(expected, rel=1e-6)


def test_reparameterization_numbers_quoted():
    text = THEORY_PAGE.read_text()
    assert_quoted(text, "its derivative is $-a / (a + 1)^2$")
    assert_quoted(text, f"${-1 / (1 + 1) ** 2:.2f}$ at $a = 1$")
    assert_quoted(text, "$-\\log 256 - \\log(a + 1) + a / (a + 1)$")


# -- The tails of the learned q ------------------------------------------------------------


def test_nflows_affine_coupling_scale_range():
    # The theory page relies on nflows' affine coupling scale lying in (0.001, 1.001).
    layer = AffineCouplingTransform(torch.tensor([1, -1]), lambda n_in, n_out: nn.Linear(n_in, n_out))
    params = torch.linspace(-1000, 1000, 2001, dtype=torch.float64).reshape(-1, 1).repeat(1, 2)

    scale, _ = layer._scale_and_shift(params)

    assert scale.min().item() >= 0.001 - 1e-12
    assert scale.max().item() <= 1.001 + 1e-12


# -- The nflows guide ----------------------------------------------------------------------


def small_flow(dequantizer: nn.Module, num_bins: int, shape: tuple[int, ...]) -> tuple[Flow, CompositeTransform]:
    dims = math.prod(shape)
    mask = (torch.arange(dims) % 2).long() * 2 - 1
    rest = CompositeTransform(
        [
            TransformAdapter(Scale(1 / num_bins)),
            TransformAdapter(Logit(0.05)),
            TransformAdapter(ReshapeTransform(shape, (dims,))),
            AffineCouplingTransform(mask, lambda n_in, n_out: ResidualNet(n_in, n_out, 8)),
            ReversePermutation(dims),
        ]
    )
    return Flow(CompositeTransform([dequantizer, rest]), StandardNormal([dims])), rest


def sample_and_reference_density(flow, rest, num_samples=6):
    """Return the flow's samples and log-densities, the continuous values y before quantization,
    and log p(y) computed from the same base draws."""
    with torch.no_grad():
        torch.manual_seed(1)
        samples, log_density = flow.sample_and_log_prob(num_samples)
        torch.manual_seed(1)
        z = flow._distribution.sample(num_samples)
        y, inverse_log_det = rest.inverse(z)
        log_p_y = flow._distribution.log_prob(z) - inverse_log_det
    return samples, log_density, y, log_p_y


def test_sample_log_prob_before_quantization():
    torch.manual_seed(0)
    num_bins, shape = 17, (1, 2, 2)
    dequantizer = VariationalDequantizer.with_coupling_flow(num_bins, shape, hidden_features=8, num_layers=2)
    flow, rest = small_flow(dequantizer, num_bins, shape)

    samples, log_density, y, log_p_y = sample_and_reference_density(flow, rest)

    torch.testing.assert_close(log_density, log_p_y)
    assert torch.equal(samples, y.floor().clamp(0, num_bins - 1))
    assert bool((samples == samples.floor()).all())


def test_uniform_sample_log_prob_is_continuous_density():
    torch.manual_seed(0)
    num_bins, shape = 17, (1, 2, 2)
    flow, rest = small_flow(UniformDequantizer(num_bins), num_bins, shape)

    _, log_density, _, log_p_y = sample_and_reference_density(flow, rest)

    torch.testing.assert_close(log_density, log_p_y)


def test_guide_quoted_errors():
    text = GUIDE_PAGE.read_text()
    flow = Flow(CompositeTransform([UniformDequantizer(256), TransformAdapter(Scale(1 / 256))]), StandardNormal([4]))

    with pytest.raises(RuntimeError) as integer_error:
        flow.log_prob(torch.randint(0, 256, (3, 4), dtype=torch.uint8))
    assert_quoted(text, f"# {integer_error.value}")

    def coupling_flow(base):
        make_net = lambda n_in, n_out: ResidualNet(n_in, n_out, 8, context_features=3)  # noqa: E731
        return Flow(AffineCouplingTransform(torch.tensor([1, -1, 1, -1]), make_net), base)

    x = torch.randint(0, 17, (5, 4)).double()
    nflows_base = VariationalDequantizer(17, coupling_flow(NflowsStandardNormal([4])), nn.Linear(4, 3)).double()
    with pytest.raises(RuntimeError) as dtype_error:
        nflows_base(x)
    first_words = " ".join(str(dtype_error.value).split()[:3])
    assert_quoted(text, f"# nflows.distributions.normal: {first_words} ...")

    flowext_base = VariationalDequantizer(17, coupling_flow(StandardNormal([4])), nn.Linear(4, 3)).double()
    assert flowext_base(x)[1].dtype == torch.float64
    assert_quoted(text, "# flowext.nflows.base: torch.float64")


def test_guide_quoted_numbers():
    text = GUIDE_PAGE.read_text()

    assert_quoted(text, f"$\\log_2 K$, {math.log2(17):.3f} bits for $K = 17$")
    assert_quoted(text, f"below log2(17) = {math.log2(17):.3f}")
    assert_quoted(text, "# torch.Size([8, 3, 4, 4]) torch.Size([8])")
    assert_quoted(text, "# torch.Size([5, 1, 4, 4]) torch.Size([5])")


def test_guide_state_dict_keeps_q():
    torch.manual_seed(0)
    dequantizer = VariationalDequantizer.with_coupling_flow(17, (1, 2, 2), hidden_features=8, num_layers=2)
    flow, _ = small_flow(dequantizer, 17, (1, 2, 2))

    keys = flow.state_dict().keys()

    assert any(key.startswith("_transform._transforms.0.noise_flow.") for key in keys)
    assert any(key.startswith("_transform._transforms.0.context_net.") for key in keys)
    assert any(key.endswith("_permutation") for key in keys)


def test_float32_draws_on_interval_endpoints():
    # u = m + (1 - 2m) sigmoid(v), computed as flowext does, rounds onto m or 1 - m for large |v|.
    text = THEORY_PAGE.read_text()
    v = torch.linspace(-60, 30, 900_001)

    for num_bins, lower_quoted in [(256, -26), (17, -28)]:
        margin = noise_margin(num_bins, torch.float32)
        u = torch.sigmoid(v) * (1.0 - 2.0 * margin) + margin
        squashed = (u - margin) / (1.0 - 2.0 * margin)
        outside = ~((squashed > 0) & (squashed < 1))
        assert round(v[outside & (v > 0)].min().item()) == 17
        assert round(v[outside & (v < 0)].max().item()) == lower_quoted
    assert_quoted(text, "$v$ above about 17, or below about $-26$ to $-28$ for $K$ from 256 to 17")

    class FixedNoise(Distribution):
        """Draws v = 20 in float32 with log q_v(v) = 0, whatever the context."""

        def _sample(self, num_samples, context):
            return torch.full((context.shape[0], num_samples, 1), 20.0)

        def _log_prob(self, v, context):
            return torch.zeros(v.shape[0])

    dequantizer = VariationalDequantizer(17, FixedNoise(), context_net=nn.Identity())
    x = torch.tensor([[3.0]])

    noise, log_q = dequantizer.sample_noise(x)

    assert noise.item() == 1 - noise_margin(17, torch.float32)
    assert math.isfinite(log_q.item())
    assert math.isfinite(dequantizer.log_q(x, noise).item())
