"""What every transform shares: inverse links, caching, equality, printing, shapes, pickling,
the meta device and dtypes."""

import copy
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch

from flowext import Compose, Dequantize, Logit, Scale, dequantization_pipeline

TRANSFORMS = {
    "dequantize": lambda: Dequantize(17),
    "scale": lambda: Scale(1 / 17),
    "logit": lambda: Logit(0.05),
    "logit-plain": lambda: Logit(0.0),
    "scale-event": lambda: Scale(-3.0, event_dim=2),
    "pipeline": lambda: dequantization_pipeline(17, 0.05),
}


def sample_input(name: str, shape=(4, 3, 5), dtype=torch.float32, device="cpu") -> torch.Tensor:
    if name in ("dequantize", "pipeline"):
        return torch.randint(0, 17, shape, device=device).to(dtype)
    if name.startswith("logit"):
        return torch.rand(shape, device=device).to(dtype)
    return torch.randn(shape, device=device).to(dtype)


@pytest.mark.parametrize("name", TRANSFORMS)
def test_inverse_of_inverse_is_the_transform(name):
    t = TRANSFORMS[name]()

    assert t.inv.inv is t
    assert t.inv is t.inv


@pytest.mark.parametrize("name", TRANSFORMS)
def test_equality_by_parameters(name):
    t, same = TRANSFORMS[name](), TRANSFORMS[name]()

    assert t == same
    assert t.inv == same.inv
    assert t != t.inv
    assert t.with_cache(1) == t.with_cache(0)


def test_inequality_across_parameters():
    assert Logit(0.05) != Logit(0.1)
    assert Logit(0.05) != Logit(0.05, event_dim=1)
    assert Scale(2.0) != Scale(-2.0)
    assert Scale(torch.tensor([1.0, 2.0])) != Scale(torch.tensor([1.0, 3.0]))
    assert Scale(torch.tensor([1.0, 2.0])) == Scale(torch.tensor([1.0, 2.0]))
    assert Dequantize(17) != Dequantize(256)
    assert Dequantize(17) != Scale(17)
    assert dequantization_pipeline(17) != dequantization_pipeline(17, alpha=0.1)


def test_repr_is_readable():
    assert repr(Logit(0.05)) == "Logit(alpha=0.05)"
    assert repr(Logit(0.05).inv) == "Logit(alpha=0.05).inv"
    assert repr(Scale(-2.0, event_dim=1)) == "Scale(factor=-2.0, event_dim=1)"
    assert repr(Dequantize(256, dtype=torch.float64)) == "Dequantize(num_bins=256, dtype=torch.float64)"
    assert repr(Logit(0.05, cache_size=0)) == "Logit(alpha=0.05, cache_size=0)"
    assert repr(Dequantize(17, cache_size=1)) == "Dequantize(num_bins=17, cache_size=1)"
    assert repr(dequantization_pipeline(256)) == (
        "Compose([Dequantize(num_bins=256), Scale(factor=0.00390625), Logit(alpha=0.05)])"
    )


@pytest.mark.parametrize("name", ["scale", "logit", "dequantize"])
def test_with_cache_returns_configured_copy(name):
    t = TRANSFORMS[name]()
    other_size = 1 - t._cache_size

    changed = t.with_cache(other_size)

    assert changed._cache_size == other_size
    assert changed == t
    assert t.with_cache(t._cache_size) is t
    assert t.inv.with_cache(other_size).inv._cache_size == other_size
    with pytest.raises(ValueError, match="cache_size must be 0 or 1, got 2"):
        t.with_cache(2)


@pytest.mark.parametrize("name", ["scale", "logit"])
def test_cache_returns_the_same_tensors(name):
    t = TRANSFORMS[name]().with_cache(1)
    x = sample_input(name)

    y = t(x)

    assert t(x) is y
    assert t.inv(y) is x
    assert t.call_and_ladj(x)[0] is y
    assert t.inv.call_and_ladj(y)[0] is x


def test_cached_dequantize_reuses_noise_and_uncached_does_not():
    x = torch.zeros(50, dtype=torch.long)
    cached = Dequantize(17, cache_size=1)

    assert cached(x) is cached(x)
    assert not torch.equal(Dequantize(17)(x), Dequantize(17)(x))


@pytest.mark.parametrize("name", TRANSFORMS)
def test_shapes_are_preserved(name):
    t = TRANSFORMS[name]()
    shape = torch.Size([4, 3, 5])

    assert t.forward_shape(shape) == shape
    assert t.inverse_shape(shape) == shape
    assert t.inv.forward_shape(shape) == shape
    x = sample_input(name, shape)
    y, ladj = t.call_and_ladj(x)
    assert y.shape == shape
    assert ladj.shape == shape[: len(shape) - t.domain.event_dim]


@pytest.mark.parametrize("name", TRANSFORMS)
def test_event_dim_and_constraints(name):
    t = TRANSFORMS[name]()

    assert t.inv.domain is not None
    assert t.domain.event_dim == t.codomain.event_dim
    assert t.inv.domain.event_dim == t.codomain.event_dim
    assert t.inv.codomain.event_dim == t.domain.event_dim


