"""The closed-form activations ported from neural-tangents' surface (Cos, Rbf, Exp, Gaussian, Gabor, Sign,
polynomials, rectified monomials, ExpNormalized, Elementwise) against independent references:

* the dual kernels T, Tdot at off-diagonal points by a 180 x 180 Gauss-Hermite rule in numpy (smooth
  activations) and scipy's adaptive ``dblquad`` / Genz's orthant algorithm (kinked ones);
* their diagonals over variances 1e-4 .. 1e3 by scipy's adaptive ``quad``;
* float32 kernels of a depth-10 network against float64 (finite, identical inputs kept identical);
* Monte Carlo over 2000 finite networks (``ow.monte_carlo_kernel``) within 4 standard errors, with a power
  check: the same estimate rejects the kernel of a 5% change of a hyperparameter.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.stats
from numpy.polynomial.hermite_e import hermegauss

import owidth as ow
from helpers import sphere

SMOOTH = {
    "cos": ow.Cos(a=1.3, b=0.9, shift=0.4),
    "rbf": ow.Rbf(gamma=0.7),
    "exp": ow.Exp(a=1.2, b=0.7),
    "gaussian": ow.Gaussian(a=1.1, b=-0.8),
    "gabor": ow.Gabor(),
    "polynomial": ow.Polynomial([0.5, -1.0, 0.3, 0.2]),
    "monomial4": ow.Monomial(4),
    "hermite3": ow.Hermite(3),
}
KINKED = {"sign": ow.Sign(), "step": ow.RectifiedMonomial(0), "relu2": ow.RectifiedMonomial(2),
          "relu3": ow.RectifiedMonomial(3)}
_POLY = np.polynomial.Polynomial([0.5, -1.0, 0.3, 0.2])
# each activation and its derivative written out independently in numpy
NUMPY = {
    "cos": (lambda x: 1.3 * np.cos(0.9 * x + 0.4), lambda x: -1.3 * 0.9 * np.sin(0.9 * x + 0.4)),
    "rbf": (lambda x: np.sqrt(2) * np.sin(np.sqrt(1.4) * x + np.pi / 4),
            lambda x: np.sqrt(2) * np.sqrt(1.4) * np.cos(np.sqrt(1.4) * x + np.pi / 4)),
    "exp": (lambda x: 1.2 * np.exp(0.7 * x), lambda x: 1.2 * 0.7 * np.exp(0.7 * x)),
    "gaussian": (lambda x: 1.1 * np.exp(-0.8 * x * x), lambda x: -2 * 0.8 * 1.1 * x * np.exp(-0.8 * x * x)),
    "gabor": (lambda x: np.exp(-x * x) * np.sin(x), lambda x: np.exp(-x * x) * (np.cos(x) - 2 * x * np.sin(x))),
    "polynomial": (_POLY, _POLY.deriv()),
    "monomial4": (lambda x: x**4, lambda x: 4 * x**3),
    "hermite3": (lambda x: (x**3 - 3 * x) / np.sqrt(6), lambda x: (3 * x**2 - 3) / np.sqrt(6)),
    "sign": (np.sign, None),
    "step": (lambda x: (x >= 0) * 1.0, None),
    "relu2": (lambda x: np.maximum(x, 0) ** 2, lambda x: 2 * np.maximum(x, 0)),
    "relu3": (lambda x: np.maximum(x, 0) ** 3, lambda x: 3 * np.maximum(x, 0) ** 2),
}
POINTS = [(0.7, 1.3, 0.4), (0.5, 0.5, -0.3), (1.0, 2.0, 1.2), (0.2, 3.0, 0.7)]


def test_numpy_references_are_the_activations():
    z = np.linspace(-3, 3, 13)
    for name, act in {**SMOOTH, **KINKED}.items():
        f, g = NUMPY[name]
        np.testing.assert_allclose(act.fn(jnp.asarray(z)), f(z), rtol=1e-13, atol=1e-15, err_msg=name)
        if g is not None:
            grad = jax.vmap(jax.grad(act.fn))(jnp.asarray(z))
            np.testing.assert_allclose(grad, g(z), rtol=1e-12, atol=1e-14, err_msg=name)


def _gauss_hermite(f, g, q1, q2, c, nodes=180):
    """E[f(u) f(v)] and E[g(u) g(v)] by the tensor Gauss-Hermite rule in (z1, z2), u = sqrt(q1) z1,
    v = sqrt(q2) (rho z1 + sqrt(1 - rho^2) z2)."""
    z, w = hermegauss(nodes)
    w = w / w.sum()
    rho = c / np.sqrt(q1 * q2)
    z1, z2 = np.meshgrid(z, z, indexing="ij")
    u, v = np.sqrt(q1) * z1, np.sqrt(q2) * (rho * z1 + np.sqrt(1 - rho**2) * z2)
    weights = np.outer(w, w)
    return (weights * f(u) * f(v)).sum(), (weights * g(u) * g(v)).sum()


@pytest.mark.parametrize("name", sorted(SMOOTH))
def test_smooth_duals_match_gauss_hermite(name):
    act = SMOOTH[name]
    f, g = NUMPY[name]
    for q1, q2, c in POINTS:
        t, td = act.dual(jnp.float64(q1), jnp.float64(q2), jnp.float64(c), need_dot=True)
        ref_t, ref_td = _gauss_hermite(f, g, q1, q2, c)
        np.testing.assert_allclose(float(t), ref_t, rtol=1e-11, atol=1e-14, err_msg=f"{name} T at {(q1, q2, c)}")
        np.testing.assert_allclose(float(td), ref_td, rtol=1e-11, atol=1e-14, err_msg=f"{name} Tdot at {(q1, q2, c)}")


def _quadrant_moment(n, q1, q2, c):
    """E[max(u,0)^n max(v,0)^n] by scipy's adaptive 2-D quadrature over the positive quadrant."""
    cov = np.array([[q1, c], [c, q2]])
    inv, det = np.linalg.inv(cov), np.linalg.det(cov)

    def density(v, u):
        z = np.array([u, v])
        return u**n * v**n * np.exp(-0.5 * z @ inv @ z) / (2 * np.pi * np.sqrt(det))

    return scipy.integrate.dblquad(density, 0, np.inf, 0, np.inf, epsabs=1e-13, epsrel=1e-11)[0]


