"""The transforms inside Pyro and torch TransformedDistributions and zuko NormalizingFlows."""

import pytest
import torch
from torch.distributions import Normal, TransformedDistribution

from flowext import Dequantize, Logit, Scale, dequantization_pipeline

pyro_dist = pytest.importorskip("pyro.distributions")
zuko = pytest.importorskip("zuko")


def test_negative_scale_cdf_uses_sign():
    t = Scale(-2.0)
    dist = TransformedDistribution(Normal(0.0, 1.0), [t], validate_args=True)

    assert t.sign == -1
    # X = -2 Z, so P(X <= 1) = P(Z >= -1/2) = 0.691462.
    torch.testing.assert_close(dist.cdf(torch.tensor(1.0)), torch.tensor(0.691462), atol=1e-6, rtol=0)


def test_pyro_scores_own_samples_after_planar():
    planar = pyro_dist.transforms.Planar(2)
    dist = pyro_dist.TransformedDistribution(
        pyro_dist.Normal(torch.zeros(2), 1.0).to_event(1), [planar, Logit(0.05).inv]
    )

    sample = dist.sample((16,))
    log_prob = dist.log_prob(sample)

    assert log_prob.shape == (16,)
    assert bool(torch.isfinite(log_prob).all())


def test_pyro_and_zuko_give_the_same_log_prob():
    num_bins, alpha = 17, 0.05
    base = Normal(torch.zeros(6, dtype=torch.float64), 1.0)
    pyro_model = pyro_dist.TransformedDistribution(base, [Logit(alpha).inv, Scale(1 / num_bins).inv])
    zuko_model = zuko.distributions.NormalizingFlow(
        zuko.transforms.ComposedTransform(Scale(1 / num_bins), Logit(alpha)), base
    )
    data = torch.rand(10, 6, dtype=torch.float64) * num_bins

    torch.testing.assert_close(pyro_model.log_prob(data), zuko_model.log_prob(data))


def test_zuko_flow_samples_through_inverse_call_and_ladj():
    base = Normal(torch.zeros(4, dtype=torch.float64), 1.0)
    flow = zuko.distributions.NormalizingFlow(
        zuko.transforms.ComposedTransform(Scale(1 / 17), Logit(0.05)), base
    )

    sample, log_prob = flow.rsample_and_log_prob((5,))

    torch.testing.assert_close(flow.log_prob(sample), log_prob)


@pytest.mark.parametrize("bad", [17.0, 3.5, -1.0], ids=lambda v: f"value={v}")
def test_validate_args_rejects_data_outside_support(bad):
    num_bins = 17
    dist = TransformedDistribution(
        Normal(0.0, 1.0), [Logit(0.05).inv, Scale(1 / num_bins).inv, Dequantize(num_bins).inv],
        validate_args=True,
    )

    with pytest.raises(ValueError, match="within the support"):
        dist.log_prob(torch.tensor([0.0, bad]))


def test_discrete_model_log_prob_is_the_dequantization_bound():
    # On integer data, log_prob is log p(x + u) - log q(u|x) for one fresh draw of u.
    num_bins, alpha = 17, 0.05
    dist = TransformedDistribution(
        Normal(torch.zeros(64, dtype=torch.float64), 1.0),
        [Logit(alpha).inv, Scale(1 / num_bins).inv, Dequantize(num_bins).inv],
        validate_args=True,
    )
    pipeline = dequantization_pipeline(num_bins, alpha)

    x = dist.sample((8,))
    assert bool((x == x.floor()).all())
    assert bool(((x >= 0) & (x <= num_bins - 1)).all())

    # Both draw the same noise from the same generator state.
    state = torch.get_rng_state()
    log_prob = dist.log_prob(x)
    torch.set_rng_state(state)
    z, ladj = pipeline.call_and_ladj(x)

    assert log_prob.shape == (8, 64)
    torch.testing.assert_close(log_prob, Normal(0.0, 1.0).log_prob(z) + ladj)


def test_pipeline_inverse_in_transformed_distribution():
    num_bins = 17
    pipeline = dequantization_pipeline(num_bins, 0.05, event_dim=1)
    dist = TransformedDistribution(
        torch.distributions.Independent(Normal(torch.zeros(16), 1.0), 1), [pipeline.inv], validate_args=True
    )

    x = dist.sample((4,))
    log_prob = dist.log_prob(x)

    assert log_prob.shape == (4,)
    assert bool(torch.isfinite(log_prob).all())
