"""VariationalDequantization: the bound in Pyro, its agreement with nflows, noise, shapes and errors."""

import copy
import math
import pickle
import subprocess
import sys

import pytest
import torch

pyro = pytest.importorskip("pyro")
pytest.importorskip("nflows")
import pyro.distributions as dist
import pyro.distributions.transforms as pyro_transforms
from nflows.flows import Flow
from nflows.transforms import CompositeTransform
from pyro.distributions.transforms import ComposeTransformModule
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

from flowext import Dequantize, Logit, Scale, importance_weighted_log_likelihood
from flowext._numerics import noise_margin
from flowext.nflows import StandardNormal, TransformAdapter, VariationalDequantizer
from flowext.pyro import VariationalDequantization

NUM_BINS = 17
ALPHA = 0.05


def small_dequantization(num_features=8, dtype=torch.float64):
    transform = VariationalDequantization.with_coupling_flow(
        NUM_BINS, (num_features,), hidden_features=16, num_layers=2
    )
    return transform.to(dtype)


def discrete_model(transform, num_features=8, dtype=torch.float64, main=(), validate_args=None):
    base = dist.Normal(torch.zeros(num_features, dtype=dtype), 1.0).to_event(1)
    return dist.TransformedDistribution(
        base, [*main, Logit(ALPHA).inv, Scale(1 / NUM_BINS).inv, transform], validate_args=validate_args
    )


def integer_data(*shape, dtype=torch.float64):
    return torch.randint(0, NUM_BINS, shape).to(dtype)


# -- The bound and its log-det ----------------------------------------------------------------


def test_log_det_is_log_q_from_the_noise_flow():
    # Recompute log q(u|x) from the noise flow's own log_prob at v = logit((u - m) / (1 - 2m)).
    torch.manual_seed(0)
    transform = small_dequantization()
    dequantizer = transform.dequantizer
    x = integer_data(10, 8)

    z = transform.inv(x)
    log_det = transform.log_abs_det_jacobian(z, x)

    m = noise_margin(NUM_BINS, torch.float64)
    s = (z - x - m) / (1 - 2 * m)
    v = torch.logit(s)
    context = dequantizer.context_net(dequantizer.normalize(x))
    log_q_v = dequantizer.noise_flow.log_prob(v, context=context)
    log_q = log_q_v - torch.log(s * (1 - s)).sum(-1) - 8 * math.log1p(-2 * m)
    torch.testing.assert_close(log_det, log_q, rtol=1e-6, atol=1e-6)


def test_log_prob_is_log_p_minus_log_q():
    torch.manual_seed(1)
    transform = small_dequantization()
    model = discrete_model(transform)
    x = integer_data(6, 8)

    torch.manual_seed(2)
    log_prob = model.log_prob(x)
    torch.manual_seed(2)
    z, minus_log_q = transform.dequantizer(x)

    # log p(z) of the rest of the model: Scale(1/K), Logit(alpha), then the standard normal.
    logit_model = dist.TransformedDistribution(
        dist.Normal(torch.zeros(8, dtype=torch.float64), 1.0).to_event(1),
        [Logit(ALPHA).inv, Scale(1 / NUM_BINS).inv],
    )
    torch.testing.assert_close(log_prob, logit_model.log_prob(z) + minus_log_q)


def test_same_bound_as_nflows_with_fixed_seed():
    torch.manual_seed(0)
    dequantizer = VariationalDequantizer.with_coupling_flow(NUM_BINS, (8,), hidden_features=16, num_layers=2)
    dequantizer.double()
    coupling = pyro_transforms.affine_coupling(8, hidden_dims=[16]).double()

    # nflows maps data to noise, so it takes the inverse of the Pyro coupling layer.
    nflows_model = Flow(
        CompositeTransform(
            [
                dequantizer,
                TransformAdapter(Scale(1 / NUM_BINS)),
                TransformAdapter(Logit(ALPHA)),
                TransformAdapter(coupling.inv),
            ]
        ),
        StandardNormal([8]).double(),
    )
    pyro_model = discrete_model(VariationalDequantization(dequantizer), main=[coupling])
    x = integer_data(12, 8)

    torch.manual_seed(5)
    nflows_bound = nflows_model.log_prob(x)
    torch.manual_seed(5)
    pyro_bound = pyro_model.log_prob(x)

    assert pyro_bound.shape == (12,)
    torch.testing.assert_close(pyro_bound, nflows_bound, rtol=1e-12, atol=1e-12)


