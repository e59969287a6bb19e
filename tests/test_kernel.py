"""Invariants and numerics of the analytic kernels."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf as sp_erf
from scipy.stats import norm

import owidth as ow
from owidth import _kernel as kernel_api
from helpers import KERNEL_PROGRAM, sphere
from helpers import traces as traces_of

R2 = 2**0.5


def mlp(act, depth=3, w=R2, b=0.3):
    layers = []
    for _ in range(depth):
        layers += [ow.Dense(w_std=w, b_std=b), act]
    return ow.serial(*layers, ow.Dense(out=1, w_std=1.0, b_std=0.1))


ACTS = [ow.Relu(), ow.LeakyRelu(0.1), ow.Abs(), ow.Erf(), ow.Gelu(), ow.Sin(), ow.Identity()]
IDS = [type(a).__name__ for a in ACTS]
# Gelu's and Erf's programs are the largest (~10 s a test): with the slow tests (their duals are checked by
# default against quadrature below, and nets with them by test_properties.py)
ACT_CASES = [pytest.param(a, marks=pytest.mark.slow) if i in ("Gelu", "Erf") else a for a, i in zip(ACTS, IDS)]
# jit-vs-eager and gradients: Relu (the relu family's one rule) and Identity by default, the rest slow
JIT_CASES = [pytest.param(a, marks=pytest.mark.slow) if i in ("Gelu", "Erf", "LeakyRelu", "Abs", "Sin") else a
             for a, i in zip(ACTS, IDS)]


# --------------------------------------------------------------------------- #
# Closed forms vs an independent 2-D Gauss-Hermite quadrature (smooth phi)
# --------------------------------------------------------------------------- #
def gh_dual(f, fd, q1, q2, c, n=120):
    z, w = np.polynomial.hermite_e.hermegauss(n)
    w = w / np.sqrt(2 * np.pi)
    chol = np.linalg.cholesky(np.array([[q1, c], [c, q2]]))
    zz = np.stack(np.meshgrid(z, z, indexing="ij"), -1) @ chol.T
    ww = np.outer(w, w)
    return (ww * f(zz[..., 0]) * f(zz[..., 1])).sum(), (ww * fd(zz[..., 0]) * fd(zz[..., 1])).sum()


SMOOTH = {
    "erf": (ow.Erf(a=1.3, b=0.7, shift=0.2), lambda u: 1.3 * sp_erf(0.7 * u) + 0.2,
            lambda u: 1.3 * 0.7 * 2 / np.sqrt(np.pi) * np.exp(-0.49 * u * u)),
    "gelu": (ow.Gelu(), lambda u: u * norm.cdf(u), lambda u: norm.cdf(u) + u * norm.pdf(u)),
    "sin": (ow.Sin(a=0.9, b=1.1, shift=0.4), lambda u: 0.9 * np.sin(1.1 * u + 0.4),
            lambda u: 0.9 * 1.1 * np.cos(1.1 * u + 0.4)),
}


@pytest.mark.parametrize("name", sorted(SMOOTH))
@pytest.mark.parametrize("q1,q2,c", [(1.3, 0.7, 0.5), (0.4, 2.0, -0.6), (1.0, 1.0, 0.999), (0.8, 0.5, 0.0)])
def test_closed_form_vs_quadrature(name, q1, q2, c):
    act, f, fd = SMOOTH[name]
    t, td = act.dual(jnp.array(q1), jnp.array(q2), jnp.array(c), need_dot=True)
    rt, rtd = gh_dual(f, fd, q1, q2, c)
    np.testing.assert_allclose([t, td], [rt, rtd], rtol=1e-9, atol=1e-12)


def test_relu_family_special_values():
    """Cho & Saul (2009) at rho = 1, 0, -1 and the LeakyRelu decomposition."""
    q = jnp.array(1.7)
    relu = ow.Relu()
    for rho, t_ref, td_ref in [(1.0, q / 2, 0.5), (0.0, q / (2 * np.pi), 0.25), (-1.0, 0.0, 0.0)]:
        t, td = relu.dual(q, q, rho * q, need_dot=True)
        np.testing.assert_allclose([t, td], [t_ref, td_ref], atol=1e-15)
    # max(x, a x) = relu(x) - a relu(-x), and relu(-u), relu(-v) have covariance T_relu(c) too
    a, c = 0.3, jnp.array(0.4)
    t_l, td_l = ow.LeakyRelu(a).dual(q, q, c, need_dot=True)
    t_p, td_p = relu.dual(q, q, c, need_dot=True)
    t_m, td_m = relu.dual(q, q, -c, need_dot=True)
    # E[(r(u) - a r(-u))(r(v) - a r(-v))] = T(c) + a^2 T(c) - 2a E[r(u) r(-v)] = (1+a^2) T(c) - 2a T(-c)
    np.testing.assert_allclose(t_l, (1 + a * a) * t_p - 2 * a * t_m, rtol=1e-13)
    np.testing.assert_allclose(td_l, (1 + a * a) * td_p + 2 * a * td_m, rtol=1e-13)


# --------------------------------------------------------------------------- #
# Invariants
# --------------------------------------------------------------------------- #
# Relu and Sin by default (~2 s each); every other activation with the slow tests
@pytest.mark.parametrize("act", [a if i in ("Relu", "Sin") else pytest.param(a, marks=pytest.mark.slow)
                                 for a, i in zip(ACTS, IDS)], ids=IDS)
def test_symmetry_and_psd(act):
    net = mlp(act)
    x1, x2 = sphere(20, 5, 0), sphere(7, 5, 1)
    k = ow.kernel(net, x1)
    for m in (k.nngp, k.ntk):
        m = np.asarray(m)
        np.testing.assert_allclose(m, m.T, rtol=1e-14)
        assert np.linalg.eigvalsh(m).min() >= -1e-10 * np.trace(m)
    k12, k21 = ow.kernel(net, x1, x2), ow.kernel(net, x2, x1)
    np.testing.assert_allclose(k12.nngp, k21.nngp.T, rtol=1e-12)
    np.testing.assert_allclose(k12.ntk, k21.ntk.T, rtol=1e-12)
    # the cross kernel of x1 against itself equals the symmetric one
    np.testing.assert_allclose(ow.kernel(net, x1, x1).ntk, k.ntk, rtol=1e-7)
    np.testing.assert_allclose(k.var1, np.diag(k.nngp), rtol=1e-14)


@pytest.mark.parametrize("act", JIT_CASES, ids=IDS)
def test_jit_equals_eager_and_grads_finite(act):
    net = mlp(act, depth=2)
    x = jnp.asarray(sphere(5, 4, 2))
    jitted = jax.jit(lambda a: ow.kernel(net, a).ntk)(x)
    with jax.disable_jit():
        eager = ow.kernel(net, x).ntk
    np.testing.assert_allclose(jitted, eager, rtol=1e-13)
    # gradients w.r.t. the inputs, through the diagonal (rho = 1) and off it
    g = jax.grad(lambda a: ow.kernel(net, a).ntk.sum() + ow.kernel(net, a).nngp.sum())(x)
    g12 = jax.grad(lambda a: ow.kernel(net, a, x).ntk.sum())(x + 0.1)
    assert np.all(np.isfinite(g)) and np.all(np.isfinite(g12))
    # and they are right: compare with central differences
    v = jax.random.normal(jax.random.key(0), x.shape)
    fd = (ow.kernel(net, x + 1e-6 * v).ntk.sum() - ow.kernel(net, x - 1e-6 * v).ntk.sum()) / 2e-6
    gn = jax.grad(lambda a: ow.kernel(net, a).ntk.sum())(x)
    np.testing.assert_allclose(jnp.vdot(gn, v), fd, rtol=1e-5)


def test_no_retrace_for_new_values():
    net = mlp(ow.Relu())
    traces = []

    @jax.jit
    def f(a):
        traces.append(1)
        return ow.kernel(net, a).ntk

    f(jnp.ones((4, 3)))
    f(jnp.asarray(sphere(4, 3, 0)))
    assert len(traces) == 1
    with traces_of() as names:
        ow.kernel(net, sphere(3, 11, 1))  # a shape no other test uses: traced once
        ow.kernel(net, sphere(3, 11, 2))  # new values, same shape: not again
    assert names.count(KERNEL_PROGRAM) == 1, names


def test_get_subsets():
    net = mlp(ow.Erf())
    x = sphere(4, 3, 0)
    both = ow.kernel(net, x)
    only = ow.kernel(net, x, get="nngp")
    assert only.ntk is None
    np.testing.assert_allclose(only.nngp, both.nngp, rtol=1e-14)
    assert ow.kernel(net, x, get=("ntk",)).nngp is None


def _deep_relu_inputs():
    x = sphere(16, 8, 3)
    x[1] = x[0]  # duplicated point: exact correlation 1
    return x


def _float32_input_grad(net, x):
    with jax.enable_x64(False):
        return np.asarray(jax.grad(lambda a: ow.kernel(net, a).ntk.sum())(jnp.asarray(x, jnp.float32)))


def _relu_mlp_kernels_numpy(x, depth, w, b):
    """The arc-cosine recursion (Cho & Saul 2009; NTK: Jacot et al. 2018) in float64 numpy, for
    ``mlp(ow.Relu(), depth, w, b)``: an independent reference written from the formulas."""
    k = w * w * (x @ x.T) / x.shape[1] + b * b
    theta = k.copy()
    for layer in range(1, depth + 1):  # act -> Dense, the last Dense the readout (w_std=1, b_std=0.1)
        wl, bl = (w, b) if layer < depth else (1.0, 0.1)
        d = np.sqrt(np.diag(k))
        rho = np.clip(k / np.outer(d, d), -1.0, 1.0)
        # identical inputs (the diagonal, the duplicate) correlate exactly 1: a rounding of 1 ulp in rho
        # would be an angle of 1e-8 (arccos is ill-conditioned there)
        rho = np.where(rho > 1 - 1e-13, 1.0, rho)
        ang = np.arccos(rho)
        t = np.outer(d, d) * (np.sin(ang) + (np.pi - ang) * rho) / (2 * np.pi)
        tdot = (np.pi - ang) / (2 * np.pi)
        k = wl * wl * t + bl * bl
        theta = k + wl * wl * tdot * theta
    return k, theta


def test_deep_relu_float32_no_nan_and_psd():
    """Depth 100: correlations pile up near 1 (0.998 off the duplicate), where arccos is ill-conditioned."""
    net = mlp(ow.Relu(), depth=100, b=0.1**0.5)
    x = _deep_relu_inputs()
    with jax.enable_x64(False):
        k = ow.kernel(net, x)
        assert k.ntk.dtype == jnp.float32
    for m in (k.nngp, k.ntk):
        m = np.asarray(m, np.float64)
        assert np.all(np.isfinite(m))
        assert np.linalg.eigvalsh(m).min() >= -1e-6 * np.trace(m)
    # float32 agrees with the float64 recursion to float32 accuracy
    nngp64, ntk64 = _relu_mlp_kernels_numpy(x, 100, R2, 0.1**0.5)
    np.testing.assert_allclose(k.nngp, nngp64, rtol=1e-4)
    np.testing.assert_allclose(k.ntk, ntk64, rtol=1e-4)
    # the input gradient through the exact-1 correlation of the duplicate: finite (depth 100 in the
    # slow test below; its compilation alone takes ~100 s of CPU)
    assert np.all(np.isfinite(_float32_input_grad(mlp(ow.Relu(), depth=10, b=0.1**0.5), x)))


def test_relu_recursion_reference_is_the_float64_kernel():
    """The numpy reference above is the library's float64 kernel at a depth that compiles quickly."""
    x = _deep_relu_inputs()
    nngp, ntk = _relu_mlp_kernels_numpy(x, 4, R2, 0.1**0.5)
    k = ow.kernel(mlp(ow.Relu(), depth=4, b=0.1**0.5), x)
    np.testing.assert_allclose(k.nngp, nngp, rtol=1e-12)
    np.testing.assert_allclose(k.ntk, ntk, rtol=1e-12)


