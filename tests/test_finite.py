"""Finite networks from the spec (NTK parametrization)."""

import jax
import jax.numpy as jnp
import numpy as np

import owidth as ow
from helpers import sphere


def test_ntp_scales_by_hand():
    """W_eff = w_std / sqrt(fan_in) w, b_eff = b_std b, w, b ~ N(0, 1): compare with a hand-written MLP."""
    net = ow.serial(ow.Dense(w_std=1.3, b_std=0.2), ow.Erf(), ow.Dense(out=2, w_std=0.7, b_std=0.1))
    model = ow.finite(net, width=5)
    x = sphere(4, 3, 0)
    p = model.init(jax.random.key(1), x)
    (l1, _, l3) = p
    h = jax.scipy.special.erf(x @ l1["w"] * 1.3 / np.sqrt(3) + 0.2 * l1["b"][None])
    ref = h @ l3["w"] * 0.7 / np.sqrt(5) + 0.1 * l3["b"][None]
    np.testing.assert_allclose(model.apply(p, x), ref, rtol=1e-13)
    assert p[0]["w"].shape == (3, 5) and p[2]["w"].shape == (5, 2)
    assert ow.finite(ow.Dense(out=1), width=3).init(jax.random.key(0), x)["w"].shape == (3, 1)
    assert "b" not in ow.finite(ow.Dense(out=1), width=3).init(jax.random.key(0), x)


def test_init_is_standard_normal_and_vmaps():
    net = ow.serial(ow.Dense(w_std=2.0, b_std=1.0), ow.Relu(), ow.Dense(out=1))
    model = ow.finite(net, width=256)
    x = sphere(2, 4, 1)
    keys = jax.random.split(jax.random.key(0), 64)
    p = jax.vmap(model.init, in_axes=(0, None))(keys, x)
    w = np.asarray(p[2]["w"]).ravel()
    assert abs(w.mean()) < 4 / np.sqrt(w.size) and abs(w.std() - 1) < 0.02
    y = jax.vmap(model.apply, in_axes=(0, None))(p, x)
    assert y.shape == (64, 2, 1)
    # different keys give different networks, the same key the same one
    np.testing.assert_array_equal(model.init(keys[0], x)[0]["w"], p[0]["w"][0])
    assert not np.allclose(p[0]["w"][0], p[0]["w"][1])


def test_apply_jit_and_grad():
    net = ow.serial(ow.Dense(w_std=1.4, b_std=0.1), ow.Gelu(), ow.Residual(ow.Dense(), ow.Relu(), ow.Dense()),
                    ow.Dense(out=1))
    model = ow.finite(net, width=32)
    x = sphere(5, 3, 2)
    p = model.init(jax.random.key(0), x)
    np.testing.assert_allclose(jax.jit(model.apply)(p, x), model.apply(p, x), rtol=1e-12)
    g = jax.grad(lambda q: jnp.sum(model.apply(q, x) ** 2))(p)
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(g))


def test_width_changes_only_hidden_shapes():
    net = ow.serial(ow.Dense(), ow.Relu(), ow.Dense(), ow.Relu(), ow.Dense(out=3))
    x = sphere(2, 7, 0)
    for n in (4, 9):
        shapes = [leaf.shape for leaf in jax.tree.leaves(ow.finite(net, width=n).init(jax.random.key(0), x))]
        assert shapes == [(7, n), (n, n), (n, 3)]


def test_dense_on_spatial_inputs_and_auto_ntk():
    """Dense acts on the last axis of (batch, *spatial, features); auto NTK falls back from 'structured'."""
    net = ow.serial(ow.Dense(w_std=1.2), ow.Relu(), ow.Dense(out=1))
    model = ow.finite(net, width=8)
    x = np.random.default_rng(0).standard_normal((3, 2, 4))
    p = model.init(jax.random.key(0), x)
    assert model.apply(p, x).shape == (3, 2, 1)
    np.testing.assert_allclose(ow.empirical_ntk(model.apply, p, x),
                               ow.empirical_ntk(model.apply, p, x, implementation="ntvp"), rtol=1e-10)
