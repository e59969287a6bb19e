"""The mechanism behind hessian-spectrum's C - 1 vs C outliers, in closed form on a linear classifier (no training).

For logits ``f = x W`` (W: d x C) the Hessian of the mean loss is exactly ``(1/N) sum_i A_i (x) x_i x_i^T``
(the output is linear in W): MSE has ``A_i = I_C``, so ``H = I_C (x) X^T X / N`` and every eigenvalue of
``X^T X / N`` appears C times; softmax cross-entropy has ``A_i = diag(p_i) - p_i p_i^T``, ``A_i 1 = 0``, so
``H`` annihilates every direction ``v 1^T`` (the same change of every class's weights) and the dominant
eigenvalue of the non-negative digits' second moment appears at most C - 1 times.
"""

import jax
import jax.numpy as jnp
import numpy as np

import owidth as ow
from owidth.experiments._common import digits
from owidth.experiments.hessian_spectrum import balanced, expected, outliers

C = 5


def _problem():
    x, labels, _, _ = digits(0)
    x, labels = balanced(x, labels, C, 240)
    x = jnp.asarray(x, jnp.float64)
    w = 0.3 * jax.random.normal(jax.random.key(0), (x.shape[1], C), jnp.float64)

    def xent(w):
        f = x @ w
        return jnp.mean(jax.nn.logsumexp(f, axis=-1) - jnp.take_along_axis(f, jnp.asarray(labels)[:, None], axis=-1)[:, 0])

    def mse(w):
        f = x @ w
        return 0.5 * jnp.mean(jnp.sum((f - jax.nn.one_hot(jnp.asarray(labels), C)) ** 2, axis=-1))

    return x, w, xent, mse


def _spectrum(fn, w):
    dim = w.size
    return np.sort(np.linalg.eigvalsh(np.asarray(jax.hessian(fn)(w)).reshape(dim, dim)))[::-1]


def test_softmax_hessian_annihilates_equal_class_changes():
    x, w, xent, mse = _problem()
    v = jax.random.normal(jax.random.key(1), (x.shape[1], 1), jnp.float64) * jnp.ones((1, C))
    assert float(jnp.linalg.norm(ow.curvature.hvp(xent, w, v)) / jnp.linalg.norm(v)) < 1e-12
    assert float(jnp.linalg.norm(ow.curvature.hvp(mse, w, v)) / jnp.linalg.norm(v)) > 1e-2  # MSE has no such null space


def test_linear_classifier_has_c_minus_1_outliers_for_xent_and_c_for_mse():
    x, w, xent, mse = _problem()
    second = np.sort(np.linalg.eigvalsh(np.asarray(x.T @ x) / x.shape[0]))[::-1]
    exact = {"xent": _spectrum(xent, w), "mse": _spectrum(mse, w)}
    np.testing.assert_allclose(exact["mse"], np.sort(np.repeat(second, C))[::-1], rtol=1e-9, atol=1e-12)
    for loss in ("xent", "mse"):
        assert outliers(exact[loss][:30])[0] == expected(loss, C), (loss, exact[loss][:8])
    # Lanczos finds the same top of the softmax spectrum (distinct eigenvalues). Not compared for the linear MSE
    # model: its eigenvalues are exactly C-fold degenerate, and a single-start Krylov space holds one vector per
    # eigenspace, so the copies appear only through rounding (120 steps found all five of the top one here,
    # 60 steps missed a copy of the sixth); in trained networks the C outliers are distinct.
    top = np.asarray(ow.curvature.lanczos(xent, w, k=12, iters=60, key=jax.random.key(2)).values)
    np.testing.assert_allclose(top, exact["xent"][:12], rtol=1e-8)
    assert outliers(top)[0] == expected("xent", C)
