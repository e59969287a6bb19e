"""Differentiable hyperparameters: jax.grad/jit/vmap of functions of ow.kernel with respect to w_std, b_std,
activation parameters and noise; the Gaussian-process evidence ow.predict.log_marginal_likelihood."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import owidth as ow
from helpers import sphere

RTOL_FD = 1e-6  # grad vs central finite differences (x64)


def _targets(n, k=2, seed=0):
    return np.random.RandomState(seed).randn(n, k)


def mlp(w, b, act=None):
    act = ow.Relu() if act is None else act
    return ow.serial(ow.Dense(w_std=w, b_std=b), act, ow.Dense(w_std=w, b_std=b), ow.Relu(),
                     ow.Dense(out=1, w_std=1.0, b_std=0.1))


def cnn(w, b):
    return ow.serial(ow.Conv(w_std=w, b_std=b, filter_shape=(2, 2)), ow.Relu(),
                     ow.Conv(w_std=w, b_std=b, filter_shape=(2, 2)), ow.Relu(), ow.GlobalAvgPool(),
                     ow.Dense(out=1, w_std=1.0, b_std=0.1))


def lml_of(make, x, y, noise=0.05, get="nngp"):
    """Evidence of y as a function of the hyperparameters ``make`` takes."""
    def f(*params):
        k = ow.kernel(make(*params), x, get=get)
        return ow.predict.log_marginal_likelihood(k.nngp if get == "nngp" else k.ntk, y, noise)
    return f


def fd_check(f, params, h=1e-5):
    """Relative error of each partial derivative of f (jax.grad) against central finite differences."""
    grads = jax.grad(f, argnums=tuple(range(len(params))))(*params)
    errs = []
    for i, g in enumerate(grads):
        up = list(params)
        dn = list(params)
        up[i] += h
        dn[i] -= h
        fd = (f(*up) - f(*dn)) / (2 * h)
        errs.append(abs(float(g) - float(fd)) / abs(float(fd)))
    return errs


IMAGES = np.random.RandomState(3).randn(5, 4, 4, 2)


@pytest.mark.parametrize("name, make, params, x", [
    ("dense w_std, b_std", mlp, (1.3, 0.4), sphere(8, 3, 0)),
    pytest.param("conv w_std, b_std", cnn, (1.2, 0.3), IMAGES, marks=pytest.mark.slow),
    # one activation hyperparameter by default (~1.4 s); Erf's program is the largest (~7 s)
    ("LeakyRelu a", lambda a: mlp(1.3, 0.4, ow.LeakyRelu(a)), (0.2,), sphere(8, 3, 0)),
    pytest.param("Erf a, b, shift", lambda a, b, s: mlp(1.3, 0.4, ow.Erf(a=a, b=b, shift=s)), (1.1, 0.7, 0.2),
                 sphere(8, 3, 0), marks=pytest.mark.slow),
    pytest.param("Sin b, shift", lambda b, s: mlp(1.3, 0.4, ow.Sin(b=b, shift=s)), (0.8, 0.3), sphere(8, 3, 0),
                 marks=pytest.mark.slow),
])
def test_grad_of_evidence_matches_finite_differences(name, make, params, x):
    errs = fd_check(lml_of(make, x, _targets(x.shape[0])), params)
    assert max(errs) < RTOL_FD, (name, errs)


@pytest.mark.slow  # ~5 s; the NNGP evidence's gradient is checked by default above
def test_grad_of_ntk_evidence_and_of_noise_match_finite_differences():
    x, y = sphere(8, 3, 1), _targets(8)
    assert max(fd_check(lml_of(mlp, x, y, get="ntk"), (1.3, 0.4))) < RTOL_FD

    def f(w, noise):
        return ow.predict.log_marginal_likelihood(ow.kernel(mlp(w, 0.4), x, get="nngp"), y, noise)
    assert max(fd_check(f, (1.3, 0.05))) < RTOL_FD


@pytest.mark.slow  # ~5.5 s; compositions' kernels by default: test_quadrature.py
def test_grad_through_composed_activations():
    """Relu then Sin: the composition's dual kernel is computed by quadrature (polar rule), with a traced shift."""
    x, y = sphere(6, 3, 2), _targets(6)

    def make(s):
        return ow.serial(ow.Dense(w_std=1.2, b_std=0.3), ow.Relu(), ow.Sin(shift=s), ow.Dense(out=1))
    assert max(fd_check(lml_of(make, x, y), (0.3,))) < RTOL_FD