def test_event_dim_larger_than_input_raises():
    with pytest.raises(ValueError, match=r"event_dim=3 needs inputs with at least 3 dimensions, got shape \(5,\)"):
        Logit(0.05, event_dim=3).call_and_ladj(torch.rand(5))


@pytest.mark.parametrize("name", TRANSFORMS)
@pytest.mark.parametrize("copier", [copy.deepcopy, lambda t: pickle.loads(pickle.dumps(t))], ids=["deepcopy", "pickle"])
def test_copies_keep_the_inverse_link(name, copier):
    t = TRANSFORMS[name]()
    x = sample_input(name)
    y = t(x)

    forward, inverse = copier(t), copier(t.inv)

    assert forward == t
    assert inverse == t.inv
    assert forward.inv.inv is forward
    assert inverse.inv.inv is inverse
    torch.testing.assert_close(inverse(y), t.inv(y))


def test_pickle_without_pyro_keeps_inverse():
    # Pyro patches torch's Transform.__getstate__ when imported, which would hide a missing
    # link, so this runs in a fresh interpreter that never imports Pyro.
    script = textwrap.dedent(
        """
        import copy, pickle, sys
        import torch
        from flowext import Logit
        from torch.distributions import Normal, TransformedDistribution

        inverse = Logit(0.05).inv
        restored = pickle.loads(pickle.dumps(inverse))
        copied = copy.deepcopy(inverse)
        dist = TransformedDistribution(Normal(0.0, 1.0), [inverse])
        dist_restored = pickle.loads(pickle.dumps(dist))
        dist_copied = copy.deepcopy(dist)

        assert "pyro" not in sys.modules
        for t in (restored, copied, dist_restored.transforms[0], dist_copied.transforms[0]):
            assert float(t(torch.tensor(0.0))) == 0.5, t
        value = torch.tensor([0.2, 0.7])
        assert torch.equal(dist_restored.log_prob(value), dist.log_prob(value))
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_import_has_no_side_effects():
    script = textwrap.dedent(
        """
        import torch
        from torch.distributions import Distribution, Transform
        before = (Transform.__getstate__, Distribution._validate_args, dict(vars(Transform)))
        import flowext, flowext.transforms
        after = (Transform.__getstate__, Distribution._validate_args, dict(vars(Transform)))
        assert before == after
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)

    assert result.returncode == 0, result.stderr


DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", ["scale", "logit", "logit-plain", "scale-event"])
def test_bijections_keep_dtype_and_device(name, dtype, device):
    t = TRANSFORMS[name]()
    x = sample_input(name, dtype=dtype, device=device)

    y, ladj = t.call_and_ladj(x)
    x_back, inv_ladj = t.inv.call_and_ladj(y)

    for value in (y, ladj, x_back, inv_ladj, t(x), t.inv(y), t.log_abs_det_jacobian(x, y)):
        assert value.dtype == dtype
        assert value.device.type == device


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize(
    ("dtype", "num_bins"),
    [(torch.float16, 16), (torch.bfloat16, 2), (torch.float32, 256), (torch.float64, 256)],
    ids=str,
)
def test_dequantize_keeps_dtype_and_device(dtype, num_bins, device):
    t = Dequantize(num_bins, generator=torch.Generator())
    x = torch.randint(0, num_bins, (4, 3), device=device).to(dtype)

    y, ladj = t.call_and_ladj(x)
    x_back, inv_ladj = t.inv.call_and_ladj(y)

    for value in (y, ladj, x_back, inv_ladj):
        assert value.dtype == dtype
        assert value.device.type == device


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_pipeline_on_meta(dtype):
    t = dequantization_pipeline(256, event_dim=3)
    x = torch.empty(8, 3, 32, 32, dtype=torch.uint8, device="meta")

    y, ladj = t.call_and_ladj(x)
    z, inv_ladj = t.inv.call_and_ladj(y.to(dtype))

    assert y.device.type == "meta"
    assert ladj.shape == (8,)
    assert inv_ladj.shape == (8,)
    assert z.dtype == dtype


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", TRANSFORMS)
def test_cuda_matches_cpu(name):
    t = TRANSFORMS[name]()
    x = sample_input(name, dtype=torch.float64)

    y = t(x.cuda())

    assert y.device.type == "cuda"
    if name not in ("dequantize", "pipeline"):
        torch.testing.assert_close(y.cpu(), t(x))
    torch.testing.assert_close(t.inv(y).cpu(), t.inv(y.cpu()))


def test_compose_rejects_bad_parts():
    with pytest.raises(ValueError, match="parts must hold at least one transform"):
        Compose([])
    with pytest.raises(ValueError, match="parts must be a sequence of transforms, got Logit"):
        Compose(Logit(0.05))
    with pytest.raises(ValueError, match="got int at index 1"):
        Compose([Logit(0.05), 3])
