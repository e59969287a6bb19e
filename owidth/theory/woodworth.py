r"""Implicit bias of the two-layer diagonal linear network (Woodworth et al. 2020).

Model and parametrization used throughout this module::

    f(x) = <beta, x>,   beta = u * u - v * v   (u, v in R^d, elementwise products)
    u(0) = v(0) = alpha * 1   (so beta(0) = 0),   alpha > 0
    L(u, v) = 1/(2n) ||X beta - y||^2

This is exactly the model of Woodworth, Gunasekar, Lee, Moroshko, Savarese,
Golan, Soudry & Srebro (2020), "Kernel and rich regimes in overparametrized
models" (COLT 2020), Section 4, with ``w_+ = u``, ``w_- = v`` and initial scale
``alpha``. Their Theorem 1: if gradient flow converges to an interpolator
(``X beta = y``), the limit is

    beta_alpha = argmin_beta Q_alpha(beta)  subject to  X beta = y,
    Q_alpha(beta) = alpha^2 * sum_i q(beta_i / alpha^2),
    q(z) = 2 - sqrt(4 + z^2) + z * asinh(z / 2).

The initial scale enters *squared*: with ``u0 = v0 = alpha`` the product
``u_i v_i = alpha^2`` is conserved by gradient flow, and alpha^2 is the only
scale of the problem (``tests/theory/test_woodworth.py`` checks this convention
against trained networks and checks that the alternative ``Q_{sqrt(alpha)}``
does not fit).

Why (the proof in a few lines, which is also how :func:`woodworth_solution`
solves the problem): gradient flow gives ``du/dt = -2 u r``, ``dv/dt = 2 v r``
with ``r = X^T (X beta - y) / n``, hence ``u = alpha e^{-2s}``,
``v = alpha e^{2s}``, ``s = int_0^t r`` and

    beta(t) = -2 alpha^2 sinh(2 s(t)),   s(t) in range(X^T).

Since ``q'(z) = asinh(z / 2)``, the KKT conditions of the constrained problem,
``asinh(beta / (2 alpha^2)) = X^T nu`` and ``X beta = y``, are met by the
limit. Limits of Q_alpha: ``q(z) ~ z^2 / 4`` for small ``z`` (large alpha: the
minimum-l2-norm interpolator, kernel regime) and ``q(z) ~ |z| log|z|`` for
large ``z`` (alpha -> 0: the minimum-l1-norm interpolator, rich regime).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from owidth import _checks

__all__ = [
    "q",
    "Q_alpha",
    "woodworth_solution",
    "min_l1_solution",
    "min_l2_solution",
    "train_diagonal_network",
]


def q(z):
    r"""``q(z) = 2 - sqrt(4 + z^2) + z asinh(z / 2)`` (Woodworth et al. 2020, Theorem 1).

    Even, strictly convex, ``q(0) = 0``, ``q'(z) = asinh(z / 2)``,
    ``q''(z) = 1 / sqrt(4 + z^2)``. Works on numpy arrays and scalars (float64).

    References:
      - Woodworth et al. 2020, Kernel and Rich Regimes in Overparametrized Models. <https://arxiv.org/abs/2002.09277>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> round(float(ow.theory.q(0.0)), 4) + 0.0, round(float(ow.theory.q(2.0)), 4)   # 0 at 0; 2 - sqrt(8) + 2 asinh(1)
      (0.0, 0.9343)
    """
    z = np.asarray(z, dtype=np.float64)
    # 2 - sqrt(4 + z^2) = -z^2 / (2 + sqrt(4 + z^2)) avoids cancellation at small z
    return -(z * z) / (2.0 + np.sqrt(4.0 + z * z)) + z * np.arcsinh(z / 2.0)


def Q_alpha(beta, alpha: float) -> float:
    r"""``Q_alpha(beta) = alpha^2 sum_i q(beta_i / alpha^2)`` (Woodworth et al. 2020, Theorem 1).

    References:
      - Woodworth et al. 2020, Kernel and Rich Regimes in Overparametrized Models. <https://arxiv.org/abs/2002.09277>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> beta = np.array([1.0, -1.0])
      >>> round(float(ow.theory.Q_alpha(beta, 1.0)), 4)          # alpha^2 (q(1) + q(-1)), q even
      0.4903
    """
    alpha = _check_alpha(alpha)
    a2 = alpha * alpha
    return float(a2 * np.sum(q(np.asarray(beta, dtype=np.float64) / a2)))


def _check_alpha(alpha) -> float:
    return _checks.positive_number("alpha", float(alpha), where="ow.theory", what=" (the initial scale u0 = v0 = alpha)")


def _check_system(X, y, *, feasible: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """float64 copies of X (n, d) and y (n,); checks shapes and that X beta = y is solvable."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"X must be a 2-D array (n samples, d features), got shape {X.shape}")
    if y.shape != (X.shape[0],):
        raise ValueError(f"y must have shape (n,) = ({X.shape[0]},) to match X {X.shape}, got {y.shape}")
    if not (np.all(np.isfinite(X)) and np.all(np.isfinite(y))):
        raise ValueError("X and y must be finite (found NaN or inf)")
    if feasible:
        beta, *_ = np.linalg.lstsq(X, y, rcond=None)
        res = np.linalg.norm(X @ beta - y)
        if res > 1e-8 * max(np.linalg.norm(y), 1.0):
            raise ValueError(
                f"X beta = y has no solution (least-squares residual {res:.3g}); the interpolation problem "
                "needs y in the column space of X, e.g. n <= d with X of full row rank"
            )
    return X, y