def test_log_det_for_a_copy_uses_the_noise_flow():
    torch.manual_seed(0)
    transform = small_dequantization()
    x = integer_data(5, 8)
    z = transform.inv(x)

    from_copy = transform.log_abs_det_jacobian(z.clone(), x)
    from_draw = transform.log_abs_det_jacobian(z, x)

    torch.testing.assert_close(from_copy, from_draw, rtol=1e-9, atol=1e-9)


def test_log_det_outside_the_bin_is_minus_inf():
    transform = small_dequantization()
    x = integer_data(3, 8)

    above = transform.log_abs_det_jacobian(x + 1.0, x)
    below = transform.log_abs_det_jacobian(x - 0.25, x)

    assert torch.equal(above, torch.full((3,), -math.inf, dtype=torch.float64))
    assert torch.equal(below, torch.full((3,), -math.inf, dtype=torch.float64))


@pytest.mark.parametrize("cache_size", [1, 0], ids=["cached-parts", "uncached-parts"])
def test_compose_transform_module_gives_the_same_bound(cache_size):
    # torch's ComposeTransform recomputes the continuous values before the log-det call: with
    # cached parts it gets the tensor of the draw back, without them a new tensor.
    torch.manual_seed(0)
    transform = small_dequantization()
    parts = [
        Logit(ALPHA, cache_size=cache_size).inv,
        Scale(1 / NUM_BINS, cache_size=cache_size).inv,
        transform,
    ]
    base = dist.Normal(torch.zeros(8, dtype=torch.float64), 1.0).to_event(1)
    x = integer_data(7, 8)

    torch.manual_seed(3)
    separate = dist.TransformedDistribution(base, parts).log_prob(x)
    torch.manual_seed(3)
    composed = dist.TransformedDistribution(base, [ComposeTransformModule(parts)]).log_prob(x)

    torch.testing.assert_close(composed, separate, rtol=1e-9, atol=1e-9)
    draw_was_used = transform._pending is None
    assert draw_was_used == (cache_size == 1)


# -- Fresh noise, caching and training ------------------------------------------------------


def test_each_log_prob_draws_fresh_noise():
    model = discrete_model(small_dequantization())
    x = integer_data(4, 8)

    first = model.log_prob(x)
    second = model.log_prob(x)

    assert bool((first != second).all())


def test_draw_is_used_once_then_cleared():
    transform = small_dequantization()
    x = integer_data(4, 8)

    z = transform.inv(x)
    transform.log_abs_det_jacobian(z, x)

    assert transform._pending is None


def test_inverse_draws_fresh_noise_with_cache():
    transform = small_dequantization().with_cache(1)
    model = discrete_model(transform)
    x = integer_data(4, 8)

    first_z = transform.inv(x)
    second_z = transform.inv(x)

    assert not torch.equal(first_z, second_z)
    assert bool((model.log_prob(x) != model.log_prob(x)).all())


def test_with_cache_caches_forward_and_shares_q():
    transform = small_dequantization()
    cached = transform.with_cache(1)
    z = torch.rand(3, 8, dtype=torch.float64) * NUM_BINS

    assert transform.with_cache(0) is transform
    assert cached.dequantizer is transform.dequantizer
    assert cached.with_cache(1) is cached
    assert cached(z) is cached(z)
    assert torch.equal(cached(z), transform(z))


def test_svi_step_changes_parameters():
    pyro.clear_param_store()
    torch.manual_seed(0)
    transform = VariationalDequantization.with_coupling_flow(NUM_BINS, (8,), hidden_features=16, num_layers=2)
    coupling = pyro_transforms.affine_coupling(8, hidden_dims=[16])
    data = integer_data(32, 8, dtype=torch.float32)

    def model(batch):
        pyro.module("coupling", coupling)
        pyro.module("dequantization", transform)
        with pyro.plate("examples", len(batch)):
            pyro.sample("x", discrete_model(transform, dtype=torch.float32, main=[coupling]), obs=batch)

    def guide(batch):
        pass

    svi = SVI(model, guide, Adam({"lr": 1e-2}), Trace_ELBO())
    before = {name: p.detach().clone() for name, p in transform.named_parameters()}
    coupling_before = [p.detach().clone() for p in coupling.parameters()]

    losses = [svi.step(data) for _ in range(3)]

    assert all(math.isfinite(loss) for loss in losses)
    assert any(name.startswith("dequantization$$$") for name in pyro.get_param_store().keys())
    changed = [name for name, p in transform.named_parameters() if not torch.equal(p, before[name])]
    assert len(changed) == len(before)
    assert any(not torch.equal(p, old) for p, old in zip(coupling.parameters(), coupling_before))
    pyro.clear_param_store()


