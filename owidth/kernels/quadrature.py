"""Dual kernels of any elementwise activation by quadrature, accurate uniformly in the variance.

For ``(u, v)`` centred Gaussian with variances ``q1, q2`` and covariance
``c = rho sqrt(q1 q2)``, write ``u = sqrt(q1) z`` and
``v = m + sigma y`` with ``m = sqrt(q2) rho z``, ``sigma = sqrt(q2 (1 - rho^2))`` and
``z, y ~ N(0, 1)`` independent, so that

    E[phi(u) phi(v)] = E_z[ phi(sqrt(q1) z) E_y[phi(m + sigma y)] ]

(an outer and an inner 1-D Gaussian integral), and likewise with ``phi'``
(from ``jax.jvp`` of ``phi``) for the NTK map ``E[phi'(u) phi'(v)]``.

Why not Gauss-Hermite. ``phi(sqrt(q) z)`` has its structure (the bend of tanh,
sigmoid, softplus, silu) at ``|u| ~ 1``, i.e. at ``|z| ~ 1/sqrt(q)``: for
``q >> 1`` a feature of width ``1/sqrt(q)`` in ``z``, and tanh's poles at
``u = i pi/2`` are at distance ``pi / (2 sqrt(q))`` from the real ``z`` axis.
Gauss-Hermite nodes are spread over the whole Gaussian and converge slowly
(issue 22, a tanh network at pre-activation variance ~5: 1.2e-3 at 64 nodes,
4e-6 at 128, 1e-9 at 256), and the inner integral has its feature at
``y* = -m / sigma`` (where ``v = 0``), anywhere in the Gaussian.

The rule. Each 1-D integral ``E F(y)`` is the trapezoid rule in ``t`` after
the substitution (Trefethen & Weideman 2014, SIAM Review 56, sec. 13-15: the
trapezoid rule converges like ``exp(-2 pi d / h)`` for integrands analytic in
a strip ``|Im t| < d``)

    y = y* + asinh(beta sinh t),     dy/dt = beta cosh t / sqrt(1 + beta^2 sinh^2 t)

centred at the feature ``y*`` of the integrand, with ``beta = min(1, 1 / scale)``
the feature's width in ``y`` (``scale`` = ``sqrt(q)`` for the outer integral,
``sigma`` for the inner one; the activation's own scale is taken to be 1, its
poles at distance >= pi/2 from the real axis). The node spacing is
``beta h`` at ``y*``, grows geometrically (``|y - y*| h``) up to distance 1
and is ``h`` beyond, so one grid resolves every scale from ``beta`` to 1 and
the whole Gaussian: the number of nodes grows only like ``log(1/beta)``. The
grid covers ``y in [-8, 8]`` (Gaussian mass outside: 1.2e-15), with ``h`` set
from the node count. The outer integrand also contains the smoothed inner
one, of width ``max(1, sigma) / (sqrt(q2) |rho|)`` in ``z``; ``beta`` is the
smaller of the two widths. The 1-D rules (diagonal, mean) use
``3 nodes / 2`` nodes (default 96); the 2-D counts are given under Cost.

Kinks at 0 (``kink=True``: relu-like functions and their smooth compositions,
``ActivationFn``'s default). The trapezoid rule converges only algebraically
across a kink, so each integral is split at its kink (``z = 0`` outer, ``y*``
inner) and each half-line ``y = y* +- s`` uses

    s = asinh(beta exp(tau - exp(-tau))),     tau in [-3.2, tau_max]

which clusters nodes double-exponentially at the kink (the integrand vanishes
there like ``exp(-exp(-tau))``; Takahasi & Mori 1974), is graded
geometrically from ``beta`` to 1 and uniform beyond. In the outer integral the
smoothed jump of ``phi'(v)`` has width ``sigma / (sqrt(q2) |rho|)``; ``beta``
resolves it down to 1/64. Default ``nodes`` = 128, half on each side of the
kink; the 1-D rules use ``3 nodes / 2``.

Both rules put the larger variance on the outer axis, so the result is
symmetric in ``(q1, q2)`` bit for bit (kernel matrices are exactly symmetric)
at the cost of one ordering.

Measured error (float64, against nested ``scipy.integrate.quad``, relative to
``sqrt(E phi(u)^2 E phi(v)^2)``; variances {1e-4, 1e-2, 1, 5, 30, 1e3} x
rho {-0.9, 0, 0.5, 0.99} and unequal pairs across the range, rho up to
+-0.99; tests/test_quadrature_sweep.py), worst case over the grid, NNGP / NTK:

    smooth rule, nodes =      32          48          64 (default)  96
      tanh                 2e-6/1e-5   4e-10/3e-9  3e-12/5e-12   5e-14/1e-15
      sigmoid              1e-6/1e-5   1e-9/8e-9   2e-12/1e-11   2e-15/2e-15
      silu                 3e-6/2e-6   3e-9/1e-9   2e-12/3e-12   7e-14/1e-15
      softplus             3e-6/1e-6   3e-9/1e-9   2e-12/2e-12   5e-14/2e-15
    kink rule, nodes =        64          96          128 (default) 192
      leaky tanh           7e-7/9e-6   9e-10/5e-8  2e-12/2e-11   5e-14/2e-13

Diagonal and mean (1-D, default nodes): <= 3e-13. Float32 (same rules):
<= 6e-7, rounding. The former 48-node Gauss-Hermite rule erred by 1e-3 (NNGP)
to 2e-2 (NTK) at pre-activation variance ~5 (issue 22).

Cost. The inner grid (nodes and weights of ``S(t) = asinh(beta sinh t)``) is
computed once per entry on a fixed t-grid covering ``|y - y*| <= 15`` and
shifted to ``y*`` for each outer node (``y*`` clipped to +-7: a bend further
out in the Gaussian tail weighs < 2e-11), so an inner node costs one exp and
one evaluation of ``fn``. Nodes per entry: smooth 96 outer x 104 inner
(``3 nodes / 2`` x ``13 nodes / 8``), kink 128 x 192 (``nodes`` x
``3 nodes / 2``), against 2 x 48 x 48 before.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from owidth.kernels.dual import safe_sqrt

__all__ = ["derivative", "inner_nodes", "dual", "dual_diag", "mean", "dual_polar", "dual_diag_half", "mean_half"]

_Y = 8.0  # grids cover y in [-Y, Y]: Gaussian mass outside 1.2e-15
_TAU_LO = -3.2  # half-line grids start at s = beta exp(-3.2 - e^3.2) = 9e-13 beta
_Y_C = 7.0  # inner grids are centred at y* clipped to [-Y_C, Y_C] (a bend further out weighs < 2e-11)
_BETA_MIN = 1.0 / 64  # finest width resolved for the smoothed kink of the outer integrand
_INV_SQRT_2PI = float(1.0 / np.sqrt(2.0 * np.pi))  # a Python float: keeps float32 inputs float32
DEFAULT_NODES = 64  # smooth rule: 96 outer (and 1-D) x 104 inner nodes
DEFAULT_NODES_KINK = 128  # kink rule: 128 outer x 192 inner (192 1-D), half on each side of the kink


def derivative(fn):
    """Elementwise derivative of an elementwise ``fn`` by one JVP with unit tangent."""
    return lambda x: jax.jvp(fn, (x,), (jnp.ones_like(x),))[1]


def inner_nodes(nodes, kink: bool) -> int:
    """Inner nodes per kernel entry of :func:`dual` (its node grids are this many values per entry)."""
    return _counts(nodes, kink)[2]


def _counts(nodes, kink):
    """(1-D nodes, outer nodes, inner nodes) of the rule."""
    if nodes is None:
        nodes = DEFAULT_NODES_KINK if kink else DEFAULT_NODES
    wide = max(nodes + nodes // 2, 2)
    if kink:
        return 2 * max(wide // 2, 2), 2 * max(nodes // 2, 2), 2 * max(wide // 2, 2)
    return wide, wide, max(13 * nodes // 8, 2)  # inner: a wider fixed grid, see _graded_inner


# --------------------------------------------------------------------------- #
# 1-D grids: (nodes, weights) for E F(y), y ~ N(0, 1); index j may be an array
# --------------------------------------------------------------------------- #
def _graded(ystar, beta, k: int):
    """Grid parameters of ``y = y* + asinh(beta sinh t)`` over ``y in [-Y, Y]``: (y*, t_lo, h)."""
    ystar = jnp.clip(ystar, -_Y, _Y)
    lo = jnp.arcsinh(jnp.sinh(-_Y - ystar) / beta)
    hi = jnp.arcsinh(jnp.sinh(_Y - ystar) / beta)
    return ystar, lo, (hi - lo) / (k - 1)


def _graded_node(ystar, beta, lo, h, j):
    t = lo + h * j
    bs = beta * jnp.sinh(t)
    y = ystar + jnp.arcsinh(bs)
    w = h * beta * jnp.cosh(t) * jax.lax.rsqrt(1.0 + bs * bs) * jnp.exp(-0.5 * y * y) * _INV_SQRT_2PI
    return y, w


def _half(ystar, beta, sign, k: int):
    """Grid parameters of the half-line ``y = y* + sign s(tau)`` from the kink to ``sign Y``: (y*, h)."""
    ystar = jnp.clip(ystar, -_Y, _Y)
    span = jnp.maximum(_Y - sign * ystar, 1e-3)
    lg = jnp.maximum(jnp.log(jnp.sinh(span) / beta), 0.0)
    hi = jnp.maximum(lg + jnp.exp(-lg), _TAU_LO + 1.0)  # >= the tau where s = span
    return ystar, (hi - _TAU_LO) / (k - 1)


def _half_node(ystar, beta, sign, h, j):
    tau = _TAU_LO + h * j
    ex = jnp.exp(-tau)
    be = beta * jnp.exp(tau - ex)
    y = ystar + sign * jnp.arcsinh(be)
    w = h * be * (1.0 + ex) * jax.lax.rsqrt(1.0 + be * be) * jnp.exp(-0.5 * y * y) * _INV_SQRT_2PI
    return y, w


def _rule(ystar, beta, k: int, kink: bool):
    """All nodes and weights of the 1-D rule, stacked on a new last axis of length k."""
    ystar, beta = ystar[..., None], beta[..., None]
    shape = (1,) * (ystar.ndim - 1)  # explicit ranks (rank promotion may be disabled)
    if not kink:
        ys, lo, h = _graded(ystar, beta, k)
        return _graded_node(ys, beta, lo, h, jnp.arange(k, dtype=ystar.dtype).reshape(shape + (k,)))
    half = k // 2
    j = jnp.arange(half, dtype=ystar.dtype).reshape(shape + (half,))
    out = []
    for sign in (1.0, -1.0):
        ys, h = _half(ystar, beta, sign, half)
        out.append(_half_node(ys, beta, sign, h, j))
    return tuple(jnp.concatenate([a, b], axis=-1) for a, b in zip(*out))


def _beta(scale, dtype):
    """Feature width ``min(1, 1 / scale)`` in standard-normal units."""
    return 1.0 / jnp.maximum(scale, 1.0).astype(dtype)


# Inner grids: computed once per entry and shifted to y* for each outer node, so that an inner node
# costs one exp and one fn evaluation (sinh, cosh and asinh cost several exp on CPU).
def _graded_inner(beta, k: int):
    """Per entry: nodes ``S_j = asinh(beta sinh t_j)`` and weights ``h S'(t_j)`` of a fixed grid covering
    ``|S| <= Y + Y_c``, so that ``y* + S_j`` covers ``[-Y, Y]`` for every ``|y*| <= Y_c``."""
    lim = jnp.arcsinh(jnp.sinh(_Y + _Y_C) / beta)
    h = 2.0 * lim / (k - 1)
    t = -lim[..., None] + h[..., None] * jnp.arange(k, dtype=h.dtype).reshape((1,) * h.ndim + (k,))
    bs = beta[..., None] * jnp.sinh(t)
    return jnp.arcsinh(bs), h[..., None] * beta[..., None] * jnp.cosh(t) * jax.lax.rsqrt(1.0 + bs * bs)


def _graded_inner_nodes(ystar, grid):
    s, ds = grid
    y = jnp.clip(ystar, -_Y_C, _Y_C)[..., None] + s
    return y, ds * jnp.exp(-0.5 * y * y) * _INV_SQRT_2PI


def _half_inner(beta, k: int):
    """Per entry: ``s(tau_j)`` and ``h s'(tau_j)`` of the half-line grid for the widest span, 2 Y."""
    lg = jnp.log(jnp.sinh(2.0 * _Y) / beta)
    h = (lg + jnp.exp(-lg) - _TAU_LO) / (k - 1)
    tau = _TAU_LO + h[..., None] * jnp.arange(k, dtype=h.dtype).reshape((1,) * h.ndim + (k,))
    ex = jnp.exp(-tau)
    be = beta[..., None] * jnp.exp(tau - ex)
    return jnp.arcsinh(be), h[..., None] * be * (1.0 + ex) * jax.lax.rsqrt(1.0 + be * be)