@pytest.mark.slow  # ~100 s of CPU compiling the gradient of a 100-layer kernel
def test_deep_relu_float32_input_grad_finite():
    assert np.all(np.isfinite(_float32_input_grad(mlp(ow.Relu(), depth=100, b=0.1**0.5), _deep_relu_inputs())))


def test_deep_tanh_like_and_linear_depth_scaling():
    """Identity net: nngp = w^(2L) x.x'/d + b^2 sum_l w^(2l), an exact geometric sum."""
    w, b, depth = 1.1, 0.2, 6
    net = ow.serial(*[ow.Dense(w_std=w, b_std=b) for _ in range(depth)])
    x = sphere(5, 3, 4)
    k = ow.kernel(net, x)
    gram = x @ x.T / 3
    ref = w ** (2 * depth) * gram + b * b * sum(w ** (2 * l) for l in range(depth))
    np.testing.assert_allclose(k.nngp, ref, rtol=1e-13)
    # NTK of a deep linear net: sum over layers of the layer-l NNGP times w^(2 (L - l))
    ntk_ref = sum(
        w ** (2 * (depth - l)) * (w ** (2 * l) * gram + b * b * sum(w ** (2 * j) for j in range(l)))
        for l in range(1, depth + 1)
    )
    np.testing.assert_allclose(k.ntk, ntk_ref, rtol=1e-13)


