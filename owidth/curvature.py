"""Curvature of training losses: Hessian-vector products, Lanczos, spectral densities, traces.

Every function takes a scalar loss ``fn(params)`` of a parameter pytree (for a network,
``lambda p: loss(model.apply(p, x), y)``) and never forms the Hessian ``H``: it only multiplies by it,
``H v = d/de grad fn(params + e v)`` (forward-over-reverse, one ``jax.jvp`` of ``jax.grad``: about
the cost of two gradients; Pearlmutter 1994).

- :func:`lanczos`: the top ``k`` eigenvalues (and eigenvectors) by the Lanczos iteration with full
  reorthogonalisation (twice-applied classical Gram-Schmidt, so the Krylov basis stays orthonormal
  to rounding and no spurious copies of converged eigenvalues appear).
- :func:`spectral_density`: stochastic Lanczos quadrature (Ghorbani, Krishnan & Xiao 2019; Ubaru,
  Chen & Saad 2017). For a probe ``v`` of unit norm, ``m`` Lanczos steps give a tridiagonal
  ``T = U diag(theta) U^T``, and ``v^T g(H) v ~ sum_j U_0j^2 g(theta_j)`` is an ``m``-point Gauss
  quadrature of the spectral measure seen from ``v``; averaged over random probes it estimates the
  normalised density ``(1/D) sum_i delta(lambda - lambda_i)``.
- :func:`trace`: Hutchinson's estimator ``E[z^T H z]`` over Rademacher ``z``, with its standard error.
- :func:`gauss_newton_top`: for the MSE ``(1/2N) sum ||f - y||^2`` the Gauss-Newton matrix is
  ``J^T J / N``, whose top eigenvalue is the top eigenvalue of the empirical NTK (``N k x N k``) over
  ``N``; near a minimum it is the sharpness (Cohen et al. 2021; Lewkowycz et al. 2020).

All computations run under full float32 precision on accelerators (``owidth/_precision.py``).

References:
  - Pearlmutter 1994, Fast Exact Multiplication by the Hessian. <https://doi.org/10.1162/neco.1994.6.1.147>
  - Lanczos 1950; Paige 1972 (loss of orthogonality; full reorthogonalisation).
  - Ghorbani, Krishnan & Xiao 2019, An Investigation into Neural Net Optimization via Hessian
    Eigenvalue Density. <https://arxiv.org/abs/1901.10159>
  - Ubaru, Chen & Saad 2017, Fast Estimation of tr(f(A)) via Stochastic Lanczos Quadrature.
    <https://doi.org/10.1137/16M1104974>
  - Hutchinson 1989, A stochastic estimator of the trace of the influence matrix.
  - Cohen et al. 2021, Gradient Descent on Neural Networks Typically Occurs at the Edge of Stability.
    <https://arxiv.org/abs/2103.00065>
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from owidth import _checks, _precision

__all__ = ["Eigs", "Density", "hvp", "lanczos", "spectral_density", "trace", "gauss_newton_top"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Eigs:
    """Top eigenvalues (descending) and, when asked for, their eigenvectors as parameter pytrees
    (leading axis ``k``)."""

    values: jax.Array
    vectors: Any = None


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Density:
    """Stochastic Lanczos quadrature of a Hessian's spectrum: per probe, Gauss nodes ``nodes``
    (probes, m) and weights ``weights`` (probes, m), each probe's weights summing to 1.

    The estimated spectral measure is ``(1/probes) sum_p sum_j weights[p, j] delta(lambda - nodes[p, j])``.
    """

    nodes: jax.Array
    weights: jax.Array

    def smooth(self, grid, sigma: float) -> np.ndarray:
        """The density convolved with a Gaussian of width ``sigma`` on ``grid`` (integrates to ~1)."""
        grid = np.asarray(grid, dtype=float)[:, None]
        nodes, weights = np.asarray(self.nodes).ravel()[None], np.asarray(self.weights).ravel()[None]
        probes = np.asarray(self.nodes).shape[0]
        bumps = np.exp(-0.5 * ((grid - nodes) / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))
        return (bumps * weights).sum(axis=1) / probes

    def cdf(self, values) -> np.ndarray:
        """The estimated fraction of eigenvalues at or below each of ``values``."""
        nodes, weights = np.asarray(self.nodes).ravel(), np.asarray(self.weights).ravel()
        probes = np.asarray(self.nodes).shape[0]
        return np.array([weights[nodes <= v].sum() / probes for v in np.atleast_1d(values)])


def _flat(fn: Callable, params, where: str):
    """``fn`` on flat vectors: the flat parameters, the Hessian matvec, and the unravel function."""
    if not callable(fn):
        raise TypeError(f"{where}: fn must be a callable params -> scalar loss, got {type(fn).__name__}")
    flat, unravel = ravel_pytree(params)
    if flat.size == 0:
        raise ValueError(f"{where}: params has no entries")
    if not jnp.issubdtype(flat.dtype, jnp.floating):
        raise TypeError(f"{where}: params must hold floating-point arrays, got {flat.dtype}")
    out = jax.eval_shape(fn, params)
    if getattr(out, "shape", None) != ():
        raise ValueError(f"{where}: fn must return a scalar loss, got shape {getattr(out, 'shape', None)}")
    if not isinstance(flat, jax.core.Tracer):  # concrete: one forward pass before the Lanczos program compiles
        value = fn(params)
        if not isinstance(value, jax.core.Tracer) and not bool(jnp.isfinite(value)):
            raise ValueError(f"{where}: the loss at params is {float(value)}; its Hessian is undefined (check the "
                             "data and the parameters for NaN/Inf, or a diverged run)")
    grad = jax.grad(lambda u: fn(unravel(u)))

    def matvec(v):
        return jax.jvp(grad, (flat,), (v.astype(flat.dtype),))[1]

    return flat, matvec, unravel


@_precision.exact
def hvp(fn: Callable, params, v):
    """Hessian-vector product ``H v`` of the scalar ``fn`` at ``params``; ``v`` a pytree like ``params``.

    Examples:
      >>> import jax.numpy as jnp
      >>> import owidth as ow
      >>> fn = lambda p: jnp.sum(p["w"] ** 3) / 3          # Hessian diag(2 w)
      >>> ow.curvature.hvp(fn, {"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([1.0, 1.0])})["w"].tolist()
      [2.0, 4.0]
    """
    flat, matvec, unravel = _flat(fn, params, "ow.curvature.hvp")
    v_flat, _ = ravel_pytree(v)
    if v_flat.shape != flat.shape:
        raise ValueError(f"ow.curvature.hvp: v has {v_flat.size} entries, params {flat.size}; pass a pytree like params")
    return unravel(matvec(v_flat))


def _tridiagonal(matvec, q0, iters: int):
    """``iters`` Lanczos steps from the unit vector ``q0`` with full reorthogonalisation: the diagonal
    ``alpha`` (iters,), the off-diagonal ``beta`` (iters - 1,) and the basis ``Q`` (iters, D). After a
    breakdown (an invariant subspace found, ``beta ~ 0``) the remaining vectors are 0 and their block of
    ``T`` decouples with zero weight in the first row."""
    dim = q0.shape[0]
    tiny = jnp.finfo(q0.dtype).eps * 10

    def body(i, carry):
        basis, alpha, beta, scale = carry
        q = basis[i]
        w = matvec(q)
        a = jnp.vdot(q, w)
        w = w - a * q - jnp.where(i > 0, beta[jnp.maximum(i - 1, 0)], 0.0) * basis[jnp.maximum(i - 1, 0)]
        for _ in range(2):  # classical Gram-Schmidt twice against the whole basis (unfilled rows are 0)
            w = w - basis.T @ (basis @ w)
        b = jnp.linalg.norm(w)
        scale = jnp.maximum(scale, jnp.abs(a) + b)
        ok = b > tiny * scale
        nxt = jnp.where(ok, w / jnp.where(ok, b, 1.0), jnp.zeros_like(w))
        basis = basis.at[i + 1].set(nxt)  # row ``iters`` (after the last step) is dropped on return
        return basis, alpha.at[i].set(a), beta.at[i].set(jnp.where(ok, b, 0.0)), scale

    basis = jnp.zeros((iters + 1, dim), q0.dtype).at[0].set(q0)
    init = (basis, jnp.zeros(iters, q0.dtype), jnp.zeros(iters, q0.dtype), jnp.zeros((), q0.dtype))
    basis, alpha, beta, _ = jax.lax.fori_loop(0, iters, body, init)
    return alpha, beta[:-1], basis[:iters]


def _tri(alpha, beta):
    return jnp.diag(alpha) + jnp.diag(beta, 1) + jnp.diag(beta, -1)


def _start(key, dim: int, dtype, where: str):
    key = _checks.prng_key("key", key, where=where)
    v = jax.random.normal(key, (dim,), dtype)
    return v / jnp.linalg.norm(v)


@_precision.exact
def lanczos(fn: Callable, params, *, k: int = 1, iters: int | None = None, key=None, vectors: bool = False) -> Eigs:
    """The ``k`` largest eigenvalues of the Hessian of ``fn`` at ``params`` (Lanczos, full
    reorthogonalisation), in descending order.

    Args:
      fn: scalar loss of the parameter pytree. params: where the Hessian is taken.
      k: how many eigenvalues (1 <= k <= number of parameters).
      iters: Lanczos steps (default ``min(D, 2 k + 40)``); extremal eigenvalues converge first, so a few
        times ``k`` suffice unless the top of the spectrum is crowded. At ``iters = D`` the result is
        exact up to rounding.
      key: PRNG key of the random start vector (default ``jax.random.key(0)``).
      vectors: also return the Ritz vectors (as pytrees with a leading axis ``k``).

    Returns:
      :class:`Eigs`.

    Examples:
      >>> import jax.numpy as jnp
      >>> import owidth as ow
      >>> fn = lambda p: 0.5 * jnp.sum(jnp.array([3.0, 1.0, -2.0]) * p ** 2)   # H = diag(3, 1, -2)
      >>> ow.curvature.lanczos(fn, jnp.zeros(3), k=2, iters=3).values.round(6).tolist()
      [3.0, 1.0]
    """
    where = "ow.curvature.lanczos"
    flat, matvec, unravel = _flat(fn, params, where)
    dim = flat.size
    k = _checks.positive_int("k", k, where=where)
    if k > dim:
        raise ValueError(f"{where}: k={k} exceeds the number of parameters ({dim}); the Hessian has {dim} eigenvalues")
    iters = min(dim, 2 * k + 40) if iters is None else _checks.positive_int("iters", iters, where=where)
    if not k <= iters <= dim:
        raise ValueError(f"{where}: iters={iters} must lie between k={k} and the number of parameters ({dim})")
    q0 = _start(jax.random.key(0) if key is None else key, dim, flat.dtype, where)
    alpha, beta, basis = _tridiagonal(matvec, q0, iters)
    theta, u = jnp.linalg.eigh(_tri(alpha, beta))
    top = jnp.argsort(-theta)[:k]
    vecs = None
    if vectors:
        ritz = (basis.T @ u[:, top]).T  # (k, D)
        vecs = jax.vmap(unravel)(ritz)
    return Eigs(values=theta[top], vectors=vecs)


@_precision.exact
def spectral_density(fn: Callable, params, *, key, iters: int = 80, probes: int = 8) -> Density:
    """Stochastic Lanczos quadrature of the Hessian's eigenvalue density (Ghorbani et al. 2019).

    Each of ``probes`` Gaussian unit probes runs ``iters`` Lanczos steps; the Ritz values are the
    nodes, the squared first components of the Ritz vectors the weights (see the module docstring).
    The estimate of ``(1/D) sum_i g(lambda_i)`` has variance ``~ 1/(probes D)`` for smooth ``g``;
    outliers are resolved exactly once ``iters`` exceeds their number.

    Args:
      fn: scalar loss of the parameter pytree. params: where the Hessian is taken.
      key: PRNG key of the probes. iters: Lanczos steps per probe (<= number of parameters).
      probes: independent probes.

    Returns:
      :class:`Density` (``.smooth(grid, sigma)``, ``.cdf(values)``).

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import owidth as ow
      >>> fn = lambda p: 0.5 * jnp.sum(jnp.arange(1.0, 5.0) * p ** 2)   # eigenvalues 1, 2, 3, 4
      >>> d = ow.curvature.spectral_density(fn, jnp.zeros(4), key=jax.random.key(0), iters=4, probes=2)
      >>> sorted(set(d.nodes.round(6).ravel().tolist())), float(d.weights.sum(axis=1).mean().round(6))
      ([1.0, 2.0, 3.0, 4.0], 1.0)
    """
    where = "ow.curvature.spectral_density"
    flat, matvec, _ = _flat(fn, params, where)
    dim = flat.size
    iters = _checks.positive_int("iters", iters, where=where)
    probes = _checks.positive_int("probes", probes, where=where)
    if iters > dim:
        raise ValueError(f"{where}: iters={iters} exceeds the number of parameters ({dim})")
    keys = jax.random.split(_checks.prng_key("key", key, where=where), probes)

    def one(kk):
        alpha, beta, _ = _tridiagonal(matvec, _start(kk, dim, flat.dtype, where), iters)
        theta, u = jnp.linalg.eigh(_tri(alpha, beta))
        return theta, u[0] ** 2

    nodes, weights = jax.lax.map(one, keys)
    return Density(nodes=nodes, weights=weights)


@_precision.exact
def trace(fn: Callable, params, *, key, probes: int = 100) -> tuple[jax.Array, jax.Array]:
    """Hutchinson's estimate of ``tr H`` and its standard error: the mean and the standard error of
    ``z^T H z`` over ``probes`` Rademacher vectors ``z``.

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import owidth as ow
      >>> fn = lambda p: 0.5 * jnp.sum(jnp.array([3.0, 1.0, -2.0]) * p ** 2)   # diagonal: exact for every z
      >>> [round(float(v), 6) for v in ow.curvature.trace(fn, jnp.zeros(3), key=jax.random.key(0), probes=4)]
      [2.0, 0.0]
    """
    where = "ow.curvature.trace"
    flat, matvec, _ = _flat(fn, params, where)
    probes = _checks.positive_int("probes", probes, where=where)
    if probes < 2:
        raise ValueError(f"{where}: probes={probes}; the standard error needs at least 2")
    z = jax.random.rademacher(_checks.prng_key("key", key, where=where), (probes, flat.size), flat.dtype)
    samples = jax.lax.map(lambda v: jnp.vdot(v, matvec(v)), z)
    return samples.mean(), samples.std(ddof=1) / jnp.sqrt(probes)


@_precision.exact
def gauss_newton_top(apply_fn: Callable, params, x) -> jax.Array:
    """Top eigenvalue of the Gauss-Newton matrix ``J^T J / N`` of the MSE ``(1/2N) sum_n ||f(x_n) - y_n||^2``:
    the top eigenvalue of the empirical NTK over all ``N k`` outputs, divided by ``N``. It equals the
    Hessian's top eigenvalue where the residuals vanish and bounds the stable GD learning rate
    ``2 / lambda`` (Lewkowycz et al. 2020).

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import owidth as ow
      >>> apply = lambda p, x: x @ p                       # linear: J^T J / N = x^T x / N
      >>> x = jnp.array([[1.0, 0.0], [0.0, 2.0]])
      >>> float(ow.curvature.gauss_newton_top(apply, jnp.zeros(2), x))   # eigenvalues 1/2, 4/2
      2.0
    """
    from owidth.empirical import empirical_ntk

    where = "ow.curvature.gauss_newton_top"
    if not callable(apply_fn):
        raise TypeError(f"{where}: apply_fn must be a callable (params, x) -> outputs")
    x = _checks.as_float_array("x", x, where=where, rank=None)
    out = jax.eval_shape(apply_fn, params, x)
    n = x.shape[0]
    if len(out.shape) == 1:
        theta = empirical_ntk(lambda p, u: apply_fn(p, u)[:, None], params, x, outputs="full")
    else:
        theta = empirical_ntk(apply_fn, params, x, outputs="full")
    k = theta.shape[-1]
    full = jnp.transpose(theta, (0, 2, 1, 3)).reshape(n * k, n * k)
    return jnp.linalg.eigvalsh(full)[-1] / n
