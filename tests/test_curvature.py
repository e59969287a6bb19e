"""ow.curvature (issue 19, curvature part): Hessian-vector products, Lanczos, SLQ, Hutchinson, Gauss-Newton,
and the sharpness metric of ow.train, against the dense Hessian of jax.hessian + numpy's eigh."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from scipy.stats import wasserstein_distance

import owidth as ow

X = np.random.default_rng(0).standard_normal((12, 4))
Y = np.sin(X[:, :2] @ np.array([[1.0, -0.5], [0.3, 0.8]]))
NET = ow.serial(ow.Dense(), ow.Tanh(), ow.Dense(), ow.Tanh(), ow.Dense(out=2))


def setup(width=8, seed=0):
    model = ow.finite(NET, width=width)
    params = model.init(jax.random.key(seed), X)

    def loss(p):
        return 0.5 * jnp.mean(jnp.sum((model.apply(p, X) - Y) ** 2, -1))

    flat, unravel = ravel_pytree(params)
    dense = np.asarray(jax.hessian(lambda u: loss(unravel(u)))(flat))
    return model, params, loss, dense


def test_hvp_is_the_dense_hessian_times_v():
    _, params, loss, dense = setup()
    v = jax.tree.map(lambda p: jnp.cos(7 * p), params)
    got, _ = ravel_pytree(ow.curvature.hvp(loss, params, v))
    np.testing.assert_allclose(got, dense @ np.asarray(ravel_pytree(v)[0]), rtol=1e-12, atol=1e-14)


def test_lanczos_top_eigenvalues_agree_with_eigh():
    """Top 5 Hessian eigenvalues of a 2-hidden-layer tanh net (D = 112 parameters) to 1e-6 relative, from 60
    Lanczos steps; the Ritz vectors are eigenvectors (residual ||H u - lambda u|| small)."""
    _, params, loss, dense = setup()
    exact = np.sort(np.linalg.eigvalsh(dense))[::-1]
    eig = ow.curvature.lanczos(loss, params, k=5, iters=60, key=jax.random.key(1), vectors=True)
    np.testing.assert_allclose(eig.values, exact[:5], rtol=1e-6)
    u = np.stack([ravel_pytree(jax.tree.map(lambda a, i=i: a[i], eig.vectors))[0] for i in range(5)])
    np.testing.assert_allclose(np.linalg.norm(u, axis=1), 1.0, rtol=1e-10)
    residual = np.linalg.norm(u @ dense - eig.values[:, None] * u, axis=1) / abs(exact[0])
    assert residual.max() < 1e-5, residual
    # all D steps: every eigenvalue, bottom (negative) ones included
    full = ow.curvature.lanczos(loss, params, k=dense.shape[0], iters=dense.shape[0])
    np.testing.assert_allclose(full.values, exact, atol=1e-9 * abs(exact[0]))
    assert exact[-1] < 0  # the test spectrum is indefinite


def test_slq_density_matches_the_exact_histogram():
    """Stochastic Lanczos quadrature (30 steps x 10 probes) vs the exact eigenvalues: 1-Wasserstein distance
    below 5% of the spectral width; its smoothed density integrates to 1."""
    _, params, loss, dense = setup(width=16)
    exact = np.linalg.eigvalsh(dense)
    d = ow.curvature.spectral_density(loss, params, key=jax.random.key(2), iters=30, probes=10)
    np.testing.assert_allclose(np.asarray(d.weights).sum(axis=1), 1.0, rtol=1e-10)
    w1 = wasserstein_distance(np.asarray(d.nodes).ravel(), exact, u_weights=np.asarray(d.weights).ravel())
    width = exact.max() - exact.min()
    assert w1 < 0.05 * width, (w1, width)
    grid = np.linspace(exact.min() - 1, exact.max() + 1, 4001)
    assert abs(np.trapezoid(d.smooth(grid, sigma=0.02 * width), grid) - 1) < 1e-3
    # the top Ritz value of every probe is the top eigenvalue (outliers are resolved exactly)
    np.testing.assert_allclose(np.asarray(d.nodes).max(axis=1), exact.max(), rtol=1e-6)


def test_hutchinson_trace_within_three_standard_errors():
    _, params, loss, dense = setup()
    est, se = ow.curvature.trace(loss, params, key=jax.random.key(3), probes=400)
    assert abs(float(est) - np.trace(dense)) < 3 * float(se), (float(est), np.trace(dense), float(se))
    assert 0 < float(se) < abs(np.trace(dense))


def test_gauss_newton_top_is_the_ntk_top_over_n():
    """J^T J / N from the dense Jacobian; equal to the Hessian's top where the residuals vanish (y = f)."""
    model, params, _, _ = setup()
    flat, unravel = ravel_pytree(params)
    jac = np.asarray(jax.jacobian(lambda u: model.apply(unravel(u), X).reshape(-1))(flat))  # (N k, D)
    gn = jac.T @ jac / X.shape[0]
    top = float(ow.curvature.gauss_newton_top(model.apply, params, X))
    np.testing.assert_allclose(top, np.linalg.eigvalsh(gn)[-1], rtol=1e-10)
    y0 = model.apply(params, X)  # zero residuals: the Hessian of the MSE is exactly the Gauss-Newton matrix

    def at_zero_residual(p):
        return 0.5 * jnp.mean(jnp.sum((model.apply(p, X) - y0) ** 2, -1))

    np.testing.assert_allclose(ow.curvature.lanczos(at_zero_residual, params, iters=60).values[0], top, rtol=1e-8)


