"""The infinite-width DMFT solver (``ow.dmft``): exact cases, the lazy limit, Monte Carlo vs exact."""

import math
import os

import jax
import numpy as np
import pytest

import owidth as ow

os.environ.setdefault("OWIDTH_NO_PROGRESS", "1")


def closed_form_one_point(x, y, *, gamma0, lr, steps, s1, s2, n0):
    """Two-layer linear net, one training point, centred output: the DMFT by hand.

    With ``a = s1^2 |x|^2 / D`` the preactivation ``h = v . x`` and readout ``z`` of a neuron obey
    ``h(t+1) = h(t) + c Delta(t) a z(t)``, ``z(t+1) = z(t) + c Delta(t) h(t)``
    (``c = gamma0 lr s2 / sqrt(n0)``, ``Delta = y - F``), from ``h(0) ~ N(0, a)``, ``z(0) ~ N(0, 1)``.
    In ``p = h / sqrt(a)`` the sums ``p +- z`` are multiplied by ``1 +- c Delta sqrt(a)`` at each
    step, and ``Var(p(0) +- z(0)) = 2``, so
    ``F(t) = (c_out / gamma0) <z h - z0 h0> = c_out sqrt(a) / (2 gamma0) (Pi_+(t) - Pi_-(t))``
    with ``Pi_pm(t) = prod_{s<t} (1 +- c Delta(s) sqrt(a))^2`` and ``c_out = s2 sqrt(n0)``.
    """
    a = s1**2 * float(x @ x) / len(x)
    c = gamma0 * lr * s2 / math.sqrt(n0)
    c_out = s2 * math.sqrt(n0)
    plus = minus = 1.0
    out = []
    for _ in range(steps + 1):
        f = c_out * math.sqrt(a) / (2 * gamma0) * (plus - minus)
        out.append(f)
        delta = y - f
        plus *= (1 + c * delta * math.sqrt(a)) ** 2
        minus *= (1 - c * delta * math.sqrt(a)) ** 2
    return np.array(out)


X1 = np.array([[0.3, -1.2, 0.8]])
ONE_POINT = dict(gamma0=1.5, lr=0.4, steps=12)
TWO_LAYER = ow.serial(ow.Dense(w_std=1.3), ow.Identity(), ow.Dense(out=1, w_std=0.7))


