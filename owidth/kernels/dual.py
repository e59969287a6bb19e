"""Dual (arc-cosine type) kernels of elementwise activations, in closed form.

For a centred bivariate Gaussian ``(u, v)`` with ``E[u^2] = q1``, ``E[v^2] = q2``
and ``E[uv] = c`` every function here returns the pair

    T(q1, q2, c)    = E[phi(u) phi(v)]      (NNGP map)
    Tdot(q1, q2, c) = E[phi'(u) phi'(v)]    (NTK map)

evaluated elementwise (broadcasting ``q1``, ``q2`` against ``c``). ``Tdot`` is
``None`` when the caller does not need it.

Numerics. All correlations are clipped to [-1, 1]; square roots and the
inverse trigonometric functions go through the safe primitives below, whose
derivatives stay finite on the diagonal (rho = 1), so that deep float32 kernels
never produce NaN and input gradients of the kernel are finite. Where a
composed function has a finite derivative although its parts do not (the
arc-cosine kernel at rho = +-1), the derivative is given in closed form.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "fast_arcsin", "safe_sqrt", "safe_arcsin", "safe_arccos", "identity", "leaky_relu", "leaky_relu_diag",
    "leaky_relu_mean", "erf", "gelu", "sin", "identical", "at_identical", "straight_through",
    "exp", "gaussian", "rbf", "gabor", "sign", "exp_normalized", "polynomial", "polynomial_mean",
    "hermite_coefficients", "horner", "rectified_monomial", "rectified_monomial_mean",
]

_PI = math.pi


# --------------------------------------------------------------------------- #
# arcsin by polynomial
# --------------------------------------------------------------------------- #
def _asin_series_ratio(z: np.ndarray) -> np.ndarray:
    """``R(z) = (asin(x) - x) / x^3`` at ``z = x^2``, by its Taylor series (z <= 1/4).

    ``asin x = sum_n binom(2n, n) / (4^n (2n + 1)) x^(2n+1)`` (Abramowitz &
    Stegun 4.4.40); all terms are positive, so the float64 sum has no
    cancellation, and 80 terms leave a remainder below 4^-80.
    """
    out, term = np.zeros_like(z), np.ones_like(z)
    coef = 1.0
    for n in range(1, 80):
        coef *= (2 * n - 1) / (2 * n)  # binom(2n, n) / 4^n
        out += coef / (2 * n + 1) * term
        term = term * z
    return out


def _asin_chebyshev(degree: int) -> tuple[float, ...]:
    """Coefficients of ``R`` in powers of z (z in [0, 1/4]), from its Chebyshev interpolant.

    The interpolant (variable t = 8 z - 1) is near-minimax; rewritten in powers of z it is
    evaluated by Horner's rule, one multiply-add per degree (Clenshaw's recurrence needs three
    operations). Measured against mpmath (40 digits) on z in [1e-6, 1/4]: R to 3.7e-15 relative
    (float64, degree 14; Clenshaw 3.8e-15) and 7e-8 (float32, degree 6)."""
    c = np.polynomial.chebyshev.chebinterpolate(lambda t: _asin_series_ratio((t + 1.0) / 8.0), degree)
    poly = np.polynomial.Polynomial(np.polynomial.chebyshev.cheb2poly(c))
    return tuple(float(v) for v in poly(np.polynomial.Polynomial([-1.0, 8.0])).coef)


# R is analytic with its nearest singularity at z = 1, so the Chebyshev
# coefficients on [0, 1/4] fall like (7 + sqrt 48)^-k ~ 14^-k: degree 14
# reaches float64 rounding, degree 6 float32 (checked in tests/test_kernel.py).
_ASIN_CHEB = {np.dtype(np.float64): _asin_chebyshev(14), np.dtype(np.float32): _asin_chebyshev(6)}


def fast_arcsin(x: jax.Array) -> jax.Array:
    """``arcsin(x)`` for ``x`` in [-1, 1], to within a few ulp, from mul/add/sqrt only.

    XLA lowers ``asin`` through ``atan2``, which on CPU is a scalar library
    call per element (about 7 ns each, ~50x a multiply-add: profiled in
    ``benchmarks/kernels.py``'s workloads, where it took ~75% of a depth-4
    ReLU NTK). Here, as in classic libm designs (Cody & Waite 1980):

        |x| <= 1/2:  asin x = x + x z R(z),                     z = x^2
        |x| >  1/2:  asin x = sign(x) (pi/2 - 2 asin s),        s = sqrt((1 - |x|) / 2)

    (``cos(pi/2 - 2 asin s) = 1 - 2 s^2 = |x|``; ``1 - |x|`` is exact there
    by Sterbenz's lemma), with ``R`` a Chebyshev interpolant on z in [0, 1/4]
    evaluated by Horner's rule in z. Primal only: callers give derivatives.
    """
    dtype = jnp.result_type(x)
    coeffs = _ASIN_CHEB.get(np.dtype(dtype), _ASIN_CHEB[np.dtype(np.float64)])
    a = jnp.abs(x)
    big = a > 0.5
    z = jnp.where(big, 0.5 * (1.0 - a), a * a)
    s = jnp.where(big, jnp.sqrt(z), a)
    r = jnp.full_like(z, coeffs[-1])
    for c in coeffs[-2::-1]:  # Horner: one fused multiply-add per degree
        r = r * z + c
    p = s + s * z * r
    return jnp.sign(x) * jnp.where(big, 0.5 * _PI - 2.0 * p, p)


def _tiny(x: jax.Array) -> float:
    return float(jnp.finfo(jnp.result_type(x)).tiny)


# --------------------------------------------------------------------------- #
# Safe primitives
# --------------------------------------------------------------------------- #
@jax.custom_jvp
def safe_sqrt(x: jax.Array) -> jax.Array:
    """``sqrt(max(x, 0))`` whose derivative is 0 (not inf/NaN) at ``x <= 0``."""
    return jnp.sqrt(jnp.maximum(x, 0.0))


@safe_sqrt.defjvp
def _safe_sqrt_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    y = safe_sqrt(x)
    pos = x > 0
    dy = jnp.where(pos, 0.5 / jnp.where(pos, y, 1.0), 0.0)
    return y, dy * t


def _clip_corr(rho: jax.Array) -> jax.Array:
    return jnp.clip(rho, -1.0, 1.0)


@jax.custom_jvp
def safe_arcsin(rho: jax.Array) -> jax.Array:
    """``arcsin`` of ``rho`` clipped to [-1, 1]; derivative finite at +-1.

    At |rho| = 1 the true derivative is infinite; we cap it at its value at
    ``1 - rho^2 = eps`` (machine epsilon), so a gradient that multiplies it by
    a zero cotangent is exactly zero rather than NaN. Kernel diagonals, where
    rho = 1 identically, are computed without a correlation at all (see
    ``leaky_relu_diag``).
    """
    return fast_arcsin(_clip_corr(rho))


@safe_arcsin.defjvp
def _safe_arcsin_jvp(primals, tangents):
    (rho,), (t,) = primals, tangents
    r = _clip_corr(rho)
    d = 1.0 / jnp.sqrt(jnp.maximum(1.0 - r * r, float(jnp.finfo(jnp.result_type(r)).eps)))
    d = jnp.where(jnp.abs(rho) <= 1.0, d, 0.0)
    return fast_arcsin(r), d * t


def safe_arccos(rho: jax.Array) -> jax.Array:
    """``arccos`` of ``rho`` clipped to [-1, 1] (= pi/2 - safe_arcsin)."""
    return 0.5 * _PI - safe_arcsin(rho)


@jax.custom_jvp
def _j_abs(rho: jax.Array):
    """``(J(rho), asin(rho))`` with J(rho) = sqrt(1 - rho^2) + rho asin(rho).

    ``E|u||v| = (2/pi) sqrt(q1 q2) J(rho)`` for correlation ``rho`` (Cho &
    Saul 2009, degree 1) and ``E[sign u sign v] = (2/pi) asin(rho)``. Both
    come from one ``asin``. ``J'(rho) = asin(rho)`` is finite on [-1, 1]
    although sqrt and asin separately are not, so it is given in closed form;
    ``asin'`` is capped as in :func:`safe_arcsin`.
    """
    r = _clip_corr(rho)
    a = fast_arcsin(r)
    # (1 - |r|)(1 + |r|): 1 - |r| is exact for |r| >= 1/2 (Sterbenz), unlike 1 - r^2 near |r| = 1
    ar = jnp.abs(r)
    return jnp.sqrt(jnp.maximum((1.0 - ar) * (1.0 + ar), 0.0)) + r * a, a


@_j_abs.defjvp
def _j_abs_jvp(primals, tangents):
    (rho,), (t,) = primals, tangents
    j, a = _j_abs(rho)
    r = _clip_corr(rho)
    inside = jnp.abs(rho) <= 1.0
    da = jnp.where(inside, 1.0 / jnp.sqrt(jnp.maximum(1.0 - r * r, float(jnp.finfo(jnp.result_type(r)).eps))), 0.0)
    return (j, a), (jnp.where(inside, a, 0.0) * t, da * t)


def _corr(q1, q2, c):
    """Correlation rho = c / sqrt(q1 q2), safe when a variance is zero."""
    s = safe_sqrt(q1 * q2)
    tiny = _tiny(s)
    return s, c / jnp.maximum(s, tiny)


def _corr_auto(q1, q2, c):
    """:func:`_corr_factored` for kernels with pixel axes (``c.ndim > 2``), else :func:`_corr`."""
    return _corr_factored(q1, q2, c) if jnp.ndim(c) > 2 else _corr(q1, q2, c)


def _corr_factored(q1, q2, c):
    """``(sqrt(q1 q2), c / sqrt(q1 q2))`` from per-input factors ``sqrt(q)`` and ``1 / sqrt(q)``.

    ``q1``/``q2`` are per-input (per-pixel) variances broadcast against ``c``; taking their
    square roots and reciprocals before the broadcast leaves two multiplications per kernel
    entry instead of a square root and a division (the kernel has ``|S|^2`` entries per input
    pair in pooled CNNs, the variances ``|S|``). A zero variance gives rho = 0 (its covariances
    vanish too). Symmetric in (1, 2) bit for bit: ``(r1 r2)`` and ``s1 s2`` are single products.
    """
    s1, s2 = safe_sqrt(q1), safe_sqrt(q2)

    def inv(v):
        pos = v > 0
        return jnp.where(pos, 1.0 / jnp.where(pos, v, 1.0), 0.0)

    return s1 * s2, c * (inv(s1) * inv(s2))


# --------------------------------------------------------------------------- #
# Closed forms
# --------------------------------------------------------------------------- #
def identity(q1, q2, c, *, need_dot: bool = True):
    """phi(x) = x:  T = c,  Tdot = 1."""
    del q1, q2
    return c, (jnp.ones_like(c) if need_dot else None)


def leaky_relu(q1, q2, c, *, a: float, need_dot: bool = True):
    """phi(x) = max(x, a x) = p x + m |x| with p = (1+a)/2, m = (1-a)/2.

    Odd/even cross terms vanish, so with rho = c / sqrt(q1 q2)

        T    = p^2 c + m^2 (2/pi) sqrt(q1 q2) J(rho),  J = sqrt(1-rho^2) + rho asin(rho)
        Tdot = p^2   + m^2 (2/pi) asin(rho)

    a = 0 is ReLU, the degree-1 arc-cosine kernel of Cho & Saul (2009):
    T = sqrt(q1 q2) (sin t + (pi - t) cos t) / (2 pi), Tdot = (pi - t) / (2 pi),
    t = arccos(rho). a = -1 is |x|.
    """
    p, m = 0.5 * (1.0 + a), 0.5 * (1.0 - a)
    # Kernels with pixel axes (c.ndim > 2: |S| or |S|^2 entries per input pair against |S|
    # variances) take the factored correlation; MLP kernels keep c / sqrt(q1 q2), whose sqrt and
    # division XLA stores, which cuts the layer-to-layer chain of cheap ops (see below): factored,
    # a depth-4 ReLU MLP at N = 2048 took 2x longer (0.31 vs 0.16 s, float64).
    s, rho = _corr_auto(q1, q2, c)
    # At rho = 1 (identical inputs, up to rounding) use the exact diagonal values, bit for bit
    # equal to ``leaky_relu_diag``: near rho = 1, Tdot has a sqrt singularity
    # and a one-ulp mismatch between a duplicated point's cross entry and its
    # diagonal would grow by ~sqrt(ulp) per layer.
    # "Identical" means within rounding: 1 - rho < 4 eps (the division and
    # square root may be off by an ulp or two on some backends).
    one, neg = _near_unit(rho)
    j, asin = _j_abs(rho)
    # T is written in s and rho only, never in c itself (c = s rho up to an ulp; kernel
    # diagonals are set from ``leaky_relu_diag`` by the callers, and a duplicated input's cross
    # entry, s = sqrt(q) sqrt(q) within an ulp of q, keeps the next layer's rho within 4 eps of 1).
    # A term linear in c would make each layer's kernel a chain of cheap
    # elementwise ops (mul/add/select) back to the previous layer's, which XLA
    # duplicates into every consumer (rho, the diagonal, the NTK), so that the
    # fused computations grow with depth and compile time goes superlinear.
    # s and rho come out of sqrt/divide, which XLA materialises.
    # likewise at rho = -1 (u = -v: an input and its negative), where Tdot has the same singularity
    # and the factored correlation lands an ulp or two inside [-1, 1] (``neg`` above)
    t = jnp.where(one, (p * p + m * m) * s,
                  jnp.where(neg, (m * m - p * p) * s, s * (p * p * rho + m * m * (2.0 / _PI) * j)))
    if not need_dot:
        return t, None
    return t, jnp.where(one, p * p + m * m, jnp.where(neg, p * p - m * m, p * p + m * m * (2.0 / _PI) * asin))


def leaky_relu_diag(q, *, a: float, need_dot: bool = True):
    """``leaky_relu`` at rho = 1 (u = v): ``E phi^2 = (p^2 + m^2) q``, ``E phi'^2 = p^2 + m^2``.

    Used on kernel diagonals so that their derivative never passes through the
    singular ``d asin(rho) / d rho`` at rho = 1.
    """
    p, m = 0.5 * (1.0 + a), 0.5 * (1.0 - a)
    t = (p * p + m * m) * q
    return t, (jnp.full_like(q, p * p + m * m) if need_dot else None)


def leaky_relu_mean(q, *, a: float):
    """``E max(u, a u) = m E|u| = m sqrt(2 q / pi)`` for ``u ~ N(0, q)``, ``m = (1 - a)/2``."""
    return 0.5 * (1.0 - a) * safe_sqrt(2.0 * q / _PI)


def erf(q1, q2, c, *, a: float = 1.0, b: float = 1.0, shift: float = 0.0, need_dot: bool = True):
    """phi(x) = a erf(b x) + shift (Williams 1997).

    With ``Q = b^2 q``, ``C = b^2 c`` and ``n = 1 + 2 Q``:

        T    = a^2 (2/pi) asin(r) + shift^2,   r = 2 C / sqrt(n1 n2)
        Tdot = a^2 b^2 (4/pi) / sqrt(det),     det = det(I + 2 Sigma) = n1 n2 - 4 C^2 >= 1

    Written in ``s = sqrt(Q1 Q2)`` and the correlation ``rho = C / s`` (no ``C^2`` cancels against
    ``Q1 Q2``: in float32 at ``|x| ~ 1e6`` that cancellation cost up to 36% of the NTK):
    ``det = 1 + 2 (Q1 + Q2) + 4 s^2 (1 - rho)(1 + rho)``, and near ``|r| = 1`` the arcsine is taken
    of the complement, ``asin|r| = pi/2 - 2 asin(sqrt((1 - |r|) / 2))`` with
    ``1 - |r| = det / (g (g + 2 s |rho|))``, ``g = sqrt(n1 n2)``, exact to a few ulps. ``det >= 1``
    keeps every derivative finite. At ``rho = 1`` (identical inputs, up to rounding) the values are
    those of the diagonal bit for bit, as in :func:`leaky_relu`.
    """
    b2 = b * b
    q1, q2 = b2 * q1, b2 * q2
    s, rho = _unit_corr(q1, q2, b2 * c)
    ar = jnp.abs(rho)
    g = safe_sqrt(1.0 + 2.0 * q1) * safe_sqrt(1.0 + 2.0 * q2)
    det = 1.0 + 2.0 * (q1 + q2) + 4.0 * (s * s) * ((1.0 - ar) * (1.0 + ar))
    r = 2.0 * s * rho / g
    t = a * a * (2.0 / _PI) * _arcsin_of(r, det / (g * (g + 2.0 * s * ar)), rho) + shift * shift
    if not need_dot:
        return t, None
    return t, a * a * b2 * (4.0 / _PI) / jnp.sqrt(det)


def _arcsin_of(r: jax.Array, comp: jax.Array, sign: jax.Array) -> jax.Array:
    """``asin(r)`` given also ``comp = 1 - |r|`` computed without cancellation (and ``sign``, of the sign
    of ``r``): ``asin|r| = pi/2 - 2 asin(sqrt((1 - |r|) / 2))`` for ``|r| > 1/2``, so that ``r`` within
    rounding of +-1 (large variances) loses nothing. Derivatives finite where ``comp > 0``."""
    near = jnp.abs(r) > 0.5
    far = 0.5 * _PI - 2.0 * safe_arcsin(jnp.sqrt(0.5 * jnp.minimum(comp, 0.5)))
    return jnp.where(near, jnp.where(sign > 0, far, -far), safe_arcsin(jnp.where(near, 0.0, r)))


def _unit_corr(q1, q2, c) -> tuple[jax.Array, jax.Array]:
    """``(s, rho)``: ``s = sqrt(q1 q2)`` and the correlation ``rho = c / s`` snapped to +-1 within 4 eps
    (:func:`_snap_unit`), factored for kernels with pixel axes (``c.ndim > 2``)."""
    s, rho = _corr_auto(q1, q2, c)
    return s, _snap_unit(rho)


def _snap_unit(rho: jax.Array) -> jax.Array:
    """``rho`` clipped to [-1, 1], and set to exactly +-1 within 4 eps of it (identical inputs, or an
    input and its negative, up to the rounding of the correlation's division and square root). The
    gradient passes straight through."""
    one, neg = _near_unit(rho)
    snapped = jnp.where(one, 1.0, jnp.where(neg, -1.0, jnp.clip(rho, -1.0, 1.0)))
    return straight_through(snapped, rho)


def _near_unit(rho: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Where a correlation is +1 or -1 up to rounding: ``(rho >= 1 - 4 eps, rho <= -1 + 4 eps)``, eps the
    machine epsilon of ``rho``'s dtype (the division and square root of the correlation may be off by an
    ulp or two on some backends). The one tolerance of every "identical inputs" rule in this module."""
    eps = 4.0 * float(jnp.finfo(jnp.result_type(rho)).eps)
    return rho >= 1.0 - eps, rho <= -1.0 + eps


def straight_through(value: jax.Array, grad_of: jax.Array) -> jax.Array:
    """``value`` bit for bit, with the derivative of ``grad_of``."""
    return jax.lax.stop_gradient(value) + (grad_of - jax.lax.stop_gradient(grad_of))


def identical(q1, q2, c) -> jax.Array:
    """Where two Gaussians are the same one up to rounding: correlation ``c / sqrt(q1 q2) >= 1 - 4 eps``
    (the tolerance of :func:`leaky_relu`), with both variances positive."""
    _, rho = _corr_auto(q1, q2, c)
    return _near_unit(rho)[0] & (q1 > 0) & (q2 > 0)


def at_identical(q1, q2, c, t, tdot, diag1, diag2):
    """``(t, tdot)`` of a dual kernel with the entries of identical inputs (:func:`identical`) set to the
    diagonal values ``sqrt(D1 D2)`` (``diag1 = (D1, Ddot1)`` the values at ``(q1, q1, q1)``, broadcast
    like ``q1``; the derivatives are those of ``t``).

    Needed wherever correlation 1 is an unstable fixed point of the layer map (``chi = w^2 E phi'^2 > 1``:
    the chaotic phase of tanh/erf networks, Poole et al. 2016) or a marginal one (the relu family, where
    ``Tdot`` has a square-root singularity at rho = 1): a one-ulp mismatch between a duplicated input's
    cross entry and its diagonal, or between the rule's value at rho = 1 and the diagonal's 1-D rule,
    otherwise grows layer by layer (in float32 at depth 50, two identical inputs of a deep erf net came
    out with correlation 0.25). With it they stay exactly correlated at every depth.
    """
    one = identical(q1, q2, c)
    t = jnp.where(one, straight_through(_geometric_mean(diag1[0], diag2[0]), t), t)
    if tdot is not None:
        tdot = jnp.where(one, straight_through(_geometric_mean(diag1[1], diag2[1]), tdot), tdot)
    return t, tdot


def _geometric_mean(a, b):
    """``sqrt(a b)`` without overflow, and exactly ``a`` where ``a == b``."""
    return jnp.where(a == b, a, safe_sqrt(a) * safe_sqrt(b))


def gelu(q1, q2, c, *, need_dot: bool = True):
    """phi(x) = x Phi(x) (exact GELU, Hendrycks & Gimpel 2016).

    Derived with Stein's lemma (E[u h(u,v)] = q1 E[d_u h] + c E[d_v h]) and the
    orthant probability of (u - a, v - b), a, b ~ N(0, 1) (as in Tsuchida et
    al. 2021). With D = (1+q1)(1+q2) - c^2 and r = c / sqrt((1+q1)(1+q2)):

        T    = c (1/4 + asin(r)/(2 pi))
               + [q1 q2 - c^2 + c^2 / (1+q1) + c^2 / (1+q2)] / (2 pi sqrt(D))
        Tdot = 1/4 + asin(r)/(2 pi) + c (2 + q1 + q2) / (2 pi (1+q1)(1+q2) sqrt(D))
               + c / (2 pi D^{3/2})

    At c = 0, T = E[u Phi(u)] E[v Phi(v)] = q1 q2 / (2 pi sqrt((1+q1)(1+q2))).

    Written in ``s = sqrt(q1 q2)`` and the correlation ``rho = c / s`` (snapped to +-1 within 4 eps,
    as in :func:`erf`): ``q1 q2 - c^2 = s^2 (1 - rho)(1 + rho)`` and
    ``1 - |r| = D / (g (g + s |rho|))``, ``g = sqrt((1+q1)(1+q2))``, so that nothing cancels at large
    variances (in float32, q ~ 1e14 after 50 layers at w_std = 2: ``q1 q2 - c^2`` computed directly
    lost every digit and the diagonal came out 33% low).
    """
    s, rho = _unit_corr(q1, q2, c)
    ar = jnp.abs(rho)
    s1, s2 = 1.0 + q1, 1.0 + q2
    g = safe_sqrt(s1) * safe_sqrt(s2)
    # c is used only as s * rho: a term linear in the raw c would let XLA duplicate each layer's
    # elementwise chain into every consumer of the next layer (see ``leaky_relu``); s and rho come out
    # of sqrt/divide, which XLA stores
    c = s * rho
    gap = (s * s) * ((1.0 - ar) * (1.0 + ar))  # q1 q2 - c^2 >= 0
    # (q1 + q2) grouped so that the result is symmetric in (1, 2) bit for bit
    det = 1.0 + (q1 + q2) + gap
    sqd = jnp.sqrt(det)
    orth = 0.25 + _arcsin_of(s * rho / g, det / (g * (g + s * ar)), rho) / (2.0 * _PI)
    # q1 (q2 s1 - c^2) / s1 + c^2 / s2 = q1 q2 - c^2 + c^2 (1/s1 + 1/s2): symmetric in (1, 2)
    t = c * orth + (gap + c * c * (1.0 / s1 + 1.0 / s2)) / (2.0 * _PI * sqd)
    if not need_dot:
        return t, None
    td = orth + c * (s1 + s2) / (2.0 * _PI * (s1 * s2) * sqd) + c / (2.0 * _PI * det * sqd)
    return t, td


def sin(q1, q2, c, *, a: float = 1.0, b: float = 1.0, shift: float = 0.0, need_dot: bool = True):
    """phi(x) = a sin(b x + shift).

    With E[cos(w)] = exp(-Var(w)/2) for a centred Gaussian w:

        T    = a^2/2 exp(-b^2 (q1+q2)/2) (exp(b^2 c) - exp(-b^2 c) cos(2 shift))
        Tdot = a^2 b^2/2 exp(-b^2 (q1+q2)/2) (exp(b^2 c) + exp(-b^2 c) cos(2 shift))
    """
    b2 = b * b
    half = -0.5 * b2 * (q1 + q2)
    ep = jnp.exp(half + b2 * c)
    em = jnp.exp(half - b2 * c) * jnp.cos(2.0 * shift)
    t = 0.5 * a * a * (ep - em)
    if not need_dot:
        return t, None
    return t, 0.5 * a * a * b2 * (ep + em)


# --------------------------------------------------------------------------- #
# The rest of neural-tangents' closed forms (Novak et al. 2020), derived here
# --------------------------------------------------------------------------- #
def exp(q1, q2, c, *, a: float = 1.0, b: float = 1.0, need_dot: bool = True):
    """phi(x) = a exp(b x). ``u + v`` is Gaussian with variance ``q1 + q2 + 2c``, so

        T    = a^2 E exp(b (u + v)) = a^2 exp(b^2 (q1 + q2 + 2 c) / 2),    Tdot = b^2 T
    """
    t = a * a * jnp.exp(0.5 * (b * b) * ((q1 + q2) + 2.0 * c))
    return t, (b * b * t if need_dot else None)


def gaussian(q1, q2, c, *, a: float = 1.0, b: float = -1.0, need_dot: bool = True):
    """phi(x) = a exp(b x^2) (neural-tangents' ``Gaussian``). For ``z = (u, v)`` with covariance ``S``,
    ``E exp(b z.z) = det(I - 2 b S)^(-1/2)`` where ``I - 2 b S`` is positive definite, so with
    ``det = (1 - 2 b q1)(1 - 2 b q2) - 4 b^2 c^2``:

        T    = a^2 det^(-1/2)
        Tdot = E[phi'(u) phi'(v)] = 4 a^2 b^2 E[u v exp(b z.z)] = 4 a^2 b^2 c det^(-3/2)

    (the covariance of the tilted Gaussian is ``S (I - 2 b S)^-1``, whose off-diagonal entry is
    ``c / det``). ``det`` is written ``1 - 2 b (q1 + q2) + 4 b^2 s^2 (1 - rho)(1 + rho)``: for ``b < 0``
    every term is >= 0 (nothing cancels). For ``b > 0`` the moments are infinite once
    ``2 b q >= 1``; those entries are ``inf``.
    """
    s, rho = _unit_corr(q1, q2, c)
    det = 1.0 - 2.0 * b * (q1 + q2) + 4.0 * (b * b) * (s * s) * ((1.0 - rho) * (1.0 + rho))
    finite = (1.0 - 2.0 * b * q1 > 0) & (1.0 - 2.0 * b * q2 > 0)
    r = jnp.where(finite, jax.lax.rsqrt(jnp.where(finite, det, 1.0)), jnp.inf)
    t = a * a * r
    if not need_dot:
        return t, None
    return t, 4.0 * (a * a) * (b * b) * (s * rho) * r * r * r


def rbf(q1, q2, c, *, gamma: float = 1.0, need_dot: bool = True):
    """phi(x) = sqrt(2) sin(sqrt(2 gamma) x + pi/4) (neural-tangents' ``Rbf``): the NNGP is the RBF
    kernel of the pre-activations, ``E (u - v)^2 = q1 + q2 - 2 c``,

        T = exp(-gamma (q1 + q2 - 2 c)),    Tdot = 2 gamma T

    (:func:`sin` with ``a = sqrt 2``, ``b = sqrt(2 gamma)``, shift ``pi/4``, whose second term vanishes).
    ``q1 + q2 - 2 c`` is written ``(sqrt q1 - sqrt q2)^2 + 2 s (1 - rho)``, both >= 0, so that close
    inputs keep their distance in float32."""
    s, rho = _unit_corr(q1, q2, c)
    dist = jnp.square(safe_sqrt(q1) - safe_sqrt(q2)) + 2.0 * s * (1.0 - rho)
    t = jnp.exp(-gamma * dist)
    return t, (2.0 * gamma * t if need_dot else None)


def gabor(q1, q2, c, *, need_dot: bool = True):
    """phi(x) = exp(-x^2) sin(x) (neural-tangents' ``Gabor``).

    ``sin u sin v = (cos(u - v) - cos(u + v)) / 2`` and, for ``z = (u, v)`` with covariance ``S`` and
    ``D = det(I + 2 S)``, ``E[exp(-z.z) cos(a.z)] = D^(-1/2) exp(-a.M a / 2)`` with
    ``M = S (I + 2 S)^-1 = [[q1 + 2 g, c], [c, q2 + 2 g]] / D``, ``g = q1 q2 - c^2``. With
    ``N = q1 + q2 + 4 g`` and ``D = 1 + 2 (q1 + q2) + 4 g``:

        T    = D^(-1/2) exp(-N / (2 D)) sinh(c / D)
        Tdot = dT/dc (Price's theorem)
             = D^(-1/2) exp(-N / (2 D)) [4 c (1 + q1 + q2 + D) sinh(c / D) + (D + 8 c^2) cosh(c / D)] / D^2

    (``dD/dc = dN/dc = -8 c`` and ``D - N = 1 + q1 + q2``). ``g = s^2 (1 - rho)(1 + rho) >= 0``."""
    s, rho = _unit_corr(q1, q2, c)
    c = s * rho
    g = (s * s) * ((1.0 - rho) * (1.0 + rho))
    d = 1.0 + 2.0 * (q1 + q2) + 4.0 * g
    pre = jax.lax.rsqrt(d) * jnp.exp(-0.5 * ((q1 + q2) + 4.0 * g) / d)
    t = pre * jnp.sinh(c / d)
    if not need_dot:
        return t, None
    dot = pre * (4.0 * c * (1.0 + (q1 + q2) + d) * jnp.sinh(c / d) + (d + 8.0 * c * c) * jnp.cosh(c / d)) / (d * d)
    return t, dot


def sign(q1, q2, c, *, need_dot: bool = True):
    """phi(x) = sign(x): ``T = (2/pi) asin(rho)`` (the orthant probabilities of (u, v)), ``0`` where a
    variance is 0 (``sign(0) = 0``). ``Tdot = 0``: the derivative vanishes almost everywhere, as in
    the finite network, whose gradients through ``sign`` are 0 (and as in neural-tangents)."""
    _, rho = _unit_corr(q1, q2, c)
    t = jnp.where((q1 > 0) & (q2 > 0), (2.0 / _PI) * safe_arcsin(rho), 0.0)
    return t, (jnp.zeros_like(t) if need_dot else None)


def exp_normalized(q1, q2, c, *, gamma: float = 1.0, shift: float = -1.0, need_dot: bool = True):
    """The "Gaussian normalised kernel" of Shankar et al. 2020 (neural-tangents' ``ExpNormalized``), a
    kernel map with no finite-network counterpart:

        T = s exp(gamma (rho + shift)),    Tdot = dT/dc = gamma exp(gamma (rho + shift)),

    ``s = sqrt(q1 q2)``, ``rho = c / s`` (clipped to [-1, 1])."""
    s, rho = _unit_corr(q1, q2, c)
    e = jnp.exp(gamma * (rho + shift))
    return s * e, (gamma * e if need_dot else None)


def hermite_coefficients(coef: tuple[float, ...]) -> tuple[tuple[float, ...], ...]:
    """For ``p(x) = sum_j coef[j] x^j``: the polynomials ``P_m(q) = sum_k coef[m + 2k] h(m + 2k, m) q^k``
    (coefficients lowest first), ``h(j, m) = j! / (m! 2^k k!)`` with ``j = m + 2k``, such that for
    ``u = sqrt(q) z``, ``z ~ N(0, 1)``,

        p(u) = sum_m q^(m/2) P_m(q) He_m(z)

    (``z^j = sum_m h(j, m) He_m(z)``, the probabilists' Hermite expansion of a monomial)."""
    out = []
    for m in range(len(coef)):
        out.append(tuple(coef[m + 2 * k] * math.factorial(m + 2 * k) / (math.factorial(m) * 2**k * math.factorial(k))
                         for k in range((len(coef) - 1 - m) // 2 + 1)))
    return tuple(out)


def horner(coef, x):
    """``sum_k coef[k] x^k`` by Horner's rule (``coef`` lowest first, Python floats)."""
    out = jnp.zeros_like(x) + coef[-1]
    for v in coef[-2::-1]:
        out = out * x + v
    return out


def _hermite_form(q1, q2, c, coef):
    """``E[p(u) p(v)] = sum_m m! c^m P_m(q1) P_m(q2)`` (:func:`hermite_coefficients`;
    ``E[He_m(z1) He_n(z2)] = m! rho^m delta_mn`` and ``(q1 q2)^(m/2) rho^m = c^m``)."""
    shape = jnp.broadcast_shapes(jnp.shape(q1), jnp.shape(q2), jnp.shape(c))
    out = jnp.zeros(shape, jnp.result_type(q1, q2, c))
    for m, pm in reversed(list(enumerate(hermite_coefficients(coef)))):  # Horner in c
        out = out * c + math.factorial(m) * horner(pm, q1) * horner(pm, q2)
    return out


def polynomial(q1, q2, c, *, coef: tuple[float, ...], need_dot: bool = True):
    """phi(x) = sum_j coef[j] x^j, exactly, at any variances (Hermite expansion):

        T    = sum_m m! c^m P_m(q1) P_m(q2)             (see :func:`hermite_coefficients`)
        Tdot = the same for phi'(x) = sum_j (j + 1) coef[j + 1] x^j

    a polynomial in ``(q1, q2, c)``: no square root, no division. (neural-tangents' ``Polynomial`` and
    ``Monomial`` (degree <= 5), and its ``Hermite``, which is exact only at unit variance.)"""
    t = _hermite_form(q1, q2, c, coef)
    if not need_dot:
        return t, None
    return t, _hermite_form(q1, q2, c, tuple((j + 1) * coef[j + 1] for j in range(len(coef) - 1)))


def polynomial_mean(q, *, coef: tuple[float, ...]):
    """``E p(u) = P_0(q) = sum_k coef[2k] (2k - 1)!! q^k``."""
    return horner(hermite_coefficients(coef)[0], q) if coef else jnp.zeros_like(q)


def _arc_cosine_terms(n: int) -> tuple[tuple[int, int, int, int], ...]:
    """``J_n(theta) = (-1)^n sin^(2n+1) (1/sin d/dtheta)^n ((pi - theta) / sin)`` (Cho & Saul 2009, eq. 4)
    as a sum of terms ``coef (pi - theta)^e cos^i sin^j``: tuples ``(coef, e, i, j)`` with integer
    coefficients and ``j >= 0``, found by applying the operator symbolically to the term list (at trace
    time; n steps over at most ~n^2 terms)."""
    terms = {(1, 0, -1): 1}  # (pi - theta)^1 cos^0 sin^-1
    for _ in range(n):
        new: dict[tuple[int, int, int], int] = {}
        for (e, i, j), k in terms.items():
            # d/dtheta of (pi - theta)^e cos^i sin^j, then divided by sin
            for key, v in (((e - 1, i, j - 1), -e * k), ((e, i - 1, j), -i * k), ((e, i + 1, j - 2), j * k)):
                if v:
                    new[key] = new.get(key, 0) + v
        terms = {key: v for key, v in new.items() if v}
    sign = -1 if n % 2 else 1
    out = tuple((sign * k, e, i, j + 2 * n + 1) for (e, i, j), k in sorted(terms.items()))
    if any(j < 0 for *_, j in out):  # the operator's identity: every negative power cancels
        raise AssertionError(f"arc-cosine J_{n}: negative power of sin left: {out}")
    return out


def _arc_cosine_j(n: int, rho):
    """``J_n(theta)`` at ``cos theta = rho`` (``sin theta = sqrt((1 - rho)(1 + rho))``)."""
    sin = safe_sqrt((1.0 - rho) * (1.0 + rho))
    pi_minus = _PI - safe_arccos(rho)
    out = 0.0
    for k, e, i, j in _arc_cosine_terms(n):
        out = out + k * pi_minus**e * rho**i * sin**j
    return out


def rectified_monomial(q1, q2, c, *, degree: int, need_dot: bool = True):
    """phi(x) = max(x, 0)^degree: the arc-cosine kernel of degree n (Cho & Saul 2009),

        T    = (q1 q2)^(n/2) J_n(theta) / (2 pi),                 cos theta = rho
        Tdot = n^2 (q1 q2)^((n-1)/2) J_(n-1)(theta) / (2 pi)      (phi' = n max(x, 0)^(n-1); 0 for n = 0)

    with ``J_n`` in closed form (:func:`_arc_cosine_terms`: ``J_0 = pi - theta``,
    ``J_1 = sin + (pi - theta) cos``, ``J_2 = 3 sin cos + (pi - theta)(1 + 2 cos^2)``, ...), evaluated
    in ``rho`` and ``sin theta = sqrt((1 - rho)(1 + rho))``: no derivative of the angle is taken, so
    the kernel is finite at rho = +-1 in float32 (neural-tangents differentiates ``(pi - theta)/sin``
    n times by autodiff). ``degree = 0`` is the step function ``x >= 0`` (Tdot 0, as its derivative
    vanishes almost everywhere; the finite network's gradients through it are 0)."""
    s, rho = _unit_corr(q1, q2, c)
    t = s**degree * _arc_cosine_j(degree, rho) / (2.0 * _PI)
    if not need_dot:
        return t, None
    if degree == 0:
        return t, jnp.zeros_like(t)
    return t, degree**2 * s ** (degree - 1) * _arc_cosine_j(degree - 1, rho) / (2.0 * _PI)


def rectified_monomial_mean(q, *, degree: int):
    """``E max(u, 0)^n = q^(n/2) 2^(n/2) Gamma((n + 1)/2) / (2 sqrt(pi))`` (half of ``E |u|^n``)."""
    return 2.0 ** (0.5 * degree) * math.gamma(0.5 * (degree + 1)) / (2.0 * math.sqrt(_PI)) * safe_sqrt(q) ** degree
