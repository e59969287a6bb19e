"""Heavy-ball momentum, general losses and the NTK-GP in ow.predict, against independent references:
explicit optax loops on linear models (whose NTK is exactly phi phi^T), scipy's ODE solver in parameter
space, and the NTK-GP formulas of Lee et al. 2019 (eq. 16) written out with numpy solves."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.integrate

import owidth as ow


def linear_model(n=6, m=4, p=9, k=1, seed=0):
    """Random features phi (n, p), phi_test (m, p), initial weights w0 (p, k) and targets (n, k)."""
    rng = np.random.default_rng(seed)
    phi, phit = rng.normal(size=(n, p)) / np.sqrt(p), rng.normal(size=(m, p)) / np.sqrt(p)
    return phi, phit, rng.normal(size=(p, k)), rng.normal(size=(n, k))


def optax_trajectory(phi, phit, w0, loss_f, lr, momentum, steps):
    """Train the linear model f = phi w with optax.sgd(lr, momentum) on loss_f(f); outputs at steps."""
    opt = optax.sgd(lr, momentum=momentum if momentum else None)
    loss = lambda w: loss_f(phi @ w)  # noqa: E731

    def step(carry, _):
        w, state = carry
        upd, state = opt.update(jax.grad(loss)(w), state, w)
        return (optax.apply_updates(w, upd), state), (phi @ w, phit @ w)

    _, (ftr, fte) = jax.lax.scan(step, (jnp.asarray(w0), opt.init(jnp.asarray(w0))), None, length=max(steps) + 1)
    return np.asarray(ftr)[steps], np.asarray(fte)[steps]


def xent(f, y):
    return -jnp.mean(jnp.sum(y * jax.nn.log_softmax(f), axis=-1))


@pytest.mark.parametrize("case", [pytest.param("double_root", marks=pytest.mark.slow), "near_edge",
                                  pytest.param("rank_deficient", marks=pytest.mark.slow)])
def test_momentum_equals_optax_heavy_ball_on_a_linear_model(case):
    """optax.sgd(lr, momentum=beta) on L = 1/(2n) sum ||phi w - y||^2: the closed form to 1e-10."""
    n, beta = 6, 0.7
    phi, phit, w0, y = linear_model(n=n, p=4 if case == "rank_deficient" else 9, k=2)
    theta, theta_xt = phi @ phi.T, phit @ phi.T
    lam_max = np.linalg.eigvalsh(theta)[-1]
    lr = {"rank_deficient": 0.5 * n / lam_max,  # two zero eigenvalues: the exact lam -> 0 limit is used
          "double_root": (1 - beta**0.5) ** 2 * n / lam_max,  # top mode critically damped: (1+b-a)^2 = 4b
          "near_edge": 0.97 * 2 * (1 + beta) * n / lam_max}[case]  # top mode oscillates, |root| close to 1
    steps = [0, 1, 2, 3, 17, 64, 250]
    ref_tr, ref_te = optax_trajectory(phi, phit, w0, lambda f: 0.5 * jnp.sum((f - y) ** 2) / n, lr, beta, steps)
    p = ow.predict.gradient_descent(theta, theta_xt, y, lr=lr, steps=steps, momentum=beta, f0_train=phi @ w0,
                                    f0_test=phit @ w0)
    scale = np.abs(ref_tr).max()
    np.testing.assert_allclose(p.mean_train, ref_tr, rtol=0, atol=1e-10 * scale)
    np.testing.assert_allclose(p.mean_test, ref_te, rtol=0, atol=1e-10 * scale)


def test_momentum_zero_is_the_plain_closed_form_exactly():
    phi, phit, w0, y = linear_model()
    theta, theta_xt = phi @ phi.T, phit @ phi.T
    k = ow.Kernel(nngp=theta + 0.1, ntk=theta, var1=np.diag(theta) + 0.1, var2=np.diag(theta) + 0.1)
    kxt = ow.Kernel(nngp=theta_xt + 0.1, ntk=theta_xt, var1=np.diag(phit @ phit.T) + 0.1, var2=np.diag(theta) + 0.1)
    kw = dict(lr=0.3, steps=[0, 3, 40], k_test_test=phit @ phit.T + 0.1)
    a = ow.predict.gradient_descent(k, kxt, y, momentum=0.0, **kw)
    b = ow.predict.gradient_descent(k, kxt, y, **kw)
    for name in ("mean_train", "mean_test", "cov_train", "cov_test"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    # and that closed form is (1 - lr lam / n)^t per mode, for beta = 0 in the optax loop
    ref_tr, _ = optax_trajectory(phi, phit, np.zeros_like(w0), lambda f: 0.5 * jnp.mean((f - y) ** 2), 0.3, 0.0,
                                 [0, 3, 40])
    np.testing.assert_allclose(a.mean_train, ref_tr, rtol=0, atol=1e-12)


def test_momentum_converges_faster_and_diverges_past_the_edge():
    phi, _, _, y = linear_model(n=6, p=9)
    theta = phi @ phi.T
    edge = float(ow.predict.max_learning_rate(theta, momentum=0.5))
    r = [np.abs(ow.predict.gradient_descent(theta, None, y, lr=f * edge, steps=[4000], momentum=0.5).mean_train[0]
                - y).max() for f in (0.99, 1.01)]
    assert r[0] < 1e-6 < 1e6 < r[1]


@pytest.mark.parametrize("momentum", [0.0, 0.6])
def test_cross_entropy_gd_equals_optax_on_a_linear_model(momentum):
    n, k = 6, 3
    phi, phit, w0, _ = linear_model(n=n, k=k, seed=3)
    y = np.eye(k)[np.arange(n) % k]
    theta, theta_xt = phi @ phi.T, phit @ phi.T
    steps = [0, 1, 5, 30, 120]
    ref_tr, ref_te = optax_trajectory(phi, phit, w0, lambda f: xent(f, y), 2.0, momentum, steps)
    p = ow.predict.gradient_descent(theta, theta_xt, y, lr=2.0, steps=steps, momentum=momentum, loss=xent,
                                    f0_train=phi @ w0, f0_test=phit @ w0)
    np.testing.assert_allclose(p.mean_train, ref_tr, rtol=0, atol=1e-10 * np.abs(ref_tr).max())
    np.testing.assert_allclose(p.mean_test, ref_te, rtol=0, atol=1e-10 * np.abs(ref_tr).max())
    assert p.cov_train is None and p.cov_test is None


def test_mse_loss_reproduces_the_closed_form():
    n = 6
    phi, phit, _, y = linear_model(n=n, k=2, seed=1)
    theta, theta_xt = phi @ phi.T, phit @ phi.T
    mse = lambda f, y: 0.5 * jnp.sum((f - y) ** 2) / n  # noqa: E731
    kw = dict(steps=[0, 2, 9, 33], lr=0.8, momentum=0.4)
    a = ow.predict.gradient_descent(theta, theta_xt, y, loss=mse, **kw)
    b = ow.predict.gradient_descent(theta, theta_xt, y, **kw)
    np.testing.assert_allclose(a.mean_train, b.mean_train, rtol=0, atol=1e-12)
    np.testing.assert_allclose(a.mean_test, b.mean_test, rtol=0, atol=1e-12)


@pytest.mark.slow  # ~3 s, compiling odeint; by default test_reference_nt_predict checks the ODE path
def test_mse_loss_flow_reproduces_the_closed_form():
    n = 6
    phi, phit, _, y = linear_model(n=n, seed=1)
    theta, theta_xt = phi @ phi.T, phit @ phi.T
    times = [3.0, 0.0, 0.5, 3.0]  # unsorted, repeated: answered in the order asked
    mse = lambda f, y: 0.5 * jnp.sum((f - y) ** 2) / n  # noqa: E731 - f, y of shape (n,), as y_train
    a = ow.predict.gradient_flow(theta, theta_xt, y[:, 0], times=times, loss=mse)
    b = ow.predict.gradient_flow(theta, theta_xt, y[:, 0], times=times)
    assert a.mean_train.shape == (4, n)
    np.testing.assert_allclose(a.mean_train, b.mean_train, rtol=0, atol=1e-8)
    np.testing.assert_allclose(a.mean_test, b.mean_test, rtol=0, atol=1e-8)


@pytest.mark.slow  # ~1.5 s; by default the ODE path is checked against neural-tangents (test_reference_nt_predict)
def test_cross_entropy_flow_equals_parameter_space_ode():
    """df/dt = -Theta grad_f L in function space vs dw/dt = -grad_w L(phi w) by scipy's DOP853."""
    n, k, p = 6, 3, 9
    phi, phit, w0, _ = linear_model(n=n, k=k, p=p, seed=5)
    y = np.eye(k)[np.arange(n) % k]
    grad_w = jax.jit(jax.grad(lambda w: xent(phi @ w.reshape(p, k), y)))
    times = [0.5, 4.0, 20.0]
    sol = scipy.integrate.solve_ivp(lambda t, w: -np.asarray(grad_w(w)), (0, max(times)), w0.ravel(),
                                    method="DOP853", t_eval=times, rtol=1e-12, atol=1e-12)
    w_t = sol.y.T.reshape(-1, p, k)
    pred = ow.predict.gradient_flow(phi @ phi.T, phit @ phi.T, y, times=times, loss=xent, f0_train=phi @ w0,
                                    f0_test=phit @ w0)
    np.testing.assert_allclose(pred.mean_train, phi @ w_t, rtol=0, atol=1e-8)
    np.testing.assert_allclose(pred.mean_test, phit @ w_t, rtol=0, atol=1e-8)


