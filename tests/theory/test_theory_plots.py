"""Theory-plot experiments (learning curves, double descent, gradient coherence) and their theory formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

import owidth as ow
from owidth.experiments import double_descent, gradient_coherence
from owidth.theory.eigenlearning import eigenlearning, pool_spectrum, random_feature_risk


# ---------------------------------------------------------------- theory formulas, checked independently


def _power_law(m=300, a=1.5, b=1.2):
    i = np.arange(1, m + 1)
    v2 = i**-b
    return i**-a, v2 / v2.sum()


def test_eigenlearning_kappa_solves_its_equation_brute_force():
    """kappa against a plain bisection of sum lambda/(lambda+kappa) + delta/kappa = n on a log grid."""
    lam, v2 = _power_law()
    for n, ridge in ((10, 1e-3), (100, 1e-6), (250, 0.5)):
        f = lambda k: np.sum(lam / (lam + k)) + ridge / k - n  # noqa: E731
        grid = np.logspace(-15, 5, 4001)
        vals = np.array([f(k) for k in grid])
        j = np.nonzero(np.diff(np.sign(vals)))[0][0]
        lo, hi = grid[j], grid[j + 1]
        for _ in range(200):
            mid = np.sqrt(lo * hi)
            lo, hi = (mid, hi) if f(mid) > 0 else (lo, mid)
        assert eigenlearning(lam, v2, n, ridge).kappa == pytest.approx(lo, rel=1e-8)


def test_eigenlearning_large_n_limit_is_least_squares_variance():
    """Rank-R kernel, noise eps^2, n > R, ridge -> 0: the fit is least squares on R features, whose excess test
    error is eps^2 R / (n - R) (Gaussian design: R / (n - R - 1)); it vanishes as n -> infinity."""
    r, eps2 = 20, 0.3
    lam = np.r_[np.linspace(1.0, 0.1, r), np.zeros(30)]
    v2 = np.r_[np.ones(r) / r, np.zeros(30)]
    for n in (40, 100, 1000, 10_000):
        got = eigenlearning(lam, v2, n, 1e-10, eps2).test_mse
        assert got == pytest.approx(eps2 * r / (n - r), rel=1e-4)


def test_eigenlearning_matches_monte_carlo_kernel_regression():
    """Linear kernel with Gaussian features of covariance diag(lambda): KRR test error vs theory."""
    lam, v2 = _power_law(200)
    rng = np.random.default_rng(0)
    n, ridge, eps2, reps = 60, 1e-2, 0.05, 60
    v = np.sqrt(v2)
    errs = []
    for _ in range(reps):
        psi = rng.standard_normal((n, len(lam)))
        y = psi @ v + np.sqrt(eps2) * rng.standard_normal(n)
        alpha = np.linalg.solve((psi * lam) @ psi.T + ridge * np.eye(n), y)
        errs.append(np.sum((lam * (psi.T @ alpha) - v) ** 2))  # population excess error: ||beta_hat - v||^2
    mean, se = np.mean(errs), np.std(errs, ddof=1) / np.sqrt(reps)
    th = eigenlearning(lam, v2, n, ridge, eps2).test_mse
    assert abs(th - mean) < 3 * se + 0.03 * mean, (th, mean, se)


@pytest.mark.parametrize("n_features", [50, 300])
def test_random_feature_theory_matches_gaussian_simulation(n_features):
    """Linear random features phi = F psi, F rows ~ N(0, Lambda / N), psi ~ N(0, I): ridge regression on phi."""
    lam, v2 = _power_law(300)
    rng = np.random.default_rng(1)
    n, ridge, eps2, reps = 100, 1e-3, 0.05, 40
    v = np.sqrt(v2)
    errs = []
    for _ in range(reps):
        f = rng.standard_normal((n_features, len(lam))) * np.sqrt(lam / n_features)
        psi = rng.standard_normal((n, len(lam)))
        y = psi @ v + np.sqrt(eps2) * rng.standard_normal(n)
        phi = psi @ f.T
        a = np.linalg.solve(phi.T @ phi + ridge * np.eye(n_features), phi.T @ y)
        errs.append(np.sum((f.T @ a - v) ** 2))
    mean, se = np.mean(errs), np.std(errs, ddof=1) / np.sqrt(reps)
    th = random_feature_risk(lam, v2, n, n_features, ridge, eps2).test_mse
    assert abs(th - mean) < 3 * se + 0.03 * mean, (th, mean, se)


def test_random_feature_theory_limits():
    """N -> infinity is kernel ridge regression; the ridgeless error diverges at N = n (the peak)."""
    lam, v2 = _power_law(300)
    n = 100
    assert random_feature_risk(lam, v2, n, 1e12, 1e-2, 0.1).test_mse == pytest.approx(
        eigenlearning(lam, v2, n, 1e-2, 0.1).test_mse, rel=1e-6)
    at_peak = random_feature_risk(lam, v2, n, n, 1e-9).test_mse
    assert at_peak > 30 * random_feature_risk(lam, v2, n, n // 2, 1e-9).test_mse
    assert at_peak > 30 * random_feature_risk(lam, v2, n, 2 * n, 1e-9).test_mse
    # at a tuned ridge, more features never hurt (Simon et al. 2023, Theorem 1)
    ridges = np.logspace(-6, 1, 30)
    best = [min(random_feature_risk(lam, v2, n, nf, r).test_mse for r in ridges) for nf in (20, 60, 100, 150, 400)]
    assert np.all(np.diff(best) <= 1e-12), best


def test_pool_spectrum_reconstructs_kernel_and_target():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((30, 3))
    k = (x @ x.T + 1) ** 2
    f = np.sin(x[:, 0])
    lam, v2 = pool_spectrum(k, f)
    assert lam.sum() == pytest.approx(np.trace(k) / 30)
    assert v2.sum() == pytest.approx(np.mean(f**2))  # Parseval under the uniform pool measure


def test_random_relu_features_have_the_nngp_kernel():
    """The simulated features relu(W x / sqrt(d)) / sqrt(N) average to the analytic NNGP used by the theory."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 5))
    k = np.asarray(ow.kernel(double_descent.feature_net(), x, get="nngp").nngp)
    n_feat = 400_000
    phi = np.maximum(x @ rng.standard_normal((5, n_feat)) / np.sqrt(5), 0) / np.sqrt(n_feat)
    assert np.allclose(phi @ phi.T, k, rtol=0.02, atol=0.02 * k.max())