@pytest.mark.parametrize("q1,q2,c", [POINTS[0], *[pytest.param(*p, marks=pytest.mark.slow) for p in POINTS[1:]]])
def test_kinked_duals_match_adaptive_quadrature(q1, q2, c):  # ~4 s of scipy dblquad per point
    args = jnp.float64(q1), jnp.float64(q2), jnp.float64(c)
    for n in (0, 2, 3):
        t, td = ow.RectifiedMonomial(n).dual(*args, need_dot=True)
        np.testing.assert_allclose(float(t), _quadrant_moment(n, q1, q2, c), rtol=1e-8, err_msg=f"degree {n}")
        # phi' = n max(x, 0)^(n-1): Tdot = n^2 E[max(u,0)^(n-1) max(v,0)^(n-1)] (0 for the step)
        ref = 0.0 if n == 0 else n**2 * _quadrant_moment(n - 1, q1, q2, c)
        np.testing.assert_allclose(float(td), ref, rtol=1e-8, atol=1e-300, err_msg=f"degree {n} Tdot")
    # sign: E[sign u sign v] = 4 P(u > 0, v > 0) - 1 (Genz's algorithm for the orthant probability)
    orthant = scipy.stats.multivariate_normal(mean=[0, 0], cov=[[q1, c], [c, q2]], abseps=1e-12, releps=1e-12).cdf([0, 0])
    t, td = ow.Sign().dual(*args, need_dot=True)
    np.testing.assert_allclose(float(t), 4 * orthant - 1, rtol=1e-8)
    assert float(td) == 0.0


