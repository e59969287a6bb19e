"""ow.empirical_nngp, ow.empirical_ntk_vp and ow.taylor_expand against direct computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import owidth as ow
from helpers import sphere

NET = ow.serial(ow.Dense(w_std=1.5, b_std=0.1), ow.Tanh(), ow.Dense(out=3))
X1, X2 = sphere(5, 4, 0), sphere(3, 4, 1)
MODEL = ow.finite(NET, width=12)
PARAMS = MODEL.init(jax.random.key(0), X1)


def test_empirical_nngp_is_the_output_outer_product():
    f1, f2 = np.asarray(MODEL.apply(PARAMS, X1)), np.asarray(MODEL.apply(PARAMS, X2))
    full = ow.empirical_nngp(MODEL.apply, PARAMS, X1, X2, outputs="full")
    np.testing.assert_allclose(full, np.einsum("ia,jb->ijab", f1, f2), rtol=1e-13)
    np.testing.assert_allclose(ow.empirical_nngp(MODEL.apply, PARAMS, X1, X2), f1 @ f2.T / 3, rtol=1e-13)
    np.testing.assert_allclose(ow.empirical_nngp(MODEL.apply, PARAMS, X1), f1 @ f1.T / 3, rtol=1e-13)


def test_ntk_vector_products_equal_the_full_kernel_times_v():
    v = np.random.default_rng(0).normal(size=(3, 3))
    full = np.asarray(ow.empirical_ntk(MODEL.apply, PARAMS, X1, X2, outputs="full", implementation="jacobian"))
    got = jax.jit(ow.empirical_ntk_vp(MODEL.apply, PARAMS, X1, X2))(v)
    np.testing.assert_allclose(got, np.einsum("ijab,jb->ia", full, v), rtol=1e-11, atol=1e-13)
    with pytest.raises(ValueError, match="shape of apply_fn"):
        ow.empirical_ntk_vp(MODEL.apply, PARAMS, X1, X2)(np.ones((5, 3)))


def test_taylor_expansion_orders():
    """Degree 1 is ow.linearize; the error of degree d falls like eps^(d+1) along a parameter direction."""
    direction = jax.tree.map(lambda p: jax.random.normal(jax.random.key(3), p.shape, p.dtype), PARAMS)
    moved = lambda eps: jax.tree.map(lambda p, d: p + eps * d, PARAMS, direction)  # noqa: E731
    np.testing.assert_allclose(ow.taylor_expand(MODEL.apply, PARAMS, 1)(moved(0.1), X1),
                               ow.linearize(MODEL.apply, PARAMS)(moved(0.1), X1), rtol=1e-13, atol=1e-14)
    np.testing.assert_array_equal(ow.taylor_expand(MODEL.apply, PARAMS, 0)(moved(0.1), X1), MODEL.apply(PARAMS, X1))
    for degree in (1, 2):  # order d costs 2^d forward passes; exactness at any degree: the polynomial test
        f_d = ow.taylor_expand(MODEL.apply, PARAMS, degree)
        errs = [float(jnp.abs(f_d(moved(e), X1) - MODEL.apply(moved(e), X1)).max()) for e in (0.02, 0.01)]
        order = np.log2(errs[0] / errs[1])
        assert abs(order - (degree + 1)) < 0.25, (degree, errs, order)


def test_taylor_expansion_of_a_polynomial_is_exact():
    f = lambda p, x: p["a"] * x**3 + p["b"] ** 2 * x  # noqa: E731
    p0, p = {"a": 0.3, "b": -1.0}, {"a": 2.0, "b": 0.5}
    np.testing.assert_allclose(ow.taylor_expand(f, p0, 2)(p, 1.7), f(p, 1.7), rtol=1e-14)
    assert abs(float(ow.taylor_expand(f, p0, 1)(p, 1.7)) - float(f(p, 1.7))) > 1  # degree 1 misses b^2
    with pytest.raises(ValueError, match="degree"):
        ow.taylor_expand(f, p0, -1)