def test_gradient_gram_approaches_infinite_width_theory():
    """Per-example cross-entropy gradient Gram of a wide net vs Theta_ij (delta_{y_i y_j} - 1/C)."""
    x = np.asarray(np.random.default_rng(4).uniform(size=(8, 16)))
    labels = np.array([0, 1, 2, 0, 1, 2, 3, 3])
    net = gradient_coherence.architecture(1)
    theta = np.asarray(ow.kernel(gradient_coherence.architecture(1, out=1), x, get="ntk").ntk)
    th = gradient_coherence.theory_gram(theta, labels)
    errs = []
    for w in (128, 2048):
        model = ow.finite(net, width=w)
        p = model.init(jax.random.key(0), jnp.asarray(x))
        g = np.asarray(gradient_coherence._gram_fn(model)(p, jnp.asarray(x), jnp.asarray(np.eye(10)[labels])))
        errs.append(np.linalg.norm(g - th) / np.linalg.norm(th))
    assert errs[1] < 0.1 and errs[1] < errs[0], errs


def test_confusion_and_coherence_statistics():
    g = np.eye(5)
    assert gradient_coherence.stats(g)["coherence"] == pytest.approx(1 / 5)
    assert gradient_coherence.stats(np.ones((5, 5)))["coherence"] == pytest.approx(1.0)
    v = np.array([[1.0, 0.0], [-1.0, 0.2], [0.0, 1.0]])
    s = gradient_coherence.stats(v @ v.T)
    assert s["confusion"] == pytest.approx(1 / np.sqrt(1.04))


# ---------------------------------------------------------------- the experiments in quick mode (float32)


@pytest.mark.slow  # ~5 s: the experiment end to end
def test_learning_curves_quick(tmp_path, monkeypatch):
    """Eigenlearning within 10% of the mean NTK-regression test MSE for P >= 32, digits and sphere."""
    monkeypatch.setenv("OWIDTH_NO_PROGRESS", "1")
    with jax.enable_x64(False):
        s = ow.experiments.run("learning-curves", out=tmp_path, quick=True)
    assert set(s["max_relative_deviation"]) == {"digits", "sphere"}
    assert max(s["max_relative_deviation"].values()) < 0.10, s["max_relative_deviation"]
    emp = np.array(s["empirical"])
    assert np.all(np.diff(emp, axis=1) < 0)  # more data, lower error
    with xr.open_dataset(tmp_path / "learning_curves.nc") as ds:
        assert ds.test_mse.dims == ("dataset", "P", "draw")
    assert (tmp_path / "learning_curves.png").stat().st_size > 10_000


@pytest.mark.slow  # ~22 s; the theory itself: test_random_feature_theory_matches_gaussian_simulation
def test_double_descent_quick(tmp_path, monkeypatch):
    """Theory within 10% away from the peak, simulated peak within 10% of N = P, optimal-ridge error
    non-increasing in N (simulation: no rise beyond 2 standard errors; theory: none)."""
    monkeypatch.setenv("OWIDTH_NO_PROGRESS", "1")
    with jax.enable_x64(False):
        s = ow.experiments.run("double-descent", out=tmp_path, quick=True)
    assert s["max_relative_deviation"] < 0.10, s
    assert abs(s["peak_ratio"] - 1) <= 0.1, s
    q, tiny = np.array(s["ratios"]), np.array(s["sim_tiny_ridge"])
    assert tiny[q == 1.0][0] > 10 * tiny[q == 0.5][0]  # a real peak, not a bump
    assert s["sim_best_max_rise_se"] < 2 and s["theory_best_max_rise"] <= 0, s
    assert s["sim_best"][-1] < 0.5 * s["sim_best"][0]
    assert (tmp_path / "double_descent.png").stat().st_size > 10_000


@pytest.mark.slow  # ~33 s; the Gram limit itself: test_gradient_gram_approaches_infinite_width_theory
def test_gradient_coherence_quick(tmp_path, monkeypatch):
    """Confusion falls with width at every depth (by > 2 se); real labels more coherent than random ones;
    the widest nets' coherence within 10% of its infinite-width value."""
    monkeypatch.setenv("OWIDTH_NO_PROGRESS", "1")
    with jax.enable_x64(False):
        s = ow.experiments.run("gradient-coherence", out=tmp_path, quick=True)
    drop, drop_se = np.array(s["confusion_drop"]), np.array(s["confusion_drop_se"])
    assert np.all(drop > 2 * drop_se), (drop, drop_se)
    gap, gap_se = np.array(s["coherence_gap"]), np.array(s["coherence_gap_se"])
    assert np.all(gap[:, -1] > 2 * gap_se[:, -1]), (gap, gap_se)
    assert s["coherence_relative_deviation_widest"] < 0.10, s
    assert np.all(np.array(s["confusion_excess_widest"]) > -0.02)  # the limit is approached from above
    assert (tmp_path / "gradient_coherence.png").stat().st_size > 10_000