DIAG = {**SMOOTH, **KINKED}
# Exp's moments overflow float64 beyond q ~ 700 / (2 b^2): its grid stops at 10
Q_GRID = np.geomspace(1e-4, 1e3, 8)


@pytest.mark.parametrize("name", sorted(DIAG))
def test_diagonals_match_scipy_quad_from_1e4_to_1e3(name):
    act = DIAG[name]
    f, g = NUMPY[name]
    for q in Q_GRID[Q_GRID <= 10] if name == "exp" else Q_GRID:
        sd = np.sqrt(q)

        def moment(h, sd=sd, q=q):
            # E h(u)^2 for u ~ N(0, q): split at 0 (kinks), to 40 standard deviations
            dens = lambda u: h(u) ** 2 * np.exp(-0.5 * u * u / q) / np.sqrt(2 * np.pi * q)  # noqa: E731
            return sum(scipy.integrate.quad(dens, lo, hi, epsabs=0, epsrel=1e-12, limit=200)[0]
                       for lo, hi in ((-40 * sd, 0.0), (0.0, 40 * sd)))

        t, td = act.dual(jnp.float64(q), jnp.float64(q), jnp.float64(q), need_dot=True)
        np.testing.assert_allclose(float(t), moment(f), rtol=1e-9, err_msg=f"{name} E phi^2 at q = {q:.3g}")
        if g is not None:  # sign and step: derivative 0 almost everywhere
            np.testing.assert_allclose(float(td), moment(g), rtol=1e-9, err_msg=f"{name} E phi'^2 at q = {q:.3g}")


# variance-preserving scales for a depth-10 float32 check; polynomial growth (q -> q^2 per layer) has no
# stable variance, so those go 3 layers deep
DEEP = {"cos": (ow.Cos(), 1.2, 10), "rbf": (ow.Rbf(gamma=0.5), 1.0, 10),
        "gaussian": (ow.Gaussian(a=2.0, b=-0.5), 1.0, 10), "gabor": (ow.Gabor(), 3.0, 10),
        "sign": (ow.Sign(), 1.0, 10), "step": (ow.RectifiedMonomial(0), 1.5, 10),
        "exp_normalized": (ow.ExpNormalized(gamma=1.0, shift=-1.0), 1.0, 10),
        "hermite2": (ow.Hermite(2), 1.0, 3), "relu2": (ow.RectifiedMonomial(2), 1.0, 3)}


@pytest.mark.parametrize("name", [n if n in ("rbf", "sign") else pytest.param(n, marks=pytest.mark.slow)
                                  for n in sorted(DEEP)])
def test_deep_float32_matches_float64_and_keeps_duplicates(name):
    act, w, depth = DEEP[name]
    net = ow.serial(*[ow.serial(ow.Dense(w_std=w, b_std=0.1), act) for _ in range(depth)], ow.Dense(out=1))
    x = sphere(5, 4, 3)
    x = np.concatenate([x, x[:1]])  # a duplicated input
    k64 = ow.kernel(net, x)
    with jax.enable_x64(False):
        k32 = ow.kernel(net, x.astype(np.float32))
    for what in ("nngp", "ntk"):
        a32, a64 = np.asarray(getattr(k32, what), np.float64), np.asarray(getattr(k64, what))
        assert np.all(np.isfinite(a32)), (name, what)
        scale = np.abs(a64).max()
        assert np.abs(a32 - a64).max() <= 1e-4 * scale + 1e-30, (name, what, np.abs(a32 - a64).max() / scale)
        np.testing.assert_array_equal(a32[0], a32[-1], err_msg=f"{name} {what}: the duplicate drifted")


