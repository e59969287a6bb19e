"""Kink-aware (split) quadrature: functions smooth except at 0 to ~1e-11 or better."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import owidth as ow
from owidth.kernels import quadrature
from test_mlp_monte_carlo import X, assert_within, mc_moments

CASES = [(1.3, 0.7, 0.5), (0.4, 1.5, -0.6), (1.0, 1.0, 0.999), (0.8, 0.5, 0.0), (1.0, 1.0, 1.0), (2.0, 0.5, -1.0)]
KINKED = [
    ("relu", jax.nn.relu, ow.Relu()),
    ("leaky", lambda x: jnp.where(x > 0, x, 0.2 * x), ow.LeakyRelu(0.2)),
    ("abs", jnp.abs, ow.Abs()),
    ("erf", jax.scipy.special.erf, ow.Erf()),  # smooth: the split rule must not lose accuracy
]


@pytest.mark.parametrize("name,fn,closed", KINKED, ids=[k[0] for k in KINKED])
def test_split_rule_matches_closed_forms(name, fn, closed):
    quad = ow.ActivationFn(fn)  # default: kink_at_zero=True, 128 nodes
    q1, q2, rho = (np.array(v) for v in zip(*CASES))
    args = (jnp.asarray(q1), jnp.asarray(q2), jnp.asarray(rho * np.sqrt(q1 * q2)))
    (t, td), (rt, rtd) = (jax.jit(lambda *a, act=act: act.dual(*a, need_dot=True))(*args) for act in (quad, closed))
    scale = np.sqrt(q1 * q2)  # T may vanish (relu at rho = -1): compare on the scale of the variances
    assert np.all(np.abs(t - rt) <= 1e-9 * np.maximum(np.abs(rt), scale)), (t, rt)
    assert np.all(np.abs(td - rtd) <= 1e-9 * np.maximum(np.abs(rtd), 1.0)), (td, rtd)
    np.testing.assert_allclose(quad.dual_diag(args[0], need_dot=True), closed.dual_diag(args[0], need_dot=True),
                               rtol=1e-9)
    np.testing.assert_allclose(quad.mean(args[0]), closed.mean(args[0]), rtol=1e-9, atol=1e-12)


def test_gauss_hermite_is_not_enough_for_kinks():
    """The same nodes without the split: algebraic convergence, errors ~1e-3 (why the split rule exists)."""
    args = (jnp.array(1.3), jnp.array(0.7), jnp.array(0.5))
    _, td = ow.ActivationFn(jax.nn.relu, kink_at_zero=False).dual(*args, need_dot=True)
    _, rtd = ow.Relu().dual(*args, need_dot=True)
    assert abs(td - rtd) > 1e-5


@pytest.mark.parametrize("q", [1e-4, 1.0, 1e3])
def test_split_rule_half_normal_moments(q):
    """E relu(u)^k = q^(k/2) 2^(k/2) Gamma((k+1)/2) / (2 sqrt(pi)), u ~ N(0, q): the half-line grids.
    (k <= 6: the grids stop at 8 standard deviations, where the tail of u^6 is 2e-11 of its moment.)"""
    from scipy.special import gamma

    for k in range(0, 7):
        exact = q ** (k / 2) * 2 ** (k / 2) * gamma((k + 1) / 2) / (2 * np.sqrt(np.pi))
        got = quadrature.mean(lambda x, k=k: jnp.where(x > 0, x**k, 0.0), jnp.asarray(q), kink=True)
        np.testing.assert_allclose(got, exact, rtol=1e-10)


def test_relu_network_by_quadrature_equals_closed_form():
    x = np.random.default_rng(0).standard_normal((6, 4))
    x[5] = x[0]
    a = ow.serial(ow.Dense(w_std=1.4, b_std=0.3), ow.ActivationFn(jax.nn.relu), ow.Dense(w_std=1.3, b_std=0.1),
                  ow.ActivationFn(jnp.abs), ow.Dense(out=1))
    b = ow.serial(ow.Dense(w_std=1.4, b_std=0.3), ow.Relu(), ow.Dense(w_std=1.3, b_std=0.1), ow.Abs(),
                  ow.Dense(out=1))
    ka, kb = ow.kernel(a, x), ow.kernel(b, x)
    np.testing.assert_array_equal(ka.ntk, np.asarray(ka.ntk).T)
    np.testing.assert_allclose(ka.nngp, kb.nngp, rtol=1e-9)
    np.testing.assert_allclose(ka.ntk, kb.ntk, rtol=1e-9)


RELU_TANH = ow.serial(ow.Dense(w_std=1.4, b_std=0.3), ow.Relu(), ow.Tanh(), ow.Dense(out=1, w_std=1.1, b_std=0.2))


def test_relu_then_smooth_composition_is_exact():
    """Relu then Tanh: smooth except at 0, so the composition uses the split rule; equal to
    ActivationFn(tanh o relu) at more nodes."""
    ref = ow.serial(ow.Dense(w_std=1.4, b_std=0.3), ow.ActivationFn(lambda z: jnp.tanh(jax.nn.relu(z)), nodes=256),
                    ow.Dense(out=1, w_std=1.1, b_std=0.2))
    k, kr = ow.kernel(RELU_TANH, X), ow.kernel(ref, X)
    np.testing.assert_allclose(k.nngp, kr.nngp, rtol=1e-10)
    np.testing.assert_allclose(k.ntk, kr.ntk, rtol=1e-10)


@pytest.mark.slow
def test_relu_then_smooth_composition_monte_carlo():
    net = RELU_TANH
    k = ow.kernel(net, X)
    mc = mc_moments(net, width=64, seed=11, ntk=True)
    assert_within(k.nngp, *mc["nngp"], "relu-tanh nngp")
    assert_within(k.ntk, *mc["ntk"], "relu-tanh ntk")