def test_gradient_reaches_noise_flow_and_context():
    transform = small_dequantization()
    model = discrete_model(transform)

    model.log_prob(integer_data(6, 8)).sum().backward()

    grads = {name: p.grad for name, p in transform.named_parameters()}
    assert all(g is not None for g in grads.values())
    assert any(bool(g.abs().sum() > 0) for name, g in grads.items() if name.startswith("dequantizer.noise_flow"))
    assert any(bool(g.abs().sum() > 0) for name, g in grads.items() if name.startswith("dequantizer.context_net"))


def test_importance_weighted_estimate_is_finite():
    model = discrete_model(small_dequantization())
    x = integer_data(5, 8)

    with torch.no_grad():
        estimate = importance_weighted_log_likelihood(model.log_prob, x, num_samples=16, batch_size=40)

    assert estimate.shape == (5,)
    assert bool(torch.isfinite(estimate).all())


# -- Shapes, sampling, dtypes -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("data_shape", "batch_shape"),
    [((8,), ()), ((5, 8), (5,)), ((3, 4, 8), (3, 4))],
    ids=["one-example", "batch", "two-batch-dims"],
)
def test_log_prob_shape_for_batched_vectors(data_shape, batch_shape):
    model = discrete_model(small_dequantization())

    log_prob = model.log_prob(integer_data(*data_shape))

    assert log_prob.shape == batch_shape


def test_images_with_event_dim_three():
    transform = VariationalDequantization.with_coupling_flow(NUM_BINS, (1, 4, 4), hidden_features=16, num_layers=2)
    base = dist.Normal(torch.zeros(1, 4, 4), 1.0).to_event(3)
    model = dist.TransformedDistribution(base, [Logit(ALPHA).inv, Scale(1 / NUM_BINS).inv, transform])
    x = integer_data(6, 1, 4, 4, dtype=torch.float32)

    z = transform.inv(x)
    log_det = transform.log_abs_det_jacobian(z, x)

    assert transform.event_dim == 3
    assert z.shape == x.shape
    assert log_det.shape == (6,)
    assert model.event_shape == (1, 4, 4)
    assert model.log_prob(x).shape == (6,)


def test_empty_batch():
    # Called directly: torch's TransformedDistribution fails to sum log-dets of an empty batch.
    transform = small_dequantization()
    x = torch.zeros(0, 8, dtype=torch.float64)

    z = transform.inv(x)
    log_det = transform.log_abs_det_jacobian(z, x)

    assert z.shape == (0, 8)
    assert log_det.shape == (0,)


def test_samples_are_integers_in_range():
    model = discrete_model(small_dequantization())

    x = model.sample((20,))

    assert x.shape == (20, 8)
    assert torch.equal(x, x.floor())
    assert bool(((x >= 0) & (x <= NUM_BINS - 1)).all())
    assert bool(torch.isfinite(model.log_prob(x)).all())


def test_inverse_quantizes_back_to_the_data():
    transform = small_dequantization(dtype=torch.float32)
    x = integer_data(50, 8, dtype=torch.float32)

    z = transform.inv(x)

    assert z.dtype == torch.float32
    assert torch.equal(transform(z), x)
    assert bool((z > x).all())
    assert bool((z < x + 1).all())


def test_integer_dtype_data():
    model = discrete_model(small_dequantization(dtype=torch.float32), dtype=torch.float32, validate_args=False)

    log_prob = model.log_prob(torch.randint(0, NUM_BINS, (4, 8)))

    assert log_prob.dtype == torch.float32
    assert bool(torch.isfinite(log_prob).all())


# -- Properties, errors, printing and pickling ------------------------------------------------


def test_constraints_and_properties():
    transform = small_dequantization()

    assert transform.bijective is False
    assert transform.event_dim == 1
    assert transform.num_bins == NUM_BINS
    assert transform.domain.event_dim == 1
    assert transform.codomain.event_dim == 1
    assert transform.codomain.is_discrete
    assert not transform.domain.is_discrete
    assert bool(transform.codomain.check(torch.tensor([[0.0, 16.0]])).all())
    assert not bool(transform.codomain.check(torch.tensor([[0.0, 17.0]])).any())
    assert transform.inv.inv is transform


def test_sign_raises():
    transform = small_dequantization()

    with pytest.raises(NotImplementedError, match="not bijective"):
        transform.sign


