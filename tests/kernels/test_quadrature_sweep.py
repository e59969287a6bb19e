"""Quadrature accuracy over pre-activation variances 1e-4 ... 1e3 (issue 22): every quadrature
activation, its NTK map E[phi'(u) phi'(v)], the diagonal, the mean and LayerNorm's moments, against
``scipy.integrate.quad`` (nested for the 2-D integrals) in float64, written from numpy's functions
(independent of the code under test) in ``tests/reference/scipy_quadrature.py``, which commits its
values to ``scipy_quadrature.json`` (a slow test recomputes part of it live).

Errors are measured relative to the Cauchy-Schwarz scale ``sqrt(E phi(u)^2 E phi(v)^2)`` (T itself
vanishes for odd phi at rho = 0)."""

import pathlib
import sys

import jax.numpy as jnp
import numpy as np
import pytest

import owidth as ow

sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "reference"))
import scipy_quadrature as ref  # noqa: E402  (scipy and numpy only: independent of the code under test)

VARS, GRID, QUICK = ref.VARS, [tuple(c) for c in ref.GRID], ref.QUICK
TOL64 = 1e-10
TOL32 = 1e-6  # float32: measured <= 5.5e-7 over GRID (rounding, ~6000 weighted terms per entry)


def _leaky_tanh(x):
    return jnp.where(x > 0, jnp.tanh(x), 0.2 * jnp.tanh(x))


ACTS = {"tanh": ow.Tanh(), "sigmoid": ow.Sigmoid(), "silu": ow.Silu(), "softplus": ow.Softplus(),
        "kinked": ow.ActivationFn(_leaky_tanh)}
assert set(ACTS) == set(ref.FUNCTIONS)
REFS = ref.load()  # written by tests/reference/scipy_quadrature.py; test_committed_references_are_scipys


def _diag(name):
    return dict(zip(REFS["vars"], REFS["activations"][name]["diag"]))


def _pairs(name, cases):
    rows = dict(zip(map(tuple, REFS["grid"]), REFS["activations"][name]["grid"]))
    return np.array([rows[tuple(c)] for c in cases])


def _check_pairs(name, cases, pairs, dtype, tol):
    act = ACTS[name]
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
    act = ACTS[name]
    qs = np.array(sorted(diag))
    want = np.array([diag[q] for q in qs])
    t, td = act.dual_diag(jnp.asarray(qs, dtype), need_dot=True)
    m = act.mean(jnp.asarray(qs, dtype))
    np.testing.assert_allclose(np.asarray(t, np.float64), want[:, 0], rtol=tol, atol=0)
    np.testing.assert_allclose(np.asarray(td, np.float64), want[:, 1], rtol=tol, atol=0)
    assert np.all(np.abs(np.asarray(m, np.float64) - want[:, 2]) <= tol * np.sqrt(want[:, 0])), (m, want[:, 2])


@pytest.mark.parametrize("name", list(ACTS))
def test_diagonal_and_mean_over_variances(name):
    """E phi(u)^2, E phi'(u)^2, E phi(u) for variances 1e-4 ... 1e3: float64 <= 1e-10 relative."""
    _check_diag(name, _diag(name), jnp.float64, TOL64)


@pytest.mark.parametrize("name", list(ACTS))
def test_dual_over_the_grid(name):
    """NNGP and NTK maps on the whole grid: variances {1e-4, 1e-2, 1, 5, 30, 1e3} x rho {-0.9, 0, 0.5, 0.99},
    and unequal variances across the range."""
    _check_pairs(name, GRID, _pairs(name, GRID), jnp.float64, TOL64)


@pytest.mark.parametrize("name", list(ACTS))
def test_float32(name):
    """The same rules in float32: finite, and within float32 rounding of the reference."""
    _check_pairs(name, GRID, _pairs(name, GRID), jnp.float32, TOL32)
    _check_diag(name, _diag(name), jnp.float32, TOL32)


@pytest.mark.parametrize("name", ref.LAYERNORM_ACTS)
def test_layernorm_after_activation(name):
    """LayerNorm's moments (E phi, E phi^2) and the maps feeding it, at pre-activation variances
    1e-4 ... 1e3 (one input per variance, random directions), through ``ow.kernel``."""
    assert ow.LayerNorm().eps == REFS["layernorm_eps"]
    x = ref.layernorm_inputs()
    net = ow.serial(ow.Dense(), ACTS[name], ow.LayerNorm(), ow.Dense(out=1))
    k = ow.kernel(net, jnp.asarray(x))
    r = REFS["activations"][name]["layernorm"]
    ij = (np.arange(len(x) - 1), np.arange(1, len(x)))  # the chain (i, i + 1)
    np.testing.assert_allclose(np.asarray(k.nngp)[ij], r["nngp"], rtol=0, atol=TOL64)  # LayerNorm output: unit scale
    np.testing.assert_allclose(np.asarray(k.ntk)[ij], r["ntk"], rtol=TOL64, atol=TOL64 * np.abs(r["ntk"]).max())
    np.testing.assert_allclose(np.diag(k.ntk), r["ntk_diag"], rtol=TOL64)


@pytest.mark.slow  # ~30 s of scipy
def test_committed_references_are_scipys():
    """The committed file is what scipy computes now: the hardest grid points of every activation, the
    diagonal of one, and one LayerNorm chain, recomputed live to 1e-12."""
    for name in ACTS:
        np.testing.assert_allclose(ref.pairs(name, QUICK), _pairs(name, QUICK), rtol=1e-12, atol=0)
    np.testing.assert_allclose([ref.diagonal("kinked", q) for q in VARS], REFS["activations"]["kinked"]["diag"],
                               rtol=1e-12, atol=0)
    fresh = ref.layernorm("tanh", ref.layernorm_inputs())
    for key, val in fresh.items():
        np.testing.assert_allclose(val, REFS["activations"]["tanh"]["layernorm"][key], rtol=1e-12, atol=0)