def _half_inner_nodes(ystar, grid):
    s, ds = grid
    ystar = jnp.clip(ystar, -_Y, _Y)[..., None]
    y = jnp.concatenate([ystar + s, ystar - s], axis=-1)
    return y, jnp.concatenate([ds, ds], axis=-1) * jnp.exp(-0.5 * y * y) * _INV_SQRT_2PI


# --------------------------------------------------------------------------- #
# 2-D: E[fn(u) fn(v)] and E[fn'(u) fn'(v)]
# --------------------------------------------------------------------------- #
def dual(fn, q1, q2, c, *, nodes=None, need_dot: bool, kink: bool = False):
    """``(E[fn(u) fn(v)], E[fn'(u) fn'(v)])`` (broadcasting), accurate uniformly in the variances.

    ``kink=True`` for functions smooth except at 0 (split rule). ``nodes``: see the module
    docstring (``None``: 64 smooth, 128 kink). Exactly symmetric in ``(q1, q2)``.
    """
    try:
        hash(fn)
    except TypeError:  # an activation holding array hyperparameters (traced by ow.kernel): no static jit
        return _dual.__wrapped__(fn, q1, q2, c, nodes=nodes, need_dot=need_dot, kink=kink)
    return _dual(fn, q1, q2, c, nodes=nodes, need_dot=need_dot, kink=kink)