def min_l2_solution(X, y) -> np.ndarray:
    r"""Minimum-l2-norm interpolator ``X^+ y = argmin ||beta||_2 s.t. X beta = y`` (pseudo-inverse).

    References:
      - Woodworth et al. 2020, Kernel and Rich Regimes in Overparametrized Models. <https://arxiv.org/abs/2002.09277>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> X = np.array([[1.0, 1.0]]); y = np.array([2.0])
      >>> print(np.round(np.asarray(ow.theory.min_l2_solution(X, y)), 4))
      [1. 1.]
    """
    X, y = _check_system(X, y)
    return np.linalg.pinv(X) @ y


def min_l1_solution(X, y) -> np.ndarray:
    r"""Minimum-l1-norm interpolator (basis pursuit), ``argmin ||beta||_1 s.t. X beta = y``.

    Solved as the linear program ``min 1^T (p + m)`` s.t. ``X (p - m) = y``,
    ``p, m >= 0`` with :func:`scipy.optimize.linprog` (HiGHS). The minimiser
    need not be unique when X is degenerate; HiGHS returns a vertex solution.

    References:
      - Woodworth et al. 2020, Kernel and Rich Regimes in Overparametrized Models. <https://arxiv.org/abs/2002.09277>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> X = np.array([[1.0, 2.0]]); y = np.array([2.0])
      >>> print(np.round(np.asarray(ow.theory.min_l1_solution(X, y)), 4) + 0.0)   # all weight on the larger column
      [0. 1.]
    """
    from scipy.optimize import linprog

    X, y = _check_system(X, y)
    n, d = X.shape
    res = linprog(np.ones(2 * d), A_eq=np.hstack([X, -X]), b_eq=y, bounds=(0, None), method="highs")
    if res.status != 0:
        raise ValueError(f"basis pursuit failed: {res.message} (check that X beta = y is solvable)")
    return res.x[:d] - res.x[d:]


def _dual(nu, X, y, a2):
    """Dual objective alpha^2 sum(2 cosh(X^T nu) - 2) - y^T nu and its pieces (overflow -> inf)."""
    s = X.T @ nu
    with np.errstate(over="ignore"):
        sh = np.sinh(s / 2.0)
        val = a2 * np.sum(4.0 * sh * sh) - y @ nu  # 2 cosh s - 2 = 4 sinh^2(s/2), no cancellation
    return val, s