def _ntk_gp_numpy(nngp, ntk, nngp_xt, ntk_xt, nngp_tt, y):
    """Lee et al. 2019 eq. 16 at t = inf, by explicit solves (pinv for a singular NTK)."""
    inv = np.linalg.pinv(ntk, rcond=1e-12)
    a = ntk_xt @ inv
    return a @ y, nngp_tt + a @ nngp @ a.T - a @ nngp_xt.T - nngp_xt @ a.T


def _kernels(n=5, m=4, repeat=False, seed=0):
    """NNGP and NTK blocks (train-train, test-train, test-test) of random features, as ow.Kernel: any PSD
    pair is a valid NTK-GP input. ``repeat``: the first training point twice, so both are singular."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(n + m, 7)), rng.normal(size=(n + m, 9))
    if repeat:
        a[1], b[1] = a[0], b[0]
    nngp = a @ a.T / 7
    ntk = b @ b.T / 9 + 0.5 * nngp
    tr, te = np.arange(n), np.arange(n, n + m)
    return tuple(ow.Kernel(nngp=nngp[i][:, j], ntk=ntk[i][:, j], var1=None, var2=None)
                 for i, j in ((tr, tr), (te, tr), (te, te)))


def test_ntk_posterior_at_infinity_is_the_ntk_gp():
    y = np.random.default_rng(1).normal(size=(5, 2))
    k, kxt, ktt = _kernels()
    mean, cov = _ntk_gp_numpy(*(np.asarray(a) for a in (k.nngp, k.ntk, kxt.nngp, kxt.ntk, ktt.nngp)), y)
    p = ow.predict.ntk_posterior(k, kxt, y, times=[1e9, np.inf, 0.0], k_test_test=ktt)
    for i in (0, 1):  # t = inf, and a large finite t
        np.testing.assert_allclose(p.mean_test[i], mean, rtol=0, atol=1e-9)
        np.testing.assert_allclose(p.cov_test[i], cov, rtol=0, atol=1e-9)
        np.testing.assert_allclose(p.mean_train[i], y, rtol=0, atol=1e-9)
        np.testing.assert_allclose(p.cov_train[i], 0.0, rtol=0, atol=1e-9)
    np.testing.assert_allclose(p.cov_test[2], ktt.nngp, rtol=0, atol=1e-14)  # t = 0: the prior
    np.testing.assert_allclose(p.mean_test[2], 0.0, atol=0)
    assert np.all(np.linalg.eigvalsh(np.asarray(p.cov_test[1])) > -1e-10)


@pytest.mark.slow  # ~2 s
def test_ntk_posterior_singular_ntk_is_the_pseudo_inverse():
    k, kxt, ktt = _kernels(n=4, m=3, repeat=True)
    y = np.array([0.5, 0.5, -1.0, 2.0])
    assert np.linalg.matrix_rank(np.asarray(k.ntk)) == 3
    p = ow.predict.ntk_posterior(k, kxt, y, k_test_test=ktt)
    mean, cov = _ntk_gp_numpy(*(np.asarray(a) for a in (k.nngp, k.ntk, kxt.nngp, kxt.ntk, ktt.nngp)), y[:, None])
    np.testing.assert_allclose(p.mean_test[0], mean[:, 0], rtol=0, atol=1e-9)
    np.testing.assert_allclose(p.cov_test[0], cov, rtol=0, atol=1e-9)


@pytest.mark.slow  # ~1 s
def test_jit_equals_eager():
    phi, phit, w0, y = linear_model(k=3)
    theta, theta_xt = phi @ phi.T, phit @ phi.T
    y = np.eye(3)[np.arange(6) % 3]
    for kw in (dict(momentum=0.5), dict(momentum=0.5, loss=xent)):
        f = lambda th, txt: ow.predict.gradient_descent(th, txt, y, lr=0.7, steps=[0, 5, 12], **kw)  # noqa: E731,B023
        eager, jitted = f(theta, theta_xt), jax.jit(f)(theta, theta_xt)
        np.testing.assert_allclose(jitted.mean_test, eager.mean_test, rtol=1e-13, atol=1e-13)


K2 = np.array([[2.0, 0.5], [0.5, 1.0]])
Y2 = np.array([1.0, -1.0])
KER = ow.Kernel(nngp=K2, ntk=K2, var1=np.diag(K2), var2=np.diag(K2))


@pytest.mark.parametrize(("call", "match"), [
    (lambda: ow.predict.gradient_descent(K2, None, Y2, lr=0.1, steps=1, momentum=1.0), r"momentum=1.0 must be"),
    (lambda: ow.predict.gradient_descent(K2, None, Y2, lr=0.1, steps=1, momentum=-0.1), r"in \[0, 1\)"),
    (lambda: ow.predict.gradient_descent(K2, None, Y2, lr=0.1, steps=1, momentum=True), r"momentum=True"),
    (lambda: ow.predict.gradient_descent(K2, None, Y2, lr=0.1, steps=1, momentum=float("nan")), r"momentum=nan"),
    (lambda: ow.predict.gradient_descent(K2, None, Y2, lr=0.1, steps=1, loss="mse"), r"loss must be a callable"),
    (lambda: ow.predict.gradient_flow(K2, None, Y2, times=1.0, loss=lambda f, y: f - y), r"must return a real scalar"),
    (lambda: ow.predict.gradient_flow(K2, None, Y2, times=1.0, loss=lambda f: f.sum()), r"calling loss\(f, y_train\)"),
    (lambda: ow.predict.gradient_descent(K2, K2, Y2, lr=0.1, steps=1, loss=lambda f, y: f.sum(), k_test_test=K2),
     r"drop k_test_test or loss"),
    (lambda: ow.predict.ntk_posterior(K2, None, Y2), r"k_train must be an ow.Kernel with both nngp and ntk"),
    (lambda: ow.predict.ntk_posterior(KER, K2, Y2), r"k_test_train must be an ow.Kernel"),
    (lambda: ow.predict.ntk_posterior(KER, None, Y2, times=[1.0, np.nan]), r"times must be >= 0"),
    (lambda: ow.predict.ntk_posterior(KER, None, Y2, times=-1.0), r"times must be >= 0"),
    (lambda: ow.predict.gradient_flow(K2, None, Y2, times=np.inf, loss=lambda f, y: f.sum()), r"finite and >= 0"),
])
def test_bad_input_raises_before_compiling(call, match):
    with pytest.raises(ValueError, match=match):
        call()
