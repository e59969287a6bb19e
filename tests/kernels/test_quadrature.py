"""Activations by quadrature: vs closed forms, convergence in nodes, Monte Carlo."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import owidth as ow
from test_mlp_monte_carlo import X, assert_within, mc_moments

CASES = [(1.3, 0.7, 0.5), (0.4, 1.5, -0.6), (1.0, 1.0, 0.999), (0.8, 0.5, 0.0)]


@pytest.mark.parametrize("q1,q2,c", CASES)
@pytest.mark.parametrize("name,fn,closed", [
    ("erf", jax.scipy.special.erf, ow.Erf()),
    ("gelu", lambda x: jax.nn.gelu(x, approximate=False), ow.Gelu()),
    ("sin", lambda x: jnp.sin(1.1 * x + 0.4), ow.Sin(b=1.1, shift=0.4)),
])
def test_quadrature_matches_closed_forms(name, fn, closed, q1, q2, c):
    quad = ow.ActivationFn(fn)
    args = (jnp.array(q1), jnp.array(q2), jnp.array(c))
    np.testing.assert_allclose(quad.dual(*args, need_dot=True), closed.dual(*args, need_dot=True), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(quad.dual_diag(args[0], need_dot=True), closed.dual(args[0], args[0], args[0],
                                                                                  need_dot=True), rtol=1e-9)


def test_tanh_converges_with_nodes():
    args = (jnp.array(1.7), jnp.array(0.9), jnp.array(0.8))
    vals = np.array([ow.Tanh(nodes=k).dual(*args, need_dot=True) for k in (4, 8, 16, 32, 64, 128)])
    err = np.abs(vals[:-1] - vals[-1]).max(axis=1)
    assert np.all(np.diff(err) < 0), err  # monotone convergence
    assert err[-1] < 1e-5 and err[0] > 1e-3


@pytest.mark.slow  # ~8 s; symmetry/PSD of quadrature nets by default: test_properties.py (Tanh, Silu, ...)
def test_full_network_kernel_symmetric_psd_and_jittable():
    net = ow.serial(ow.Dense(w_std=1.5, b_std=0.2), ow.Tanh(), ow.Dense(w_std=1.5, b_std=0.2), ow.Silu(),
                    ow.Dense(out=1))
    x = np.random.default_rng(0).standard_normal((12, 4))
    k = ow.kernel(net, x)
    for m in (np.asarray(k.nngp), np.asarray(k.ntk)):
        np.testing.assert_array_equal(m, m.T)
        assert np.linalg.eigvalsh(m).min() > -1e-10 * np.trace(m)
    g = jax.grad(lambda a: ow.kernel(net, a).ntk.sum())(jnp.asarray(x))
    assert np.all(np.isfinite(g))


@pytest.mark.parametrize("act", [ow.Tanh(), *[pytest.param(a, marks=pytest.mark.slow) for a in (ow.Silu(), ow.Sigmoid(),
                                                                                              ow.Softplus())],
                                 ow.ActivationFn(jnp.cos)], ids=["tanh", "silu", "sigmoid", "softplus", "cos"])
def test_monte_carlo(act):
    net = ow.serial(ow.Dense(w_std=1.4, b_std=0.3), act, ow.Dense(out=1, w_std=1.1, b_std=0.2))
    k = ow.kernel(net, X)
    mc = mc_moments(net, width=64, seed=5, ntk=True)
    assert_within(k.nngp, *mc["nngp"], "nngp")
    assert_within(k.ntk, *mc["ntk"], "ntk")


def test_bad_nodes():
    with pytest.raises(ValueError, match="nodes"):
        ow.Tanh(nodes=1)
    with pytest.raises(TypeError, match="callable"):
        ow.ActivationFn(3.0)


@pytest.mark.parametrize("name,acts", [
    ("tanh-softplus", [ow.Tanh(), ow.Softplus()]),
    pytest.param("gelu-sin-erf", [ow.Gelu(), ow.Sin(), ow.Erf()], marks=pytest.mark.slow),
])
def test_consecutive_nonlinearities_monte_carlo(name, acts):
    net = ow.serial(ow.Dense(w_std=1.4, b_std=0.3), *acts, ow.Dense(out=1, w_std=1.1, b_std=0.2))
    k = ow.kernel(net, X)
    mc = mc_moments(net, width=64, seed=6, ntk=True)
    assert_within(k.nngp, *mc["nngp"], f"{name} nngp")
    assert_within(k.ntk, *mc["ntk"], f"{name} ntk")


def test_consecutive_identity_is_transparent():
    a = ow.serial(ow.Dense(w_std=1.2), ow.Erf(), ow.Identity(), ow.Dense(out=1))
    b = ow.serial(ow.Dense(w_std=1.2), ow.Erf(), ow.Dense(out=1))
    np.testing.assert_array_equal(ow.kernel(a, X).ntk, ow.kernel(b, X).ntk)


def test_kinked_composition_refused():
    """tanh then relu: a kink where tanh vanishes, not handled by either rule (relu then tanh is:
    see test_quadrature_kinks.py)."""
    net = ow.serial(ow.Dense(), ow.Tanh(), ow.Relu(), ow.Dense(out=1))
    with pytest.raises(NotImplementedError, match="has a kink"):
        ow.kernel(net, X)


@pytest.mark.parametrize("act", [pytest.param(ow.Tanh(), marks=pytest.mark.slow),
                                 ow.ActivationFn(lambda x: jnp.where(x > 0, jnp.tanh(x), 0.2 * x))], ids=["smooth", "kink"])
def test_gradients_finite_at_degenerate_inputs(act):
    """Orthogonal inputs without bias (c = 0), a duplicated input (rho = 1) and a zero input (q = 0)."""
    x = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    net = ow.serial(ow.Dense(), act, ow.Dense(), act, ow.Dense(out=1))
    g = jax.grad(lambda a: ow.kernel(net, a).ntk.sum())(x)
    assert np.all(np.isfinite(g))