# --------------------------------------------------------------------------- #
# Fast paths: polynomial arcsin and blocked self-kernels
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("dtype, max_ulp", [(np.float64, 4.0), (np.float32, 3.0)])
def test_fast_arcsin_is_accurate_to_a_few_ulp(dtype, max_ulp):
    from owidth.kernels.dual import fast_arcsin

    x = np.concatenate([np.linspace(-1, 1, 200_001), 1 - np.logspace(-15, 0, 2000), -np.logspace(-30, 0, 2000),
                        [0.5, np.nextafter(0.5, 1.0), np.nextafter(0.5, 0.0), 1.0, -1.0, 0.0]]).astype(dtype)
    got = np.asarray(jax.jit(fast_arcsin)(jnp.asarray(x))).astype(np.float64)
    ref = np.arcsin(x.astype(np.float64))  # numpy's libm asin as the reference
    ulp = np.spacing(np.abs(ref).astype(dtype)).astype(np.float64)
    keep = np.abs(ref) > np.finfo(dtype).tiny  # normal numbers (ulp of subnormals is not relative)
    assert np.max(np.abs(got - ref)[keep] / ulp[keep]) <= max_ulp
    assert np.all(np.abs(got) <= float(dtype(np.pi / 2)))  # pi/2 rounded to the dtype
    assert got[x == 0.0].tolist() == [0.0] * int(np.sum(x == 0.0))


