"""Quadrature accuracy over pre-activation variances 1e-4 ... 1e3 (issue 22): every quadrature
activation, its NTK map E[phi'(u) phi'(v)], the diagonal, the mean and LayerNorm's moments, against
``scipy.integrate.quad`` (nested for the 2-D integrals) in float64, written here from numpy's
functions (independent of the code under test).

Errors are measured relative to the Cauchy-Schwarz scale ``sqrt(E phi(u)^2 E phi(v)^2)`` (T itself
vanishes for odd phi at rho = 0)."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, special

import owidth as ow

VARS = [1e-4, 1e-2, 1.0, 5.0, 30.0, 1e3]
RHOS = [-0.9, 0.0, 0.5, 0.99]
UNEQUAL = [(1e-4, 1e3, 0.5), (1e-2, 30.0, -0.9), (1.0, 1e3, 0.99), (5.0, 1e-4, 0.0), (30.0, 1e3, -0.99),
           (1e3, 1.0, 0.5)]
GRID = [(q, q, r) for q in VARS for r in RHOS] + UNEQUAL
QUICK = [(1e-4, 1e-4, 0.99), (1e3, 1e3, 0.0), (1e3, 1e3, 0.99), (1e-4, 1e3, 0.5)]
# (QUICK: the default test's share of GRID, where the errors are largest)
TOL64 = 1e-10
TOL32 = 1e-6  # float32: measured <= 5.5e-7 over GRID (rounding, ~6000 weighted terms per entry)


def _sech2(x):
    return 1.0 - np.tanh(x) ** 2


def _leaky_tanh(x):
    return jnp.where(x > 0, jnp.tanh(x), 0.2 * jnp.tanh(x))


# name: (activation, phi, phi') with phi, phi' in numpy for the references
ACTS = {
    "tanh": (ow.Tanh(), np.tanh, _sech2),
    "sigmoid": (ow.Sigmoid(), special.expit, lambda x: special.expit(x) * special.expit(-x)),
    "silu": (ow.Silu(), lambda x: x * special.expit(x), lambda x: special.expit(x) * (1 + x * special.expit(-x))),
    "softplus": (ow.Softplus(), lambda x: np.logaddexp(0.0, x), special.expit),
    "kinked": (ow.ActivationFn(_leaky_tanh), lambda x: np.where(x > 0, np.tanh(x), 0.2 * np.tanh(x)),
               lambda x: np.where(x > 0, 1.0, 0.2) * _sech2(x)),
}


def _quad(f, lo, hi, points):
    with warnings.catch_warnings():  # scipy warns near the roundoff floor; the estimate is checked below
        warnings.simplefilter("ignore", integrate.IntegrationWarning)
        val, err = integrate.quad(f, lo, hi, points=points, epsabs=0.0, epsrel=1e-13, limit=1000)
    return val, err


def _points(lo, hi):
    """Breakpoints where the activations bend (|x| ~ 1), inside (lo, hi)."""
    return [p for p in (-16.0, -4.0, -1.0, 0.0, 1.0, 4.0, 16.0) if lo < p < hi] or None


def ref_mean(f, q):
    """E f(u), u ~ N(0, q), by adaptive quadrature in u."""
    s = np.sqrt(q)
    val, err = _quad(lambda u: f(u) * np.exp(-0.5 * u * u / q) / (s * np.sqrt(2 * np.pi)), -12 * s, 12 * s,
                     _points(-12 * s, 12 * s))
    return val, err


def ref_dual(f, q1, q2, rho):
    """E f(u) f(v): outer quad over u ~ N(0, q1), inner quad over v | u ~ N(rho s2/s1 u, q2 (1 - rho^2))."""
    s1, s2 = np.sqrt(q1), np.sqrt(q2)
    sig = s2 * np.sqrt(1.0 - rho * rho)

    def inner(u):
        m = rho * s2 / s1 * u
        lo, hi = m - 11 * sig, m + 11 * sig
        return _quad(lambda v: f(v) * np.exp(-0.5 * ((v - m) / sig) ** 2) / (sig * np.sqrt(2 * np.pi)), lo, hi,
                     _points(lo, hi))[0]

    return _quad(lambda u: f(u) * inner(u) * np.exp(-0.5 * u * u / q1) / (s1 * np.sqrt(2 * np.pi)), -11 * s1,
                 11 * s1, _points(-11 * s1, 11 * s1))


def _refs(name, cases):
    _, f, df = ACTS[name]
    out = {}
    for q in sorted({q for c in cases for q in c[:2]}):
        out[q] = tuple(ref_mean(lambda u, g=g: g(u) ** 2, q)[0] for g in (f, df)) + (ref_mean(f, q)[0],)
    pairs = []
    for q1, q2, rho in cases:
        # (scipy's error estimates for the nested rule are pessimistic, up to ~1e-10 relative, so they
        # are not asserted; an inaccurate reference would fail the comparison, not pass it)
        (t, _), (td, _) = (ref_dual(g, q1, q2, rho) for g in (f, df))
        s, sd = np.sqrt(out[q1][0] * out[q2][0]), np.sqrt(out[q1][1] * out[q2][1])
        pairs.append((t, td, s, sd))
    return out, np.array(pairs)


@pytest.fixture(scope="module")
def quick_refs():
    return {name: _refs(name, QUICK) for name in ACTS}


def _check_pairs(name, cases, pairs, dtype, tol):
    act = ACTS[name][0]
    q1, q2, rho = (np.array(v) for v in zip(*cases))
    args = (jnp.asarray(q1, dtype), jnp.asarray(q2, dtype), jnp.asarray(rho * np.sqrt(q1 * q2), dtype))
    t, td = act.dual(*args, need_dot=True)
    assert t.dtype == dtype and np.all(np.isfinite(t)) and np.all(np.isfinite(td))
    err = np.abs(np.asarray(t, np.float64) - pairs[:, 0]) / pairs[:, 2]
    err_d = np.abs(np.asarray(td, np.float64) - pairs[:, 1]) / pairs[:, 3]
    assert err.max() <= tol, (name, "nngp", cases[int(err.argmax())], err.max())
    assert err_d.max() <= tol, (name, "ntk", cases[int(err_d.argmax())], err_d.max())
    # swapping the two inputs gives the same value bit for bit (exactly symmetric kernels)
    np.testing.assert_array_equal(act.dual(args[1], args[0], args[2], need_dot=True)[1], td)


def _check_diag(name, diag, dtype, tol):
    act = ACTS[name][0]
    qs = np.array(sorted(diag))
    ref = np.array([diag[q] for q in qs])
    t, td = act.dual_diag(jnp.asarray(qs, dtype), need_dot=True)
    m = act.mean(jnp.asarray(qs, dtype))
    np.testing.assert_allclose(np.asarray(t, np.float64), ref[:, 0], rtol=tol, atol=0)
    np.testing.assert_allclose(np.asarray(td, np.float64), ref[:, 1], rtol=tol, atol=0)
    assert np.all(np.abs(np.asarray(m, np.float64) - ref[:, 2]) <= tol * np.sqrt(ref[:, 0])), (m, ref[:, 2])


@pytest.mark.parametrize("name", list(ACTS))
def test_diagonal_and_mean_over_variances(name):
    """E phi(u)^2, E phi'(u)^2, E phi(u) for variances 1e-4 ... 1e3: float64 <= 1e-10 relative."""
    diag = {q: tuple(ref_mean(lambda u, g=g: g(u) ** 2, q)[0] for g in ACTS[name][1:]) + (ref_mean(ACTS[name][1], q)[0],)
            for q in VARS}
    _check_diag(name, diag, jnp.float64, TOL64)


