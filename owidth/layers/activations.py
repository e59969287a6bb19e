"""Elementwise nonlinearities: closed-form dual kernels, quadrature for any other function, compositions.

Closed forms (:mod:`owidth.kernels.dual`): the relu family (``LeakyRelu``,
with ``Relu`` and ``Abs`` its fixed-slope cases), ``Erf``, ``Gelu``, ``Sin``,
``Identity``. Any other elementwise function, and two nonlinearities in a
row, by the graded trapezoid rule of :mod:`owidth.kernels.quadrature`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from owidth import _checks
from owidth.kernels import dual, quadrature
from owidth.kernels import spatial as sp
from owidth.kernels.state import KState, self_var
from owidth.layers._base import Caps, Layer

__all__ = ["Activation", "LeakyRelu", "Relu", "Abs", "Erf", "Gelu", "Sin", "Identity", "Quadrature", "ActivationFn",
           "Composed", "Tanh", "Sigmoid", "Silu", "Swish", "Softplus"]


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
        mean1 = self.mean(ks.var1)
        mean2 = None if ks.var2 is None else self.mean(ks.var2)
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
        mean1 = self.mean(p1)
        mean2 = None if ks.var2 is None else self.mean(p2)
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