def test_traced_and_float_hyperparameters_give_identical_kernels():
    """Equal up to rounding (XLA folds float constants into other fused arithmetic than traced scalars)."""
    x = sphere(7, 3, 4)
    floats = ow.kernel(mlp(1.3, 0.4, ow.Erf(b=0.7)), x)
    arrays = ow.kernel(mlp(jnp.asarray(1.3), jnp.asarray(0.4), ow.Erf(b=jnp.asarray(0.7))), x)
    traced = jax.jit(lambda w, b, e: ow.kernel(mlp(w, b, ow.Erf(b=e)), x))(1.3, 0.4, 0.7)
    for k in (arrays, traced):
        for f in ("nngp", "ntk"):
            a, b = getattr(k, f), getattr(floats, f)
            np.testing.assert_allclose(a, b, rtol=1e-14, atol=1e-15 * float(jnp.max(jnp.abs(b))))


def test_jit_of_grad_equals_eager_grad():
    x, y = sphere(8, 3, 0), _targets(8)
    f = lml_of(mlp, x, y)
    g = jax.grad(f, argnums=(0, 1))
    for a, b in zip(g(1.3, 0.4), jax.jit(g)(1.3, 0.4)):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_vmap_over_a_hyperparameter_grid():
    x = sphere(6, 3, 0)
    ws = jnp.array([0.8, 1.0, 1.5])
    batched = jax.vmap(lambda w: ow.kernel(mlp(w, 0.2), x, get="nngp").nngp)(ws)
    for w, k in zip(ws, batched):
        np.testing.assert_allclose(k, ow.kernel(mlp(float(w), 0.2), x, get="nngp").nngp, rtol=1e-13)


def test_no_retrace_for_float_hyperparameters():
    """Traces counted by a Python side effect of the activation (it runs only while tracing)."""
    calls = [0]

    def fn(z):
        calls[0] += 1
        return jnp.tanh(z)

    act = ow.ActivationFn(fn, nodes=8)
    x = sphere(5, 3, 0)

    def run(w):
        return ow.kernel(ow.serial(ow.Dense(w_std=w), act, ow.Dense(out=1)), x, get="nngp")

    run(1.25)
    n = calls[0]
    run(1.25)  # the same floats: a hashable static spec, no retrace
    assert calls[0] == n
    run(jnp.asarray(0.5))
    n = calls[0]
    run(jnp.asarray(2.0))  # arrays are traced: a new value reuses the compilation
    assert calls[0] == n

    user = jax.jit(lambda w: run(w).nngp.sum())
    user(1.0)
    n = calls[0]
    user(3.0)
    assert calls[0] == n


def test_negative_traced_std_is_its_absolute_value():
    """Only w_std^2 enters the kernel: a traced negative value (an optimiser crossing 0) is NaN-free."""
    x, y = sphere(6, 3, 0), _targets(6)
    f = lml_of(mlp, x, y)
    v, (gw, gb) = jax.value_and_grad(f, argnums=(0, 1))(jnp.asarray(-1.3), jnp.asarray(-0.4))
    v0, (gw0, gb0) = jax.value_and_grad(f, argnums=(0, 1))(1.3, 0.4)
    np.testing.assert_allclose(v, v0, rtol=1e-13)
    np.testing.assert_allclose([gw, gb], [-gw0, -gb0], rtol=1e-12)


def test_non_finite_traced_std_gives_minus_inf_evidence():
    x, y = sphere(6, 3, 0), _targets(6)
    f = jax.jit(lml_of(mlp, x, y))
    assert float(f(jnp.inf, 0.4)) == -np.inf
    assert float(f(jnp.nan, 0.4)) == -np.inf


@pytest.mark.parametrize("bad, exc, msg", [
    (lambda: ow.Dense(w_std=jnp.asarray(-1.0)), ValueError, "finite and >= 0"),
    (lambda: ow.Dense(b_std=jnp.asarray(jnp.nan)), ValueError, "b_std"),
    (lambda: ow.Conv(w_std=jnp.asarray(jnp.inf)), ValueError, "w_std"),
    (lambda: ow.Erf(b=jnp.asarray(jnp.inf)), ValueError, "must be finite"),
    (lambda: ow.Dense(w_std=jnp.ones(2)), TypeError, "real scalar"),
    (lambda: ow.LeakyRelu(a=jnp.asarray(True)), TypeError, "real scalar"),
])
def test_concrete_bad_hyperparameters_raise(bad, exc, msg):
    with pytest.raises(exc, match=msg.replace("(", r"\(")):
        bad()