def woodworth_solution(X, y, alpha: float, *, rtol: float = 1e-10, max_iter: int = 500) -> np.ndarray:
    r"""``argmin Q_alpha(beta) s.t. X beta = y`` (Woodworth et al. 2020, Theorem 1), in float64.

    Solved through the convex dual. The conjugate of ``q`` is
    ``q*(s) = 2 cosh(s) - 2`` (because ``(q')^{-1}(s) = 2 sinh(s)``), so the dual is

        min_nu  D(nu) = alpha^2 sum_i (2 cosh((X^T nu)_i) - 2) - y^T nu,

    smooth and convex (strictly so when X has full row rank), and the primal
    solution is recovered from the stationarity (mirror-map) condition

        beta = 2 alpha^2 sinh(X^T nu),

    with ``grad D(nu) = X beta - y`` (primal feasibility) and Hessian
    ``X diag(2 alpha^2 cosh(X^T nu)) X^T``. Minimised with damped Newton
    (Armijo backtracking; near the optimum, where the decrease of D falls below
    float64 resolution, a step is also accepted if it halves the constraint
    residual) from ``nu = 0``; converged when
    ``||X beta - y|| <= rtol * ||y||``.

    Args:
      X: (n, d) design; y: (n,) targets with ``X beta = y`` solvable (e.g. n < d,
        full row rank).
      alpha: initial scale of ``u0 = v0 = alpha`` (> 0); Q uses ``alpha^2``.
      rtol: relative tolerance on the constraint residual.
      max_iter: Newton iterations before giving up.

    Returns:
      beta (d,) float64.

    Raises:
      ValueError: bad shapes, non-positive alpha, an unsolvable system, or no
        convergence (the message gives the residual reached).

    References:
      - Woodworth et al. 2020, Kernel and Rich Regimes in Overparametrized Models. <https://arxiv.org/abs/2002.09277>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> X = np.array([[1.0, 2.0]]); y = np.array([2.0])
      >>> big = ow.theory.woodworth_solution(X, y, alpha=100.0)    # kernel regime: the min-l2 interpolator
      >>> small = ow.theory.woodworth_solution(X, y, alpha=1e-3)   # rich regime: the min-l1 interpolator
      >>> print(np.round(np.asarray(big), 2) + 0.0, np.round(np.asarray(small), 2) + 0.0)
      [0.4 0.8] [0. 1.]
    """
    a2 = _check_alpha(alpha) ** 2
    X, y = _check_system(X, y)
    ynorm = max(np.linalg.norm(y), np.finfo(np.float64).tiny)
    if np.linalg.norm(y) == 0:
        return np.zeros(X.shape[1])
    nu = np.zeros(X.shape[0])
    val, s = _dual(nu, X, y, a2)
    res = np.inf
    for _ in range(max_iter):
        with np.errstate(over="ignore"):
            beta = 2.0 * a2 * np.sinh(s)
            w = 2.0 * a2 * np.cosh(s)
        g = X @ beta - y
        res = np.linalg.norm(g) / ynorm
        if res <= rtol:
            return beta
        H = (X * w) @ X.T
        try:
            step = np.linalg.solve(H, g)
        except np.linalg.LinAlgError:
            step = np.linalg.lstsq(H, g, rcond=None)[0]
        decrement = g @ step
        if not np.isfinite(decrement) or decrement <= 0:  # Hessian too ill-conditioned: gradient step
            step, decrement = g, g @ g
        t = 1.0
        while t > 1e-14:
            new_val, new_s = _dual(nu - t * step, X, y, a2)
            if np.isfinite(new_val) and new_val <= val - 0.25 * t * decrement:
                break
            # near the optimum the decrease of D is below float64 resolution of D:
            # accept the step if it reduces the constraint residual instead
            if np.isfinite(new_val):
                with np.errstate(over="ignore", invalid="ignore"):  # inf/NaN residual: step rejected
                    new_res = np.linalg.norm(X @ (2.0 * a2 * np.sinh(new_s)) - y) / ynorm
                if new_res < 0.5 * res:
                    break
            t *= 0.5
        else:
            break  # no decrease possible in float64
        nu, val, s = nu - t * step, new_val, new_s
    raise ValueError(
        f"woodworth_solution did not converge for alpha={alpha}: relative constraint residual "
        f"||X beta - y|| / ||y|| = {res:.3g} > rtol = {rtol:.3g} after {max_iter} Newton iterations; "
        "rescale X and y to O(1), loosen rtol or raise max_iter"
    )


