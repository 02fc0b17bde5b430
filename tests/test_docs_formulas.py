"""The formulas derived on the docs pages hold, and the numbers the pages quote are recomputed.

Each test checks a derived formula against flowext's implementation and, where there is a
derivative, against autograd. Where a page quotes a number, the test computes it and asserts that
the page shows that value, so that a page with a wrong number fails here.
"""

import importlib.util
import math
import pathlib
import sys

import pytest
import torch
from torch.distributions import Independent, Normal, TransformedDistribution, Uniform

from flowext import Compose, Dequantize, Logit, Scale
from flowext._numerics import log1m_two_margin, noise_margin, resolvable_bins
from helpers import assert_quoted, table_rows

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
softplus = torch.nn.functional.softplus


def page(name: str) -> str:
    return (DOCS / name).read_text()


def latex_scientific(value: float, digits: int = 2) -> str:
    """Format 0.000249 as '2.49 \\times 10^{-4}', the way the pages write small numbers."""
    mantissa, exponent = f"{value:.{digits}e}".split("e")
    return f"{mantissa} \\times 10^{{{int(exponent)}}}"


# -- Logit ---------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.0, 1e-6, 0.05, 0.3])
def test_logit_softplus_form_matches_log_det(alpha):
    x = torch.linspace(1e-3, 1 - 1e-3, 201, dtype=torch.float64, requires_grad=True)
    logit = Logit(alpha)

    y, log_det = logit.call_and_ladj(x)
    (derivative,) = torch.autograd.grad(y.sum(), x)

    s = alpha / 2 + (1 - alpha) * x
    from_input = math.log(1 - alpha) - torch.log(s) - torch.log(1 - s)
    from_output = math.log(1 - alpha) + y + 2 * softplus(-y)
    symmetric = math.log(1 - alpha) + y.abs() + 2 * softplus(-y.abs())
    torch.testing.assert_close(log_det, from_input)
    torch.testing.assert_close(log_det, from_output)
    torch.testing.assert_close(log_det, symmetric)
    torch.testing.assert_close(log_det, derivative.abs().log())


def test_logit_offset_leaves_derivative_unchanged():
    # The derivative of s = alpha/2 + (1 - alpha) x is 1 - alpha whatever the offset.
    x = torch.linspace(0, 1, 11, dtype=torch.float64, requires_grad=True)
    for offset in (0.0, 0.025, 0.3):
        (slope,) = torch.autograd.grad((offset + 0.95 * x).sum(), x)
        torch.testing.assert_close(slope, torch.full_like(x, 0.95))


def test_logit_page_numbers():
    text = page("theory/logit.md")
    logit = Logit(0.05)

    y, log_det = logit.call_and_ladj(torch.tensor([0.5, 0.0, 0.9], dtype=torch.float64))
    bound = math.log((1 - 0.025) / 0.025)
    tail = 2 * torch.special.ndtr(torch.tensor(-bound, dtype=torch.float64)).item()

    assert logit.bound == pytest.approx(math.log(39), rel=1e-12)
    assert_quoted(text, f"L = \\log 39 = {bound:.4f}")
    assert_quoted(text, f"$y = \\log(0.025 / 0.975) = -\\log 39 = {y[1].item():.4f}$")
    assert_quoted(text, f"\\log 0.95 + 2 \\log 2 = {log_det[0].item():.4f}")
    assert_quoted(text, f"\\log 0.95 - \\log 0.025 - \\log 0.975 = {log_det[1].item():.4f}")
    assert_quoted(text, f"2 \\, \\Phi(-{bound:.4f}) = {latex_scientific(tail)}")
    assert_quoted(text, f"(1 - {latex_scientific(tail)})^D")
    assert_quoted(text, f"[{y[1].item():.4f}, 0.0000, {y[2].item():.4f}]")
    assert_quoted(text, f"[{log_det[1].item():.4f}, {log_det[0].item():.4f}, {log_det[2].item():.4f}]")
    for dims in (64, 784, 3072):
        assert_quoted(text, f"{(1 - tail) ** dims:.4f} for $D = {dims}$")


