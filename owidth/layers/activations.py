"""Elementwise nonlinearities: closed-form dual kernels, quadrature for any other function, compositions.

Closed forms (:mod:`owidth.kernels.dual`): the relu family (``LeakyRelu``,
with ``Relu`` and ``Abs`` its fixed-slope cases), ``Erf``, ``Gelu``, ``Sin``,
``Identity``. Any other elementwise function, and two nonlinearities in a
row, by the graded trapezoid rule of :mod:`owidth.kernels.quadrature`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from owidth import _checks
from owidth.kernels import dual, quadrature
from owidth.kernels import spatial as sp
from owidth.kernels.state import KState, self_var
from owidth.layers._base import Caps, Layer

__all__ = ["Activation", "LeakyRelu", "Relu", "Abs", "Erf", "Gelu", "Sin", "Identity", "Quadrature", "ActivationFn",
           "Composed", "Tanh", "Sigmoid", "Silu", "Swish", "Softplus", "Cos", "Rbf", "Exp", "Gaussian", "Gabor",
           "Sign", "ExpNormalized", "Polynomial", "Monomial", "Hermite", "RectifiedMonomial", "Elementwise"]


class Activation(Layer):
    """Elementwise nonlinearity ``phi``.

    Kernel rule, with ``T``/``Tdot`` the dual kernels of ``phi`` evaluated on
    the incoming Gaussian covariances (Cho & Saul 2009; Jacot et al. 2018):

        nngp' = T(var1, var2, nngp)
        ntk'  = ntk * Tdot(var1, var2, nngp)

    Subclasses define ``fn`` (the finite function) and ``dual`` (the closed
    form). Applied directly to data (before any Dense layer) it transforms the
    data elementwise. Consecutive nonlinearities ``phi2(phi1(z))`` act on the
    last Gaussian layer as one function, whose dual kernels are computed by
    quadrature (:mod:`owidth.kernels.quadrature`).

    References:
      - Cho & Saul 2009, Kernel Methods for Deep Learning (NeurIPS 2009): the arc-cosine kernels.
      - Jacot, Gabriel & Hongler 2018, Neural Tangent Kernel: Convergence and Generalization in Neural Networks. <https://arxiv.org/abs/1806.07572>
      - Novak et al. 2020, Neural Tangents: Fast and Easy Infinite Neural Networks in Python. <https://arxiv.org/abs/1912.02803>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> print(np.asarray(ow.Relu().fn(np.array([-1.0, 2.0]))))   # the finite function
      [0. 2.]
      >>> k = ow.kernel(ow.serial(ow.Dense(), ow.Relu(), ow.Dense(out=1)), np.ones((1, 2)), get="nngp")
      >>> float(k.nngp[0, 0])                                       # E relu(u)^2 = q / 2, q = 1
      0.5
    """

    caps = Caps(elementwise=True, nonlinear=True, pixel_var=True)

    _smooth = True  # False for kinked functions (relu family): no Gauss-Hermite quadrature of their compositions
    _kink_at_zero_only = False  # True for the relu family: piecewise linear with the kink at 0
    _exact_at_identical = False  # True where ``dual`` itself returns the diagonal values at rho = 1
    _has_mean = True  # False where ``E phi(u)`` is unknown (kernel-only or user-supplied duals)

    def fn(self, x: jax.Array) -> jax.Array:
        raise NotImplementedError

    def dual(self, q1, q2, c, *, need_dot: bool):
        raise NotImplementedError

    def dual_diag(self, q, *, need_dot: bool):
        """``(E phi(u)^2, E phi'(u)^2)`` for ``u ~ N(0, q)`` (the kernel diagonal)."""
        return self.dual(q, q, q, need_dot=need_dot)

    def _dual_exact(self, q1, q2, c, diag1, diag2, *, need_dot: bool):
        """``dual`` with identical inputs' entries equal to the diagonal values ``diag1``/``diag2``
        (``(E phi^2, E phi'^2)`` at ``q1``/``q2``, broadcast like them): :func:`owidth.kernels.dual.at_identical`."""
        t, tdot = self.dual(q1, q2, c, need_dot=need_dot)
        if self._exact_at_identical:
            return t, tdot
        return dual.at_identical(q1, q2, c, t, tdot, diag1, diag2)

    def mean(self, q):
        """``E phi(u)`` for ``u ~ N(0, q)`` (used by ``LayerNorm``, which centres its input).

        Default: the 1-D graded trapezoid rule of :mod:`owidth.kernels.quadrature`
        (accurate to ~1e-13 for smooth ``phi`` at variances 1e-4 to 1e3);
        kinked activations give a closed form instead.
        """
        if not self._smooth:
            raise NotImplementedError(
                f"{type(self).__name__}.mean: no closed form for E phi(u); LayerNorm after it is not supported"
            )
        return quadrature.mean(self.fn, q, nodes=getattr(self, "nodes", None))

    def _mean_or_nan(self, q):
        """``mean(q)``, or NaN for activations without ``E phi(u)`` (``_has_mean = False``): carried in the
        kernel state for a ``LayerNorm`` later, which refuses them by name when it follows directly."""
        return self.mean(q) if self._has_mean else jnp.full_like(q, jnp.nan)

    def _kernel(self, ks: KState) -> KState:
        if ks.is_input:
            return ks.replace(x1=self.fn(ks.x1), x2=None if ks.x2 is None else self.fn(ks.x2))
        if not ks.gaussian:
            if ks.act is not None and ks.pre is not None:
                given = [n for n in (getattr(ks.act, "nodes", None), getattr(self, "nodes", None)) if n is not None]
                nodes = max(given, default=None)
                # consecutive nonlinearities: one elementwise function of the last Gaussian layer
                # relu family first: second(first(x)) is smooth except at 0 (first vanishes only at
                # 0 or is 0 on a half-line), so the kink-aware polar rule is exact
                kink0 = ks.act._kink_at_zero_only and (self._smooth or self._kink_at_zero_only)
                if not (kink0 or (ks.act._smooth and self._smooth)):
                    raise NotImplementedError(
                        f"ow.kernel: {type(ks.act).__name__} followed by {type(self).__name__}: the composition has "
                        "a kink away from 0 or of unknown position, where quadrature of its NTK map "
                        "converges too slowly (~K^-1/2) to be useful. Put a Dense layer between them, or use smooth "
                        "activations (Gelu, Silu, Softplus); a relu-family activation first is supported."
                    )
                composed = Composed(ks.act, self, nodes=nodes, kink_at_zero=bool(kink0))
                return composed._kernel(ks.pre)
            raise NotImplementedError(
                f"ow.kernel: {type(self).__name__} is applied to a non-Gaussian input: a residual/parallel sum "
                "with a branch carrying post-activations (e.g. Relu() then Residual(..., Dense()) then "
                f"{type(self).__name__}()), or a LayerNorm of post-activations. Such an input is a Gaussian "
                "plus a non-Gaussian part, so its law is not fixed by its covariance and the dual kernel "
                "E[phi(u) phi(v)] of a bivariate Gaussian does not apply. Put a Dense layer before it (or a Conv), "
                "or move the identity branch before the activation."
            )
        if ks.spatial:
            return self._kernel_spatial(ks)
        need = ks.ntk is not None
        v2 = ks.var1 if ks.var2 is None else ks.var2
        d1 = self.dual_diag(ks.var1, need_dot=need)
        d2 = d1 if ks.var2 is None else self.dual_diag(ks.var2, need_dot=need)
        nngp, tdot = self._dual_exact(ks.var1[:, None], v2[None, :], ks.nngp, _outer(d1, 0), _outer(d2, 1),
                                      need_dot=need)
        if ks.var2 is None:  # x1 against itself: exactly symmetric, diagonal computed at rho = 1
            eye = jnp.eye(nngp.shape[0], dtype=bool)
            var1, tdot_diag = d1
            # No ``0.5 (A + A.T)`` here: XLA would fuse the dual-kernel chain into
            # both reads and recompute it, doubling the cost per layer (2^depth).
            # The dual kernels are symmetric in (q1, q2) by construction instead.
            nngp = jnp.where(eye, var1[:, None], nngp)
            if need:
                tdot = jnp.where(eye, tdot_diag[:, None], tdot)
            var2 = None
        else:
            var1, var2 = d1[0], d2[0]
        ntk = ks.ntk * tdot if need else None
        mean1 = self._mean_or_nan(ks.var1)
        mean2 = None if ks.var2 is None else self._mean_or_nan(ks.var2)
        return ks.replace(nngp=nngp, ntk=ntk, var1=var1, var2=var2, gaussian=False, pre=ks, act=self,
                          mean1=mean1, mean2=mean2)

    def _kernel_spatial(self, ks: KState) -> KState:
        """Pixelwise rule on pixel covariances: entry (i, j, s[, t]) uses the variances of pixel s of
        x1_i and of pixel s (t) of x2_j. Without x2, same-input same-pixel entries are computed at
        rho = 1 and the variances are read off the result's diagonal.

        The rule is pixelwise, so it runs on the pixel axes flattened to one (``sp.flat_pixels``):
        XLA's loops over (n1, n2, P, P) then index the per-pixel variances with two broadcasts
        instead of six axes (measured 2x faster per entry at 32x32 pixels)."""
        if len(ks.spatial) > 1:
            return sp.unflat_pixels(self._kernel_spatial(sp.flat_pixels(ks)), ks)
        need = ks.ntk is not None
        nsp, full = len(ks.spatial), ks.full
        if ks.var_pixel:  # per-pixel variances already (tiles of two different inputs)
            p1, p2 = ks.var1, ks.var2
        else:
            p1 = sp.pixel_var(ks.var1, nsp, full)
            p2 = p1 if ks.var2 is None else sp.pixel_var(ks.var2, nsp, full)
        qa, qb = sp.outer(p1, p2, nsp, full)
        d1, dd1 = self.dual_diag(p1, need_dot=need)
        d2, dd2 = (d1, dd1) if ks.var2 is None else self.dual_diag(p2, need_dot=need)
        da, db = sp.outer(d1, d2, nsp, full)
        dda, ddb = sp.outer(dd1, dd2, nsp, full) if need else (None, None)
        nngp, tdot = self._dual_exact(qa, qb, ks.nngp, (da, dda), (db, ddb), need_dot=need)
        if ks.var2 is None:
            mask = sp.diag_mask(nngp.shape[0], nsp, ks.spatial, full)
            nngp = jnp.where(mask, da, nngp)
            if need:
                tdot = jnp.where(mask, dda, tdot)
            var1, var2 = self_var(nngp), None
        elif ks.var_pixel:
            var1, var2 = d1, d2
        else:
            var1, var2 = self._self_block(ks.var1, p1, d1, ks), self._self_block(ks.var2, p2, d2, ks)
        ntk = ks.ntk * tdot if need else None
        mean1 = self._mean_or_nan(p1)
        mean2 = None if ks.var2 is None else self._mean_or_nan(p2)
        return ks.replace(nngp=nngp, ntk=ntk, var1=var1, var2=var2, gaussian=False, pre=ks, act=self,
                          mean1=mean1, mean2=mean2)

    def _self_block(self, var, p, d, ks):
        """The rule on a same-input block: per pixel (diagonal), or all pixel pairs (full)."""
        if not ks.full:
            return d
        qa, qb = sp.block(p, len(ks.spatial))
        da, db = sp.block(d, len(ks.spatial))
        t, _ = self._dual_exact(qa, qb, var, (da, None), (db, None), need_dot=False)
        return jnp.where(sp.pixel_eye(ks.spatial), da, t)

    def _init(self, key, dim, ctx):
        return (), dim

    def _apply(self, params, x, dim, ctx):
        return self.fn(x), dim



def _outer(d, axis: int):
    """Per-input ``(value, derivative)`` pair as a column (axis 0) or row (axis 1) of an (n1, n2) kernel."""
    return tuple(None if v is None else (v[:, None] if axis == 0 else v[None, :]) for v in d)


class _PiecewiseLinear(Activation):
    """``max(x, a x)`` for a slope ``a`` below zero: one closed form for the relu family (the degree-1
    arc-cosine kernel of Cho & Saul 2009, generalised to any ``a``; :func:`owidth.kernels.dual.leaky_relu`).
    Subclasses give ``slope`` (a field or a constant)."""

    _smooth = False
    _kink_at_zero_only = True
    _exact_at_identical = True
    slope = 0.0

    def fn(self, x):
        return jnp.where(x > 0, x, self.slope * x)

    def dual(self, q1, q2, c, *, need_dot):
        return dual.leaky_relu(q1, q2, c, a=self.slope, need_dot=need_dot)

    def dual_diag(self, q, *, need_dot):
        return dual.leaky_relu_diag(q, a=self.slope, need_dot=need_dot)

    def mean(self, q):
        return dual.leaky_relu_mean(q, a=self.slope)


@dataclasses.dataclass(frozen=True)
class LeakyRelu(_PiecewiseLinear):
    """``max(x, a x)`` for slope ``a`` (any real ``a``; ``a = 0`` is ``Relu``, ``a = -1`` is ``|x|``).

    References:
      - Cho & Saul 2009, Kernel Methods for Deep Learning (NeurIPS 2009): the arc-cosine kernels.

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> net = ow.serial(ow.Dense(), ow.LeakyRelu(a=0.5), ow.Dense(out=1))
      >>> float(ow.kernel(net, np.ones((1, 2)), get="nngp").nngp[0, 0])   # (1 + a^2) q / 2, q = 1
      0.625
    """

    a: float = _checks.field(0.01, converter=_checks.real)

    @property
    def slope(self):
        return self.a


@dataclasses.dataclass(frozen=True)
class Relu(_PiecewiseLinear):
    """``max(x, 0)``: the degree-1 arc-cosine kernel (Cho & Saul 2009).

    References:
      - Cho & Saul 2009, Kernel Methods for Deep Learning (NeurIPS 2009): the arc-cosine kernels.
      - Lee et al. 2018, Deep Neural Networks as Gaussian Processes. <https://arxiv.org/abs/1711.00165>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> net = ow.serial(ow.Dense(w_std=3.0), ow.Relu(), ow.Dense(out=1))
      >>> k = ow.kernel(net, np.ones((1, 2)))
      >>> float(k.nngp[0, 0]), float(k.ntk[0, 0])     # w_std^2 q / 2 = 4.5; 9 * 1/2 + 4.5
      (4.5, 9.0)
    """

    slope = 0.0

    def fn(self, x):
        return jax.nn.relu(x)


@dataclasses.dataclass(frozen=True)
class Abs(_PiecewiseLinear):
    """``|x|`` (``LeakyRelu(a=-1)``).

    References:
      - Cho & Saul 2009, Kernel Methods for Deep Learning (NeurIPS 2009): the arc-cosine kernels.

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> net = ow.serial(ow.Dense(w_std=2.0), ow.Abs(), ow.Dense(out=1))
      >>> float(ow.kernel(net, np.ones((1, 2)), get="nngp").nngp[0, 0])   # E |u|^2 = q = 4
      4.0
    """

    slope = -1.0

    def fn(self, x):
        return jnp.abs(x)


@dataclasses.dataclass(frozen=True)
class _ScaledActivation(Activation):
    """``a * g(b x (+ shift)) + ...`` with a closed-form dual ``_closed_form(q1, q2, c, a=, b=, shift=)``."""

    a: float = _checks.field(1.0, converter=_checks.real)
    b: float = _checks.field(1.0, converter=_checks.real)
    shift: float = _checks.field(0.0, converter=_checks.real)

    def dual(self, q1, q2, c, *, need_dot):
        return type(self)._closed_form(q1, q2, c, a=self.a, b=self.b, shift=self.shift, need_dot=need_dot)


@dataclasses.dataclass(frozen=True)
class Erf(_ScaledActivation):
    """``a * erf(b x) + shift`` (Williams 1997).

    References:
      - Williams 1997, Computing with Infinite Networks (NeurIPS 1996): the erf kernel.

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> net = ow.serial(ow.Dense(), ow.Erf(), ow.Dense(out=1))
      >>> k = ow.kernel(net, np.ones((1, 2)), get="nngp")
      >>> round(float(k.nngp[0, 0]), 4)    # (2/pi) arcsin(2q / (1 + 2q)), q = 1
      0.4646
    """

    _closed_form = staticmethod(dual.erf)
    _exact_at_identical = True

    def fn(self, x):
        return self.a * jax.scipy.special.erf(self.b * x) + self.shift

    def mean(self, q):
        return jnp.full_like(q, self.shift)  # erf is odd


@dataclasses.dataclass(frozen=True)
class Gelu(Activation):
    """Exact GELU ``x Phi(x)`` (``Phi`` the standard normal CDF).

    References:
      - Hendrycks & Gimpel 2016, Gaussian Error Linear Units (GELUs). <https://arxiv.org/abs/1606.08415>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> net = ow.serial(ow.Dense(), ow.Gelu(), ow.Dense(out=1))
      >>> round(float(ow.kernel(net, np.ones((1, 2)), get="nngp").nngp[0, 0]), 4)   # E gelu(u)^2, u ~ N(0, 1)
      0.4252
    """

    def fn(self, x):
        return jax.nn.gelu(x, approximate=False)

    _exact_at_identical = True

    def dual(self, q1, q2, c, *, need_dot):
        return dual.gelu(q1, q2, c, need_dot=need_dot)

    def mean(self, q):
        return q / jnp.sqrt(2.0 * jnp.pi * (1.0 + q))  # Stein: E[u Phi(u)] = q E[phi(u)]


@dataclasses.dataclass(frozen=True)
class Sin(_ScaledActivation):
    """``a * sin(b x + shift)``.

    References:
      - Novak et al. 2020, Neural Tangents: Fast and Easy Infinite Neural Networks in Python. <https://arxiv.org/abs/1912.02803>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> net = ow.serial(ow.Dense(), ow.Sin(), ow.Dense(out=1))
      >>> round(float(ow.kernel(net, np.ones((1, 2)), get="nngp").nngp[0, 0]), 4)   # e^-q sinh(q), q = 1
      0.4323
    """

    _closed_form = staticmethod(dual.sin)

    def fn(self, x):
        return self.a * jnp.sin(self.b * x + self.shift)

    def mean(self, q):
        return self.a * jnp.sin(self.shift) * jnp.exp(-0.5 * self.b**2 * q)  # E sin(w) = sin(E w) e^{-Var w/2}


@dataclasses.dataclass(frozen=True)
class Identity(Activation):
    """``x`` (keeps Gaussianity, so it may sit anywhere).

    References:
      - Jacot, Gabriel & Hongler 2018, Neural Tangent Kernel: Convergence and Generalization in Neural Networks. <https://arxiv.org/abs/1806.07572>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> net = ow.serial(ow.Dense(w_std=2.0), ow.Identity(), ow.Dense(out=1))
      >>> k = ow.kernel(net, np.ones((1, 2)))
      >>> float(k.nngp[0, 0]), float(k.ntk[0, 0])    # a deep linear net: 4 q; 4 q + 4 q
      (4.0, 8.0)
    """

    caps = Activation.caps.but(nonlinear=False)

    def fn(self, x):
        return x

    def dual(self, q1, q2, c, *, need_dot):
        return dual.identity(q1, q2, c, need_dot=need_dot)

    def _kernel(self, ks: KState) -> KState:
        return ks

    def _odd_linear(self) -> bool:
        return True


# --------------------------------------------------------------------------- #
# The rest of neural-tangents' closed forms
# --------------------------------------------------------------------------- #
@dataclasses.dataclass(frozen=True)
class Cos(Sin):
    """``a * cos(b x + shift)`` (``Sin`` with the shift moved by pi/2).

    References:
      - Novak et al. 2020, Neural Tangents: Fast and Easy Infinite Neural Networks in Python. <https://arxiv.org/abs/1912.02803>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> net = ow.serial(ow.Dense(), ow.Cos(), ow.Dense(out=1))
      >>> round(float(ow.kernel(net, np.ones((1, 2)), get="nngp").nngp[0, 0]), 4)   # e^-q cosh(q), q = 1
      0.5677
    """

    def fn(self, x):
        return self.a * jnp.cos(self.b * x + self.shift)

    def dual(self, q1, q2, c, *, need_dot):
        return dual.sin(q1, q2, c, a=self.a, b=self.b, shift=self.shift + 0.5 * jnp.pi, need_dot=need_dot)

    def mean(self, q):
        return self.a * jnp.cos(self.shift) * jnp.exp(-0.5 * self.b**2 * q)


@dataclasses.dataclass(frozen=True)
class Rbf(Activation):
    """``sqrt(2) sin(sqrt(2 gamma) x + pi/4)``, whose NNGP is the RBF kernel of its inputs,
    ``exp(-gamma E(u - v)^2)`` (random Fourier features, Rahimi & Recht 2007; neural-tangents' ``Rbf``).

    References:
      - Rahimi & Recht 2007, Random Features for Large-Scale Kernel Machines (NeurIPS 2007).
      - Novak et al. 2020, Neural Tangents: Fast and Easy Infinite Neural Networks in Python. <https://arxiv.org/abs/1912.02803>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> x = np.array([[1.0, 0.0], [0.0, 1.0]])
      >>> k = ow.kernel(ow.serial(ow.Dense(), ow.Rbf(gamma=0.5)), x, get="nngp").nngp
      >>> round(float(k[0, 1]), 4)    # exp(-gamma |x - x'|^2 / d) = exp(-0.5)
      0.6065
    """

    gamma: float = _checks.field(1.0, converter=_checks.std)

    def fn(self, x):
        return 2**0.5 * jnp.sin((2.0 * self.gamma) ** 0.5 * x + 0.25 * jnp.pi)

    def dual(self, q1, q2, c, *, need_dot):
        return dual.rbf(q1, q2, c, gamma=self.gamma, need_dot=need_dot)

    def mean(self, q):
        return jnp.exp(-self.gamma * q)  # sqrt(2) sin(pi/4) E cos(b u)


@dataclasses.dataclass(frozen=True)
class Exp(Activation):
    """``a * exp(b x)``: ``E[phi(u) phi(v)] = a^2 exp(b^2 (q1 + q2 + 2 c) / 2)``.

    References:
      - Novak et al. 2020, Neural Tangents: Fast and Easy Infinite Neural Networks in Python. <https://arxiv.org/abs/1912.02803>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> net = ow.serial(ow.Dense(), ow.Exp(), ow.Dense(out=1))
      >>> round(float(ow.kernel(net, np.ones((1, 2)), get="nngp").nngp[0, 0]), 4)   # E e^(2u) = e^(2q), q = 1
      7.3891
    """

    a: float = _checks.field(1.0, converter=_checks.real)
    b: float = _checks.field(1.0, converter=_checks.real)

    def fn(self, x):
        return self.a * jnp.exp(self.b * x)

    def dual(self, q1, q2, c, *, need_dot):
        return dual.exp(q1, q2, c, a=self.a, b=self.b, need_dot=need_dot)

    def mean(self, q):
        return self.a * jnp.exp(0.5 * self.b**2 * q)


@dataclasses.dataclass(frozen=True)
class Gaussian(Activation):
    """``a * exp(b x^2)`` (neural-tangents' ``Gaussian``; ``b < 0`` for a bump). For ``b > 0`` its moments
    are finite only while every pre-activation variance is below ``1 / (4 b)`` (``1 / (2 b)`` for the
    kernel's off-diagonal entries); beyond, the kernel is ``inf``.

    References:
      - Novak et al. 2020, Neural Tangents: Fast and Easy Infinite Neural Networks in Python. <https://arxiv.org/abs/1912.02803>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> net = ow.serial(ow.Dense(), ow.Gaussian(), ow.Dense(out=1))
      >>> round(float(ow.kernel(net, np.ones((1, 2)), get="nngp").nngp[0, 0]), 4)   # E e^(-2u^2) = (1 + 4q)^-1/2
      0.4472
    """

    a: float = _checks.field(1.0, converter=_checks.real)
    b: float = _checks.field(-1.0, converter=_checks.real)

    def fn(self, x):
        return self.a * jnp.exp(self.b * x * x)

    def dual(self, q1, q2, c, *, need_dot):
        return dual.gaussian(q1, q2, c, a=self.a, b=self.b, need_dot=need_dot)

    def mean(self, q):
        ok = 1.0 - 2.0 * self.b * q > 0
        return jnp.where(ok, self.a * jax.lax.rsqrt(jnp.where(ok, 1.0 - 2.0 * self.b * q, 1.0)), jnp.inf)


@dataclasses.dataclass(frozen=True)
class Gabor(Activation):
    """``exp(-x^2) sin(x)`` (neural-tangents' ``Gabor``), in closed form (:func:`owidth.kernels.dual.gabor`).

    References:
      - Novak et al. 2020, Neural Tangents: Fast and Easy Infinite Neural Networks in Python. <https://arxiv.org/abs/1912.02803>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> net = ow.serial(ow.Dense(), ow.Gabor(), ow.Dense(out=1))
      >>> round(float(ow.kernel(net, np.ones((1, 2)), get="nngp").nngp[0, 0]), 4)   # (1 - e^(-2q/(1+4q))) / (2 sqrt(1+4q))
      0.0737
    """

    def fn(self, x):
        return jnp.exp(-x * x) * jnp.sin(x)

    def dual(self, q1, q2, c, *, need_dot):
        return dual.gabor(q1, q2, c, need_dot=need_dot)

    def mean(self, q):
        return jnp.zeros_like(q)  # odd


@dataclasses.dataclass(frozen=True)
class Sign(Activation):
    """``sign(x)``: NNGP ``(2/pi) asin(rho)``; its derivative vanishes almost everywhere, so the NTK
    contribution of the layers below is 0, as in the finite network, whose gradients through ``sign`` are 0.

    References:
      - Novak et al. 2020, Neural Tangents: Fast and Easy Infinite Neural Networks in Python. <https://arxiv.org/abs/1912.02803>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> x = np.array([[1.0, 0.0], [1.0, 1.0]])
      >>> k = ow.kernel(ow.serial(ow.Dense(), ow.Sign()), x, get="nngp").nngp
      >>> round(float(k[0, 1]), 4)    # (2/pi) asin(1/sqrt 2) = 1/2
      0.5
    """

    _smooth = False

    def fn(self, x):
        return jnp.sign(x)

    def dual(self, q1, q2, c, *, need_dot):
        return dual.sign(q1, q2, c, need_dot=need_dot)

    def mean(self, q):
        return jnp.zeros_like(q)


@dataclasses.dataclass(frozen=True)
class ExpNormalized(Activation):
    """The "Gaussian normalised kernel" of Shankar et al. 2020 (neural-tangents' ``ExpNormalized``):
    ``nngp' = sqrt(q1 q2) exp(gamma (rho + shift))``, ``ntk' = ntk gamma exp(gamma (rho + shift))``,
    ``rho`` the correlation (clipped to [-1, 1], neural-tangents' ``do_clip=True``). A kernel map only:
    no elementwise function has it as its dual, so ``ow.finite`` refuses it.

    References:
      - Shankar et al. 2020, Neural Kernels Without Tangents. <https://arxiv.org/abs/2003.02237>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> x = np.array([[1.0, 0.0], [0.0, 1.0]])
      >>> k = ow.kernel(ow.serial(ow.Dense(), ow.ExpNormalized(gamma=1.0, shift=-1.0)), x, get="nngp").nngp
      >>> round(float(k[0, 1]), 4), round(float(k[0, 0]), 4)   # (1/2) e^(-1) and (1/2) e^0
      (0.1839, 0.5)
    """

    gamma: float = _checks.field(1.0, converter=_checks.real)
    shift: float = _checks.field(-1.0, converter=_checks.real)

    _smooth = False
    _has_mean = False

    def fn(self, x):
        raise NotImplementedError(
            "ow.ExpNormalized is a kernel map with no finite-network function (Shankar et al. 2020); use it "
            "with ow.kernel only, or pick an activation with a finite counterpart (e.g. ow.Rbf, ow.Exp)"
        )

    def dual(self, q1, q2, c, *, need_dot):
        return dual.exp_normalized(q1, q2, c, gamma=self.gamma, shift=self.shift, need_dot=need_dot)

    def mean(self, q):
        raise NotImplementedError("ow.ExpNormalized has no finite function: LayerNorm after it is not defined")


class _PolynomialActivation(Activation):
    """A polynomial ``sum_j coefficients[j] x^j``, its kernels exact at any variance
    (:func:`owidth.kernels.dual.polynomial`). Subclasses define ``coefficients``."""

    coefficients = (0.0,)

    def fn(self, x):
        return dual.horner(self.coefficients, x)

    def dual(self, q1, q2, c, *, need_dot):
        return dual.polynomial(q1, q2, c, coef=self.coefficients, need_dot=need_dot)

    def mean(self, q):
        return dual.polynomial_mean(q, coef=self.coefficients)


@dataclasses.dataclass(frozen=True)
class Polynomial(_PolynomialActivation):
    """``coef[0] + coef[1] x + ... + coef[n] x^n`` (lowest power first, as ``numpy.polynomial``), with
    its kernels exact at any variances (``E[phi(u) phi(v)] = sum_m m! c^m P_m(q1) P_m(q2)``, a
    polynomial in the covariance entries; see :func:`owidth.kernels.dual.polynomial`).

    References:
      - Novak et al. 2020, Neural Tangents: Fast and Easy Infinite Neural Networks in Python. <https://arxiv.org/abs/1912.02803>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> net = ow.serial(ow.Dense(), ow.Polynomial([1.0, 0.0, 1.0]), ow.Dense(out=1))   # 1 + x^2
      >>> float(ow.kernel(net, np.ones((1, 2)), get="nngp").nngp[0, 0])   # E (1 + u^2)^2 = 1 + 2q + 3q^2, q = 1
      6.0
    """

    coef: tuple[float, ...] = _checks.field(converter=_checks.polynomial_coefficients)

    @property
    def coefficients(self):
        return self.coef


@dataclasses.dataclass(frozen=True)
class Monomial(_PolynomialActivation):
    """``x^degree``, exact at any degree (neural-tangents: degree <= 5).

    References:
      - Novak et al. 2020, Neural Tangents: Fast and Easy Infinite Neural Networks in Python. <https://arxiv.org/abs/1912.02803>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> net = ow.serial(ow.Dense(), ow.Monomial(3), ow.Dense(out=1))
      >>> float(ow.kernel(net, np.ones((1, 2)), get="nngp").nngp[0, 0])   # E u^6 = 15 q^3
      15.0
    """

    degree: int = _checks.field(converter=_checks.degree)

    @property
    def coefficients(self):
        return (0.0,) * self.degree + (1.0,)


@dataclasses.dataclass(frozen=True)
class Hermite(_PolynomialActivation):
    """The normalised probabilists' Hermite polynomial ``He_n(x) / sqrt(n!)`` (unit norm under N(0, 1)).

    Its kernel is exact at any variances; at unit variance it is ``c^n`` (neural-tangents' ``Hermite``
    assumes unit variance, e.g. after ``LayerNorm``, and returns ``c^n`` whatever the variance).

    References:
      - Novak et al. 2020, Neural Tangents: Fast and Easy Infinite Neural Networks in Python. <https://arxiv.org/abs/1912.02803>
      - O'Donnell 2014, Analysis of Boolean Functions, ch. 11 (Hermite polynomials and Gaussian space).

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> x = np.array([[1.0, 0.0], [0.6, 0.8]])     # unit variance after Dense(): q = |x|^2 / d
      >>> k = ow.kernel(ow.serial(ow.Dense(w_std=2**0.5), ow.Hermite(2)), x, get="nngp").nngp
      >>> round(float(k[0, 1]), 4)    # c^2 = 0.6^2
      0.36
    """

    degree: int = _checks.field(converter=_checks.degree)

    @property
    def coefficients(self):
        he = np.polynomial.hermite_e.herme2poly([0.0] * self.degree + [1.0])
        return tuple(float(v) / math.sqrt(math.factorial(self.degree)) for v in he)


@dataclasses.dataclass(frozen=True)
class RectifiedMonomial(Activation):
    """``max(x, 0)^degree``: the arc-cosine kernel of degree n (Cho & Saul 2009), in closed form at any
    degree (:func:`owidth.kernels.dual.rectified_monomial`); ``degree = 1`` is ``Relu``, ``0`` the step.

    References:
      - Cho & Saul 2009, Kernel Methods for Deep Learning (NeurIPS 2009): the arc-cosine kernels.

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> net = ow.serial(ow.Dense(), ow.RectifiedMonomial(2), ow.Dense(out=1))
      >>> float(ow.kernel(net, np.ones((1, 2)), get="nngp").nngp[0, 0])   # E relu(u)^4 = 3 q^2 / 2
      1.5
    """

    degree: int = _checks.field(converter=_checks.degree)

    _smooth = False

    def fn(self, x):
        return jnp.where(x >= 0, 1.0, 0.0) * jnp.maximum(x, 0.0) ** self.degree

    def dual(self, q1, q2, c, *, need_dot):
        return dual.rectified_monomial(q1, q2, c, degree=self.degree, need_dot=need_dot)

    def mean(self, q):
        return dual.rectified_monomial_mean(q, degree=self.degree)


@dataclasses.dataclass(frozen=True, init=False)
class Elementwise(Activation):
    """An activation with a user-supplied dual kernel (neural-tangents' ``Elementwise``).

    Args:
      fn: the elementwise function (jax-traceable) for finite networks; ``None``: kernels only.
      nngp_fn: ``(cov12, var1, var2) -> E[fn(u) fn(v)]`` for centred Gaussians with these moments,
        written for scalars (it is vectorised with ``jnp.vectorize``).
      d_nngp_fn: ``(cov12, var1, var2) -> E[fn'(u) fn'(v)]``; ``None``: ``d nngp_fn / d cov12`` by
        autodiff (Price's theorem: ``d E[f(u) f(v)] / d c = E[f'(u) f'(v)]``).

    Pass the same function objects to reuse compilations (they compare by identity).

    References:
      - Price 1958, A useful theorem for nonlinear devices having Gaussian inputs. IRE Trans. Inf. Theory 4(2).
      - Han et al. 2022, Fast Neural Kernel Embeddings for General Activations. <https://arxiv.org/abs/2209.04121>

    Examples:
      >>> import numpy as np
      >>> import jax.numpy as jnp
      >>> import owidth as ow
      >>> def nngp_fn(c, q1, q2):   # E[erf(u) erf(v)] (Williams 1997)
      ...     return 2 / jnp.pi * jnp.arcsin(2 * c / jnp.sqrt((1 + 2 * q1) * (1 + 2 * q2)))
      >>> mine = ow.serial(ow.Dense(), ow.Elementwise(None, nngp_fn), ow.Dense(out=1))
      >>> ref = ow.serial(ow.Dense(), ow.Erf(), ow.Dense(out=1))
      >>> x = np.array([[1.0, 0.5], [0.2, -1.0]])
      >>> bool(np.allclose(ow.kernel(mine, x).ntk, ow.kernel(ref, x).ntk))
      True
    """

    function: Callable[[jax.Array], jax.Array] | None = None
    nngp_fn: Callable | None = None
    d_nngp_fn: Callable | None = None

    _smooth = False
    _has_mean = False

    def __init__(self, fn: Callable | None = None, nngp_fn: Callable | None = None, d_nngp_fn: Callable | None = None):
        # neural-tangents' argument names (``fn`` is also the method every activation has, so the function
        # is stored as ``function``)
        object.__setattr__(self, "function", fn)
        object.__setattr__(self, "nngp_fn", nngp_fn)
        object.__setattr__(self, "d_nngp_fn", d_nngp_fn)
        self.__post_init__()

    def __post_init__(self):
        for name in ("function", "nngp_fn", "d_nngp_fn"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise TypeError(f"Elementwise({name}=...) must be callable or None, got {value!r}")
        if self.function is None and self.nngp_fn is None:
            raise ValueError("Elementwise: give fn (finite networks), nngp_fn (kernels) or both")
        super().__post_init__()

    def fn(self, x):
        if self.function is None:
            raise NotImplementedError("ow.Elementwise(fn=None, ...): no finite function given; pass fn= to build "
                                      "finite networks")
        return self.function(x)

    def dual(self, q1, q2, c, *, need_dot):
        if self.nngp_fn is None:
            raise NotImplementedError("ow.Elementwise(nngp_fn=None): no dual kernel given; pass nngp_fn= "
                                      "(or use ow.ActivationFn(fn) for quadrature)")
        t = jnp.vectorize(self.nngp_fn)(c, q1, q2)
        if not need_dot:
            return t, None
        d = self.d_nngp_fn if self.d_nngp_fn is not None else jax.grad(self.nngp_fn)
        return t, jnp.vectorize(d)(c, q1, q2)

    def mean(self, q):
        raise NotImplementedError("ow.Elementwise: E fn(u) is not given; LayerNorm after it is not supported")


# --------------------------------------------------------------------------- #
# Any elementwise function: quadrature
# --------------------------------------------------------------------------- #

def _nodes(cls: str, name: str, nodes):
    if nodes is None:
        return nodes
    if isinstance(nodes, bool) or not isinstance(nodes, (int, jnp.integer)) or not 2 <= nodes <= 512:
        raise ValueError(
            f"{cls}({name}={nodes!r}) must be None (the default: 64, or 128 with a kink at 0, accurate to "
            "~1e-11 for variances 1e-4 to 1e3) or an int in [2, 512] (see owidth.kernels.quadrature)"
        )
    return int(nodes)


class Quadrature(Activation):
    """An activation whose dual kernels come from quadrature (see :mod:`owidth.kernels.quadrature`): a
    graded trapezoid rule accurate uniformly in the variance, split at 0 when ``kink_at_zero``.
    Subclasses are frozen dataclasses with a field ``nodes`` (None: the rule's default) and define ``fn``.

    References:
      - Lee et al. 2018, Deep Neural Networks as Gaussian Processes. <https://arxiv.org/abs/1711.00165>
      - Novak et al. 2020, Neural Tangents: Fast and Easy Infinite Neural Networks in Python. <https://arxiv.org/abs/1912.02803>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> isinstance(ow.Tanh(), ow.layers.Quadrature), isinstance(ow.Relu(), ow.layers.Quadrature)
      (True, False)
    """

    nodes = None
    kink_at_zero = False

    def dual(self, q1, q2, c, *, need_dot):
        return quadrature.dual(self.fn, q1, q2, c, nodes=self.nodes, need_dot=need_dot, kink=self.kink_at_zero)

    def dual_diag(self, q, *, need_dot):
        return quadrature.dual_diag(self.fn, q, nodes=self.nodes, need_dot=need_dot, kink=self.kink_at_zero)

    def mean(self, q):
        return quadrature.mean(self.fn, q, nodes=self.nodes, kink=self.kink_at_zero)

    def _kernel_extra_states(self) -> int:
        """Two arrays of one value per kernel entry and inner node (the rule's node grids)."""
        return 2 * quadrature.inner_nodes(self.nodes, self.kink_at_zero)


@dataclasses.dataclass(frozen=True)
class ActivationFn(Quadrature):
    """Any elementwise ``function`` (jax-traceable, differentiable for the NTK).

    ``ow.ActivationFn(jnp.tanh)``, ``ow.ActivationFn(jax.nn.relu)``; the
    derivative for the NTK comes from ``jax.jvp`` of ``function``. Pass the same
    function object to reuse compilations (functions compare by identity).

    With ``kink_at_zero=True`` (default) the NNGP/NTK maps use the split rule
    of :func:`owidth.kernels.quadrature.dual` (``kink=True``), which splits
    each integral where u = 0 or v = 0: for functions smooth except at 0
    (relu, leaky relu, abs and their smooth compositions) and for smooth
    ones, measured <= 2e-11 relative (float64) for variances 1e-4 to 1e3 at
    the default ``nodes`` (128 x 192 per entry). ``kink_at_zero=False``: the
    unsplit rule (96 x 104 nodes per entry, about 0.4x the cost), as accurate
    for smooth functions, but across a kink its error decays only
    algebraically. Both assume the function's structure lies at ``|x| ~ 1``
    or wider (a bend, or poles at distance >= ~1 from the real axis): for
    ``tanh(10 x)`` pass ``nodes`` larger, or rescale the preceding layer. A
    kink elsewhere than at 0 (e.g. ``relu(x - 1)``) is handled by neither.

    References:
      - Lee et al. 2018, Deep Neural Networks as Gaussian Processes. <https://arxiv.org/abs/1711.00165>
      - Jacot, Gabriel & Hongler 2018, Neural Tangent Kernel: Convergence and Generalization in Neural Networks. <https://arxiv.org/abs/1806.07572>
      - Novak et al. 2020, Neural Tangents: Fast and Easy Infinite Neural Networks in Python. <https://arxiv.org/abs/1912.02803>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> import jax.numpy as jnp
      >>> net = ow.serial(ow.Dense(), ow.ActivationFn(jnp.tanh, kink_at_zero=False), ow.Dense(out=1))
      >>> round(float(ow.kernel(net, np.ones((1, 2)), get="nngp").nngp[0, 0]), 4)   # E tanh(u)^2, u ~ N(0, 1)
      0.3943
    """

    function: Callable[[jax.Array], jax.Array] = _checks.field(converter=_checks.function)
    nodes: int | None = _checks.field(None, converter=_nodes)
    kink_at_zero: bool = _checks.field(True, converter=_checks.boolean)

    def fn(self, x):
        return self.function(x)


@dataclasses.dataclass(frozen=True)
class Composed(Quadrature):
    """``second(first(x))``: consecutive nonlinearities as one elementwise function.

    Built by the kernel rules when an activation follows another; its dual
    kernels come from quadrature. When ``first`` is of the relu family
    (kinks only at 0) the composition is smooth except at 0 and the
    kink-aware split rule applies (``kink_at_zero=True``). Other
    compositions with a kinked activation (e.g. tanh then relu) are refused:
    the NTK map then has a jump where Gauss-Hermite converges like K^-1/2
    (measured for relu then tanh: 0.123, 0.134, 0.141, 0.146 at K = 24, 48,
    96, 192).

    References:
      - Novak et al. 2020, Neural Tangents: Fast and Easy Infinite Neural Networks in Python. <https://arxiv.org/abs/1912.02803>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> net = ow.serial(ow.Dense(), ow.Relu(), ow.Relu(), ow.Dense(out=1))   # relu(relu(u)) = relu(u)
      >>> round(float(ow.kernel(net, np.ones((1, 2)), get="nngp").nngp[0, 0]), 4)   # q / 2
      0.5
    """

    first: Activation
    second: Activation
    nodes: int | None = _checks.field(None, converter=_nodes)
    kink_at_zero: bool = False

    @property
    def _smooth(self) -> bool:  # a composition with a kink at 0 composes further only by the polar rule
        return not self.kink_at_zero

    @property
    def _kink_at_zero_only(self) -> bool:
        return self.kink_at_zero

    def fn(self, x):
        return self.second.fn(self.first.fn(x))


@dataclasses.dataclass(frozen=True)
class Tanh(Quadrature):
    """``tanh(x)``. 

    Dual kernels by the graded trapezoid rule of :mod:`owidth.kernels.quadrature` (``nodes``: None
    for 64, i.e. 96 x 104 nodes per kernel entry, relative error <= 1e-11 in float64 for
    pre-activation variances 1e-4 to 1e3).

    References:
      - Lee et al. 2018, Deep Neural Networks as Gaussian Processes. <https://arxiv.org/abs/1711.00165>
      - Novak et al. 2020, Neural Tangents: Fast and Easy Infinite Neural Networks in Python. <https://arxiv.org/abs/1912.02803>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> net = ow.serial(ow.Dense(), ow.Tanh(), ow.Dense(out=1))
      >>> round(float(ow.kernel(net, np.ones((1, 2)), get="nngp").nngp[0, 0]), 4)   # E tanh(u)^2, u ~ N(0, 1)
      0.3943
    """

    nodes: int | None = _checks.field(None, converter=_nodes)

    def fn(self, x):
        return jnp.tanh(x)


@dataclasses.dataclass(frozen=True)
class Sigmoid(Quadrature):
    """``1 / (1 + exp(-x))``. 

    Dual kernels by the graded trapezoid rule of :mod:`owidth.kernels.quadrature` (``nodes``: None
    for 64, i.e. 96 x 104 nodes per kernel entry, relative error <= 1e-11 in float64 for
    pre-activation variances 1e-4 to 1e3).

    References:
      - Lee et al. 2018, Deep Neural Networks as Gaussian Processes. <https://arxiv.org/abs/1711.00165>
      - Novak et al. 2020, Neural Tangents: Fast and Easy Infinite Neural Networks in Python. <https://arxiv.org/abs/1912.02803>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> net = ow.serial(ow.Dense(), ow.Sigmoid(), ow.Dense(out=1))
      >>> round(float(ow.kernel(net, np.ones((1, 2)), get="nngp").nngp[0, 0]), 4)   # E sigmoid(u)^2, u ~ N(0, 1)
      0.2934
    """

    nodes: int | None = _checks.field(None, converter=_nodes)

    def fn(self, x):
        return jax.nn.sigmoid(x)


@dataclasses.dataclass(frozen=True)
class Silu(Quadrature):
    """``x sigmoid(x)`` (SiLU / swish; ``ow.Swish`` is the same class). 

    Dual kernels by the graded trapezoid rule of :mod:`owidth.kernels.quadrature` (``nodes``: None
    for 64, i.e. 96 x 104 nodes per kernel entry, relative error <= 1e-11 in float64 for
    pre-activation variances 1e-4 to 1e3).

    References:
      - Lee et al. 2018, Deep Neural Networks as Gaussian Processes. <https://arxiv.org/abs/1711.00165>
      - Novak et al. 2020, Neural Tangents: Fast and Easy Infinite Neural Networks in Python. <https://arxiv.org/abs/1912.02803>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> net = ow.serial(ow.Dense(), ow.Silu(), ow.Dense(out=1))
      >>> round(float(ow.kernel(net, np.ones((1, 2)), get="nngp").nngp[0, 0]), 4)   # E silu(u)^2, u ~ N(0, 1)
      0.3558
    """

    nodes: int | None = _checks.field(None, converter=_nodes)

    def fn(self, x):
        return jax.nn.silu(x)


Swish = Silu


@dataclasses.dataclass(frozen=True)
class Softplus(Quadrature):
    """``log(1 + exp(x))``. 

    Dual kernels by the graded trapezoid rule of :mod:`owidth.kernels.quadrature` (``nodes``: None
    for 64, i.e. 96 x 104 nodes per kernel entry, relative error <= 1e-11 in float64 for
    pre-activation variances 1e-4 to 1e3).

    References:
      - Lee et al. 2018, Deep Neural Networks as Gaussian Processes. <https://arxiv.org/abs/1711.00165>
      - Novak et al. 2020, Neural Tangents: Fast and Easy Infinite Neural Networks in Python. <https://arxiv.org/abs/1912.02803>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> net = ow.serial(ow.Dense(), ow.Softplus(), ow.Dense(out=1))
      >>> round(float(ow.kernel(net, np.ones((1, 2)), get="nngp").nngp[0, 0]), 4)   # E softplus(u)^2, u ~ N(0, 1)
      0.9212
    """

    nodes: int | None = _checks.field(None, converter=_nodes)

    def fn(self, x):
        return jax.nn.softplus(x)
