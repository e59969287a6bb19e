"""Infinite-width predictions (Lee et al. 2019) and linearised networks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import owidth as ow
from helpers import sphere

NET = ow.serial(ow.Dense(w_std=1.5, b_std=0.2), ow.Erf(), ow.Dense(w_std=1.5, b_std=0.2), ow.Relu(),
                ow.Dense(out=1, w_std=1.0, b_std=0.1))


def data(n=8, m=5, d=4, seed=0):
    x, xt = sphere(n, d, seed), sphere(m, d, seed + 1)
    y = np.sin(x[:, 0]) + 0.3 * x[:, 1]
    return x, xt, y


@pytest.mark.slow  # ~7 s; by default test_train's linearized training follows the same closed form
def test_linearized_network_gd_matches_closed_form_exactly():
    """theta <- theta - lr grad(1/2n ||f_lin - y||^2): f_lin follows (I - lr Theta/n)^t exactly."""
    x, xt, y = data()
    model = ow.finite(NET, width=32)
    p0 = model.init(jax.random.key(0), x)
    f_lin = ow.linearize(model.apply, p0)
    lr, steps = 0.5, [0, 1, 2, 5, 10, 50, 200]

    def loss(p):
        return 0.5 * jnp.mean((f_lin(p, x)[:, 0] - y) ** 2)

    step = jax.jit(lambda p: jax.tree.map(lambda a, g: a - lr * g, p, jax.grad(loss)(p)))
    p, traj_train, traj_test = p0, [], []
    for t in range(max(steps) + 1):
        if t in steps:
            traj_train.append(f_lin(p, x)[:, 0])
            traj_test.append(f_lin(p, xt)[:, 0])
        p = step(p)
    k = ow.empirical_ntk(model.apply, p0, x)
    kxt = ow.empirical_ntk(model.apply, p0, xt, x)
    pred = ow.predict.gradient_descent(k, kxt, y, lr=lr, steps=steps, f0_train=model.apply(p0, x)[:, 0],
                                       f0_test=model.apply(p0, xt)[:, 0])
    scale = np.abs(y).max()
    np.testing.assert_allclose(pred.mean_train, np.array(traj_train), atol=1e-8 * scale, rtol=0)
    np.testing.assert_allclose(pred.mean_test, np.array(traj_test), atol=1e-8 * scale, rtol=0)
    # and training does fit: the residual shrinks
    assert np.linalg.norm(traj_train[-1] - y) < 0.5 * np.linalg.norm(traj_train[0] - y)


def test_linearized_equals_network_to_first_order():
    x, _, _ = data()
    model = ow.finite(NET, width=16)
    p0 = model.init(jax.random.key(1), x)
    d = jax.tree.map(lambda a: 1e-4 * jnp.ones_like(a), p0)
    p1 = jax.tree.map(jnp.add, p0, d)
    f_lin = ow.linearize(model.apply, p0)
    np.testing.assert_allclose(f_lin(p0, x), model.apply(p0, x), rtol=1e-14)
    gap = np.abs(f_lin(p1, x) - model.apply(p1, x)).max()
    assert gap < 1e-5 and gap > 0  # second order in the step


def test_gradient_flow_is_small_lr_limit_and_infinite_time_interpolates():
    x, xt, y = data()
    k, kxt = ow.kernel(NET, x), ow.kernel(NET, xt, x)
    t = 40.0
    flow = ow.predict.gradient_flow(k, kxt, y, times=[t])
    gd = ow.predict.gradient_descent(k, kxt, y, lr=1e-3, steps=[int(t / 1e-3)])
    np.testing.assert_allclose(gd.mean_test, flow.mean_test, rtol=2e-3, atol=1e-6)
    # t -> inf: kernel regression with the NTK, computed here with a plain solve
    inf = ow.predict.gradient_flow(k, kxt, y, times=[1e9])
    ref = np.asarray(kxt.ntk) @ np.linalg.solve(np.asarray(k.ntk), y)
    np.testing.assert_allclose(inf.mean_test[0], ref, rtol=1e-7)
    np.testing.assert_allclose(inf.mean_train[0], y, atol=1e-7)


def test_covariance_over_initialisations_monte_carlo():
    """Sample f0 ~ GP(0, K_nngp) on train+test, evolve by the exact linear map: mean and cov match."""
    x, xt, y = data()
    xa = np.concatenate([x, xt])
    ka = ow.kernel(NET, xa)
    n = len(x)
    k, kxt, ktt = ow.kernel(NET, x), ow.kernel(NET, xt, x), ow.kernel(NET, xt)
    lr, steps = 0.3, [3, 30]
    pred = ow.predict.gradient_descent(k, kxt, y, lr=lr, steps=steps, k_test_test=ktt)
    rng = np.random.default_rng(0)
    chol = np.linalg.cholesky(np.asarray(ka.nngp) + 1e-12 * np.eye(len(xa)))
    f0 = rng.standard_normal((20000, len(xa))) @ chol.T
    th, thxt = np.asarray(k.ntk), np.asarray(kxt.ntk)
    for i, t in enumerate(steps):
        m = np.linalg.matrix_power(np.eye(n) - lr * th / n, t)
        a = thxt @ np.linalg.solve(th, np.eye(n) - m)  # naive formula, independent of the library
        ft = f0[:, n:] - (f0[:, :n] - y) @ a.T
        se = ft.std(0) / np.sqrt(len(ft))
        assert np.all(np.abs(ft.mean(0) - pred.mean_test[i]) < 4 * se)
        np.testing.assert_allclose(np.cov(ft.T), pred.cov_test[i], atol=0.03 * np.abs(pred.cov_test[i]).max())
    # the covariance is PSD
    assert np.linalg.eigvalsh(np.asarray(pred.cov_test[-1])).min() > -1e-10


def test_nngp_posterior_against_solve():
    x, xt, y = data()
    k, kxt, ktt = ow.kernel(NET, x), ow.kernel(NET, xt, x), ow.kernel(NET, xt)
    post = ow.predict.nngp_posterior(k, kxt, y, noise=0.1, k_test_test=ktt)
    kk = np.asarray(k.nngp) + 0.1 * np.eye(len(x))
    np.testing.assert_allclose(post.mean_test[0], np.asarray(kxt.nngp) @ np.linalg.solve(kk, y), rtol=1e-10)
    cov = np.asarray(ktt.nngp) - np.asarray(kxt.nngp) @ np.linalg.solve(kk, np.asarray(kxt.nngp).T)
    np.testing.assert_allclose(post.cov_test[0], cov, rtol=1e-9, atol=1e-12)


def test_singular_kernel_and_times_batch():
    x, xt, y = data()
    x = np.concatenate([x, x[:2]])  # duplicated points: singular NTK
    y = np.concatenate([y, y[:2]])
    k = ow.kernel(NET, x)
    pred = ow.predict.gradient_descent(k, None, y, lr=1.0, steps=np.arange(0, 1000, 100))
    assert pred.mean_train.shape == (10, len(x))
    assert np.all(np.isfinite(pred.mean_train)) and np.all(np.isfinite(pred.cov_train))
    with pytest.raises(ValueError, match="lr must be a finite positive"):
        ow.predict.gradient_descent(k, None, y, lr=-1.0, steps=3)
    with pytest.raises(ValueError, match="integers"):
        ow.predict.gradient_descent(k, None, y, lr=1.0, steps=[1.5])


def test_max_learning_rate_is_the_edge_of_divergence():
    """Just below ow.predict.max_learning_rate the linearised network's training residual contracts; just
    above, it grows (along the top eigenvector of the NTK); momentum widens the bound by (1 + beta)."""
    net = ow.serial(ow.Dense(w_std=1.5, b_std=0.1), ow.Relu(), ow.Dense(out=1))
    x = np.random.default_rng(0).normal(size=(8, 3))
    k = ow.kernel(net, x)
    y = np.random.default_rng(1).normal(size=(8, 1))
    lr = float(ow.predict.max_learning_rate(k))
    np.testing.assert_allclose(lr, 2 * 8 / np.linalg.eigvalsh(np.asarray(k.ntk))[-1], rtol=1e-12)
    for factor, grows in ((0.98, False), (1.02, True)):
        p = ow.predict.gradient_descent(k.ntk, None, y, lr=factor * lr, steps=[2000])
        residual = np.abs(np.asarray(p.mean_train[0]) - y).max()
        assert (residual > 1e3) == grows, (factor, residual)
    assert float(ow.predict.max_learning_rate(k, momentum=0.5)) == pytest.approx(1.5 * lr, rel=1e-12)
    with pytest.raises(ValueError, match="momentum"):
        ow.predict.max_learning_rate(k, momentum=1.0)
    with pytest.raises(ValueError, match="square"):
        ow.predict.max_learning_rate(np.ones((3, 2)))