def test_logit_tail_samples_land_in_edge_bins():
    num_bins, alpha = 4, 0.05
    model = TransformedDistribution(
        Normal(0.0, 1.0), [Logit(alpha).inv, Scale(1 / num_bins).inv, Dequantize(num_bins).inv]
    )
    bound = Logit(alpha).bound
    torch.manual_seed(0)

    z = model.base_dist.sample((2_000_000,))
    x = model.transforms[2](model.transforms[1](model.transforms[0](z)))

    outside = z.abs() > bound
    expected = 2 * torch.special.ndtr(torch.tensor(-bound, dtype=torch.float64)).item()
    assert outside.double().mean().item() == pytest.approx(expected, rel=0.1)
    assert bool((x[z < -bound] == 0).all())
    assert bool((x[z > bound] == num_bins - 1).all())


# -- Sigmoid -------------------------------------------------------------------------------


def test_sigmoid_log_derivative_identity():
    z = torch.linspace(-20, 20, 401, dtype=torch.float64, requires_grad=True)

    (derivative,) = torch.autograd.grad(torch.sigmoid(z).sum(), z)

    exact = torch.log(torch.sigmoid(z) * torch.sigmoid(-z))
    torch.testing.assert_close(derivative.log(), exact)
    torch.testing.assert_close(-z - 2 * softplus(-z), exact)
    torch.testing.assert_close(-z.abs() - 2 * softplus(-z.abs()), exact)


@pytest.mark.parametrize("alpha", [0.0, 0.05, 0.3])
def test_logit_inverse_log_det_is_symmetric_form(alpha):
    y = torch.linspace(-12, 12, 241, dtype=torch.float64, requires_grad=True)
    inverse = Logit(alpha).inv

    x, log_det = inverse.call_and_ladj(y)
    (derivative,) = torch.autograd.grad(x.sum(), y)

    expected = -y.abs() - 2 * torch.log1p(torch.exp(-y.abs())) - math.log(1 - alpha)
    torch.testing.assert_close(log_det, expected)
    torch.testing.assert_close(log_det, derivative.log())
    torch.testing.assert_close(log_det, -Logit(alpha).log_abs_det_jacobian(x, y))


def test_sigmoid_forms_in_float32():
    z = torch.tensor([-100.0, 90.0])

    as_written = -z - 2 * torch.log1p(torch.exp(-z))
    symmetric = -z.abs() - 2 * torch.log1p(torch.exp(-z.abs()))
    as_product = torch.log(torch.sigmoid(z) * (1 - torch.sigmoid(z)))

    assert as_written[0].item() == -math.inf
    assert as_written[1].item() == -90.0
    assert symmetric.tolist() == [-100.0, -90.0]
    assert as_product[1].item() == -math.inf
    assert torch.equal(symmetric, -(-z).abs() - 2 * torch.log1p(torch.exp(-(-z).abs())))


# -- Scale ---------------------------------------------------------------------------------


@pytest.mark.parametrize("factor", [1 / 256, -3.0, 0.5])
def test_scale_log_det_is_d_log_abs_c(factor):
    x = torch.randn(7, dtype=torch.float64)
    scale = Scale(factor, event_dim=1)

    jacobian = torch.autograd.functional.jacobian(scale, x)
    log_det = scale.log_abs_det_jacobian(x, scale(x))

    assert log_det.item() == pytest.approx(7 * math.log(abs(factor)), rel=1e-12)
    assert log_det.item() == pytest.approx(torch.linalg.slogdet(jacobian).logabsdet.item())


def test_scale_page_numbers():
    text = page("theory/scale.md")

    per_image = -3072 * math.log(256)

    assert_quoted(text, f"$-3072 \\log 256 = {per_image:.2f}$")
    assert_quoted(text, f"$-\\log 256 = {-math.log(256):.4f}$")
    assert_quoted(text, f"tensor([{per_image:.4f}, {per_image:.4f}], dtype=torch.float64)")


# -- Dequantize ----------------------------------------------------------------------------