MC_CASES = {  # activation, and the same with one hyperparameter changed by 5%
    "rbf": (ow.Rbf(gamma=0.7), ow.Rbf(gamma=0.735)),
}
MC_SLOW = {
    "polynomial": (ow.Polynomial([0.5, -1.0, 0.3]), ow.Polynomial([0.5, -1.05, 0.3])),
    "cos": (ow.Cos(a=1.0, b=1.1, shift=0.3), ow.Cos(a=1.0, b=1.155, shift=0.3)),
    "exp": (ow.Exp(a=1.0, b=0.6), ow.Exp(a=1.0, b=0.63)),
    "gaussian": (ow.Gaussian(a=1.0, b=-0.8), ow.Gaussian(a=1.0, b=-0.84)),
    "gabor": (ow.Gabor(), None),
    "sign": (ow.Sign(), None),
    "relu2": (ow.RectifiedMonomial(2), None),
    "hermite2": (ow.Hermite(2), None),
    "monomial3": (ow.Monomial(3), None),
}


def _one_hidden(act, w_std=1.2, b_std=0.3):
    return ow.serial(ow.Dense(w_std=w_std, b_std=b_std), act, ow.Dense(out=1, w_std=1.0, b_std=0.1))


@pytest.mark.parametrize("name", [*sorted(MC_CASES), *[pytest.param(n, marks=[pytest.mark.slow, pytest.mark.compute_bound])
                                                        for n in sorted(MC_SLOW)]])
def test_one_hidden_layer_monte_carlo_and_power(name):
    """One hidden layer: the NNGP and the expected empirical NTK equal the analytic kernels at any width,
    so 2000 networks agree within 4 SE; a 5% change of a hyperparameter (the activation's own, or the
    first layer's w_std; the readout's for the scale-free sign) moves the NTK by more than 4 SE somewhere
    (at width 128 the empirical NTK fluctuates by ~ 128^-1/2 per network, the output covariance by O(1):
    the NTK is the sharper test)."""
    act, changed = {**MC_CASES, **MC_SLOW}[name]
    x = sphere(4, 3, 0)
    x[3] *= 0.5
    net = _one_hidden(act)
    mc = ow.monte_carlo_kernel(net, x, width=128, samples=2000, key=jax.random.key(1), progress_bar=False)
    exact = ow.kernel(net, x)
    for what in ("nngp", "ntk"):
        z = np.abs(np.asarray(getattr(mc, what)) - getattr(exact, what)) / np.asarray(getattr(mc.stderr, what))
        assert np.all(z < 4), (name, what, z)
    # the activation's own hyperparameter, else the first layer's w_std (sign is scale-free: the readout's)
    other = _one_hidden(changed) if changed is not None else (
        ow.serial(ow.Dense(w_std=1.2, b_std=0.3), act, ow.Dense(out=1, w_std=1.05, b_std=0.1)) if name == "sign"
        else _one_hidden(act, w_std=1.26))
    wrong = ow.kernel(other, x)
    z = np.abs(np.asarray(mc.ntk) - wrong.ntk) / np.asarray(mc.stderr.ntk)
    assert z.max() > 4, (name, "a 5% change went undetected", z)