@pytest.mark.slow  # ~12 s: a 780-input kernel compiled unoptimised
def test_blocked_self_kernel_matches_one_piece():
    """Large x2=None kernels are computed by blocks of rows (api._blocked): exactly symmetric,
    variances the diagonal bit for bit, the one-piece values to rounding, and differentiable."""
    net = mlp(ow.Relu(), depth=3)
    n = 780  # not a multiple of the block: padding and cropping are exercised
    assert n * n * 8 > kernel_api._SELF_BLOCK_BYTES and n > 2 * kernel_api._SELF_BLOCK
    x = sphere(n, 5, seed=3)
    x[7] = x[700]  # a duplicated input across blocks: correlation one off the diagonal
    k = ow.kernel(net, x)
    one = jax.jit(kernel_api._kernel_impl, static_argnames=("net", "get"))(net, x, None, ("nngp", "ntk"))
    for a, b in ((k.nngp, one.nngp), (k.ntk, one.ntk)):
        assert np.array_equal(a, a.T)
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=0)
    assert np.array_equal(np.diagonal(k.nngp), k.var1)
    np.testing.assert_allclose(k.ntk[7, 700], k.ntk[700, 700], rtol=1e-7)
    x2 = sphere(700, 5, seed=4)  # with x2 given: every block pair, variances per side
    assert n * len(x2) * 8 > kernel_api._SELF_BLOCK_BYTES
    k12 = ow.kernel(net, x, x2)
    one12 = jax.jit(kernel_api._kernel_impl, static_argnames=("net", "get"))(net, x, x2, ("nngp", "ntk"))
    np.testing.assert_allclose(k12.ntk, one12.ntk, rtol=1e-12, atol=0)
    np.testing.assert_allclose(k12.var1, one12.var1, rtol=1e-14)
    np.testing.assert_allclose(k12.var2, one12.var2, rtol=1e-14)

    def loss(scale):
        return jnp.sum(ow.kernel(net, scale * x, get="ntk").ntk[:3])

    g = jax.grad(loss)(1.3)
    fd = (loss(1.3 + 1e-5) - loss(1.3 - 1e-5)) / 2e-5
    np.testing.assert_allclose(g, fd, rtol=1e-5)