def test_dequantize_margin_table():
    text = page("theory/dequantize.md")

    for dtype, name, num_bins in [
        (torch.float32, "float32", 2),
        (torch.float32, "float32", 17),
        (torch.float32, "float32", 256),
        (torch.float64, "float64", 256),
    ]:
        margin = noise_margin(num_bins, dtype)
        log_det = log1m_two_margin(num_bins, dtype)
        assert margin == 4 * num_bins * torch.finfo(dtype).eps
        assert log_det == pytest.approx(math.log(1 - 2 * margin), rel=1e-9)
        row = f"| {name} | {num_bins} | ${latex_scientific(margin)}$ | ${latex_scientific(log_det)}$ |"
        assert_quoted(text, row)


def test_dequantize_margin_per_image():
    text = page("theory/dequantize.md")
    margin = noise_margin(256, torch.float32)

    per_image = 3072 * math.log1p(-2 * margin)
    bits = -math.log1p(-2 * margin) / math.log(2)

    assert_quoted(text, f"3072 \\log(1 - 2m) = {per_image:.3f}$ nats per image")
    assert_quoted(text, f"${latex_scientific(bits)}$ bits per dimension")


def test_uniform_noise_density_gives_margin_log_det():
    # u' = m + (1 - 2m) u has density 1 / (1 - 2m), so -log q(u') = log(1 - 2m).
    margin = noise_margin(17, torch.float64)
    u = torch.rand(5, dtype=torch.float64, requires_grad=True)

    (slope,) = torch.autograd.grad((margin + (1 - 2 * margin) * u).sum(), u)
    _, log_det = Dequantize(17).call_and_ladj(torch.arange(5, dtype=torch.float64))

    torch.testing.assert_close(slope.log(), log_det)


def worked_example():
    """Return the model, the exact log P(1) and the quadrature L_1 of the dequantization page."""
    num_bins, alpha, x = 4, 0.05, 1.0
    base = Normal(torch.tensor(0.0, dtype=torch.float64), 0.5)
    model = TransformedDistribution(
        base, [Logit(alpha).inv, Scale(1 / num_bins).inv, Dequantize(num_bins).inv]
    )
    logit = Logit(alpha)

    edges = logit(torch.tensor([x / num_bins, (x + 1) / num_bins], dtype=torch.float64))
    log_p = math.log(base.cdf(edges[1]) - base.cdf(edges[0]))

    points = 200_000
    y = x + (torch.arange(points, dtype=torch.float64) + 0.5) / points
    z, log_det = Compose([Scale(1 / num_bins), logit]).call_and_ladj(y)
    jensen = (base.log_prob(z) + log_det).mean().item()
    return model, log_p, jensen


def test_importance_weighted_bound_table():
    text = page("theory/dequantize.md")
    model, log_p, jensen = worked_example()
    torch.manual_seed(0)

    assert_quoted(text, f"$\\log P(1) = {log_p:.4f}$")
    assert_quoted(text, f"$\\mathcal{{L}}_1 = {jensen:.4f}$")

    previous = -math.inf
    for num_draws in (1, 4, 16, 64):
        repeats = 800_000 // num_draws
        log_w = model.log_prob(torch.full((repeats, num_draws), 1.0, dtype=torch.float64))
        estimates = torch.logsumexp(log_w, dim=1) - math.log(num_draws)
        bound = estimates.mean().item()
        standard_error = estimates.std().item() / math.sqrt(repeats)

        (row,) = table_rows(text, str(num_draws))
        quoted_bound, quoted_gap = float(row[1]), float(row[2])
        tolerance = 5 * standard_error + 5e-4
        reference = jensen if num_draws == 1 else bound
        assert quoted_bound == pytest.approx(reference, abs=tolerance)
        assert quoted_gap == pytest.approx(log_p - reference, abs=tolerance)
        assert bound <= log_p + tolerance
        assert bound >= previous - tolerance
        previous = bound

    # The weights are unbiased: their mean is P(1).
    weights = model.log_prob(torch.full((800_000,), 1.0, dtype=torch.float64)).exp()
    standard_error = weights.std().item() / math.sqrt(weights.numel())
    assert weights.mean().item() == pytest.approx(math.exp(log_p), abs=5 * standard_error)


