"""The optimizer factory (owidth._optim): ow.train's, ow.coord_check's and ow.scale_by_width's updates are optax's."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import owidth as ow
from owidth import _optim

PARAMS = {"w": jnp.array([[0.3, -1.2], [2.0, 0.5]]), "b": jnp.array([0.1, -0.4])}
GRADS = [jax.tree.map(lambda p, i=i: jnp.cos(p * (i + 1)), PARAMS) for i in range(3)]


def trajectory(tx):
    params, state = PARAMS, tx.init(PARAMS)
    for g in GRADS:
        updates, state = tx.update(g, state, params)
        params = optax.apply_updates(params, updates)
    return params


@pytest.mark.parametrize(("name", "reference"), [
    ("sgd", lambda lr, wd: optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr))),
    ("momentum", lambda lr, wd: optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr, momentum=0.8))),
    ("adam", lambda lr, wd: optax.adam(lr, eps=1e-6)),
    ("adamw", lambda lr, wd: optax.adamw(lr, eps=1e-6, weight_decay=wd)),
])
def test_unit_scales_give_optax_own_optimizers(name, reference):
    wd = 0.0 if name == "adam" else 0.1
    ones = jax.tree.map(lambda _: 1.0, PARAMS)
    tx = _optim.make(name, lr=0.05, scales=ones, weight_decay=wd, momentum=0.8, eps=1e-6)
    got, want = trajectory(tx), trajectory(reference(0.05, wd))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12), got, want)


def test_scales_multiply_each_tensor_update_and_scale_by_width_is_the_same_piece():
    scales = {"w": 4.0, "b": 0.5}
    got = trajectory(_optim.make("adam", lr=0.05, scales=scales))
    for key, s in scales.items():  # Adam is per-coordinate: each tensor moves as under lr * s
        alone = trajectory(optax.adam(0.05 * s))
        np.testing.assert_allclose(got[key], alone[key], rtol=1e-12)
    model = ow.finite(ow.serial(ow.Dense(), ow.Relu(), ow.Dense(), ow.Relu(), ow.Dense(out=1)), width=8,
                     param=ow.MUP.with_base_width(2))
    x = jnp.ones((3, 2))
    params = model.init(jax.random.key(0), x)
    grads = jax.tree.map(jnp.ones_like, params)
    by_width = ow.scale_by_width(model, x, optimizer="sgd")
    factory = _optim.make("sgd", lr=-1.0, scales=model.lr_scales(x, optimizer="sgd"))  # sgd at lr -1: the scales
    u1, _ = by_width.update(grads, by_width.init(params))
    u2, _ = factory.update(grads, factory.init(params))
    assert sorted({float(s) for s in jax.tree.leaves(model.lr_scales(x, optimizer="sgd"))}) == [1.0, 4.0]
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), u1, u2)


def test_bad_optimizer_configurations_are_refused():
    with pytest.raises(ValueError, match="optimizer='lion' is not known"):
        _optim.make("lion", lr=0.1, scales={})
    with pytest.raises(ValueError, match="use optimizer='adamw'"):
        _optim.check("adam", weight_decay=0.1, where="ow.train")
