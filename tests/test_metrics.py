"""Bits per dimension and the importance-weighted bound, checked against an exact likelihood."""

import math

import pytest
import torch
from torch.distributions import Normal

from flowext import bits_per_dim, dequantization_pipeline, importance_weighted_log_likelihood


def test_uniform_model_has_eight_bits_per_dim():
    num_dims = 3072

    assert bits_per_dim(-num_dims * math.log(256), num_dims) == pytest.approx(8.0, abs=1e-12)
    values = bits_per_dim(torch.full((4,), -num_dims * math.log(256), dtype=torch.float64), num_dims)
    torch.testing.assert_close(values, torch.full((4,), 8.0, dtype=torch.float64))


@pytest.mark.parametrize("value", [0, -1, 2.5, None])
def test_bits_per_dim_rejects_bad_num_dims(value):
    with pytest.raises(ValueError, match=rf"num_dims must be an integer >= 1, got {value!r}"):
        bits_per_dim(-1.0, value)


# The toy model: D = 2, K = 4, Dequantize -> Scale(1/4) -> Logit(alpha), standard normal base.
NUM_BINS, ALPHA = 4, 0.05
ALL_X = torch.cartesian_prod(torch.arange(NUM_BINS), torch.arange(NUM_BINS)).double()


def toy_log_prob(pipeline):
    def log_prob(x):
        z, log_det = pipeline.call_and_ladj(x)
        return Normal(0.0, 1.0).log_prob(z).sum(-1) + log_det

    return log_prob


def exact_log_likelihood(x: torch.Tensor) -> torch.Tensor:
    """log P(x) = sum_i log[Phi(Logit((x_i + 1) / K)) - Phi(Logit(x_i / K))]."""
    logit = dequantization_pipeline(NUM_BINS, ALPHA).parts[2]
    normal = Normal(torch.tensor(0.0, dtype=torch.float64), 1.0)
    upper = normal.cdf(logit((x + 1) / NUM_BINS))
    lower = normal.cdf(logit(x / NUM_BINS))
    return torch.log(upper - lower).sum(-1)


def test_uniform_bound_lies_below_exact_likelihood():
    pipeline = dequantization_pipeline(NUM_BINS, ALPHA, event_dim=1, dtype=torch.float64)
    repeated = ALL_X.repeat(20_000, 1)

    bound = toy_log_prob(pipeline)(repeated).reshape(20_000, len(ALL_X)).mean(0)

    # Jensen's gap is small in the flat middle of the density (about 0.005 nats) and large
    # at the edges; the Monte Carlo error of the mean is below 0.001.
    gap = exact_log_likelihood(ALL_X) - bound
    assert bool((gap > 0.002).all())
    assert float(gap.mean()) > 0.1


def test_importance_weighted_estimate_grows_towards_exact_likelihood():
    pipeline = dequantization_pipeline(NUM_BINS, ALPHA, event_dim=1, dtype=torch.float64)
    log_prob = toy_log_prob(pipeline)
    exact = exact_log_likelihood(ALL_X)
    repeats = ALL_X.repeat(50, 1)

    estimates = []
    for num_samples in (1, 10, 100, 1000):
        value = importance_weighted_log_likelihood(log_prob, repeats, num_samples, batch_size=200_000)
        estimates.append(float((value.reshape(50, -1) - exact).mean()))

    assert estimates == sorted(estimates)
    assert estimates[0] < -0.05
    assert -0.005 < estimates[-1] <= 0.001


def test_importance_weighted_chunks_bound_the_batch():
    sizes = []

    def log_prob(x):
        sizes.append(len(x))
        return -x.double().sum(-1)

    x = torch.arange(12).reshape(6, 2)
    value = importance_weighted_log_likelihood(log_prob, x, num_samples=25, batch_size=20)

    torch.testing.assert_close(value, -x.double().sum(-1))
    assert max(sizes) <= 20
    assert sum(sizes) == 25 * 6


def test_importance_weighted_single_draw_is_the_bound():
    values = torch.tensor([-3.0, -1.0], dtype=torch.float64)

    result = importance_weighted_log_likelihood(lambda x: values, torch.zeros(2, 3), num_samples=1)

    torch.testing.assert_close(result, values)


def test_importance_weighted_is_log_mean_exp():
    draws = iter(torch.tensor([[-1.0, -2.0], [-3.0, -0.5], [-2.0, -2.0]], dtype=torch.float64))

    result = importance_weighted_log_likelihood(lambda x: next(draws), torch.zeros(2, 1), num_samples=3)

    expected = torch.log(torch.exp(torch.tensor([[-1.0, -2.0], [-3.0, -0.5], [-2.0, -2.0]])).mean(0))
    torch.testing.assert_close(result, expected.double())


@pytest.mark.parametrize("value", [0, -2, 1.5])
def test_importance_weighted_rejects_bad_num_samples(value):
    with pytest.raises(ValueError, match=rf"num_samples must be an integer >= 1, got {value!r}"):
        importance_weighted_log_likelihood(lambda x: x.sum(-1), torch.zeros(2, 2), value)


def test_importance_weighted_rejects_unsummed_log_prob():
    with pytest.raises(ValueError, match=r"log_prob must return one value per example, shape \(2,\) .* got \(2, 3\)"):
        importance_weighted_log_likelihood(lambda x: x, torch.zeros(2, 3), 4)


def test_variational_dequantizer_tightens_the_toy_bound():
    pytest.importorskip("nflows")
    from flowext.nflows import VariationalDequantizer

    torch.manual_seed(0)
    scale_logit = dequantization_pipeline(NUM_BINS, ALPHA, event_dim=1, dtype=torch.float64)
    _, scale, logit = scale_logit.parts
    dequantizer = VariationalDequantizer.with_coupling_flow(
        NUM_BINS, (2,), hidden_features=32, context_features=8, num_layers=2
    ).double()

    def variational_log_prob(x):
        y, log_det_dequantize = dequantizer(x)
        s, log_det_scale = scale.call_and_ladj(y)
        z, log_det_logit = logit.call_and_ladj(s)
        return Normal(0.0, 1.0).log_prob(z).sum(-1) + log_det_dequantize + log_det_scale + log_det_logit

    optimizer = torch.optim.Adam(dequantizer.parameters(), lr=3e-3)
    for _ in range(300):
        loss = -variational_log_prob(ALL_X.repeat(16, 1)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    with torch.no_grad():
        repeated = ALL_X.repeat(4000, 1)
        variational = variational_log_prob(repeated).reshape(4000, -1).mean(0)
        uniform = toy_log_prob(scale_logit)(repeated).reshape(4000, -1).mean(0)
    exact = exact_log_likelihood(ALL_X)

    assert float(variational.mean()) > float(uniform.mean()) + 0.02
    assert bool((variational < exact + 0.01).all())