# -- Composition and bits per dimension ----------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("num_bins", [2, 17, 256])
def test_uniform_model_bits_per_dimension(num_bins, dtype):
    dims = 48
    x = torch.randint(0, num_bins, (6, dims))
    flow = Compose(
        [Dequantize(num_bins, event_dim=1, dtype=dtype), Scale(1 / num_bins, event_dim=1)]
    )
    base = Independent(Uniform(torch.zeros(dims, dtype=dtype), torch.ones(dims, dtype=dtype)), 1)

    z, log_det = flow.call_and_ladj(x)
    bpd = -(base.log_prob(z) + log_det) / (dims * math.log(2))

    margin = noise_margin(num_bins, dtype)
    expected = math.log2(num_bins) - math.log2(1 - 2 * margin)
    tolerance = 1e-6 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(bpd, torch.full_like(bpd, expected), rtol=0, atol=tolerance)


def test_bits_per_dimension_page_table():
    text = page("theory/bits-per-dimension.md")

    for dtype, name, num_bins, log2_shown in [
        (torch.float32, "float32", 17, f"{math.log2(17):.7f}"),
        (torch.float32, "float32", 256, "8"),
        (torch.float64, "float64", 256, "8"),
    ]:
        margin = noise_margin(num_bins, dtype)
        excess = -math.log2(1 - 2 * margin)
        assert excess == pytest.approx(2 * margin / math.log(2), rel=1e-3)
        bpd = math.log2(num_bins) + excess
        row = f"| {name} | {num_bins} | {log2_shown} | {bpd:.7f} | ${latex_scientific(excess)}$ |"
        assert_quoted(text, row)


def test_pipeline_log_det_is_sum_of_terms():
    num_bins, alpha = 17, 0.05
    x = torch.randint(0, num_bins, (3, 10))
    pipeline = Compose(
        [Dequantize(num_bins, dtype=torch.float64), Scale(1 / num_bins), Logit(alpha)]
    )

    z, log_det = pipeline.call_and_ladj(x)
    unit = torch.sigmoid(z)  # s, recovered from the output
    expected = (
        log1m_two_margin(num_bins, torch.float64)
        - math.log(num_bins)
        + math.log(1 - alpha)
        - torch.log(unit)
        - torch.log(1 - unit)
    )

    torch.testing.assert_close(log_det, expected)


# -- Numerics ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def measure_numerics():
    path = DOCS / "scripts" / "measure_numerics.py"
    spec = importlib.util.spec_from_file_location("measure_numerics", path)
    module = importlib.util.module_from_spec(spec)
    # dataclasses look the module up by name while the class body runs.
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def assert_count_close(quoted: int, measured: int, label: str) -> None:
    # Vectorized log, exp and sigmoid may differ in the last bit between CPUs, which moves a
    # few counts; a wrong page is off by more than that.
    tolerance = 2 + 0.001 * measured
    assert abs(quoted - measured) <= tolerance, f"{label}: page {quoted}, measured {measured}"


def test_measure_script_matches_flowext(measure_numerics):
    # The script's "flowext" variant computes bit for bit what the transforms compute.
    num_bins, alpha = 256, 0.05
    generator = torch.Generator().manual_seed(1)
    x = torch.randint(0, num_bins, (100_000,), generator=generator).float()
    u = torch.rand(100_000, generator=generator)
    dequantize = Dequantize(num_bins, validate_args=False)
    scale, logit = Scale(1 / num_bins, cache_size=0), Logit(alpha, cache_size=0)

    expected = dequantize.inv(scale.inv(logit.inv(logit(scale(dequantize.apply_noise(x, u))))))
    script = measure_numerics.round_trip(x, u, num_bins, alpha, measure_numerics.Safeguards())

    assert torch.equal(script, expected)


