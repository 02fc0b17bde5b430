"""Logit: values, log-dets against autograd, boundaries, symmetry and the inverse."""

import math

import pytest
import torch

from flowext import Logit
from helpers import elementwise_jacobian

ALPHAS = [0.0, 1e-6, 0.05, 0.5]


def test_logit_reference_values():
    t = Logit(alpha=0.05)
    x = torch.tensor([0.0, 1.0, 0.5])

    y, ladj = t.call_and_ladj(x)

    torch.testing.assert_close(y, torch.tensor([-3.663562, 3.663562, 0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(ladj, torch.tensor([3.662904, 3.662904, 1.335001]), atol=1e-6, rtol=0)
    torch.testing.assert_close(t.inv(y), x, atol=1e-6, rtol=0)


def test_logit_event_dim_sums_log_det():
    x = torch.full((2, 3), 0.5)
    ladj = Logit(0.05, event_dim=1).log_abs_det_jacobian(x, Logit(0.05)(x))

    assert ladj.shape == (2,)
    torch.testing.assert_close(ladj, torch.full((2,), 4.005003), atol=1e-5, rtol=0)


def test_logit_image_event_dim_per_example():
    x = torch.full((4, 3, 32, 32), 0.5, dtype=torch.float64)
    _, ladj = Logit(0.05, event_dim=3).call_and_ladj(x)

    assert ladj.shape == (4,)
    expected = 3 * 32 * 32 * (math.log(0.95) + 2 * math.log(2.0))
    torch.testing.assert_close(ladj, torch.full((4,), expected, dtype=torch.float64))
    torch.testing.assert_close(ladj[0], torch.tensor(4101.1233, dtype=torch.float64), atol=1e-4, rtol=0)


@pytest.mark.parametrize("alpha", ALPHAS, ids=lambda a: f"alpha={a}")
def test_logit_log_det_matches_autograd(alpha):
    t = Logit(alpha)
    x = torch.cat([torch.linspace(1e-6, 1 - 1e-6, 101), torch.tensor([0.0, 1.0])])
    x = x.double()
    if alpha == 0.0:
        x = x[1:-3]  # the plain logit has infinite derivatives at 0 and 1

    diagonal, off_diagonal = elementwise_jacobian(t, x)

    torch.testing.assert_close(t.log_abs_det_jacobian(x, t(x)), diagonal.abs().log())
    assert off_diagonal == 0


@pytest.mark.parametrize("alpha", ALPHAS, ids=lambda a: f"alpha={a}")
def test_logit_inverse_log_det_matches_autograd(alpha):
    t = Logit(alpha)
    y = torch.cat([torch.linspace(-30, 30, 121), torch.tensor([-700.0, 700.0])]).double()

    diagonal, off_diagonal = elementwise_jacobian(t.inv, y)
    x, ladj = t.inv.call_and_ladj(y)

    finite = diagonal != 0  # sigmoid'(+-700) underflows in float64; checked below
    torch.testing.assert_close(ladj[finite], diagonal[finite].abs().log())
    torch.testing.assert_close(t.inv.log_abs_det_jacobian(y, x), ladj)
    assert off_diagonal == 0

    # log sigmoid'(700) = -700 - 2 softplus(-700): finite where autograd underflows to 0.
    torch.testing.assert_close(ladj[-1], torch.tensor(-700.0 - math.log1p(-alpha), dtype=torch.float64))


@pytest.mark.parametrize("alpha", ALPHAS, ids=lambda a: f"alpha={a}")
def test_logit_call_and_ladj_matches_separate_calls(alpha):
    t = Logit(alpha, cache_size=0)
    x = torch.rand(64, dtype=torch.float64)

    y, ladj = t.call_and_ladj(x)
    x_back, inv_ladj = t.inv.call_and_ladj(y)

    assert torch.equal(y, t(x))
    assert torch.equal(ladj, t.log_abs_det_jacobian(x, y))
    assert torch.equal(x_back, t.inv(y))
    torch.testing.assert_close(inv_ladj, t.inv.log_abs_det_jacobian(y, x_back))
    torch.testing.assert_close(inv_ladj, -ladj)
    torch.testing.assert_close(x_back, x)


@pytest.mark.parametrize("alpha", ALPHAS, ids=lambda a: f"alpha={a}")
@pytest.mark.parametrize("requires_grad", [False, True], ids=["no-grad", "grad"])
def test_logit_event_log_det_matches_autograd(alpha, requires_grad):
    # call_and_ladj builds the log-det in place on log s, and without autograd it also takes
    # the logarithms in place. Neither may change the input or the gradient.
    t = Logit(alpha, event_dim=2, cache_size=0)
    x = torch.rand(4, 3, 5, dtype=torch.float64).clamp(1e-3, 1 - 1e-3)
    original = x.clone()

    y, ladj = t.call_and_ladj(x.requires_grad_(requires_grad))

    diagonal, off_diagonal = elementwise_jacobian(t, x)
    assert off_diagonal == 0
    torch.testing.assert_close(ladj, diagonal.abs().log().sum(dim=(-2, -1)))
    torch.testing.assert_close(ladj, t.log_abs_det_jacobian(x, y))
    assert torch.equal(y, t(x))
    assert torch.equal(x.detach(), original)
    assert y.requires_grad == requires_grad


@pytest.mark.parametrize("alpha", ALPHAS, ids=lambda a: f"alpha={a}")
@pytest.mark.parametrize("requires_grad", [False, True], ids=["no-grad", "grad"])
def test_logit_inverse_event_log_det_matches_autograd(alpha, requires_grad):
    t = Logit(alpha, event_dim=2, cache_size=0)
    y = (torch.randn(4, 3, 5, dtype=torch.float64) * 4).clamp(-t.bound, t.bound)
    y[0, 0, 0] = 0.0
    original = y.clone()

    x, ladj = t.inv.call_and_ladj(y.requires_grad_(requires_grad))

    diagonal, off_diagonal = elementwise_jacobian(t.inv, y)
    assert off_diagonal == 0
    torch.testing.assert_close(ladj, diagonal.abs().log().sum(dim=(-2, -1)))
    torch.testing.assert_close(ladj, t.inv.log_abs_det_jacobian(y, x))
    assert torch.equal(x, t.inv(y))
    assert torch.equal(y.detach(), original)


@pytest.mark.parametrize("alpha", ALPHAS, ids=lambda a: f"alpha={a}")
def test_logit_inverse_gradient_at_zero(alpha):
    # The inverse folds y to -|y|; the gradient at y = 0 must be sigmoid'(0) / (1 - alpha), not
    # the 0 that the gradient of abs would give.
    y = torch.zeros(1, dtype=torch.float64, requires_grad=True)

    Logit(alpha).inv(y).sum().backward()

    torch.testing.assert_close(y.grad, torch.tensor([0.25 / (1 - alpha)], dtype=torch.float64))


def test_logit_inverse_is_exactly_mirrored_and_keeps_nan():
    t = Logit(0.05)
    y = torch.linspace(0, t.bound, 1001)[1:]

    # For y > 0 the inverse is 1 minus the value it gives at -y, computed the same way.
    assert torch.equal(t.inv(y), 1 - t.inv(-y))
    assert torch.isnan(t.inv(torch.tensor([float("nan")]))).all()
    assert torch.equal(Logit(0.0).inv(torch.tensor([-math.inf, math.inf])), torch.tensor([0.0, 1.0]))


# torch.func scripts a helper on first use, which warns on torch 2.13.
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_logit_log_det_gradients_under_torch_func(direction):
    # The in-place steps must not break torch.func's transforms, which wrap the input.
    t = Logit(0.05, event_dim=1, cache_size=0)
    t = t if direction == "forward" else t.inv
    x = torch.rand(3, 4, dtype=torch.float64) if direction == "forward" else torch.randn(3, 4, dtype=torch.float64)

    batched = torch.func.vmap(torch.func.grad(lambda v: t.call_and_ladj(v)[1]))(x)
    reverse = torch.func.jacrev(t)(x[0])
    forward = torch.func.jacfwd(t)(x[0])

    reference = x.clone().requires_grad_()
    t.call_and_ladj(reference)[1].sum().backward()
    torch.testing.assert_close(batched, reference.grad)
    torch.testing.assert_close(reverse, forward)
    torch.testing.assert_close(torch.diagonal(reverse).abs().log().sum(), t.call_and_ladj(x[0])[1])


def test_logit_plain_boundaries_are_infinite_not_nan():
    t = Logit(alpha=0.0)
    x = torch.tensor([0.0, 1.0])

    y, ladj = t.call_and_ladj(x)
    x_back, inv_ladj = t.inv.call_and_ladj(y)

    assert torch.equal(y, torch.tensor([-math.inf, math.inf]))
    assert torch.equal(ladj, torch.tensor([math.inf, math.inf]))
    assert torch.equal(x_back, x)
    assert torch.equal(inv_ladj, torch.tensor([-math.inf, -math.inf]))


@pytest.mark.parametrize("alpha", ALPHAS, ids=lambda a: f"alpha={a}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_logit_is_exactly_antisymmetric(alpha, dtype):
    # k / 2^20 and 1 - k / 2^20 are both exact in float32 and float64.
    x = torch.arange(0, 2**20 + 1, 97, dtype=torch.float64).div(2**20).to(dtype)
    t = Logit(alpha, cache_size=0)

    assert torch.equal(t(1 - x), -t(x))

    # The inverse mirrors its y <= 0 branch: inv(-y) is 1 - inv(y) for every y <= 0.
    y = -torch.logspace(-30, 2, 200, dtype=dtype)
    assert torch.equal(t.inv(-y), 1 - t.inv(y))


@pytest.mark.parametrize("alpha", [0.05, 0.3])
def test_logit_codomain_bound(alpha):
    t = Logit(alpha)
    bound = math.log((1 - alpha / 2) / (alpha / 2))

    assert t.bound == pytest.approx(bound, rel=1e-15)
    ends = t(torch.tensor([0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(ends, torch.tensor([-bound, bound], dtype=torch.float64))
    assert t.codomain.lower_bound == -t.bound
    assert t.codomain.upper_bound == t.bound
    assert Logit(0.0).bound == math.inf


def test_logit_inverse_is_accurate_near_one():
    # Near 1 the mirrored sigmoid keeps the full relative precision of 1 - x.
    t = Logit(0.0, cache_size=0)
    x = 1 - torch.logspace(-7, -1, 50, dtype=torch.float32)

    assert torch.equal(t.inv(t(x)), x)


def test_plain_logit_domain_excludes_the_end_points():
    # A model in logit space has no density at exactly 0 or 1, so validation rejects them
    # instead of returning -inf - (-inf) = NaN.
    from torch.distributions import Normal, TransformedDistribution

    dist = TransformedDistribution(Normal(0.0, 1.0), [Logit(0.0).inv], validate_args=True)

    with pytest.raises(ValueError, match="within the support"):
        dist.log_prob(torch.tensor([0.0, 0.5]))
    with pytest.raises(ValueError, match="within the support"):
        dist.log_prob(torch.tensor([1.0]))
    assert bool(torch.isfinite(dist.log_prob(torch.tensor([1e-6, 0.5]))).all())
    assert bool(Logit(0.05).domain.check(torch.tensor([0.0, 1.0])).all())


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.bool], ids=str)
def test_logit_integer_input_is_converted_to_float(dtype):
    x = torch.tensor([0, 1]).to(dtype)

    y, ladj = Logit(0.05).call_and_ladj(x)

    assert y.dtype == torch.get_default_dtype()
    torch.testing.assert_close(y, torch.tensor([-3.663562, 3.663562]), atol=1e-6, rtol=0)
    torch.testing.assert_close(ladj, torch.tensor([3.662904, 3.662904]), atol=1e-6, rtol=0)


def test_logit_bound_for_tiny_alpha():
    t = Logit(5e-324)

    assert t.bound == pytest.approx(math.log(2.0) - math.log(5e-324))
