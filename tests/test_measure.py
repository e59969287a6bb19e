"""ow.measure and the finite-model protocol: what one forward pass records, for specs and flax models."""

import jax
import numpy as np
from flax import nnx

import owidth as ow
from helpers import sphere

X = sphere(8, 5, 0)


class MLP(nnx.Module):
    def __init__(self, width, rngs):
        self.l1 = nnx.Linear(5, width, rngs=rngs)
        self.l2 = nnx.Linear(width, width, rngs=rngs)
        self.out = nnx.Linear(width, 2, rngs=rngs)

    def __call__(self, x):
        return self.out(jax.nn.relu(self.l2(jax.nn.relu(self.l1(x)))))


def _features(p, x):
    """Last hidden features of MLP computed by hand from its raw parameters."""
    h = jax.nn.relu(x @ p["l1"]["kernel"] + p["l1"]["bias"][None])
    return jax.nn.relu(h @ p["l2"]["kernel"] + p["l2"]["bias"][None])


def test_both_model_kinds_follow_one_protocol():
    native = ow.finite(ow.serial(ow.Dense(), ow.Relu(), ow.Dense(out=2)), width=8)
    bridge = ow.finite(ow.from_flax(MLP), width=8)
    assert isinstance(native, ow.FiniteNetwork) and isinstance(bridge, ow.FiniteNetwork)


def test_flax_intermediates_are_the_modules_own_activations():
    """At its base width under SP the bridge is the user's module unchanged, so its recorded weight-layer
    outputs and last features are the module's, computed by calling its submodules directly."""
    bridge = ow.finite(ow.from_flax(MLP), width=16, param=ow.SP.with_base_width(16))
    params = bridge.init(jax.random.key(0), X)
    module = MLP(16, nnx.Rngs(jax.random.key(0)))
    rec = bridge.intermediates(params, X)
    assert rec.names == ("linear", "linear", "linear")
    h1 = module.l1(X)
    h2 = module.l2(jax.nn.relu(h1))
    for got, want in zip(rec.values, (h1, h2, module(X))):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(rec.features, jax.nn.relu(h2), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(rec.output, module(X), rtol=1e-6, atol=1e-7)


def test_flax_intermediates_include_sown_values():
    class Sowing(MLP):
        def __call__(self, x):
            h = jax.nn.relu(self.l1(x))
            self.sow(nnx.Intermediate, "hidden", h)
            return self.out(jax.nn.relu(self.l2(h)))

    bridge = ow.finite(ow.from_flax(Sowing), width=8)
    rec = bridge.intermediates(bridge.init(jax.random.key(1), X), X)
    assert rec.names == ("linear", "linear", "linear", "hidden")
    np.testing.assert_allclose(rec.values[-1], jax.nn.relu(rec.values[0]))


def test_feature_movement_of_a_flax_model():
    """Regression: feature observables called a private method that flax models lack (AttributeError).
    The recorded relative change of the feature kernel equals the hand computation from the returned
    parameters."""
    param = ow.SP.with_base_width(16)
    y = np.sin(X[:, :2])
    ds, params = ow.train(ow.from_flax(MLP), (X, y), widths=16, param=param, lr=0.1, steps=5, record_every=5,
                          metrics={"features": ow.measure.feature_movement(X)}, progress_bar=False, return_params=True)
    p1 = jax.tree.map(lambda a: a[0, 0, 0], params[16])
    p0 = ow.finite(ow.from_flax(MLP), width=16, param=param).init(jax.random.split(jax.random.key(0))[0], X)
    k1, k0 = (_features(p, X) @ _features(p, X).T / 16 for p in (p1, p0))
    want = np.linalg.norm(k1 - k0) / np.linalg.norm(k0)
    got = ds.features.isel(step=-1, width=0, seed=0, lr=0, alpha=0)
    assert want > 1e-3  # the features moved: the check has power
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_coord_check_reports_every_weight_layer_of_a_cnn():
    """Regression: Conv did not record itself, so the coordinate check of a CNN showed only its Dense
    readout. Every weight layer is reported, in network order, with O(1) initial coordinates."""
    x = np.asarray(jax.random.normal(jax.random.key(0), (4, 6, 6, 2)))
    y = np.eye(3)[[0, 1, 2, 0]]
    net = ow.serial(ow.Conv(), ow.Relu(), ow.Conv(), ow.Relu(), ow.Flatten(), ow.Dense(out=3))
    ds = ow.coord_check(net, (x, y), widths=[8, 16], param=ow.MUP.with_base_width(8), lr=0.01, steps=1, seeds=2)
    assert list(ds.layer_name.values) == ["conv", "conv", "dense"]
    size0 = ds["size"].sel(step=0).values  # (width, seed, layer)
    assert np.all((size0[..., :2] > 0.1) & (size0[..., :2] < 10)), size0
    assert np.all(ds["delta"].sel(step=1).values[..., :2] > 0)  # the conv layers moved after one step
