"""Dual kernels of any elementwise activation by Gauss-Hermite quadrature.

For ``(u, v)`` centred Gaussian with variances ``q1, q2`` and covariance
``c = rho sqrt(q1 q2)``, write ``u = sqrt(q1) z1`` and
``v = sqrt(q2) (rho z1 + sqrt(1 - rho^2) z2)`` with ``z1, z2 ~ N(0, 1)``
independent. Then with the probabilists' Gauss-Hermite rule ``(z_i, w_i)``
(``sum_i w_i g(z_i) ~ E g(z)``, exact for polynomials of degree < 2K):

    E[phi(u) phi(v)] ~ sum_i w_i phi(sqrt(q1) z_i) sum_j w_j phi(sqrt(q2) (rho z_i + sqrt(1-rho^2) z_j))

and likewise with ``phi'`` (from ``jax.jvp`` of ``phi``) for the NTK map.
The inner sum is evaluated for all kernel entries at once and the outer one
is a ``lax.scan`` over the K nodes, so memory is O(K n1 n2).

Accuracy (float64, measured against the closed forms and against K = 128):
for entire functions (erf, gelu, sin) the error falls exponentially in K:
at q ~ 1, K = 32 gives ~1e-9 (erf) to ~1e-13 (gelu), K = 48 gives ~1e-12.
Functions with complex poles near the real axis (tanh, sigmoid, softplus,
silu) converge more slowly, like exp(-c sqrt(K)): tanh at q ~ 2 is good to
~1e-6 at K = 48 and ~3e-7 at K = 64; larger variances need more nodes. For
kinked functions (relu, abs) the error decays only algebraically (~1e-3 at
K = 48): use their closed forms, or :func:`dual_polar`, which splits the
plane where u or v vanishes and is exact up to rounding for functions smooth
except at 0 (<= 3e-14 relative for relu, leaky relu, abs at K = 48). The
default is K = 48 nodes per axis.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from owidth.kernels.dual import safe_sqrt


@functools.lru_cache(maxsize=32)
def _nodes(k: int):
    z, w = np.polynomial.hermite_e.hermegauss(k)
    return z, w / np.sqrt(2.0 * np.pi)


def derivative(fn):
    """Elementwise derivative of an elementwise ``fn`` by one JVP with unit tangent."""
    return lambda x: jax.jvp(fn, (x,), (jnp.ones_like(x),))[1]


def dual(fn, q1, q2, c, *, nodes: int, need_dot: bool):
    """``(E[fn(u) fn(v)], E[fn'(u) fn'(v)])`` by 2-D Gauss-Hermite quadrature (broadcasting).

    The rule treats u and v asymmetrically (u on the outer nodes); averaging
    it with the roles swapped makes the result exactly symmetric in (q1, q2),
    so kernel matrices are symmetric bit for bit, at twice the cost.
    """
    return _both_orders(_dual_ordered, fn, q1, q2, c, nodes=nodes, need_dot=need_dot)


def _both_orders(ordered, fn, q1, q2, c, *, nodes: int, need_dot: bool):
    """Average of an ordered rule over (u, v) and (v, u): exactly symmetric in (q1, q2)."""
    a, ad = ordered(fn, q1, q2, c, nodes=nodes, need_dot=need_dot)
    b, bd = ordered(fn, q2, q1, c, nodes=nodes, need_dot=need_dot)
    return 0.5 * (a + b), (0.5 * (ad + bd) if need_dot else None)


def _dual_ordered(fn, q1, q2, c, *, nodes: int, need_dot: bool):
    q1, q2, c = jnp.broadcast_arrays(q1, q2, c)
    dtype = c.dtype
    z, w = (jnp.asarray(a, dtype) for a in _nodes(nodes))
    # safe_sqrt: zero derivative at 0, so gradients through rho = 1 (kernel
    # diagonals, duplicated inputs) stay finite
    s1, s2 = safe_sqrt(q1), safe_sqrt(q2)
    rho = jnp.clip(c / jnp.maximum(s1 * s2, jnp.finfo(dtype).tiny), -1.0, 1.0)
    perp = safe_sqrt(1.0 - rho * rho)
    dfn = derivative(fn) if need_dot else None

    zb = z.reshape((1,) * c.ndim + (-1,))  # explicit ranks (rank promotion may be disabled)
    wb = w.reshape((1,) * c.ndim + (-1,))

    def outer(acc, zw):
        zi, wi = zw
        v = s2[..., None] * (rho[..., None] * zi + perp[..., None] * zb)  # (..., K)
        u = s1 * zi
        t = acc[0] + wi * fn(u) * jnp.sum(wb * fn(v), axis=-1)
        td = acc[1] + wi * dfn(u) * jnp.sum(wb * dfn(v), axis=-1) if need_dot else acc[1]
        return (t, td), None

    zero = jnp.zeros_like(c)
    (t, td), _ = jax.lax.scan(outer, (zero, zero), (z, w))
    return t, (td if need_dot else None)


def dual_diag(fn, q, *, nodes: int, need_dot: bool):
    """``(E fn(u)^2, E fn'(u)^2)`` for ``u ~ N(0, q)`` by 1-D Gauss-Hermite quadrature."""
    z, w = (jnp.asarray(a, q.dtype).reshape((1,) * q.ndim + (-1,)) for a in _nodes(nodes))
    u = safe_sqrt(q)[..., None] * z
    t = jnp.sum(w * fn(u) ** 2, axis=-1)
    if not need_dot:
        return t, None
    return t, jnp.sum(w * derivative(fn)(u) ** 2, axis=-1)


def mean(fn, q, *, nodes: int):
    """``E fn(u)`` for ``u ~ N(0, q)`` by 1-D Gauss-Hermite quadrature."""
    z, w = (jnp.asarray(a, q.dtype).reshape((1,) * q.ndim + (-1,)) for a in _nodes(nodes))
    return jnp.sum(w * fn(safe_sqrt(q)[..., None] * z), axis=-1)


# --------------------------------------------------------------------------- #
# Kink-aware rule: polar coordinates with breakpoints where u = 0 or v = 0
# --------------------------------------------------------------------------- #
@functools.lru_cache(maxsize=32)
def _half_range(k: int, power: int):
    """Gauss rule for the weight ``r^power exp(-r^2/2)`` on ``[0, inf)``, normalised to total mass 1
    for power 1 and to ``1/2`` (half a standard normal) for power 0.

    Recurrence coefficients by the discretised Stieltjes procedure (Gautschi 2004, sec. 2.2) on a
    4000-point Gauss-Legendre discretisation of ``[0, 40]`` (the weight times any polynomial of
    degree < 2k is negligible beyond it for k <= 128), then Golub-Welsch.
    """
    x, w = np.polynomial.legendre.leggauss(4000)
    r = 20.0 * (x + 1.0)
    w = 20.0 * w * r**power * np.exp(-0.5 * r * r)
    w = w / w.sum() * (1.0 if power == 1 else 0.5)
    a, b = np.zeros(k), np.zeros(k)
    p_prev, p = np.zeros_like(r), np.ones_like(r)
    norm_prev = 1.0
    for j in range(k):
        norm = np.sum(w * p * p)
        a[j] = np.sum(w * r * p * p) / norm
        b[j] = norm / norm_prev if j else norm
        p_prev, p = p, (r - a[j]) * p - (b[j] if j else 0.0) * p_prev
        norm_prev = norm
    jac = np.diag(a) + np.diag(np.sqrt(b[1:]), 1) + np.diag(np.sqrt(b[1:]), -1)
    nodes, vecs = np.linalg.eigh(jac)
    return nodes, b[0] * vecs[0] ** 2


def dual_polar(fn, q1, q2, c, *, nodes: int, need_dot: bool):
    """``(E[fn(u) fn(v)], E[fn'(u) fn'(v)])`` for functions smooth except at 0 (relu-like kinks).

    With ``z = r (cos t, sin t)``, ``u = sqrt(q1) r cos t`` and
    ``v = sqrt(q2) r sin(t + a)``, ``a = atan2(rho, sqrt(1 - rho^2))``:

        E g(u, v) = (1/2pi) int_0^2pi dt int_0^inf r exp(-r^2/2) g(u, v) dr.

    ``u`` or ``v`` changes sign at t = -pi/2, -a, pi/2, pi - a (in this order for
    every rho), so on each of the four arcs the integrand is smooth in t and,
    along each ray, in r: Gauss-Legendre in t per arc (``nodes // 2`` points)
    and the half-range Gauss rule for ``r exp(-r^2/2)`` (``nodes // 2`` points)
    converge exponentially, also for the jumps of ``fn'`` (the relu NTK map is
    then exact up to rounding). Averaged over both orders of (u, v), as
    :func:`dual`, for exact symmetry.
    """
    try:
        hash(fn)
    except TypeError:  # an activation holding array hyperparameters (traced by ow.kernel): no static jit
        return _both_orders(_polar_ordered, fn, q1, q2, c, nodes=nodes, need_dot=need_dot)
    return _polar_both(fn, q1, q2, c, nodes=nodes, need_dot=need_dot)


@functools.partial(jax.jit, static_argnames=("fn", "nodes", "need_dot"))
def _polar_both(fn, q1, q2, c, *, nodes: int, need_dot: bool):
    """Both orders, jitted as one (inlined under ``ow.kernel``'s jit; one compilation when called eagerly)."""
    return _both_orders(_polar_ordered, fn, q1, q2, c, nodes=nodes, need_dot=need_dot)


def _polar_ordered(fn, q1, q2, c, *, nodes: int, need_dot: bool):
    q1, q2, c = jnp.broadcast_arrays(q1, q2, c)
    dtype = c.dtype
    k = max(nodes // 2, 2)
    xg, wg = (jnp.asarray(v, dtype).reshape((1,) * (c.ndim + 1) + (k,)) for v in np.polynomial.legendre.leggauss(k))
    rn, rw = (jnp.asarray(v, dtype) for v in _half_range(k, 1))
    s1, s2 = safe_sqrt(q1), safe_sqrt(q2)
    # rho as the closed forms compute it (c / sqrt(q1 q2), not c / (s1 s2)): near rho = -1 an ulp in
    # rho moves the breakpoints by sqrt(ulp)
    rho = jnp.clip(c / jnp.maximum(safe_sqrt(q1 * q2), jnp.finfo(dtype).tiny), -1.0, 1.0)
    alpha = jnp.arctan2(rho, safe_sqrt(1.0 - rho * rho))
    half_pi = 0.5 * np.pi
    lo = jnp.stack([-half_pi + 0.0 * alpha, -alpha, half_pi + 0.0 * alpha, np.pi - alpha], -1)  # (..., 4)
    hi = jnp.stack([-alpha, half_pi + 0.0 * alpha, np.pi - alpha, 1.5 * np.pi + 0.0 * alpha], -1)
    mid, half = 0.5 * (lo + hi), 0.5 * (hi - lo)
    t = mid[..., None] + half[..., None] * xg  # (..., 4, k)
    wt = half[..., None] * wg / (2.0 * np.pi)
    cu = (s1[..., None, None] * jnp.cos(t))
    cv = (s2[..., None, None] * jnp.sin(t + alpha[..., None, None]))
    dfn = derivative(fn) if need_dot else None

    def radial(acc, rw_):
        r, w = rw_
        u, v = r * cu, r * cv
        tt = acc[0] + w * jnp.sum(wt * fn(u) * fn(v), axis=(-2, -1))
        td = acc[1] + w * jnp.sum(wt * dfn(u) * dfn(v), axis=(-2, -1)) if need_dot else acc[1]
        return (tt, td), None

    zero = jnp.zeros_like(c)
    (tt, td), _ = jax.lax.scan(radial, (zero, zero), (rn, rw))
    return tt, (td if need_dot else None)


def dual_diag_half(fn, q, *, nodes: int, need_dot: bool):
    """``(E fn(u)^2, E fn'(u)^2)``, ``u ~ N(0, q)``, by the half-range rule on each side of 0."""
    z, w = (jnp.asarray(a, q.dtype).reshape((1,) * q.ndim + (-1,)) for a in _half_range(max(nodes // 2, 2), 0))
    u = safe_sqrt(q)[..., None] * z
    t = jnp.sum(w * (fn(u) ** 2 + fn(-u) ** 2), axis=-1)
    if not need_dot:
        return t, None
    d = derivative(fn)
    return t, jnp.sum(w * (d(u) ** 2 + d(-u) ** 2), axis=-1)


def mean_half(fn, q, *, nodes: int):
    """``E fn(u)``, ``u ~ N(0, q)``, by the half-range rule on each side of 0."""
    z, w = (jnp.asarray(a, q.dtype).reshape((1,) * q.ndim + (-1,)) for a in _half_range(max(nodes // 2, 2), 0))
    u = safe_sqrt(q)[..., None] * z
    return jnp.sum(w * (fn(u) + fn(-u)), axis=-1)
