"""abc-parametrizations: the Tensor Programs IV table, its symmetry, muP rules, per-layer optax LRs."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import owidth as ow
from helpers import sphere

TANH_NET = ow.serial(ow.Dense(b_std=0.3), ow.Tanh(), ow.Dense(b_std=0.3), ow.Tanh(), ow.Dense(out=2, b_std=0.3))
X = sphere(12, 5, 0)
Y = np.stack([np.sin(X[:, 0]), np.cos(X[:, 1])], axis=1)
XT = sphere(6, 5, 1)


def test_preset_regimes_match_tensor_programs_iv():
    """muP (and its mean-field form) is stable with feature learning; NTP is stable but in the
    kernel regime; SP with one learning rate is unstable (and, with lr ~ 1/n, kernel)."""
    for optimizer in ("sgd", "adam"):
        for p in (ow.MUP, ow.MF):
            r = p.regime(depth=3, optimizer=optimizer)
            assert r.stable and r.nontrivial and r.feature_learning and not r.kernel and r.r == 0, (p.name, r)
        r = ow.NTP.regime(depth=3, optimizer=optimizer)
        assert r.stable and r.nontrivial and r.kernel and not r.feature_learning and r.r == 0.5
        r = ow.SP.regime(depth=3, optimizer=optimizer)
        assert not r.stable and r.reasons
    sp_small_lr = dataclasses.replace(ow.SP, c_sgd=(1.0, 1.0, 1.0))
    r = sp_small_lr.regime(depth=3, optimizer="sgd")
    assert r.stable and r.kernel and r.r == 0.5
    # an unstable initialisation is named as such
    bad = dataclasses.replace(ow.NTP, b=(0.0, -0.5, 0.0))
    assert any("hidden layers" in reason for reason in bad.regime(depth=2).reasons)
    # the symmetry leaves the regime unchanged
    for role in (ow.Role.INPUT, ow.Role.HIDDEN, ow.Role.OUTPUT):
        for optimizer in ("sgd", "adam"):
            assert ow.MUP.shifted(role, 0.3).regime(depth=2, optimizer=optimizer) == ow.MUP.regime(depth=2, optimizer=optimizer)


FEATURE_WIDTHS = [128, 256, 512, 1024]


def _first_step_feature_change(param, optimizer, widths=FEATURE_WIDTHS, *, lr=1e-3, seeds=4):
    """rms of (h_1 - h_0) for every weight layer after one step on the centred MSE (residual = -y exactly)."""
    net = ow.serial(ow.Dense(), ow.Tanh(), ow.Dense(), ow.Tanh(), ow.Dense(), ow.Tanh(), ow.Dense(out=1))
    x = sphere(8, 6, 3)
    y = np.sin(x[:, :1])
    base = {"sgd": optax.sgd, "adam": optax.adam}[optimizer]
    out = []
    for width in widths:
        model = ow.finite(net, width=width, param=param)
        tx = optax.chain(base(lr), ow.scale_by_width(model, x, optimizer=optimizer))

        def one(key, model=model, tx=tx):
            p0 = model.init(key, x)
            f0 = model.apply(p0, x)
            g = jax.grad(lambda p: 0.5 * jnp.mean((model.apply(p, x) - f0 - y) ** 2))(p0)
            p1 = optax.apply_updates(p0, tx.update(g, tx.init(p0), p0)[0])
            t0 = model.intermediates(p0, x)
            t1 = model.intermediates(p1, x)
            return jnp.stack([jnp.sqrt(jnp.mean((a - b) ** 2)) for a, b in zip(t1.values, t0.values)])

        # one compilation per width (op-by-op dispatch recompiles every primitive at each new width: 3x slower)
        out.append(np.asarray(jax.jit(jax.vmap(one))(jax.vmap(jax.random.key)(jnp.arange(seeds)))).mean(0))
    return np.polyfit(np.log(widths), np.log(np.array(out)), 1)[0]  # slope per layer


# ~14 s each (four widths up to 1024, one compilation per width): muP with Adam in the default suite
@pytest.mark.parametrize("optimizer, name", [
    ("adam", "MUP"), *[pytest.param(o, n, marks=pytest.mark.slow) for o, n in
                       [("adam", "NTP"), ("adam", "MF"), ("adam", "SP"), ("sgd", "NTP"), ("sgd", "MUP"), ("sgd", "MF")]]])
def test_feature_update_exponent_is_minus_r(optimizer, name):
    """The measured size of the last hidden layer's update after one step scales as n^-r
    (the r of :meth:`Parametrization.regime`), and the output update is Theta(1) when stable.
    For SGD only parametrizations whose readout update does not dominate later steps
    (2 a_out + c >= a_out + b_out) show r in the first step; SP with c = 0 is checked through
    its exploding output instead (below). (SP with c = 1 approaches its r = 1/2 only slowly: measured
    slopes -0.81, -0.57, -0.54, -0.54, -0.52 between consecutive widths 128 ... 4096.)"""
    p = getattr(ow, name).with_base_width(64)
    slopes = _first_step_feature_change(p, optimizer)
    regime = p.regime(depth=3, optimizer=optimizer)
    assert abs(slopes[2] + regime.r) < 0.1, (p.name, optimizer, slopes, regime.r)
    if regime.stable:
        assert abs(slopes[3]) < 0.1, (p.name, optimizer, slopes)


@pytest.mark.slow
def test_standard_parametrization_with_sgd_explodes():
    """SP with SGD at a fixed learning rate: the output's first-step update grows with width (slope > 1/2)."""
    assert _first_step_feature_change(ow.SP.with_base_width(64), "sgd")[3] > 0.5