def test_sharpness_metric_in_train_is_the_top_hessian_eigenvalue():
    """ow.measure.sharpness, recorded per member inside ow.train, is the top eigenvalue of the dense Hessian of
    that member's objective (centred MSE of alpha (f - f0)): checked at step 0 from given initial parameters,
    for two alphas (the Hessian is alpha^2 J^T J / N plus alpha times the residual-weighted curvature of f)."""
    model = ow.finite(NET, width=8)
    params0 = model.init(jax.random.key(5), X)
    ds = ow.train(NET, (X, Y), widths=8, lr=[0.05], alpha=[1.0, 2.0], steps=4, record_every=4, seeds=1,
                  init_params=params0, metrics={"sharpness": ow.measure.sharpness(iters=60)}, progress_bar=False)
    sharp = ds["sharpness"].isel(width=0, seed=0, lr=0)  # (alpha, step)
    assert np.all(np.isfinite(sharp.values))
    flat, unravel = ravel_pytree(params0)
    f0 = model.apply(params0, X)
    for alpha in (1.0, 2.0):
        def objective(u, alpha=alpha):
            return 0.5 * jnp.mean(jnp.sum((alpha * (model.apply(unravel(u), X) - f0) - Y) ** 2, -1))

        exact = np.linalg.eigvalsh(np.asarray(jax.hessian(objective)(flat)))[-1]
        np.testing.assert_allclose(float(sharp.sel(alpha=alpha).isel(step=0)), exact, rtol=1e-6)
    assert float(sharp.sel(alpha=2.0).isel(step=0)) > 2 * float(sharp.sel(alpha=1.0).isel(step=0))  # ~alpha^2 J^T J


def test_preconditioned_sharpness_is_the_top_eigenvalue_of_the_scaled_hessian():
    """sharpness(preconditioned=True) under muP away from its base width (per-tensor SGD multipliers D != 1):
    the top eigenvalue of D^1/2 H D^1/2 from the dense Hessian, which GD at step lr on u = D^-1/2 w (ow.train's
    step -lr D grad) sees; under NTP (D = 1) the plain sharpness."""
    for param, scaled in ((ow.MUP.with_base_width(4), True), (ow.NTP, False)):
        model = ow.finite(NET, width=8, param=param)
        params = model.init(jax.random.key(2), X)
        snap = ow.Snapshot(apply=model.apply, params=params, params0=params, x_train=X, y_train=Y, x_test=None,
                           y_test=None, alpha=1.0, model=model)
        flat, unravel = ravel_pytree(params)
        dense = np.asarray(jax.hessian(lambda u: snap.objective(unravel(u)))(flat))
        d = np.asarray(ravel_pytree(jax.tree.map(lambda s, p: jnp.full(p.shape, s),
                                                 model.lr_scales(X, optimizer="sgd"), params))[0])
        assert (np.ptp(d) > 0) == scaled, d
        exact = np.linalg.eigvalsh(np.sqrt(d)[:, None] * dense * np.sqrt(d)[None])[-1]
        got = float(ow.measure.sharpness(iters=60, preconditioned=True)(snap))
        np.testing.assert_allclose(got, exact, rtol=1e-6)
        if not scaled:
            np.testing.assert_allclose(got, float(ow.measure.sharpness(iters=60)(snap)), rtol=1e-8)