def test_repr():
    transform = small_dequantization()

    assert repr(transform) == "VariationalDequantization(num_bins=17, event_dim=1)"
    assert repr(transform.with_cache(1)) == "VariationalDequantization(num_bins=17, event_dim=1, cache_size=1)"


@pytest.mark.parametrize("bad", [17.0, 2.5, -1.0], ids=lambda v: f"value={v}")
def test_validate_args_rejects_values_outside_support(bad):
    model = discrete_model(small_dequantization(), validate_args=True)
    x = integer_data(2, 8)
    x[1, 3] = bad

    # The message is torch's: it names the support and prints the data tensor.
    with pytest.raises(ValueError, match=r"within the support \(IndependentConstraint\(IntegerInterval\(lower_bound=0, upper_bound=16\), 1\)\)") as error:
        model.log_prob(x)
    assert "found invalid values" in str(error.value)
    assert f"{bad:g}" in str(error.value)


def test_dequantizer_rejects_invalid_data_without_distribution_checks():
    model = discrete_model(small_dequantization(), validate_args=False)

    with pytest.raises(ValueError, match=r"VariationalDequantizer\(num_bins=17\) expects integers in \[0, 16\], got 2.5"):
        model.log_prob(torch.tensor([[0.0, 2.5, 1, 1, 1, 1, 1, 1]], dtype=torch.float64))


def test_rejects_other_dequantizers():
    with pytest.raises(ValueError, match="dequantizer must be a flowext.nflows.VariationalDequantizer, got Dequantize"):
        VariationalDequantization(Dequantize(NUM_BINS))


@pytest.mark.parametrize("bad", [0, -1, 1.5], ids=lambda v: f"event_dim={v}")
def test_rejects_invalid_event_dim(bad):
    dequantizer = VariationalDequantizer.with_coupling_flow(NUM_BINS, (8,))

    with pytest.raises(ValueError, match="event_dim must be an integer >= "):
        VariationalDequantization(dequantizer, event_dim=bad)


def test_rejects_invalid_cache_size():
    dequantizer = VariationalDequantizer.with_coupling_flow(NUM_BINS, (8,))

    with pytest.raises(ValueError, match="cache_size must be 0 or 1, got 2"):
        VariationalDequantization(dequantizer, cache_size=2)


def test_rejects_data_with_too_few_dimensions():
    transform = VariationalDequantization.with_coupling_flow(NUM_BINS, (1, 4, 4))

    with pytest.raises(ValueError, match=r"the data must have at least event_dim=3 dimensions, got shape \(4, 4\)"):
        transform.inv(torch.zeros(4, 4))


@pytest.mark.parametrize("copier", [copy.deepcopy, lambda t: pickle.loads(pickle.dumps(t))], ids=["deepcopy", "pickle"])
def test_copy_keeps_q_and_drops_pending_draw(copier):
    transform = small_dequantization()
    x = integer_data(4, 8)
    transform.inv(x)  # leaves a draw that no log-det call has used

    copied = copier(transform)

    assert copied._pending is None
    assert repr(copied) == repr(transform)
    assert copied.inv.inv is copied
    torch.manual_seed(9)
    expected = discrete_model(transform).log_prob(x)
    torch.manual_seed(9)
    actual = discrete_model(copied).log_prob(x)
    torch.testing.assert_close(actual, expected)


def test_importing_flowext_does_not_import_pyro():
    code = "import sys, flowext, flowext.nflows; assert 'pyro' not in sys.modules, 'pyro was imported'"

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)

    assert result.returncode == 0, result.stderr


def test_trace_shows_flowext_transforms_by_name():
    transform = small_dequantization(dtype=torch.float32)
    data = integer_data(3, 8, dtype=torch.float32)

    def model(batch):
        with pyro.plate("examples", len(batch)):
            pyro.sample("x", discrete_model(transform, dtype=torch.float32), obs=batch)

    trace = pyro.poutine.trace(model).get_trace(data)
    names = [repr(t) for t in trace.nodes["x"]["fn"].transforms]

    assert names == [
        "Logit(alpha=0.05).inv",
        f"Scale(factor={1 / NUM_BINS!r}).inv",
        "VariationalDequantization(num_bins=17, event_dim=1)",
    ]


def test_with_coupling_flow_rejects_bad_shape():
    with pytest.raises(ValueError, match="shape must be a sequence of integers >= 1"):
        VariationalDequantization.with_coupling_flow(17, 4)
