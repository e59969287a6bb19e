"""ow.from_flax: a user's flax NNX model under any parametrization, matching the native spec."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import owidth as ow
from helpers import sphere

D_IN, K = 5, 3
X = sphere(6, D_IN, 0)


class MLP(nnx.Module):
    def __init__(self, width, rngs, *, d_in=D_IN):
        normal = nnx.initializers.variance_scaling(1.0, "fan_in", "normal")  # N(0, 1/fan_in), like native Dense
        self.l1 = nnx.Linear(d_in, width, kernel_init=normal, rngs=rngs)
        self.l2 = nnx.Linear(width, width, kernel_init=normal, rngs=rngs)
        self.out = nnx.Linear(width, K, kernel_init=normal, rngs=rngs)

    def __call__(self, x):
        return self.out(jax.nn.relu(self.l2(jax.nn.relu(self.l1(x)))))


NATIVE = ow.serial(ow.Dense(b_std=1.0), ow.Relu(), ow.Dense(b_std=1.0), ow.Relu(), ow.Dense(out=K, b_std=1.0))


def _native_leaves(tree):
    """Native params (Dense0, (), Dense2, (), Dense4) as [(w, b), ...] in layer order."""
    return [(layer["w"], layer["b"]) for layer in tree if layer != ()]


def _flax_leaves(tree):
    return [(tree[name]["kernel"], tree[name]["bias"]) for name in ("l1", "l2", "out")]


@pytest.mark.parametrize("param", [ow.SP, ow.NTP, ow.MUP, ow.MF])
def test_roles_and_learning_rates_match_the_native_spec(param):
    param = param.with_base_width(16)
    native = ow.finite(NATIVE, width=64, param=param)
    bridge = ow.finite(ow.from_flax(MLP), width=64, param=param)
    assert _flax_leaves(bridge.roles()) == _native_leaves(native.roles(X))
    for optimizer in ("sgd", "adam"):
        assert _flax_leaves(bridge.lr_scales(optimizer=optimizer)) == _native_leaves(native.lr_scales(X, optimizer=optimizer))


@pytest.mark.parametrize("param", [ow.SP, ow.MUP, ow.MF])
def test_same_function_and_same_initial_scale_as_the_native_spec(param):
    """Corresponding parameters give the same outputs, and fresh initialisations have the same
    effective weight scales (the native 1/sqrt(fan_in) sits in the multiplier, flax's in the init)."""
    param, width = param.with_base_width(16), 256
    native = ow.finite(NATIVE, width=width, param=param)
    bridge = ow.finite(ow.from_flax(MLP), width=width, param=param)
    p_nat = native.init(jax.random.key(0), X)
    p_fl = bridge.init(jax.random.key(1), X)
    # effective weights W = multiplier * w: copy the native ones into the bridge's parametrization
    fan_in = [D_IN, width, width]
    roles = [ow.Role.INPUT, ow.Role.HIDDEN, ow.Role.OUTPUT]
    mult_nat = [param.dense(r, fan_in=f, width=width, w_std=1.0, b_std=1.0) for r, f in zip(roles, fan_in)]
    ratio = width / param.base_width
    mult_fl = [ratio ** -param.a[i] for i in range(3)]
    copied = {}
    for name, (w, b), s, m in zip(("l1", "l2", "out"), _native_leaves(p_nat), mult_nat, mult_fl):
        copied[name] = {"kernel": w * s.w_mult / m, "bias": b * s.b_mult / (ratio ** -param.a[0] if name != "out" else 1.0)}
    np.testing.assert_allclose(bridge.apply(copied, X), native.apply(p_nat, X), rtol=1e-5, atol=1e-6)
    # effective initial weight scales agree
    for (w_fl, _), (w_nat, _), s, m in zip(_flax_leaves(p_fl), _native_leaves(p_nat), mult_nat, mult_fl):
        np.testing.assert_allclose(np.std(w_fl * m), np.std(w_nat * s.w_mult), rtol=0.05)


def test_at_base_width_sp_is_the_users_module_unchanged():
    bridge = ow.finite(ow.from_flax(MLP), width=32, param=ow.SP.with_base_width(32))
    params = bridge.init(jax.random.key(3), X)
    module = MLP(32, nnx.Rngs(jax.random.key(3)))
    np.testing.assert_array_equal(bridge.apply(params, X), module(X))


def test_trains_as_an_ensemble_and_refuses_stateful_modules():
    y = np.sin(X[:, :K])
    ds = ow.train(ow.from_flax(MLP), (X, y), widths=[16, 32], param=ow.MUP.with_base_width(16), lr=[0.01, 0.03],
                  optimizer="adam", steps=30, seeds=2, progress_bar=False)
    assert (ds.status == "ok").all()
    assert (ds.train_loss.isel(step=-1) < ds.train_loss.isel(step=0)).all()
    zero = ow.finite(ow.from_flax(MLP), width=8, param=dataclasses.replace(ow.MUP, zero_readout=True))
    assert not np.any(zero.init(jax.random.key(0))["out"]["kernel"])

    class WithBatchNorm(nnx.Module):
        def __init__(self, width, rngs):
            self.l1 = nnx.Linear(D_IN, width, rngs=rngs)
            self.bn = nnx.BatchNorm(width, rngs=rngs)

        def __call__(self, x):
            return self.bn(self.l1(x))

    with pytest.raises(NotImplementedError, match="non-parameter state"):
        ow.finite(ow.from_flax(WithBatchNorm), width=8).init(jax.random.key(0), X)
    with pytest.raises(TypeError, match="constructor"):
        ow.from_flax(MLP(4, nnx.Rngs(0)))
    with pytest.raises(ValueError, match="grows with width"):
        class Odd(nnx.Module):
            def __init__(self, width, rngs):
                self.w = nnx.Param(jnp.zeros((width, 2, 3)))

            def __call__(self, x):
                return x
        ow.finite(ow.from_flax(Odd), width=4).roles()


def test_zero_readout_zeroes_the_readout_bias_of_a_flax_module():
    normal = nnx.initializers.normal(1.0)

    class Biased(nnx.Module):
        def __init__(self, width, rngs):
            self.l1 = nnx.Linear(D_IN, width, bias_init=normal, rngs=rngs)
            self.out = nnx.Linear(width, K, bias_init=normal, rngs=rngs)

        def __call__(self, x):
            return self.out(jax.nn.relu(self.l1(x)))

    params = ow.finite(ow.from_flax(Biased), width=8, param=dataclasses.replace(ow.MUP, zero_readout=True)).init(
        jax.random.key(0))
    assert not np.any(params["out"]["kernel"]) and not np.any(params["out"]["bias"])
    assert np.all(params["l1"]["bias"] != 0)


def test_masks_and_pruning_on_a_flax_model():
    """ow.prune scores a flax model's parameters (kernels pruned, biases kept) and ow.train keeps its masked
    kernel entries exactly zero under AdamW."""
    bridge = ow.finite(ow.from_flax(MLP), width=16, param=ow.MUP.with_base_width(16))
    params = bridge.init(jax.random.key(0), X)
    y = np.sin(X[:, :K])
    masks = ow.prune.snip(bridge.apply, params, (X, y), 0.25)
    assert ow.prune.density(masks, params) == pytest.approx(0.25, abs=1e-3)
    assert all(bool(np.all(masks[n]["bias"])) for n in ("l1", "l2", "out"))
    _, out = ow.train(ow.from_flax(MLP), (X, y), widths=16, param=ow.MUP.with_base_width(16), lr=0.01, steps=5,
                      optimizer="adamw", weight_decay=0.1, init_params=params, masks=masks, return_params=True,
                      progress_bar=False)
    for n in ("l1", "l2", "out"):
        w, m = np.asarray(out[16][n]["kernel"])[0, 0, 0], np.asarray(masks[n]["kernel"])
        assert np.all(w[~m] == 0.0) and np.all(w[m] != 0.0)