def test_numpy_scalars_stay_static_floats():
    layer = ow.Dense(w_std=np.float32(2.0), b_std=np.asarray(0.5))
    assert type(layer.w_std) is float and type(layer.b_std) is float
    hash(layer)


def test_batch_size_with_array_hyperparameters():
    x = sphere(9, 3, 0)
    net = mlp(jnp.asarray(1.3), jnp.asarray(0.4))
    tiled = ow.kernel(net, x, batch_size=4)
    np.testing.assert_allclose(tiled.ntk, ow.kernel(net, x).ntk, rtol=1e-12)
    with pytest.raises(ValueError, match="batch_size=4 needs concrete hyperparameters"):
        jax.grad(lambda w: ow.kernel(mlp(w, 0.4), x, batch_size=4).nngp.sum())(1.3)


def test_finite_network_with_traced_hyperparameters():
    x = sphere(5, 3, 0)

    def out(w, b):
        model = ow.finite(mlp(w, b), width=16)
        return jnp.sum(model.apply(model.init(jax.random.key(0), x), x))

    errs = fd_check(out, (1.3, 0.4))
    assert max(errs) < RTOL_FD, errs
    np.testing.assert_allclose(jax.jit(out)(1.3, 0.4), out(1.3, 0.4), rtol=1e-12)
    params = ow.finite(ow.serial(ow.Dense(b_std=jnp.asarray(0.0)), ow.Dense(out=1)), width=4).init(
        jax.random.key(0), x)
    assert "b" in params[0]  # the parameter structure cannot depend on an array's value


# --------------------------------------------------------------------------- #
# log marginal likelihood
# --------------------------------------------------------------------------- #
def test_log_marginal_likelihood_matches_scipy():
    x = sphere(10, 3, 5)
    k = ow.kernel(mlp(1.3, 0.4), x, get="nngp")
    y = _targets(10, 3)
    ref = sum(scipy.stats.multivariate_normal(np.zeros(10), np.asarray(k.nngp) + 0.1 * np.eye(10)).logpdf(y[:, c])
              for c in range(3))
    np.testing.assert_allclose(ow.predict.log_marginal_likelihood(k, y, 0.1), ref, rtol=1e-12)
    ref1 = scipy.stats.multivariate_normal(np.zeros(10), np.asarray(k.nngp) + 0.1 * np.eye(10)).logpdf(y[:, 0])
    np.testing.assert_allclose(ow.predict.log_marginal_likelihood(k.nngp, y[:, 0], 0.1), ref1, rtol=1e-12)


def test_log_marginal_likelihood_bad_input():
    x = sphere(6, 3, 0)
    k = ow.kernel(mlp(1.3, 0.4), x, get="nngp")
    y = _targets(6)
    lml = ow.predict.log_marginal_likelihood
    with pytest.raises(ValueError, match="square"):
        lml(k.nngp[:, :5], y, 0.1)
    with pytest.raises(ValueError, match="6 rows"):
        lml(k, y[:5], 0.1)
    with pytest.raises(ValueError, match="noise is a variance"):
        lml(k, y, -0.1)
    with pytest.raises(ValueError, match="noise is a variance"):
        lml(k, y, float("nan"))
    with pytest.raises(ValueError, match="y contains NaN"):
        lml(k, np.where(np.eye(6, 2) > 0, np.nan, y), 0.1)
    with pytest.raises(ValueError, match="k_train contains NaN"):
        lml(jnp.full((6, 6), jnp.nan), y, 0.1)
    with pytest.raises(ValueError, match="not numerically positive definite"):
        lml(jnp.ones((6, 6)), y, 0.0)  # rank one, no noise
    with pytest.raises(ValueError, match="no NNGP"):
        lml(ow.kernel(mlp(1.3, 0.4), x, get="ntk"), y, 0.1)
    with pytest.raises(TypeError, match="noise must be a scalar"):
        lml(k, y, np.ones(6))
    # traced: -inf with a zero (not NaN) gradient where K + noise I is not positive definite
    v, g = jax.value_and_grad(lambda s: lml(jnp.ones((6, 6)), y, s))(-0.5)
    assert float(v) == -np.inf and float(g) == 0.0
