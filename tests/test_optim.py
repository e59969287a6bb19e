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


def _mup_model_and_grads(width):
    model = ow.finite(ow.serial(ow.Dense(b_std=0.5), ow.Relu(), ow.Dense(b_std=0.5), ow.Relu(), ow.Dense(out=1)),
                      width=width, param=ow.MUP.with_base_width(4))
    x = jnp.ones((3, 2))
    params = model.init(jax.random.key(0), x)
    grads = jax.tree.map(lambda p: jnp.cos(3.0 * p), params)
    return params, grads, model.lr_scales(x, optimizer="sgd")


@pytest.mark.parametrize("width", [4, 64])
def test_sgd_weight_decay_is_lr_wd_at_every_width_as_musgd(width):
    """microsoft/mup's MuSGD multiplies a tensor's learning rate by s and divides its weight decay by s: the step
    is -lr s (g + (wd / s) w), and the decay alone, -lr wd w, does not grow with width (issue 18: it was
    -lr s wd w, 16x at n / n0 = 16). With momentum the decayed gradient goes through the trace, as torch's SGD."""
    params, grads, scales = _mup_model_and_grads(width)
    lr, wd = 0.05, 0.1
    tx = _optim.make("sgd", lr=lr, scales=scales, weight_decay=wd)
    updates, _ = tx.update(grads, tx.init(params), params)
    want = jax.tree.map(lambda g, w, s: -lr * (s * g + wd * w), grads, params, scales)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12), updates, want)
    decay_only, _ = tx.update(jax.tree.map(jnp.zeros_like, grads), tx.init(params), params)
    jax.tree.map(lambda a, w: np.testing.assert_allclose(a, -lr * wd * w, rtol=1e-12), decay_only, params)
    assert max(jax.tree.leaves(scales)) == width / 4  # the scales do differ from 1 at width 64
    # momentum: torch SGD's buffer of (g + (wd / s) w), then -lr s buffer; two steps
    tx = _optim.make("momentum", lr=lr, scales=scales, weight_decay=wd, momentum=0.8)
    state = tx.init(params)
    p, buf = params, jax.tree.map(jnp.zeros_like, params)
    for _ in range(2):
        updates, state = tx.update(grads, state, p)
        buf = jax.tree.map(lambda b, g, w, s: 0.8 * b + g + (wd / s) * w, buf, grads, p, scales)
        want = jax.tree.map(lambda b, s: -lr * s * b, buf, scales)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12), updates, want)
        p = optax.apply_updates(p, updates)


def test_zero_readout_zeroes_the_readout_bias_too():
    """As microsoft/mup's readout_zero_init: readout weights and bias at 0, the hidden biases untouched."""
    import dataclasses

    param = dataclasses.replace(ow.MUP.with_base_width(4), zero_readout=True)
    model = ow.finite(ow.serial(ow.Dense(b_std=0.5), ow.Relu(), ow.Dense(out=2, b_std=0.5)), width=8, param=param)
    params = model.init(jax.random.key(0), jnp.ones((3, 2)))
    assert not np.any(params[2]["w"]) and not np.any(params[2]["b"])
    assert np.all(params[0]["b"] != 0)


def test_mu_optimizer_is_the_factory_with_the_models_scales():
    """ow.mu_optimizer(model, x, name) = _optim.make(name, scales=model.lr_scales(x, optimizer=name)): one name
    picks both the optimizer and its exponents; under Adam the hidden tensor's step is lr / (n / n0)."""
    model = ow.finite(ow.serial(ow.Dense(), ow.Relu(), ow.Dense(), ow.Relu(), ow.Dense(out=1)), width=8,
                      param=ow.MUP.with_base_width(2))
    x = jnp.ones((3, 2))
    params = model.init(jax.random.key(0), x)
    grads = jax.tree.map(lambda p: jnp.sin(p) + 0.1, params)
    for name in ("sgd", "adam"):
        tx = ow.mu_optimizer(model, x, name, lr=0.1)
        ref = _optim.make(name, lr=0.1, scales=model.lr_scales(x, optimizer=name))
        a, _ = tx.update(grads, tx.init(params), params)
        b, _ = ref.update(grads, ref.init(params), params)
        jax.tree.map(np.testing.assert_array_equal, a, b)
    tx = ow.mu_optimizer(model, x, "adam", lr=0.1)
    u, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(np.abs(u[2]["w"]).max(), 0.1 / 4, rtol=1e-6)  # Adam's first step: lr s sign(g)


def test_schedule_clip_and_adam_moments_are_optax_own():
    """clip_norm, a schedule and Adam's b1/b2 in the factory equal optax's own transformations chained."""
    schedule = optax.linear_schedule(1.0, 0.2, 3)
    ones = jax.tree.map(lambda _: 1.0, PARAMS)
    got = trajectory(_optim.make("adam", lr=0.05, scales=ones, b1=0.5, b2=0.9, eps=1e-6, clip=0.3, schedule=schedule))
    want = trajectory(optax.chain(optax.clip_by_global_norm(0.3),
                                  optax.adam(optax.linear_schedule(0.05, 0.01, 3), b1=0.5, b2=0.9, eps=1e-6)))
    # optax evaluates linear schedules in float32: lr * s(t) and the schedule of lr * values differ by ~1e-7
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), got, want)
    with pytest.raises(ValueError, match="b1"):
        _optim.make("adam", lr=0.1, scales={}, b1=1.0)
    with pytest.raises(ValueError, match="clip_norm"):
        _optim.make("adam", lr=0.1, scales={}, clip=0.0)
    with pytest.raises(TypeError, match="schedule must be a callable"):
        _optim.make("adam", lr=0.1, scales={}, schedule=0.5)