@functools.partial(jax.jit, static_argnames=("fn", "nodes", "need_dot", "kink"))
def _dual(fn, q1, q2, c, *, nodes, need_dot: bool, kink: bool):
    q1, q2, c = jnp.broadcast_arrays(q1, q2, c)
    dtype = c.dtype
    _, ko, ki = _counts(nodes, kink)
    qa, qb = jnp.maximum(q1, q2), jnp.minimum(q1, q2)  # larger variance outer: symmetric bit for bit
    sa, sb = safe_sqrt(qa), safe_sqrt(qb)
    # divisions are guarded so that gradients stay finite (no inf * 0) at q = 0, c = 0 and rho = +-1
    norm = safe_sqrt(qa * qb)
    rho = jnp.clip(jnp.where(norm > 0, c / jnp.where(norm > 0, norm, 1.0), 0.0), -1.0, 1.0)
    sig = sb * safe_sqrt(1.0 - rho * rho)
    srho = sb * jnp.abs(rho)
    # width in z of the inner integral as a function of z: the smoothed phi (smooth rule) or
    # the smoothed kink of phi' (kink rule)
    inner_w = jnp.maximum(jnp.minimum(1.0, sig), _BETA_MIN) if kink else jnp.maximum(1.0, sig)
    beta_o = jnp.minimum(_beta(sa, dtype), inner_w / jnp.maximum(srho, inner_w))
    dfn = derivative(fn) if need_dot else None
    beta_i = _beta(sig, dtype)
    sb_rho, sig_floor = sb * rho, jnp.maximum(sig, jnp.finfo(dtype).eps)
    if kink:
        inner_grid = _half_inner(beta_i, ki // 2)
    else:
        inner_grid = _graded_inner(beta_i, ki)

    def inner_sums(z):
        m = sb_rho * z
        ystar = -m / sig_floor  # the inner grid is centred where v = 0
        if kink:
            y, w = _half_inner_nodes(ystar, inner_grid)
        else:
            y, w = _graded_inner_nodes(ystar, inner_grid)
        v = m[..., None] + sig[..., None] * y
        t = jnp.sum(w * fn(v), axis=-1)
        return t, (jnp.sum(w * dfn(v), axis=-1) if need_dot else None)

    if kink:
        half = ko // 2
        grids = [_half(jnp.zeros_like(c), beta_o, s, half) for s in (1.0, -1.0)]
        signs = jnp.asarray(np.repeat([1.0, -1.0], half), dtype)
        idx = jnp.asarray(np.tile(np.arange(half), 2), dtype)

        def node(sj):
            s, j = sj
            h = jnp.where(s > 0, grids[0][1], grids[1][1])
            return _half_node(jnp.zeros_like(c), beta_o, s, h, j)
        xs = (signs, idx)
    else:
        ys0, lo, h = _graded(jnp.zeros_like(c), beta_o, ko)

        def node(j):
            return _graded_node(ys0, beta_o, lo, h, j)
        xs = jnp.arange(ko, dtype=dtype)

    def step(acc, x):
        z, wz = node(x)
        u = sa * z
        t, td = inner_sums(z)
        acc_t = acc[0] + wz * fn(u) * t
        acc_d = acc[1] + wz * dfn(u) * td if need_dot else acc[1]
        return (acc_t, acc_d), None

    zero = jnp.zeros_like(c)
    (t, td), _ = jax.lax.scan(step, (zero, zero), xs)
    return t, (td if need_dot else None)


def dual_diag(fn, q, *, nodes=None, need_dot: bool, kink: bool = False):
    """``(E fn(u)^2, E fn'(u)^2)`` for ``u ~ N(0, q)`` by the 1-D rule (split at 0 when ``kink``)."""
    y, w = _rule(jnp.zeros_like(q), _beta(safe_sqrt(q), q.dtype), _counts(nodes, kink)[0], kink)
    u = safe_sqrt(q)[..., None] * y
    t = jnp.sum(w * fn(u) ** 2, axis=-1)
    if not need_dot:
        return t, None
    return t, jnp.sum(w * derivative(fn)(u) ** 2, axis=-1)


def mean(fn, q, *, nodes=None, kink: bool = False):
    """``E fn(u)`` for ``u ~ N(0, q)`` by the 1-D rule (split at 0 when ``kink``)."""
    y, w = _rule(jnp.zeros_like(q), _beta(safe_sqrt(q), q.dtype), _counts(nodes, kink)[0], kink)
    return jnp.sum(w * fn(safe_sqrt(q)[..., None] * y), axis=-1)


# Names of the former polar rule, kept: the split rule replaces it.
def dual_polar(fn, q1, q2, c, *, nodes=None, need_dot: bool):
    """:func:`dual` with ``kink=True`` (functions smooth except at 0)."""
    return dual(fn, q1, q2, c, nodes=nodes, need_dot=need_dot, kink=True)


def dual_diag_half(fn, q, *, nodes=None, need_dot: bool):
    """:func:`dual_diag` with ``kink=True``."""
    return dual_diag(fn, q, nodes=nodes, need_dot=need_dot, kink=True)


def mean_half(fn, q, *, nodes=None):
    """:func:`mean` with ``kink=True``."""
    return mean(fn, q, nodes=nodes, kink=True)