@pytest.mark.slow
def test_numerics_page_round_trip_table(measure_numerics):
    text = page("theory/numerics.md")
    labels = {
        "plain formulas": "plain formulas",
        "flowext": "flowext",
        "flowext without the margin": "flowext without the margin",
        "flowext without the mirrored 1 - s": "flowext without the mirrored $1 - s$",
        "flowext without the mirrored sigmoid": "flowext without the mirrored sigmoid",
        "flowext with y * K in Scale's inverse": "flowext with $y \\cdot K$ in Scale's inverse",
    }
    assert_quoted(text, f"On {measure_numerics.DRAWS:,} random integers")

    for column, config in enumerate(measure_numerics.DRAW_CONFIGS, start=1):
        counts = measure_numerics.count_draw_failures(*config)
        for name, label in labels.items():
            rows = [row for row in table_rows(text, label) if len(row) == 4]
            quoted = int(rows[0][column].split()[0])
            assert_count_close(quoted, counts[name], f"{label}, {config}")
        assert counts["flowext"] == 0


@pytest.mark.slow
def test_numerics_page_edge_table(measure_numerics):
    text = page("theory/numerics.md")

    distances = measure_numerics.worst_edge_distances()

    for name in ("plain formulas", "flowext", "flowext without the mirrored sigmoid"):
        rows = [row for row in table_rows(text, name) if len(row) == 3]
        quoted = [float(cell) for cell in rows[0][1:]]
        measured = [distances[name, torch.float32], distances[name, torch.float64]]
        assert quoted == pytest.approx(measured, abs=0.26), name
    # The margin covers every failure of flowext's formulas.
    assert max(distances["flowext", d] for d in (torch.float32, torch.float64)) < 4


def test_numerics_page_symmetry_and_scale_tables(measure_numerics):
    text = page("theory/numerics.md")

    symmetry = measure_numerics.logit_symmetry_failures()
    scale = {k: measure_numerics.scale_inverse_failures(k) for k in measure_numerics.SCALE_BINS}

    assert symmetry["antisymmetry, flowext"][0] == 0
    for label, key in [
        ("$1 - s$", "antisymmetry, 1 - s"),
        ("$\\alpha/2 + (1 - \\alpha)(1 - x)$ (flowext)", "antisymmetry, flowext"),
        ("$(\\sigma(y) - \\alpha/2) / (1 - \\alpha)$", "inverse not correctly rounded, sigmoid(y)"),
        ("mirrored (flowext)", "inverse not correctly rounded, flowext"),
    ]:
        (row,) = table_rows(text, label)
        quoted, size = (int(part) for part in row[1].split(" of "))
        assert size == symmetry[key][1]
        assert_count_close(quoted, symmetry[key][0], label)

    for num_bins, result in scale.items():
        (row,) = table_rows(text, str(num_bins))
        assert_count_close(int(row[1]), result["y * K"][0], f"K = {num_bins}, y * K")
        assert_count_close(int(row[2]), result["y / c (flowext)"][0], f"K = {num_bins}, y / c")
        assert int(row[3]) == result["y * K"][1]


def test_numerics_page_dtype_limits():
    text = page("theory/numerics.md")

    for dtype, name in [
        (torch.bfloat16, "bfloat16"),
        (torch.float16, "float16"),
        (torch.float32, "float32"),
    ]:
        exponent = round(math.log2(torch.finfo(dtype).eps))
        assert resolvable_bins(dtype) == int(1 / (64 * torch.finfo(dtype).eps))
        assert_quoted(text, f"| {name} | $2^{{{exponent}}}$ | {resolvable_bins(dtype)} |")
    assert_quoted(text, f"| float64 | $2^{{-52}}$ | {resolvable_bins(torch.float64)} ($2^{{46}}$) |")
    assert resolvable_bins(torch.float64) == 2**46

    with pytest.raises(ValueError, match="supports num_bins <= 16"):
        Dequantize(17, dtype=torch.float16)
    with pytest.raises(ValueError, match="supports num_bins <= 2"):
        Dequantize(3, dtype=torch.bfloat16)