@pytest.mark.parametrize("name", list(ACTS))
def test_dual_hardest_points(name, quick_refs):
    """NNGP and NTK maps at the hardest points of the grid (large variance, rho near 1, unequal)."""
    _check_pairs(name, QUICK, quick_refs[name][1], jnp.float64, TOL64)


@pytest.mark.parametrize("name", list(ACTS))
def test_float32(name, quick_refs):
    """The same rules in float32: finite, and within float32 rounding of the reference."""
    diag, pairs = quick_refs[name]
    _check_pairs(name, QUICK, pairs, jnp.float32, TOL32)
    _check_diag(name, diag, jnp.float32, TOL32)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ACTS))
def test_dual_full_grid(name):
    """NNGP and NTK maps on the whole grid: variances {1e-4, 1e-2, 1, 5, 30, 1e3} x rho {-0.9, 0, 0.5, 0.99},
    and unequal variances across the range."""
    _check_pairs(name, GRID, _refs(name, GRID)[1], jnp.float64, TOL64)


def _layernorm_reference(name, x, eps):
    """Diagonal and chain (i, i+1) entries of nngp, ntk of Dense -> act -> LayerNorm -> Dense(out=1), from the
    scipy references and the LayerNorm rule ``(T - m m') / sqrt(v v')``, ``v = E phi^2 - m^2 + eps``."""
    _, f, df = ACTS[name]
    g = x @ x.T / x.shape[1]
    q = np.diag(g)
    n = len(x)
    mom = np.array([[ref_mean(lambda u, h=h: h(u) ** 2, qi)[0] for h in (f, df)] + [ref_mean(f, qi)[0]] for qi in q])
    m, v = mom[:, 2], mom[:, 0] - mom[:, 2] ** 2 + eps
    i, j = np.arange(n - 1), np.arange(1, n)
    t = np.array([ref_dual(f, q[a], q[b], g[a, b] / np.sqrt(q[a] * q[b]))[0] for a, b in zip(i, j)])
    td = np.array([ref_dual(df, q[a], q[b], g[a, b] / np.sqrt(q[a] * q[b]))[0] for a, b in zip(i, j)])
    nngp = (t - m[i] * m[j]) / np.sqrt(v[i] * v[j])
    ntk = g[i, j] * td / np.sqrt(v[i] * v[j]) + nngp
    return (i, j), nngp, ntk, q * mom[:, 1] / v + (mom[:, 0] - m * m) / v


@pytest.mark.parametrize("name", ["tanh", pytest.param("sigmoid", marks=pytest.mark.slow)])
def test_layernorm_after_activation(name):
    """LayerNorm's moments (E phi, E phi^2) and the maps feeding it, at pre-activation variances
    1e-4 ... 1e3 (one input per variance, random directions), through ``ow.kernel``."""
    rng = np.random.default_rng(3)
    d = 5
    u = rng.standard_normal((len(VARS), d))
    u[1] = u[0] + 0.05 * u[1]  # one pair of nearly parallel inputs
    x = u / np.linalg.norm(u, axis=1, keepdims=True) * np.sqrt(np.array(VARS) * d)[:, None]
    net = ow.serial(ow.Dense(), ACTS[name][0], ow.LayerNorm(), ow.Dense(out=1))
    k = ow.kernel(net, jnp.asarray(x))
    ij, nngp, ntk, ntk_diag = _layernorm_reference(name, x, ow.LayerNorm().eps)
    np.testing.assert_allclose(np.asarray(k.nngp)[ij], nngp, rtol=0, atol=TOL64)  # LayerNorm output: unit scale
    np.testing.assert_allclose(np.asarray(k.ntk)[ij], ntk, rtol=TOL64, atol=TOL64 * np.abs(ntk).max())
    np.testing.assert_allclose(np.diag(k.ntk), ntk_diag, rtol=TOL64)