@functools.lru_cache(maxsize=None)
def _trained_outputs(param, optimizer, *, width=32, steps=15, lr=0.05):
    ds = ow.train(TANH_NET, (X, Y), test=(XT, np.zeros((6, 2))), widths=width, param=param, optimizer=optimizer,
                  lr=lr, steps=steps, seeds=2, adam_eps=0.0, record_outputs=True, progress_bar=False)
    assert (ds.status == "ok").all()
    out = ds.test_output.isel(step=-1).values
    out.flags.writeable = False
    return out


@pytest.mark.slow  # ~10 s per optimizer; by default the presets are compared at base width (test above)
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_abc_symmetry_leaves_the_trained_function_unchanged(optimizer):
    """(a, b, c) -> (a + t, b - t, c - 2t) (SGD) or c - t (Adam, eps = 0): same function after training.
    All three roles shifted at once, by different t (one role at a time: the slow test below)."""
    p = ow.MUP.with_base_width(8)  # width 32: every multiplier is a non-trivial power of 4
    ref = _trained_outputs(p, optimizer)
    got = _trained_outputs(p.shifted(ow.Role.INPUT, 0.37).shifted(ow.Role.HIDDEN, -0.21)
                           .shifted(ow.Role.OUTPUT, 0.53), optimizer)
    assert np.max(np.abs(got - ref)) / np.max(np.abs(ref)) < 1e-10
    # a shift without the matching learning-rate change is a different network: the check can fail
    wrong = dataclasses.replace(p.shifted(ow.Role.HIDDEN, 0.37), c_sgd=p.c_sgd, c_adam=p.c_adam)
    assert np.max(np.abs(_trained_outputs(wrong, optimizer) - ref)) / np.max(np.abs(ref)) > 1e-4


@pytest.mark.slow  # ~40 s: three more trainings per optimizer
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_abc_symmetry_holds_for_each_role_alone(optimizer):
    p = ow.MUP.with_base_width(8)
    ref = _trained_outputs(p, optimizer)
    for role in (ow.Role.INPUT, ow.Role.HIDDEN, ow.Role.OUTPUT):
        got = _trained_outputs(p.shifted(role, 0.37), optimizer)
        assert np.max(np.abs(got - ref)) / np.max(np.abs(ref)) < 1e-10, role


@pytest.mark.parametrize("optimizer", ["sgd", pytest.param("adam", marks=pytest.mark.slow)])
def test_mean_field_form_trains_exactly_as_mup(optimizer):
    ref = _trained_outputs(ow.MUP.with_base_width(8), optimizer)
    got = _trained_outputs(ow.MF.with_base_width(8), optimizer)
    assert np.max(np.abs(got - ref)) / np.max(np.abs(ref)) < 1e-10


@pytest.mark.parametrize("optimizer", ["sgd", pytest.param("adam", marks=pytest.mark.slow)])
def test_at_base_width_every_parametrization_is_the_same_network(optimizer):
    ref = _trained_outputs(ow.SP.with_base_width(32), optimizer)
    for p in (ow.NTP, ow.MUP, ow.MF):
        np.testing.assert_array_equal(_trained_outputs(p.with_base_width(32), optimizer), ref)
    # and away from it they differ: muP with base width 8 at width 32 is not SP (the same initial network,
    # so the trained outputs differ by ~1e-3, against bit-for-bit equality above; cached from the tests above)
    assert np.max(np.abs(_trained_outputs(ow.MUP.with_base_width(8), optimizer) - ref)) > 1e-4