def test_polynomial_family_identities():
    """Monomial(n) = Polynomial(e_n); Hermite(n) at unit variance gives c^n (neural-tangents' rule) and
    He_n / sqrt(n!) as its function; RectifiedMonomial(1) is Relu, kernel and function."""
    x = sphere(4, 3, 2)  # |x|^2 = d, so Dense(w_std=1, b_std=0) gives unit variances
    for n in (0, 2, 3):
        a = ow.kernel(ow.serial(ow.Dense(), ow.Monomial(n), ow.Dense(out=1)), x)
        b = ow.kernel(ow.serial(ow.Dense(), ow.Polynomial([0.0] * n + [1.0]), ow.Dense(out=1)), x)
        np.testing.assert_array_equal(a.nngp, b.nngp)
        c = np.asarray(ow.kernel(ow.Dense(), x).nngp)
        h = ow.kernel(ow.serial(ow.Dense(), ow.Hermite(n)), x)
        np.testing.assert_allclose(h.nngp, c**n, rtol=1e-12, atol=1e-14)
    z = np.linspace(-2, 2, 9)
    np.testing.assert_allclose(ow.Hermite(3).fn(z), (z**3 - 3 * z) / np.sqrt(6), rtol=1e-14, atol=1e-15)
    relu = ow.serial(ow.Dense(w_std=1.3, b_std=0.2), ow.Relu(), ow.Dense(out=1))
    rm1 = ow.serial(ow.Dense(w_std=1.3, b_std=0.2), ow.RectifiedMonomial(1), ow.Dense(out=1))
    k1, k2 = ow.kernel(relu, x), ow.kernel(rm1, x)
    np.testing.assert_allclose(k2.nngp, k1.nngp, rtol=1e-13)
    np.testing.assert_allclose(k2.ntk, k1.ntk, rtol=1e-13)
    np.testing.assert_array_equal(ow.RectifiedMonomial(1).fn(z), ow.Relu().fn(z))


def test_elementwise_with_user_dual_matches_the_builtin_and_autodiff_ntk():
    """ow.Elementwise(fn, nngp_fn): Williams' erf NNGP written by the user; its NTK by autodiff of
    nngp_fn (Price's theorem) equals ow.Erf's closed form, and the finite network uses fn."""

    def nngp_fn(c, q1, q2):
        return 2 / jnp.pi * jnp.arcsin(2 * c / jnp.sqrt((1 + 2 * q1) * (1 + 2 * q2)))

    mine = ow.serial(ow.Dense(w_std=1.4, b_std=0.2), ow.Elementwise(jax.scipy.special.erf, nngp_fn), ow.Dense(out=1))
    ref = ow.serial(ow.Dense(w_std=1.4, b_std=0.2), ow.Erf(), ow.Dense(out=1))
    x = sphere(5, 3, 4)
    k, r = ow.kernel(mine, x), ow.kernel(ref, x)
    np.testing.assert_allclose(k.nngp, r.nngp, rtol=1e-12)
    np.testing.assert_allclose(k.ntk, r.ntk, rtol=1e-10)
    key = jax.random.key(0)
    m1, m2 = ow.finite(mine, width=8), ow.finite(ref, width=8)
    np.testing.assert_array_equal(m1.apply(m1.init(key, x), x), m2.apply(m2.init(key, x), x))


def test_kernel_only_and_function_only_layers_say_what_is_missing():
    x = sphere(3, 3, 0)
    with pytest.raises(NotImplementedError, match="kernel map with no finite-network function"):
        m = ow.finite(ow.serial(ow.Dense(), ow.ExpNormalized(), ow.Dense(out=1)), width=4)
        m.apply(m.init(jax.random.key(0), x), x)
    with pytest.raises(NotImplementedError, match="no dual kernel given"):
        ow.kernel(ow.serial(ow.Dense(), ow.Elementwise(jnp.tanh), ow.Dense(out=1)), x)
    with pytest.raises(ValueError, match="give fn"):
        ow.Elementwise()
    with pytest.raises(ValueError, match=r"degree=-1\) must be an int in \[0, 40\]"):
        ow.Monomial(-1)
    with pytest.raises(ValueError, match="non-empty sequence"):
        ow.Polynomial([])
    with pytest.raises(TypeError, match="must be an int"):
        ow.Hermite(2.0)
    with pytest.raises(ValueError, match="gamma"):
        ow.Rbf(gamma=-1.0)
    with pytest.raises(NotImplementedError, match="LayerNorm after ExpNormalized"):
        ow.kernel(ow.serial(ow.Dense(), ow.ExpNormalized(), ow.LayerNorm(), ow.Dense(out=1)), x)