@pytest.mark.parametrize("gamma0", [0.1, 1.5, 3.0])
def test_two_layer_linear_one_point_matches_closed_form(gamma0):
    param = ow.MUP.with_base_width(4)
    r = ow.dmft(TWO_LAYER, X1, [1.0], gamma0=gamma0, lr=0.4, steps=12, param=param)
    expected = closed_form_one_point(X1[0], 1.0, gamma0=gamma0, lr=0.4, steps=12, s1=1.3, s2=0.7, n0=4)
    assert r.method == "exact-linear" and r.converged
    np.testing.assert_allclose(r.f_train[:, 0], expected, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(r.train_loss, 0.5 * (expected - 1.0) ** 2, rtol=1e-6, atol=1e-12)


def test_closed_form_is_what_wide_networks_do():
    """The hand-derived recursion (not the solver) against muP networks of width 4096, 16 seeds."""
    param = ow.MUP.with_base_width(4)
    expected = closed_form_one_point(X1[0], 1.0, **ONE_POINT, s1=1.3, s2=0.7, n0=4)
    ds = ow.train(TWO_LAYER, (X1, [1.0]), test=(X1, [1.0]), widths=4096, lr=ONE_POINT["lr"], steps=12,
                  param=param, gamma0=ONE_POINT["gamma0"], seeds=16, record_every=1, record_outputs=True,
                  progress_bar=False)
    f = ds.test_output.values[0, :, 0, 0, :, 0, 0]  # (seed, step)
    mean, se = f.mean(0), f.std(0, ddof=1) / 4
    # finite-width bias O(1/n) + seed noise: within 4 standard errors + 1e-3
    assert np.all(np.abs(mean - expected) < 4 * se + 1e-3), (mean - expected, se)
    # and the lazy (NTK) dynamics differ from it by far more: feature learning is visible
    ntk = 2 * 1.3**2 * 0.7**2 * float(X1[0] @ X1[0]) / 3
    lazy = 1.0 - (1 - ONE_POINT["lr"] * ntk) ** np.arange(13)
    assert np.max(np.abs(lazy - expected)) > 3 * (4 * se.max() + 1e-3)


def _data(p=6, d=4, m=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((p + m, d))
    y = np.sin(x[:, 0] + 0.5 * x[:, 1])
    return x[:p], y[:p], x[p:], y[p:]


DEEP_LINEAR = ow.serial(ow.Dense(w_std=1.2), ow.Identity(), ow.Dense(w_std=0.9), ow.Identity(),
                        ow.Dense(out=1, w_std=1.1))


@pytest.mark.slow  # ~6-10 s; the dmft experiment's quick run (test_cli) checks the lazy limit to 1e-6
def test_lazy_limit_is_ntk_gradient_descent():
    """gamma0 -> 0: the DMFT equals ow.predict.gradient_descent with the analytic NTK (to 1e-6 relative)."""
    x, y, xt, _ = _data()
    r = ow.dmft(DEEP_LINEAR, x, y, gamma0=1e-4, lr=0.3, steps=15, x_test=xt, param=ow.MUP.with_base_width(8))
    k = ow.kernel(DEEP_LINEAR, x)
    kt = ow.kernel(DEEP_LINEAR, xt, x)
    pred = ow.predict.gradient_descent(k.ntk, kt.ntk, y, lr=0.3, steps=np.arange(16))
    for got, want in ((r.f_train, pred.mean_train), (r.f_test, pred.mean_test)):
        want = np.asarray(want)
        assert np.max(np.abs(got - want)) < 1e-6 * np.max(np.abs(want))
    np.testing.assert_allclose(r.ntk[0], k.ntk, rtol=1e-10)  # K(0) is the NTK of ow.kernel
    assert np.max(np.abs(r.ntk[-1] - r.ntk[0])) < 1e-6 * np.max(np.abs(k.ntk))  # and it stays put


@pytest.mark.slow  # ~5 s; the dmft experiment's quick run (test_cli) checks the same ordering
def test_richness_speeds_up_learning_and_aligns_the_kernel():
    """Bordelon & Pehlevan (2022, Fig. 2): larger gamma0, faster loss decrease, NTK more aligned with y."""
    x, y, _, _ = _data(p=8, d=6)
    def alignment(k):
        return float(y @ k @ y / (np.linalg.norm(k) * (y @ y)))

    losses, gains = [], []
    for g in (0.1, 1.0, 2.0):
        r = ow.dmft(DEEP_LINEAR, x, y, gamma0=g, lr=0.1, steps=12)
        losses.append(r.train_loss[-1])
        gains.append(alignment(r.ntk[-1]) - alignment(r.ntk[0]))
    assert losses[0] > losses[1] > losses[2], losses
    assert gains[0] < gains[1] < gains[2] and gains[2] > 0.05, gains


def _linear_net(depth):
    layers = []
    for l in range(depth):
        layers += [ow.Dense(w_std=1.2 - 0.15 * l), ow.Identity()]
    return ow.serial(*layers, ow.Dense(out=1, w_std=1.1))


@pytest.mark.parametrize("depth, gamma0, steps", [(1, 1.5, 8), (2, 1.0, 10), (3, 0.7, 8)])
def test_one_sweep_equals_picard_iteration(depth, gamma0, steps):
    """The exact deep-linear sweep (one causal pass, coefficients over the sources) and the Picard iteration
    (columns of factors of the source covariances, >= T iterations) are two independent solvers of the same
    equations: outputs, equal-time and two-time kernels agree to the iteration's tolerance."""
    net = _linear_net(depth)
    x, y, xt, _ = _data(p=5, d=3, m=2)
    kw = dict(gamma0=gamma0, lr=0.3, steps=steps, x_test=xt, param=ow.MUP.with_base_width(8))
    sweep = ow.dmft(net, x, y, **kw)
    picard = ow.dmft(net, x, y, **kw, method="picard", tol=1e-13)
    assert (sweep.method, sweep.iterations, picard.method) == ("exact-linear", 1, "picard-linear")
    assert picard.iterations >= steps
    for a, b in ((sweep.f_train, picard.f_train), (sweep.f_test, picard.f_test), (sweep.phi, picard.phi),
                 (sweep.g, picard.g), (sweep.phi_two_time, picard.phi_two_time), (sweep.ntk, picard.ntk)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-10 * np.abs(b).max())
    assert np.abs(sweep.f_train[-1] - sweep.f_train[0]).max() > 0.1  # it learned something
    with pytest.raises(ValueError, match="one causal sweep"):
        ow.dmft(net, x, y, **kw, damping=0.5)


# depth 3 has A^1, B^1 and the middle layer of depth 2 too: depth 2 with the slow tests
@pytest.mark.parametrize("depth", [1, pytest.param(2, marks=pytest.mark.slow), pytest.param(3, marks=pytest.mark.slow)])
def test_monte_carlo_agrees_with_exact_linear_solver(depth):
    """The sampled function-space solver on a deep linear net is within its own error bars of the exact one
    (depth 1: no response functions; 2: A^1 and B^1; 3: a middle layer with both kinds of tangents).
    The allowance 1e-3 covers the O(1 / samples) bias of Monte Carlo DMFT, which replicas do not show."""
    net = _linear_net(depth)
    x, y, xt, _ = _data(p=4, d=3, m=2)
    exact = ow.dmft(net, x, y, gamma0=1.0, lr=0.3, steps=6, x_test=xt)
    mc = ow.dmft(net, x, y, gamma0=1.0, lr=0.3, steps=6, x_test=xt, method="monte-carlo", samples=800,
                 response_samples=64, replicas=8, seed=1)
    assert mc.method == "monte-carlo" and np.all(mc.f_train_se[1:] > 0)
    for got, want, se in ((mc.f_train, exact.f_train, mc.f_train_se), (mc.f_test, exact.f_test, mc.f_test_se)):
        assert np.all(np.abs(got - want) < 4 * se + 1e-3), (got - want, se)
    assert np.all(np.abs(mc.phi - exact.phi) < 4 * mc.phi_se + 1e-3)


@pytest.mark.slow
def test_monte_carlo_rich_regime_needs_both_responses():
    """gamma0 = 2, 12 steps: dropping B^1 from the sweep moves the outputs by up to 0.023 and dropping A^1 by
    0.27 (measured with the same draws); without B^1 this comparison failed for each of seeds 0-5 by a factor
    2.1-3.0 of the tolerance 5 SE + 2e-3, which all six seeds pass with B^1 (largest ratio 0.71)."""
    net = _linear_net(2)
    x, y, _, _ = _data(p=4, d=3, m=0)
    exact = ow.dmft(net, x, y, gamma0=2.0, lr=0.3, steps=12)
    mc = ow.dmft(net, x, y, gamma0=2.0, lr=0.3, steps=12, method="monte-carlo", samples=2000, response_samples=64,
                 replicas=8, seed=4)
    assert np.all(np.abs(mc.f_train - exact.f_train) < 5 * mc.f_train_se + 2e-3), (mc.f_train - exact.f_train,
                                                                                    mc.f_train_se)


TANH = ow.serial(ow.Dense(w_std=1.2), ow.Tanh(), ow.Dense(w_std=1.3), ow.Tanh(), ow.Dense(out=1, w_std=1.1))


@pytest.mark.slow
def test_tanh_lazy_limit_is_ntk_gradient_descent():
    """2 hidden tanh layers, gamma0 -> 0: the sampled DMFT is NTK gradient descent with the analytic tanh NTK.

    The hidden-to-hidden weight's share of the NTK reaches the output only through the response
    functions A and B (they are O(gamma0), like the field changes), so this fails without them."""
    x, y, xt, _ = _data(p=5, d=3, m=2)
    r = ow.dmft(TANH, x, y, gamma0=1e-3, lr=0.4, steps=8, x_test=xt, samples=2000, response_samples=128,
                replicas=6, seed=3)
    k, kt = ow.kernel(TANH, x), ow.kernel(TANH, xt, x)
    pred = ow.predict.gradient_descent(k.ntk, kt.ntk, y, lr=0.4, steps=np.arange(9))
    for got, want, se in ((r.f_train, pred.mean_train, r.f_train_se), (r.f_test, pred.mean_test, r.f_test_se)):
        z = (got - np.asarray(want))[1:] / se[1:]
        assert np.all(np.abs(z) < 4.5), z
    assert np.abs(r.ntk[0] - k.ntk).max() < 0.05 * np.abs(k.ntk).max()  # sampled K(0) vs the analytic NTK


@pytest.mark.slow
def test_causal_blocks_change_nothing(monkeypatch):
    """The sweep runs the tangents on growing leading corners (causality); one block gives the same numbers."""
    from owidth.meanfield import nonlinear

    x, y, _, _ = _data(p=8, d=3, m=0)
    kw = dict(gamma0=1.0, lr=0.3, steps=40, samples=200, response_samples=16, replicas=1, seed=2)
    assert len(nonlinear._blocks(41, 8)) > 1
    blocked = ow.dmft(TANH, x, y, **kw)
    calls = []
    monkeypatch.setattr(nonlinear, "_blocks", lambda tau, q: calls.append(tau) or [tau])
    jax.clear_caches()  # retrace the jitted sweep with one block
    whole = ow.dmft(TANH, x, y, **kw)
    assert calls == [41]
    np.testing.assert_allclose(blocked.f_train, whole.f_train, rtol=0, atol=1e-12)
    np.testing.assert_allclose(blocked.phi, whole.phi, rtol=0, atol=1e-12)


def test_monte_carlo_sweep_refuses_iteration_settings_and_huge_problems():
    x, y, _, _ = _data(p=4, d=3, m=0)
    relu = ow.serial(ow.Dense(), ow.Relu(), ow.Dense(), ow.Relu(), ow.Dense(out=1))
    with pytest.raises(ValueError, match="kinked activation"):
        ow.dmft(relu, x, y, gamma0=1.0, lr=0.3, steps=4, method="monte-carlo")
    auto = ow.dmft(relu, x, y, gamma0=1.0, lr=0.3, steps=4, samples=128, replicas=4)  # a network handles the kink
    assert auto.method == "population" and auto.train_loss[-1] < auto.train_loss[0]
    one = ow.dmft(ow.serial(ow.Dense(), ow.Relu(), ow.Dense(out=1)), x, y, gamma0=1.0, lr=0.3, steps=4, samples=200,
                  replicas=2)  # one hidden layer: no responses, Relu is fine
    assert one.train_loss[-1] < one.train_loss[0]
    with pytest.raises(ValueError, match="no iteration"):
        ow.dmft(TANH, x, y, gamma0=1.0, lr=0.3, steps=4, damping=0.5)
    big = np.tile(x, (25, 1))  # 100 points, 100 steps: response Jacobians of (101 * 100)^2 entries each
    with pytest.raises(MemoryError, match=r"response_samples(.|\n)*P = T = \d+(.|\n)*method='population'"):
        ow.dmft(TANH, big, np.tile(y, 25), gamma0=1.0, lr=0.3, steps=100, method="monte-carlo")


@pytest.mark.slow  # ~4-8 s
def test_result_shapes_and_xarray():
    x, y, xt, yt = _data(p=5, d=3, m=2)
    r = ow.dmft(DEEP_LINEAR, x, y, gamma0=0.5, lr=0.3, steps=4, x_test=xt, y_test=yt)
    assert r.f_train.shape == (5, 5) and r.f_test.shape == (5, 2) and r.phi.shape == (2, 5, 5, 5)
    assert r.phi_two_time.shape == (2, 5, 5, 5, 5)
    ti = np.arange(5)
    np.testing.assert_allclose(r.phi_two_time[:, ti, :, ti, :].transpose(1, 0, 2, 3), r.phi)
    for k in (r.phi, r.g, r.ntk[None]):  # symmetric PSD equal-time kernels
        np.testing.assert_allclose(k, np.swapaxes(k, -1, -2), atol=1e-12)
        assert np.linalg.eigvalsh(k).min() > -1e-10
    ds = r.to_xarray()
    assert ds.phi.dims == ("layer", "step", "train", "train2") and "test_loss" in ds
    assert r.train_loss[-1] < r.train_loss[0]


@pytest.mark.parametrize("net, msg", [
    (ow.serial(ow.Dense(), ow.Relu(), ow.Dense(out=2)), r"shape \(3, 2\)"),
    (ow.serial(ow.Dense(), ow.Relu(), ow.Relu(), ow.Dense(out=1)), "got 4 layers"),
    (ow.serial(ow.Dense(), ow.Residual(ow.Relu(), ow.Dense(), ow.Relu()), ow.Relu(), ow.Dense(out=1)),
     r"must be ow.Residual\(act, ow.Dense\(\)\)"),
    (ow.serial(ow.Dense(), ow.LayerNorm(), ow.Dense(out=1)), "elementwise activation"),
])
def test_unsupported_networks_raise(net, msg):
    x, y, _, _ = _data(p=3, d=2)
    with pytest.raises(ValueError, match=msg):
        ow.dmft(net, x, y, gamma0=1.0, lr=0.1, steps=2)


def test_bad_arguments_raise():
    x, y, _, _ = _data(p=3, d=2)
    with pytest.raises(ValueError, match="ow.MUP or ow.MF"):
        ow.dmft(DEEP_LINEAR, x, y, gamma0=1.0, lr=0.1, steps=2, param=ow.NTP)
    with pytest.raises(ValueError, match="gamma0"):
        ow.dmft(DEEP_LINEAR, x, y, gamma0=0.0, lr=0.1, steps=2)
    with pytest.raises(ValueError, match="y_train"):
        ow.dmft(DEEP_LINEAR, x, y[:2], gamma0=1.0, lr=0.1, steps=2)
    with pytest.raises(ValueError, match="method='exact'"):
        ow.dmft(ow.serial(ow.Dense(), ow.Tanh(), ow.Dense(out=1)), x, y, gamma0=1.0, lr=0.1, steps=2, method="exact")


@pytest.mark.slow  # ~3-6 s
def test_no_convergence_says_so():
    x, y, _, _ = _data(p=3, d=2)
    with pytest.raises(ow.DMFTConvergenceError, match="last residual"):
        ow.dmft(DEEP_LINEAR, x, y, gamma0=1.0, lr=0.3, steps=10, method="picard", max_iter=5)


@pytest.mark.parametrize("residual", [False, True])
def test_population_is_the_network_ow_train_trains(residual):
    """One population of width n is a width-n network: 64 of them against 64 ow.train networks (different seeds):
    means and spreads of the outputs agree (z < 4.5, spread ratio 0.7-1.4). An MLP with biases in every layer
    (the readout's included) under muP, and residual blocks (one scaled) under CompleteP (branch multiplier
    (L/L0)^-1 and learning-rate factor L/L0 in the branches)."""
    from owidth.meanfield import _spec, population

    x, y, _, _ = _data(p=5, d=3, m=0)
    n, seeds, steps = 128, 64, 8
    if residual:
        param = ow.COMPLETEP.with_base_width(8)
        net = ow.serial(ow.Dense(w_std=1.2, b_std=0.3), ow.Residual(ow.Tanh(), ow.Dense(w_std=1.3, b_std=0.4)),
                        ow.Residual(ow.Tanh(), ow.Dense(w_std=1.1), scale=0.7), ow.Tanh(), ow.Dense(out=1))
    else:
        param = ow.MUP.with_base_width(8)
        net = ow.serial(ow.Dense(w_std=1.2, b_std=0.7), ow.Tanh(), ow.Dense(w_std=1.3, b_std=0.5), ow.Tanh(),
                        ow.Dense(out=1, w_std=1.1, b_std=0.8))
    mlp = _spec.parse(net, param, where="test")
    assert mlp.residual == residual and (mlp.branch_lr == 2.0 if residual else mlp.biases)
    wt = jax.numpy.full((steps + 1, 5), 1 / 5)
    f = jax.vmap(lambda k: population.simulate(mlp, k, jax.numpy.asarray(x), jax.numpy.asarray(y[:, None]), wt,
                                               gamma0=1.5, lr=0.4, n=n, nest=n, steps=steps, p=5)["f"])(
        jax.random.split(jax.random.key(0), seeds))
    f = np.asarray(f)[..., 0]
    ds = ow.train(net, (x, y), test=(x, y), widths=n, lr=0.4, steps=steps, param=param, gamma0=1.5, seeds=seeds,
                  record_every=1, record_outputs=True, progress_bar=False)
    ft = ds.test_output.values[0, :, 0, 0, :, :, 0]  # (seed, step, point)
    se = np.sqrt(f.var(0, ddof=1) / seeds + ft.var(0, ddof=1) / seeds)
    assert np.all(np.abs(f.mean(0) - ft.mean(0))[1:] < 4.5 * se[1:]), (f.mean(0) - ft.mean(0)) / np.maximum(se, 1e-300)
    ratio = f[:, 1:].std(0) / ft[:, 1:].std(0)
    assert np.all((ratio > 0.7) & (ratio < 1.4)), ratio
    assert np.abs(ft.mean(0)[-1] - ft.mean(0)[0]).max() > 0.3  # it learned


def test_population_extrapolates_to_the_exact_linear_dmft():
    """Deep linear, rich regime (gamma0 = 2): the 1/n-extrapolated populations agree with the exact sweep within
    4 of their standard errors (outputs, kernels, NTK), and their standard errors are honest (not huge)."""
    net = _linear_net(2)
    x, y, xt, _ = _data(p=4, d=3, m=2)
    kw = dict(gamma0=2.0, lr=0.3, steps=12, x_test=xt)
    exact = ow.dmft(net, x, y, **kw)
    pop = ow.dmft(net, x, y, **kw, method="population", samples=512, replicas=32, seed=3)
    assert pop.method == "population" and pop.samples == 512 and pop.phi_two_time is None
    for got, want, se in ((pop.f_train, exact.f_train, pop.f_train_se), (pop.f_test, exact.f_test, pop.f_test_se),
                          (pop.phi, exact.phi, pop.phi_se)):
        assert np.all(np.abs(got - want)[1:] < 4 * se[1:] + 1e-12), np.max(np.abs(got - want)[1:] / se[1:])
    assert pop.f_train_se.max() < 0.05 and np.abs(exact.f_train[-1] - exact.f_train[0]).max() > 0.5
    np.testing.assert_allclose(pop.ntk[0], ow.kernel(net, x).ntk, rtol=0.1)  # extrapolated K(0)
    np.testing.assert_allclose(pop.train_loss, exact.train_loss, atol=4 * pop.train_loss_se.max())


@pytest.mark.slow  # ~25 s
@pytest.mark.compute_bound
def test_population_agrees_with_exact_response_monte_carlo():
    """Tanh, 2 hidden layers, P = 10, T = 50 (a problem both nonlinear solvers can do): the population estimate
    and the function-space sweep with exact pathwise responses agree within their combined errors
    (5 SE + 3e-3: the sweep's O(1 / samples) bias is not in its standard error)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((10, 4))
    y = np.sin(x[:, 0] + 0.5 * x[:, 1])
    kw = dict(gamma0=1.0, lr=0.3, steps=50)
    mc = ow.dmft(TANH, x, y, **kw, method="monte-carlo", samples=1000, response_samples=64, replicas=6, seed=1)
    pop = ow.dmft(TANH, x, y, **kw, method="population", samples=1024, replicas=16, seed=2)
    se = np.sqrt(mc.f_train_se**2 + pop.f_train_se**2)
    assert np.all(np.abs(mc.f_train - pop.f_train) < 5 * se + 3e-3), np.max(np.abs(mc.f_train - pop.f_train) / se)
    assert np.abs(pop.f_train[-1] - pop.f_train[0]).max() > 0.5


def _ensemble(net, x, y, *, width, seeds, steps, loss="mse", param=ow.MUP, **kw):
    """Centred outputs F of ``seeds`` networks (``ow.train``), recorded at every step: (seed, step, point, out)."""
    ds = ow.train(net, (x, y), test=(x, y), widths=width, steps=steps, param=param, seeds=seeds, loss=loss,
                  record_every=1, record_outputs=True, progress_bar=False, **kw)
    return ds.test_output.values[0, :, 0, 0]


@pytest.mark.slow  # ~40 s each: 8 width-4096 networks
@pytest.mark.compute_bound
@pytest.mark.parametrize("loss", ["mse", "xent"])
def test_outputs_biases_and_xent_match_wide_networks(loss):
    """Deep linear nets in the rich regime, the exact sweep against 8 muP networks of width 4096 at every step,
    within 4 SE + 2e-3 (the O(1/n) bias): 2 outputs with biases in every layer (readout included) on mse, and
    3 classes on softmax cross-entropy. The output kernels G_kk' develop off-diagonal entries, and K(0) is
    ow.kernel's NTK, biases included."""
    x, y, _, _ = _data(p=5, d=3, m=0)
    if loss == "mse":
        net = ow.serial(ow.Dense(w_std=1.2, b_std=0.7), ow.Identity(), ow.Dense(w_std=1.0, b_std=0.5), ow.Identity(),
                        ow.Dense(out=2, b_std=0.8))
        targets, lr = np.stack([y, np.cos(x[:, 1])], 1), 0.4
    else:
        net = ow.serial(ow.Dense(w_std=1.2), ow.Identity(), ow.Dense(w_std=1.0), ow.Identity(), ow.Dense(out=3))
        targets, lr = np.array([0, 1, 2, 1, 0]), 1.0
    out = net.layers[-1].out
    r = ow.dmft(net, x, targets, gamma0=1.5, lr=lr, steps=10, loss=loss)
    assert r.method == "exact-linear" and r.f_train.shape == (11, 5, out) and r.ntk.shape == (11, 5, 5, out, out)
    f = _ensemble(net, x, targets, width=4096, seeds=8, loss=loss, lr=lr, steps=10, gamma0=1.5)
    mean, se = f.mean(0), f.std(0, ddof=1) / np.sqrt(f.shape[0])
    assert np.all(np.abs(mean - r.f_train) < 4 * se + 2e-3), np.max(np.abs(mean - r.f_train) - 4 * se)
    assert np.abs(r.f_train[-1] - r.f_train[0]).max() > 0.3
    assert r.train_loss[-1] < (0.7 if loss == "mse" else 0.95) * r.train_loss[0]
    assert np.abs(r.g[0, -1, 0, 0, 0, 1]) > 1e-3 and np.abs(r.g[0, 0, 0, 0, 0, 1]) < 1e-12  # G_01: 0 only at t = 0
    np.testing.assert_allclose(r.ntk[0][..., 0, 0], ow.kernel(net, x).ntk, rtol=1e-10)


def test_biases_in_the_exact_sweep():
    """Biases make the fields affine: K(0) is ow.kernel's NTK with every bias term (hidden and readout), the
    extrapolated populations (which are networks with biases) agree with the sweep, and switching the biases off
    changes the dynamics by far more than that agreement."""
    x, y, _, _ = _data(p=5, d=3, m=0)
    net = ow.serial(ow.Dense(w_std=1.2, b_std=0.7), ow.Identity(), ow.Dense(w_std=1.0, b_std=0.5), ow.Identity(),
                    ow.Dense(out=1, w_std=1.1, b_std=0.8))
    kw = dict(gamma0=1.5, lr=0.3, steps=10)
    r = ow.dmft(net, x, y, **kw)
    np.testing.assert_allclose(r.ntk[0], ow.kernel(net, x).ntk, rtol=1e-10)
    pop = ow.dmft(net, x, y, **kw, method="population", samples=512, replicas=32, seed=1)
    assert np.all(np.abs(pop.f_train - r.f_train)[1:] < 4 * pop.f_train_se[1:]), (pop.f_train - r.f_train)
    plain = ow.dmft(_linear_net(2), x, y, **kw)
    assert np.abs(plain.f_train - r.f_train).max() > 10 * pop.f_train_se.max()
    with pytest.raises(ValueError, match="biases"):
        ow.dmft(net, x, y, **kw, method="picard")


def test_lazy_limit_with_outputs_and_biases_is_ntk_gradient_descent():
    """gamma0 -> 0 with 2 outputs and biases everywhere: the exact sweep is kernel gradient descent with
    ow.kernel's NTK (biases included), outputs independent, to 1e-6 relative."""
    x, y, _, _ = _data(p=5, d=3, m=0)
    net = ow.serial(ow.Dense(w_std=1.2, b_std=0.7), ow.Identity(), ow.Dense(w_std=1.0, b_std=0.5), ow.Identity(),
                    ow.Dense(out=2, b_std=0.8))
    targets = np.stack([y, np.cos(x[:, 1])], 1)
    r = ow.dmft(net, x, targets, gamma0=1e-4, lr=0.3, steps=8)
    k = ow.kernel(net, x).ntk
    want = np.asarray(ow.predict.gradient_descent(k, None, targets, lr=0.3, steps=np.arange(9)).mean_train)
    assert want.shape == r.f_train.shape
    assert np.max(np.abs(r.f_train - want)) < 1e-6 * np.max(np.abs(want))
    assert np.abs(r.ntk[-1] - r.ntk[0]).max() < 1e-6 * np.abs(k).max()


@pytest.mark.slow  # ~60 s: 8 width-4096 networks
@pytest.mark.compute_bound
def test_residual_net_matches_wide_networks():
    """Residual blocks (tanh, biases, a scaled branch) under depth-muP (branch multiplier (L/L0)^-1/2): the
    extrapolated populations against 8 networks of width 4096 at every step, within 4 combined SE + 2e-3.
    (muP and CompleteP residual populations are compared with ow.train at width 128 in the default suite.)"""
    param = ow.DEPTH_MUP
    x, y, _, _ = _data(p=5, d=3, m=0)
    net = ow.serial(ow.Dense(w_std=1.2, b_std=0.3), ow.Residual(ow.Tanh(), ow.Dense(w_std=1.3, b_std=0.4)),
                    ow.Residual(ow.Tanh(), ow.Dense(w_std=1.1), scale=0.7), ow.Tanh(), ow.Dense(out=1, w_std=1.1))
    kw = dict(gamma0=1.5, lr=0.4, steps=10, param=param)
    r = ow.dmft(net, x, y, **kw, samples=1024, replicas=16)
    assert r.method == "population"
    f = _ensemble(net, x, y, width=4096, seeds=8, **kw)[..., 0]
    mean, se = f.mean(0), f.std(0, ddof=1) / np.sqrt(f.shape[0])
    tol = 4 * np.sqrt(se**2 + r.f_train_se**2) + 2e-3
    assert np.all(np.abs(mean - r.f_train) < tol), np.max(np.abs(mean - r.f_train) - tol)
    assert np.abs(r.f_train[-1] - r.f_train[0]).max() > 0.3
    with pytest.raises(ValueError, match="residual blocks are solved by method='exact'"):
        ow.dmft(net, x, y, **kw, method="monte-carlo")


def test_minibatch_schedule():
    """Minibatch SGD along one schedule: the exact sweep and the extrapolated populations (a network trained on
    the same batches) agree; the schedule of all points every step is full-batch GD exactly; and minibatches
    change the trajectory by far more than the populations' error."""
    x, y, _, _ = _data(p=6, d=3, m=0)
    net = _linear_net(2)
    kw = dict(gamma0=1.5, lr=0.3, steps=10)
    mini = ow.dmft(net, x, y, **kw, batch_size=2, seed=4)
    assert mini.batches.shape == (10, 2) and all(len(set(b)) == 2 for b in mini.batches)
    pop = ow.dmft(net, x, y, **kw, batches=mini.batches, method="population", replicas=32, seed=1)
    assert np.all(np.abs(pop.f_train - mini.f_train)[1:] < 4 * pop.f_train_se[1:]), (pop.f_train - mini.f_train)
    full = ow.dmft(net, x, y, **kw)
    every = ow.dmft(net, x, y, **kw, batches=np.tile(np.arange(6), (10, 1)))
    np.testing.assert_allclose(every.f_train, full.f_train, rtol=0, atol=1e-13)
    assert np.abs(mini.f_train - full.f_train).max() > 10 * pop.f_train_se.max()
    with pytest.raises(ValueError, match=r"shape \(steps=10, B\)"):
        ow.dmft(net, x, y, **kw, batches=np.zeros((9, 2), int))
    with pytest.raises(ValueError, match="full batch"):
        ow.dmft(net, x, y, **kw, batch_size=2, method="picard")


@pytest.mark.slow  # ~20 s
@pytest.mark.compute_bound
def test_minibatch_monte_carlo_agrees_with_populations():
    """A tanh net on a minibatch schedule: exact-response Monte Carlo and the populations agree (5 SE + 3e-3)."""
    x, y, _, _ = _data(p=6, d=3, m=0)
    kw = dict(gamma0=1.0, lr=0.4, steps=12, batch_size=3, seed=2)
    mc = ow.dmft(TANH, x, y, **kw, method="monte-carlo", samples=1000, response_samples=64, replicas=6)
    pop = ow.dmft(TANH, x, y, **kw, method="population", replicas=64)
    np.testing.assert_array_equal(mc.batches, pop.batches)
    se = np.sqrt(mc.f_train_se**2 + pop.f_train_se**2)
    assert np.all(np.abs(mc.f_train - pop.f_train) < 5 * se + 3e-3), np.max(np.abs(mc.f_train - pop.f_train) / se)


@pytest.mark.parametrize("param", [ow.MUP, ow.COMPLETEP])
def test_residual_linear_sweep(param):
    """Deep linear residual blocks in the exact sweep (the branch's W sees the gradient q = m z, so its backward
    source has covariance sigma^2 m^2 G and its response b = m dz/du): K(0) is ow.kernel's NTK; the lazy limit
    is NTK gradient descent (1e-6); in the rich regime the extrapolated populations agree within 4 SE, under muP
    and under CompleteP (branch multiplier 1/L, branch learning rate x L)."""
    x, y, _, _ = _data(p=5, d=3, m=0)
    net = ow.serial(ow.Dense(w_std=1.2, b_std=0.3), ow.Residual(ow.Identity(), ow.Dense(w_std=0.8, b_std=0.4)),
                    ow.Residual(ow.Identity(), ow.Dense(w_std=0.9), scale=0.7), ow.Identity(), ow.Dense(out=1))
    kw = dict(lr=0.1, steps=10, param=param)
    r = ow.dmft(net, x, y, gamma0=1.5, **kw)
    assert r.method == "exact-linear"
    pop = ow.dmft(net, x, y, gamma0=1.5, **kw, method="population", replicas=128, seed=2)
    for got, want, se in ((pop.f_train, r.f_train, pop.f_train_se), (pop.phi, r.phi, pop.phi_se)):
        assert np.all(np.abs(got - want)[..., 1:, :] < 4 * se[..., 1:, :] + 1e-12), np.max(np.abs(got - want) / se)
    assert np.abs(r.f_train[-1] - r.f_train[0]).max() > 0.3
    if param is ow.MUP:
        k = ow.kernel(net, x).ntk
        np.testing.assert_allclose(r.ntk[0], k, rtol=1e-10)
        lazy = ow.dmft(net, x, y, gamma0=1e-4, **kw)
        want = np.asarray(ow.predict.gradient_descent(k, None, y, lr=0.1, steps=np.arange(11)).mean_train)
        assert np.max(np.abs(lazy.f_train - want)) < 1e-6 * np.max(np.abs(want))
