"""Implicit bias of diagonal linear networks (Woodworth et al. 2020, Theorem 1) and its experiment.

Expected values come from closed forms written out here (series of q, the KKT
conditions, basis pursuit recovering a planted sparse vector), from a generic
constrained minimiser (scipy SLSQP on this file's own Q_alpha), or from
independently trained networks -- never from the solver under test.
"""

import jax
import numpy as np
import pytest
import xarray as xr
from scipy.optimize import minimize

import owidth as ow
from owidth.theory import woodworth as W
from helpers import traces


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _planted(n=40, d=100, k=5, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    beta_star = np.zeros(d)
    beta_star[rng.choice(d, k, replace=False)] = rng.standard_normal(k)
    return X, X @ beta_star, beta_star


def _q_reference(z):
    """q(z) = 2 - sqrt(4 + z^2) + z asinh(z / 2), written directly from the paper."""
    return 2 - np.sqrt(4 + z**2) + z * np.arcsinh(z / 2)


# ---------------------------------------------------------------- q and Q_alpha


def test_q_shape_and_limits():
    assert W.q(0.0) == 0.0
    z = np.linspace(-20, 20, 4001)
    qz = W.q(z)
    np.testing.assert_allclose(qz, W.q(-z), rtol=0, atol=1e-12)  # even
    np.testing.assert_allclose(qz, _q_reference(z), rtol=1e-12, atol=1e-12)
    assert np.all(np.diff(qz, 2) > 0)  # strictly convex on a grid
    assert np.all(qz[z != 0] > 0)
    # q'(z) = asinh(z / 2) (central differences)
    h = 1e-5
    zz = np.array([-7.0, -0.3, 0.2, 1.0, 15.0])
    np.testing.assert_allclose((W.q(zz + h) - W.q(zz - h)) / (2 * h), np.arcsinh(zz / 2), rtol=1e-7)
    # small z: q = z^2/4 - z^4/192 + O(z^6) (integrate q'' = (4 + z^2)^(-1/2) twice)
    for s in [1e-6, 1e-3, 1e-1]:
        np.testing.assert_allclose(W.q(s), s**2 / 4 - s**4 / 192, rtol=1e-4 * s**2 + 1e-12)
    # large z: q = z log z - z + 2 - 1/z + O(z^-3); in particular q ~ |z| log|z|
    for s in [1e2, 1e4, 1e8]:
        assert abs(W.q(s) - (s * np.log(s) - s + 2 - 1 / s)) < 10 / s**3 + 1e-15 * s * np.log(s)
        assert abs(W.q(-s) / (s * np.log(s)) - 1) < 1.2 / np.log(s)


def test_Q_alpha_scaling_and_regimes():
    beta = np.array([0.5, -1.0, 0.0, 2.0])
    for a in [0.01, 1.0, 30.0]:
        # (the direct formula loses ~8 digits to cancellation at small beta / alpha^2)
        np.testing.assert_allclose(W.Q_alpha(beta, a), a**2 * _q_reference(beta / a**2).sum(), rtol=1e-9)
    # large alpha: Q_alpha ~ ||beta||_2^2 / (4 alpha^2)  (kernel regime)
    np.testing.assert_allclose(W.Q_alpha(beta, 100.0) * 4 * 100.0**2, beta @ beta, rtol=1e-6)
    # small alpha: Q_alpha ~ ||beta||_1 log(1 / alpha^2)  (rich regime)
    for a, tol in [(1e-3, 0.15), (1e-8, 0.06)]:
        ratio = W.Q_alpha(beta, a) / (np.abs(beta).sum() * np.log(1 / a**2))
        assert abs(ratio - 1) < tol, ratio
    with pytest.raises(ValueError, match="alpha must be a finite positive"):
        W.Q_alpha(beta, 0.0)


# ---------------------------------------------------------------- the solver


@pytest.mark.parametrize("alpha", [1e-3, 0.01, 0.1, 1.0, 10.0, 1e3])
def test_solution_satisfies_kkt(alpha):
    """Primal feasibility X beta = y and stationarity grad Q_alpha(beta) = asinh(beta / (2 alpha^2)) in range(X^T)."""
    X, y, _ = _planted(n=12, d=30, k=3, seed=1)
    beta = W.woodworth_solution(X, y, alpha)
    assert np.linalg.norm(X @ beta - y) <= 1e-9 * np.linalg.norm(y)
    grad = np.arcsinh(beta / (2 * alpha**2))
    nu, *_ = np.linalg.lstsq(X.T, grad, rcond=None)
    assert np.linalg.norm(X.T @ nu - grad) <= 1e-7 * np.linalg.norm(grad)
    # and it is a minimum along the constraint set: feasible perturbations increase Q_alpha
    null = np.linalg.svd(X)[2][X.shape[0]:]  # orthonormal basis of ker X
    rng = np.random.default_rng(0)
    q0 = W.Q_alpha(beta, alpha)
    for _ in range(5):
        h = null.T @ rng.standard_normal(null.shape[0])
        h *= 1e-3 * np.linalg.norm(beta) / np.linalg.norm(h)
        assert W.Q_alpha(beta + h, alpha) > q0 and W.Q_alpha(beta - h, alpha) > q0


@pytest.mark.parametrize("alpha", [0.3, 1.0, 3.0])
def test_solution_matches_generic_constrained_minimiser(alpha):
    """A tiny problem solved by scipy SLSQP on this file's own Q_alpha with the equality constraint."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((3, 7))
    y = rng.standard_normal(3)
    a2 = alpha**2
    res = minimize(
        lambda b: a2 * _q_reference(b / a2).sum(),
        np.linalg.pinv(X) @ y,
        jac=lambda b: np.arcsinh(b / (2 * a2)),
        constraints=[{"type": "eq", "fun": lambda b: X @ b - y, "jac": lambda b: X}],
        method="SLSQP",
        options={"ftol": 1e-15, "maxiter": 1000},
    )
    assert res.success, res.message
    np.testing.assert_allclose(W.woodworth_solution(X, y, alpha), res.x, rtol=1e-5, atol=1e-7)


def test_l1_and_l2_interpolators():
    X, y, beta_star = _planted()
    b2 = W.min_l2_solution(X, y)
    np.testing.assert_allclose(b2, np.linalg.lstsq(X, y, rcond=None)[0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(b2, X.T @ np.linalg.solve(X @ X.T, y), rtol=1e-9, atol=1e-12)
    b1 = W.min_l1_solution(X, y)
    np.testing.assert_allclose(X @ b1, y, atol=1e-8)
    # n = 40 Gaussian measurements of a 5-sparse vector in d = 100: basis pursuit recovers it exactly
    np.testing.assert_allclose(b1, beta_star, atol=1e-7)
    assert np.abs(b1).sum() < np.abs(b2).sum()


def test_solver_interpolates_between_l1_and_l2():
    X, y, _ = _planted()
    b1, b2 = W.min_l1_solution(X, y), W.min_l2_solution(X, y)
    alphas = np.logspace(-3, 2, 11)
    sols = [W.woodworth_solution(X, y, a) for a in alphas]
    to_l1 = np.array([_rel(b, b1) for b in sols])
    to_l2 = np.array([_rel(b, b2) for b in sols])
    assert to_l1[0] < 0.05 and to_l2[-1] < 1e-6
    assert np.all(np.diff(to_l1[:6]) > 0)  # leaves l1 as alpha grows ...
    assert np.all(np.diff(to_l2) < 0)  # ... and approaches l2


def test_solver_errors():
    X, y, _ = _planted(n=5, d=10, k=2)
    with pytest.raises(ValueError, match="alpha must be a finite positive"):
        W.woodworth_solution(X, y, -1.0)
    with pytest.raises(ValueError, match=r"y must have shape \(n,\)"):
        W.woodworth_solution(X, y[:3], 1.0)
    with pytest.raises(ValueError, match="2-D"):
        W.min_l2_solution(X[0], y)
    rng = np.random.default_rng(0)
    Xtall = rng.standard_normal((10, 4))  # n > d: a generic y cannot be interpolated
    with pytest.raises(ValueError, match="no solution"):
        W.woodworth_solution(Xtall, rng.standard_normal(10), 1.0)
    with pytest.raises(ValueError, match="no solution"):
        W.min_l1_solution(Xtall, rng.standard_normal(10))
    with pytest.raises(ValueError, match=r"did not converge.*residual .* > rtol"):
        W.woodworth_solution(X, y, 1e-3, max_iter=2)
    with pytest.raises(ValueError, match="alphas must be"):
        W.train_diagonal_network(X, y, [1.0, 0.0], lr=0.1, steps=10)
    with pytest.raises(ValueError, match="steps must be"):
        W.train_diagonal_network(X, y, [1.0], lr=0.1, steps=0)


# ---------------------------------------------------------------- trained networks (the must-show)

ALPHAS = np.array([1e-3, 0.01, 0.1, 1.0, 10.0, 100.0])


@pytest.fixture(scope="module")
def trained():
    X, y, beta_star = _planted()
    beta, loss = W.train_diagonal_network(X, y, ALPHAS, lr=0.1, steps=100_000)
    return X, y, beta_star, np.asarray(beta), np.asarray(loss)


def test_trained_network_reaches_Q_alpha_minimiser(trained):
    """Gradient descent (small steps, long training) lands within 2% of argmin Q_alpha for alpha in {0.01, 0.1, 1, 10}."""
    X, y, _, beta, loss = trained
    assert beta.dtype == np.float64
    for a in [0.01, 0.1, 1.0, 10.0]:
        i = int(np.argmin(abs(ALPHAS - a)))
        assert loss[i] < 1e-6, (a, loss[i])  # it interpolates (Theorem 1's condition)
        rel = _rel(beta[i], W.woodworth_solution(X, y, a))
        assert rel < 0.02, (a, rel)
    # the convention matters: u0 = v0 = alpha enters Q as alpha^2. Reading it as alpha
    # (i.e. the minimiser of Q_{sqrt(alpha)}) misses the trained network by far where it matters.
    for a in [0.01, 0.1]:
        i = int(np.argmin(abs(ALPHAS - a)))
        assert _rel(beta[i], W.woodworth_solution(X, y, np.sqrt(a))) > 0.1


def test_small_alpha_sparse_large_alpha_l2(trained):
    X, y, beta_star, beta, _ = trained
    b1, b2 = W.min_l1_solution(X, y), W.min_l2_solution(X, y)
    # rich regime: the planted sparse vector (= the l1 interpolator here) is recovered
    assert _rel(beta[0], beta_star) < 0.05 and _rel(beta[0], b1) < 0.05
    assert np.sum((beta[0] - beta_star) ** 2) < 1e-2 * np.sum((b2 - beta_star) ** 2)
    # kernel regime: distance to the l2 interpolator small and decreasing in alpha
    to_l2 = np.array([_rel(b, b2) for b in beta[3:]])  # alpha = 1, 10, 100
    assert np.all(np.diff(to_l2) < 0) and to_l2[-1] < 1e-4, to_l2
    to_l1 = np.array([_rel(b, b1) for b in beta[:4]])  # alpha = 1e-3 .. 1
    assert np.all(np.diff(to_l1) > 0), to_l1


def test_training_does_not_retrace(trained):
    X, y, *_ = trained
    with traces() as names:
        W.train_diagonal_network(X, y, [0.5, 2.0], lr=0.1, steps=53)  # steps no other test uses: traced once
        W.train_diagonal_network(X, y, [0.7, 3.0], lr=0.05, steps=53)  # new alphas and lr: not again
    assert names.count("_train") == 1, names  # the jitted trainer in owidth.theory.woodworth


# ---------------------------------------------------------------- the experiment


@pytest.mark.slow  # ~6 s: the experiment end to end
def test_woodworth_quick(tmp_path, capsys, monkeypatch):
    """The quick experiment in float32, as users run it: trained nets within 2% of theory at every alpha."""
    monkeypatch.setenv("OWIDTH_NO_PROGRESS", "1")
    with jax.enable_x64(False):  # as users run it (the test suite turns x64 on)
        summary = ow.experiments.run("woodworth", out=tmp_path, quick=True)
    assert "trained diagonal nets vs argmin Q_alpha" in capsys.readouterr().out
    assert summary["agrees_within_2pct"] and summary["max_rel_net_vs_theory"] < 0.02, summary["rel_net_vs_theory"]
    assert summary["rel_net_to_l1"][0] < 0.05 and summary["rel_net_to_l2"][-1] < 1e-4
    with xr.open_dataset(tmp_path / "woodworth.nc") as ds:
        assert ds.attrs["train_dtype"] == "float32"
        assert ds.beta_net.dims == ("alpha", "feature")
        # stored figures follow from the stored vectors
        err = ((ds.beta_net - ds.beta_star) ** 2).sum("feature")
        np.testing.assert_allclose(ds.test_error_net, err, rtol=1e-10)
        np.testing.assert_allclose(ds.X.values @ ds.beta_star.values, ds.y.values, atol=1e-12)
    assert (tmp_path / "woodworth.png").stat().st_size > 10_000
    assert "woodworth" in ow.experiments.names()