def test_ntk_top_metric_is_the_explicit_ntk_top_and_the_sharpness_at_zero_residual():
    """ow.measure.ntk_top, recorded inside ow.train: alpha^2 times the top eigenvalue of the explicit NTK
    J J^T (N k x N k, from the dense Jacobian) over N, for two alphas; on x given explicitly; and, with
    targets 0 and centring (zero residual at step 0), equal to the sharpness."""
    model = ow.finite(NET, width=8)
    params0 = model.init(jax.random.key(5), X)
    metrics = {"ntk_top": ow.measure.ntk_top(), "ntk_top_half": ow.measure.ntk_top(X[:6]),
               "sharpness": ow.measure.sharpness(iters=60)}
    ds = ow.train(NET, (X, np.zeros_like(Y)), widths=8, lr=[0.05], alpha=[1.0, 2.0], steps=4, record_every=4,
                  init_params=params0, metrics=metrics, progress_bar=False)
    at0 = ds.isel(width=0, seed=0, lr=0, step=0)
    flat, unravel = ravel_pytree(params0)
    for x in (X, X[:6]):
        jac = np.asarray(jax.jacobian(lambda u, x=x: model.apply(unravel(u), x).reshape(-1))(flat))  # (N k, D)
        top = np.linalg.eigvalsh(jac @ jac.T)[-1] / x.shape[0]
        name = "ntk_top" if x is X else "ntk_top_half"
        np.testing.assert_allclose(at0[name].values, [top, 4 * top], rtol=1e-10)
    np.testing.assert_allclose(at0["ntk_top"].values, at0["sharpness"].values, rtol=1e-8)
    assert np.all(np.isfinite(ds["ntk_top"].values))


@pytest.mark.parametrize("call,match", [
    (lambda: ow.curvature.lanczos(lambda p: jnp.sum(p ** 2), jnp.zeros(3), k=4), "k=4 exceeds the number of parameters"),
    (lambda: ow.curvature.lanczos(lambda p: jnp.sum(p ** 2), jnp.zeros(3), k=2, iters=1), "iters=1 must lie between"),
    (lambda: ow.curvature.lanczos(lambda p: jnp.sum(p ** 2), jnp.zeros(3), k=0), "k"),
    (lambda: ow.curvature.lanczos(lambda p: p ** 2, jnp.zeros(3)), "must return a scalar loss"),
    (lambda: ow.curvature.spectral_density(lambda p: jnp.sum(p ** 2), jnp.zeros(3), key=jax.random.key(0), iters=5),
     "iters=5 exceeds the number of parameters"),
    (lambda: ow.curvature.trace(lambda p: jnp.sum(p ** 2), jnp.zeros(3), key=jax.random.key(0), probes=1),
     "at least 2"),
    (lambda: ow.curvature.hvp(lambda p: jnp.sum(p ** 2), jnp.zeros(3), jnp.zeros(2)), "v has 2 entries"),
    (lambda: ow.curvature.lanczos("loss", jnp.zeros(3)), "fn must be a callable"),
    (lambda: ow.curvature.lanczos(lambda p: jnp.sum(jnp.log(p)), -jnp.ones(3)), "the loss at params is nan"),
    (lambda: ow.curvature.spectral_density(lambda p: jnp.sum(p ** 2) / 0.0, jnp.ones(3), key=jax.random.key(0), iters=2),
     "the loss at params is inf"),
])
def test_bad_input_is_refused_before_any_work(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()