@functools.partial(jax.jit, static_argnames="steps")
def _train(X, y, alphas, step_sizes, steps: int):
    n = X.shape[0]

    def one(alpha, eta):
        # GD on the offsets a = u - alpha, b = v - alpha (the same iterates as GD on u, v):
        # beta = u^2 - v^2 = (a - b)(2 alpha + a + b) has no cancellation of alpha^2 terms,
        # which matters in float32 when alpha is large.
        def beta_of(ab):
            a, b = ab
            return (a - b) * (2 * alpha + a + b)

        def loss(ab):
            r = X @ beta_of(ab) - y
            return 0.5 * jnp.dot(r, r) / n

        def body(ab, _):
            g = jax.grad(loss)(ab)
            return jax.tree.map(lambda p, gp: p - eta * gp, ab, g), None

        z = jnp.zeros(X.shape[1], X.dtype)
        ab, _ = jax.lax.scan(body, (z, z), None, length=steps)
        return beta_of(ab), loss(ab)

    return jax.vmap(one)(alphas, step_sizes)


def train_diagonal_network(X, y, alphas, *, lr: float, steps: int):
    r"""Full-batch gradient descent on the diagonal linear network, one run per alpha (vmapped).

    Minimises ``L(u, v) = 1/(2n) ||X (u*u - v*v) - y||^2`` from ``u0 = v0 = alpha``
    with ``steps`` plain GD steps of size

        eta_alpha = lr / (lambda_max(X^T X / n) * (2 alpha^2 + 1)).

    Why this scaling: ``u_i v_i = alpha^2`` is (nearly) conserved, so
    ``u_i^2 + v_i^2 = sqrt(beta_i^2 + 4 alpha^4)`` and the loss curvature along
    the fastest direction is about ``4 lambda_max (|beta_i| + 2 alpha^2)``. For
    large alpha (lazy regime) it grows like alpha^2, and dividing by ``2 alpha^2``
    makes beta follow GD on the linear model with an alpha-independent rate
    ``4 lr / lambda_max``. For small alpha the dynamics are *not* slow by a
    factor alpha^2: coordinates grow exponentially at a rate set by the
    residual, and the escape takes ``~ log(|beta| / alpha^2)`` time, so no
    1/alpha^2 boost is needed (it would make GD unstable once ``|beta| = O(1)``).
    GD is stable for ``lr < 1 / (2 max(1, |beta|_inf))``; it approximates gradient
    flow (and its implicit bias, Theorem 1 of Woodworth et al. 2020) as ``lr -> 0``
    with ``lr * steps`` large. Discrete steps shrink ``u v`` by ``(1 - 4 eta^2 r^2)``
    per step, an effective alpha slightly below the nominal one (negligible for small lr).
    Internally GD runs on ``a = u - alpha``, ``b = v - alpha`` (identical iterates) and
    forms ``beta = (a - b)(2 alpha + a + b)``, which avoids the cancellation in
    ``u*u - v*v`` for large alpha in float32.

    Args:
      X: (n, d) design; y: (n,) targets.
      alphas: (k,) initial scales (> 0), traced (one compile per shape and ``steps``).
      lr: dimensionless step (see above), e.g. 0.05.
      steps: number of GD steps (static).

    Returns:
      ``(beta, loss)``: (k, d) final ``u*u - v*v`` and (k,) final training loss, in
      JAX's default float dtype. A diverged run shows as a non-finite loss.

    References:
      - Woodworth et al. 2020, Kernel and Rich Regimes in Overparametrized Models. <https://arxiv.org/abs/2002.09277>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> X = np.array([[1.0, 2.0]]); y = np.array([2.0])
      >>> beta, loss = ow.theory.train_diagonal_network(X, y, alphas=np.array([0.1, 1.0]), lr=0.05, steps=200)
      >>> beta.shape, loss.shape                   # one run per alpha
      ((2, 2), (2,))
    """
    X64, y64 = _check_system(X, y, feasible=False)
    alphas = np.atleast_1d(np.asarray(alphas, dtype=np.float64))
    if alphas.ndim != 1 or not np.all(np.isfinite(alphas)) or np.any(alphas <= 0):
        raise ValueError(f"alphas must be a 1-D array of finite positive scales, got {alphas!r}")
    if not (np.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite positive number, got {lr!r}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    lam = float(np.linalg.norm(X64, 2) ** 2 / X64.shape[0])  # lambda_max(X^T X / n)
    if lam <= 0:
        raise ValueError("X is all zeros: nothing to fit")
    eta = lr / (lam * (2.0 * alphas**2 + 1.0))
    dtype = jnp.asarray(0.0).dtype
    return _train(jnp.asarray(X64, dtype), jnp.asarray(y64, dtype), jnp.asarray(alphas, dtype),
                  jnp.asarray(eta, dtype), int(steps))