def test_mup_multipliers_match_the_mup_package_rules():
    """microsoft/mup: MuSGD multiplies the lr of vector-like tensors (one infinite dim: input weights,
    hidden biases, readout weights) by width_mult and leaves hidden weights alone; MuAdam divides the lr
    of matrix-like tensors (hidden weights) by width_mult; finite tensors (readout bias) are untouched.
    MuReadout: weight initialised as SP times sqrt(width_mult), forward multiplied by 1/width_mult."""
    n0, n = 64, 256
    m = n / n0
    net = ow.serial(ow.Dense(b_std=0.1), ow.Relu(), ow.Dense(b_std=0.1), ow.Relu(), ow.Dense(out=3, b_std=0.1))
    model = ow.finite(net, width=n, param=ow.MUP.with_base_width(n0))
    x = sphere(2, 7, 0)
    expected_sgd = ({"w": m, "b": m}, (), {"w": 1.0, "b": m}, (), {"w": m, "b": 1.0})
    expected_adam = ({"w": 1.0, "b": 1.0}, (), {"w": 1 / m, "b": 1.0}, (), {"w": 1.0, "b": 1.0})
    assert model.lr_scales(x, optimizer="sgd") == expected_sgd
    assert model.lr_scales(x, optimizer="momentum") == expected_sgd
    assert model.lr_scales(x, optimizer="adam") == expected_adam
    assert model.lr_scales(x, optimizer="adamw") == expected_adam
    # effective weights: hidden as SP (std 1/sqrt(fan_in), multiplier 1), readout as MuReadout
    hidden = ow.MUP.with_base_width(n0).dense(ow.Role.HIDDEN, fan_in=n, width=n, w_std=1.0, b_std=0.0)
    assert np.isclose(hidden.w_mult * hidden.w_init, 1 / np.sqrt(n))
    readout = ow.MUP.with_base_width(n0).dense(ow.Role.OUTPUT, fan_in=n, width=n, w_std=1.0, b_std=0.0)
    readout0 = ow.MUP.with_base_width(n0).dense(ow.Role.OUTPUT, fan_in=n0, width=n0, w_std=1.0, b_std=0.0)
    assert np.isclose(readout.w_init, 1.0)  # constant initialisation
    assert np.isclose(readout.w_mult / readout0.w_mult, 1 / m)  # the 1/width_mult output multiplier
    assert np.isclose(readout.w_mult * readout.w_init, (1 / np.sqrt(n)) * np.sqrt(m) / m)
    # and the parameters drawn really have those scales
    params = model.init(jax.random.key(0), x)
    assert abs(np.std(params[2]["w"]) - m ** -0.5) / m ** -0.5 < 0.01  # hidden w ~ N(0, (n/n0)^-1)
    assert abs(np.std(params[4]["w"]) - 1.0) < 0.1


def test_scale_by_width_is_a_plain_optax_transform():
    model = ow.finite(TANH_NET, width=16, param=ow.MUP.with_base_width(4))
    params = model.init(jax.random.key(0), X)
    grads = jax.grad(lambda p: jnp.sum(model.apply(p, X) ** 2))(params)
    tx = optax.chain(optax.sgd(0.1), ow.scale_by_width(model, X, optimizer="sgd"))
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    scales = model.lr_scales(X, optimizer="sgd")
    expected = jax.tree.map(lambda g, s: -0.1 * s * g, grads, scales)
    jax.tree.map(lambda u, e: np.testing.assert_allclose(u, e, rtol=1e-14), updates, expected)
    # no metadata on arrays: params are plain arrays that vmap, jit and round-trip through numpy
    leaves, treedef = jax.tree.flatten(params)
    assert all(isinstance(leaf, jax.Array) for leaf in leaves)
    restored = jax.tree.unflatten(treedef, [np.array(leaf) for leaf in leaves])
    np.testing.assert_allclose(jax.jit(model.apply)(restored, X), model.apply(params, X), rtol=1e-13)  # fusion: ulps
    stacked = jax.vmap(model.init, in_axes=(0, None))(jax.vmap(jax.random.key)(jnp.arange(3)), X)
    assert jax.vmap(model.apply, in_axes=(0, None))(stacked, X).shape == (3, 12, 2)
    # the model and parametrization are hashable static values
    assert hash(model) == hash(ow.finite(TANH_NET, width=16, param=ow.MUP.with_base_width(4)))


def test_bad_parametrizations_are_refused():
    with pytest.raises(ValueError, match="3 finite floats"):
        ow.Parametrization(name="x", a=(0, 0), b=(0, 0, 0))
    with pytest.raises(ValueError, match="base_width"):
        ow.MUP.with_base_width(0)
    with pytest.raises(ValueError, match="optimizer"):
        ow.MUP.regime(optimizer="lion")
    with pytest.raises(ValueError, match="optimizer"):
        ow.finite(TANH_NET, width=8, param=ow.MUP).lr_scales(X, optimizer="rmsprop")
