"""Width-free architecture description: layers and combinators.

A network is a tree of small frozen values. Each layer carries its rules for
every interpretation:

* ``_kernel(state)``: the infinite-width NNGP/NTK rule (Lee et al. 2018;
  Jacot et al. 2018; Novak et al. 2020 for the compositional form),
* ``_init(key, dim, ctx)`` / ``_apply(params, x, dim, ctx)``: the finite
  network at width ``ctx.width`` under ``ctx.param``.

Widths never appear in the spec: a ``Dense`` whose ``out`` is unset is a
hidden layer (infinite for kernels, ``width`` for finite networks); ``out=k``
fixes it (a readout).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from owidth.kernels import dual, quadrature
from owidth.kernels import spatial as sp
from owidth.kernels.state import KState, self_var
from owidth.param import Parametrization, Role

__all__ = [
    "Layer",
    "Dense",
    "Serial",
    "Parallel",
    "serial",
    "parallel",
    "Residual",
    "Activation",
    "Relu",
    "LeakyRelu",
    "Abs",
    "Erf",
    "Gelu",
    "Sin",
    "Identity",
]


@dataclasses.dataclass(frozen=True)
class Dim:
    """Feature dimension flowing through a finite network (internal)."""

    size: int
    scales: bool  # True when it is a hidden width (grows with ``width``)
    spatial: tuple[int, ...] = ()  # spatial shape of (batch, *spatial, features) inputs


class Tape:
    """Records weight layers during one trace of a finite network (internal).

    Used by the structured empirical NTK: each ``Dense`` appends its input and
    its scale constants, and adds ``taps[i]`` (zeros) to its output so that the
    gradient with respect to the tap is the back-propagated signal ``df/dz``.
    """

    def __init__(self, taps=None):
        self.taps = taps
        self.inputs: list = []
        self.layers: list = []  # (DenseScale, has_bias)
        self.out_shapes: list = []
        self.outputs: list = []  # pre-activations (before taps), for coordinate checks
        self.coords: list = []  # (name, array) in network order: weight-layer outputs and other observables

    def record(self, x, scale, has_bias, y, name: str = "dense"):
        i = len(self.inputs)
        self.inputs.append(x)
        self.layers.append((scale, has_bias))
        self.out_shapes.append(y.shape)
        self.outputs.append(y)
        self.coords.append((name, y))
        return y if self.taps is None else y + self.taps[i]

    def observe(self, name: str, y) -> None:
        """Record an intermediate (embedding output, attention logits, ...) for coordinate checks only."""
        self.coords.append((name, y))


@dataclasses.dataclass(frozen=True)
class FiniteCtx:
    """Static context of a finite network (internal)."""

    width: int
    param: Parametrization
    tape: Tape | None = dataclasses.field(default=None, compare=False, hash=False)


def _check_hyper(cls: str, name: str, value, *, nonneg: bool):
    """A real hyperparameter of a layer: a number, or a JAX scalar (for ``jax.grad``/``jax.jit`` over it).

    * Python and NumPy numbers become Python floats: the layer stays a
      hashable static value (one compilation per value, as any static).
    * A concrete scalar ``jax.Array`` is checked like a number and kept as an
      array: ``ow.kernel`` then traces it (:mod:`owidth.kernels.hyper`), so
      other values of it reuse one compilation.
    * A tracer (inside ``jax.grad``/``jax.jit``/``jax.vmap``) cannot be
      checked: it must be a real scalar, and its value is used as given (for
      a standard deviation only its square enters the kernels, see
      :func:`_check_weight_layer`).
    """
    if isinstance(value, jax.Array):
        if value.ndim != 0 or not (jnp.issubdtype(value.dtype, jnp.floating) or jnp.issubdtype(value.dtype, jnp.integer)):
            raise TypeError(f"{cls}({name}=...) must be a real scalar, got a JAX array of shape {tuple(value.shape)} "
                            f"and dtype {value.dtype}; pass one number (e.g. x[0] or jnp.squeeze(x))")
        if jnp.issubdtype(value.dtype, jnp.integer):
            value = value.astype(jnp.result_type(float))
        if not isinstance(value, jax.core.Tracer):
            _check_number(cls, name, float(value), nonneg)
        return value
    if isinstance(value, (np.ndarray, np.generic)) and value.ndim == 0 and value.dtype.kind in "iuf":
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{cls}({name}=...) must be a real number (or a JAX scalar), got {type(value).__name__} "
                        f"{value!r}")
    return _check_number(cls, name, float(value), nonneg)


def _check_number(cls: str, name: str, value: float, nonneg: bool) -> float:
    if nonneg and (not math.isfinite(value) or value < 0):
        raise ValueError(f"{cls}({name}={value!r}): a standard deviation must be finite and >= 0")
    if not math.isfinite(value):
        raise ValueError(f"{cls}({name}={value!r}) must be finite")
    return value


def _check_std(cls: str, name: str, value):
    """A standard deviation: finite and >= 0 (see :func:`_check_hyper` for JAX scalars)."""
    return _check_hyper(cls, name, value, nonneg=True)


def _check_real(cls: str, name: str, value):
    """A finite real parameter (see :func:`_check_hyper` for JAX scalars)."""
    return _check_hyper(cls, name, value, nonneg=False)


def _has_bias(b_std) -> bool:
    """Whether a finite weight layer gets a bias tensor: ``b_std > 0`` for a number; always for a JAX scalar,
    whose value may change under ``jax.jit`` while the parameter structure may not (a zero one then
    multiplies the bias by 0)."""
    return isinstance(b_std, jax.Array) or b_std > 0


def _check_weight_layer(layer) -> None:
    """Validate ``out``, ``w_std`` and ``b_std`` of a Dense-like frozen dataclass in place.

    ``w_std``/``b_std`` are numbers or JAX scalars (:func:`_check_hyper`).
    Concrete values must be finite and >= 0 (``ValueError`` otherwise). A
    traced value cannot be checked; the kernel rules use only ``w_std^2`` and
    ``b_std^2``, so a negative traced value gives the kernel of its absolute
    value (the same Gaussian law of the weights), finite and with the
    chain-rule gradient, and an optimiser may cross 0 without NaN. A
    non-finite traced value makes the kernel non-finite (nothing is clipped
    silently); :func:`ow.predict.log_marginal_likelihood` then returns
    ``-inf``. Optimise e.g. ``log w_std`` to keep it positive.
    """
    cls = type(layer).__name__
    if layer.out is not None:
        if isinstance(layer.out, bool) or not isinstance(layer.out, int):
            raise TypeError(f"{cls}(out=...) must be an int or None (hidden), got {layer.out!r}")
        if layer.out <= 0:
            raise ValueError(f"{cls}(out={layer.out}) must be positive; leave out=None for a hidden layer")
    object.__setattr__(layer, "w_std", _check_std(cls, "w_std", layer.w_std))
    object.__setattr__(layer, "b_std", _check_std(cls, "b_std", layer.b_std))


def init_weights(key, w_shape: tuple[int, ...], out_size: int, scale, has_bias: bool) -> dict:
    """``{"w": N(0, w_init^2), "b": N(0, b_init^2)}`` parameters of a weight layer (internal)."""
    kw, kb = jax.random.split(key)
    dtype = jnp.result_type(float)
    params = {"w": scale.w_init * jax.random.normal(kw, w_shape, dtype)}
    if has_bias:
        params["b"] = scale.b_init * jax.random.normal(kb, (out_size,), dtype)
    return params


class Layer:
    """Base class of all layers. Subclasses are frozen dataclasses.

    Capabilities are declared as class attributes and read by one tree walk (:meth:`_supports`):
    ``_pixel_var`` says that the kernel rule handles per-pixel variances in the full pixel
    representation (``KState.var_pixel``; see :class:`~owidth.kernels.state.VarTape`), which the
    tiled kernel of pooled CNNs uses.
    """

    _pixel_var = False

    def _kernel(self, ks: KState) -> KState:
        raise NotImplementedError

    def _init(self, key: jax.Array, dim: Dim, ctx: FiniteCtx) -> tuple[Any, Dim]:
        raise NotImplementedError

    def _apply(self, params: Any, x: jax.Array, dim: Dim, ctx: FiniteCtx) -> tuple[jax.Array, Dim]:
        raise NotImplementedError

    def _has_weights(self) -> bool:
        return False

    def _ends_in_weights(self) -> bool:
        """True when the output is a fresh zero-mean weight layer (independent of any other branch)."""
        return False

    def _odd_linear(self) -> bool:
        """True for layers ``g`` with ``g(-z) = -g(z)`` and no parameters (identity, pooling, flatten,
        LayerNorm): after a weight layer, flipping its weights and biases flips the output, so the
        output stays uncorrelated with any other branch."""
        return False

    def _children(self) -> tuple:
        return ()

    def _supports(self, capability: str) -> bool:
        """True when this layer and every layer inside it declare ``capability`` (e.g. ``"_pixel_var"``)."""
        return bool(getattr(self, capability)) and all(c._supports(capability) for c in self._children())


# --------------------------------------------------------------------------- #
# Dense
# --------------------------------------------------------------------------- #
class WeightLayer(Layer):
    """A layer that owns weights and ends in them (Dense, Conv, Embedding, Attention)."""

    def _has_weights(self) -> bool:
        return True

    def _ends_in_weights(self) -> bool:
        return True


def _enter_weights(ks: KState, fixed_message: str) -> tuple[KState, bool]:
    """Kernel of a weight layer's input: refuse a fixed-width (out=k) input; also say whether it is the
    network's input (whose incoming NTK is zero)."""
    if ks.fixed:
        raise ValueError(fixed_message)
    return ks.materialize(), ks.is_input


@dataclasses.dataclass(frozen=True)
class Dense(WeightLayer):
    """Fully connected layer ``z = W x + b`` in the NTK convention.

    ``W_ij ~ N(0, w_std^2 / fan_in)``, ``b_i ~ N(0, b_std^2)`` at
    initialisation (for finite networks, the scale is then distributed between
    multiplier and initialisation by the parametrization).

    Kernel rule (Lee et al. 2018; Jacot et al. 2018):

        nngp' = w_std^2 nngp + b_std^2
        ntk'  = w_std^2 ntk + nngp'

    Args:
      out: output width. ``None`` (default): a hidden layer, infinitely wide
        for kernels and ``width`` wide for finite networks. An int fixes it.
      w_std: weight standard deviation (times ``1/sqrt(fan_in)``).
      b_std: bias standard deviation; ``0`` means no bias parameter.

    ``w_std`` and ``b_std`` may be JAX scalars, so that ``jax.grad`` of any
    function of :func:`ow.kernel` (e.g. the evidence
    :func:`ow.predict.log_marginal_likelihood`) with respect to them works,
    under ``jax.jit`` too; with Python floats the layer is a hashable static
    value. A negative traced value acts as its absolute value (only squares
    enter the kernel); concrete negative or non-finite values raise
    ``ValueError``. In a finite network a JAX-scalar ``b_std`` always creates
    a bias tensor (the parameter structure cannot depend on a traced value).
    """

    _pixel_var = True

    out: int | None = None
    w_std: float = 1.0
    b_std: float = 0.0

    def __post_init__(self):
        _check_weight_layer(self)

    def _kernel(self, ks: KState) -> KState:
        ks, first = _enter_weights(
            ks, "ow.kernel: a Dense layer follows a Dense(out=k) layer. The infinite-width kernel "
            "needs every layer but the readout to be hidden: leave out=None on all but the last Dense.")
        w2, b2 = self.w_std**2, self.b_std**2
        nngp = w2 * ks.nngp + b2
        ntk = None if ks.ntk is None else nngp if first else w2 * ks.ntk + nngp
        # The same elementwise map on the variances: without x2 they stay the diagonal of nngp
        # (which the previous layer made equal to var1), and no per-layer gather of that diagonal
        # splits XLA's fusion of the whole recursion into one pass over the (n1, n2) entries.
        var1 = w2 * ks.var1 + b2
        var2 = None if ks.var2 is None else w2 * ks.var2 + b2
        return ks.replace(nngp=nngp, ntk=ntk, var1=var1, var2=var2, gaussian=True, fixed=self.out is not None,
                          pre=None, act=None, mean1=None, mean2=None)

    def _out_dim(self, ctx: FiniteCtx) -> Dim:
        return Dim(ctx.width, True) if self.out is None else Dim(self.out, False)

    def _out_like(self, dim: Dim, ctx: FiniteCtx) -> Dim:
        return dataclasses.replace(self._out_dim(ctx), spatial=dim.spatial)

    def _scale(self, dim: Dim, ctx: FiniteCtx):
        out = self._out_like(dim, ctx)
        role = Role.of(dim.scales, out.scales)
        return out, ctx.param.dense(role, fan_in=dim.size, width=ctx.width, w_std=self.w_std, b_std=self.b_std)

    def _init(self, key, dim, ctx):
        out, s = self._scale(dim, ctx)
        return init_weights(key, (dim.size, out.size), out.size, s, _has_bias(self.b_std)), out

    def _apply(self, params, x, dim, ctx):
        out, s = self._scale(dim, ctx)
        if params["w"].shape != (dim.size, out.size):
            raise ValueError(
                f"Dense: parameters have shape {params['w'].shape} but the layer maps {dim.size} -> {out.size} "
                "features here; were the params made by init() with inputs of this feature size and this width?"
            )
        y = x @ (s.w_mult * params["w"])
        if "b" in params:
            y = y + s.b_mult * params["b"].reshape((1,) * (y.ndim - 1) + (-1,))
        if ctx.tape is not None:
            y = ctx.tape.record(x, s, "b" in params, y)
        return y, out


# --------------------------------------------------------------------------- #
# Activations
# --------------------------------------------------------------------------- #
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
    """

    _pixel_var = True

    _smooth = True  # False for kinked functions (relu family): no Gauss-Hermite quadrature of their compositions
    _kink_at_zero_only = False  # True for the relu family: piecewise linear with the kink at 0

    def fn(self, x: jax.Array) -> jax.Array:
        raise NotImplementedError

    def dual(self, q1, q2, c, *, need_dot: bool):
        raise NotImplementedError

    def dual_diag(self, q, *, need_dot: bool):
        """``(E phi(u)^2, E phi'(u)^2)`` for ``u ~ N(0, q)`` (the kernel diagonal)."""
        return self.dual(q, q, q, need_dot=need_dot)

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
                from owidth.spec_quadrature import Composed

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
        nngp, tdot = self.dual(ks.var1[:, None], v2[None, :], ks.nngp, need_dot=need)
        if ks.var2 is None:  # x1 against itself: exactly symmetric, diagonal computed at rho = 1
            eye = jnp.eye(nngp.shape[0], dtype=bool)
            var1, tdot_diag = self.dual_diag(ks.var1, need_dot=need)
            # No ``0.5 (A + A.T)`` here: XLA would fuse the dual-kernel chain into
            # both reads and recompute it, doubling the cost per layer (2^depth).
            # The dual kernels are symmetric in (q1, q2) by construction instead.
            nngp = jnp.where(eye, var1[:, None], nngp)
            if need:
                tdot = jnp.where(eye, tdot_diag[:, None], tdot)
            var2 = None
        else:
            var1 = self.dual_diag(ks.var1, need_dot=False)[0]
            var2 = self.dual_diag(ks.var2, need_dot=False)[0]
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
        nngp, tdot = self.dual(qa, qb, ks.nngp, need_dot=need)
        d1, dd1 = self.dual_diag(p1, need_dot=need)
        if ks.var2 is None:
            mask = sp.diag_mask(nngp.shape[0], nsp, ks.spatial, full)
            da = sp.outer(d1, d1, nsp, full)[0]
            nngp = jnp.where(mask, da, nngp)
            if need:
                tdot = jnp.where(mask, sp.outer(dd1, dd1, nsp, full)[0], tdot)
            var1, var2 = self_var(nngp), None
        elif ks.var_pixel:
            var1, var2 = d1, self.dual_diag(p2, need_dot=False)[0]
        else:
            var1, var2 = self._self_block(ks.var1, p1, d1, ks), self._self_block(ks.var2, p2, None, ks)
        ntk = ks.ntk * tdot if need else None
        mean1 = self.mean(p1)
        mean2 = None if ks.var2 is None else self.mean(p2)
        return ks.replace(nngp=nngp, ntk=ntk, var1=var1, var2=var2, gaussian=False, pre=ks, act=self,
                          mean1=mean1, mean2=mean2)

    def _self_block(self, var, p, d, ks):
        """The rule on a same-input block: per pixel (diagonal), or all pixel pairs (full)."""
        if d is None:
            d = self.dual_diag(p, need_dot=False)[0]
        if not ks.full:
            return d
        qa, qb = sp.block(p, len(ks.spatial))
        t, _ = self.dual(qa, qb, var, need_dot=False)
        return jnp.where(sp.pixel_eye(ks.spatial), sp.block(d, len(ks.spatial))[0], t)

    def _init(self, key, dim, ctx):
        return (), dim

    def _apply(self, params, x, dim, ctx):
        return self.fn(x), dim


@dataclasses.dataclass(frozen=True)
class Relu(Activation):
    """``max(x, 0)``: the degree-1 arc-cosine kernel (Cho & Saul 2009)."""

    _smooth = False
    _kink_at_zero_only = True

    def fn(self, x):
        return jax.nn.relu(x)

    def dual(self, q1, q2, c, *, need_dot):
        return dual.leaky_relu(q1, q2, c, a=0.0, need_dot=need_dot)

    def dual_diag(self, q, *, need_dot):
        return dual.leaky_relu_diag(q, a=0.0, need_dot=need_dot)

    def mean(self, q):
        return dual.leaky_relu_mean(q, a=0.0)


@dataclasses.dataclass(frozen=True)
class LeakyRelu(Activation):
    """``max(x, a x)`` for slope ``a`` (any real ``a``; ``a = -1`` is ``|x|``)."""

    _smooth = False
    _kink_at_zero_only = True

    a: float = 0.01

    def __post_init__(self):
        object.__setattr__(self, "a", _check_real("LeakyRelu", "a", self.a))

    def fn(self, x):
        return jnp.where(x > 0, x, self.a * x)

    def dual(self, q1, q2, c, *, need_dot):
        return dual.leaky_relu(q1, q2, c, a=self.a, need_dot=need_dot)

    def dual_diag(self, q, *, need_dot):
        return dual.leaky_relu_diag(q, a=self.a, need_dot=need_dot)

    def mean(self, q):
        return dual.leaky_relu_mean(q, a=self.a)


@dataclasses.dataclass(frozen=True)
class Abs(Activation):
    """``|x|``."""

    _smooth = False
    _kink_at_zero_only = True

    def fn(self, x):
        return jnp.abs(x)

    def dual(self, q1, q2, c, *, need_dot):
        return dual.leaky_relu(q1, q2, c, a=-1.0, need_dot=need_dot)

    def dual_diag(self, q, *, need_dot):
        return dual.leaky_relu_diag(q, a=-1.0, need_dot=need_dot)

    def mean(self, q):
        return dual.leaky_relu_mean(q, a=-1.0)


@dataclasses.dataclass(frozen=True)
class _ScaledActivation(Activation):
    """``a * g(b x (+ shift)) + ...`` with a closed-form dual ``_closed_form(q1, q2, c, a=, b=, shift=)``."""

    a: float = 1.0
    b: float = 1.0
    shift: float = 0.0

    def __post_init__(self):
        for name in ("a", "b", "shift"):
            object.__setattr__(self, name, _check_real(type(self).__name__, name, getattr(self, name)))

    def dual(self, q1, q2, c, *, need_dot):
        return type(self)._closed_form(q1, q2, c, a=self.a, b=self.b, shift=self.shift, need_dot=need_dot)


@dataclasses.dataclass(frozen=True)
class Erf(_ScaledActivation):
    """``a * erf(b x) + shift`` (Williams 1997)."""

    _closed_form = staticmethod(dual.erf)

    def fn(self, x):
        return self.a * jax.scipy.special.erf(self.b * x) + self.shift

    def mean(self, q):
        return jnp.full_like(q, self.shift)  # erf is odd


@dataclasses.dataclass(frozen=True)
class Gelu(Activation):
    """Exact GELU ``x Phi(x)`` (``Phi`` the standard normal CDF)."""

    def fn(self, x):
        return jax.nn.gelu(x, approximate=False)

    def dual(self, q1, q2, c, *, need_dot):
        return dual.gelu(q1, q2, c, need_dot=need_dot)

    def mean(self, q):
        return q / jnp.sqrt(2.0 * jnp.pi * (1.0 + q))  # Stein: E[u Phi(u)] = q E[phi(u)]


@dataclasses.dataclass(frozen=True)
class Sin(_ScaledActivation):
    """``a * sin(b x + shift)``."""

    _closed_form = staticmethod(dual.sin)

    def fn(self, x):
        return self.a * jnp.sin(self.b * x + self.shift)

    def mean(self, q):
        return self.a * jnp.sin(self.shift) * jnp.exp(-0.5 * self.b**2 * q)  # E sin(w) = sin(E w) e^{-Var w/2}


@dataclasses.dataclass(frozen=True)
class Identity(Activation):
    """``x`` (keeps Gaussianity, so it may sit anywhere)."""

    def fn(self, x):
        return x

    def dual(self, q1, q2, c, *, need_dot):
        return dual.identity(q1, q2, c, need_dot=need_dot)

    def _kernel(self, ks: KState) -> KState:
        return ks

    def _odd_linear(self) -> bool:
        return True


# --------------------------------------------------------------------------- #
# Combinators
# --------------------------------------------------------------------------- #
def _check_layers(where: str, layers) -> tuple[Layer, ...]:
    layers = tuple(layers)
    if not layers:
        raise ValueError(f"{where} needs at least one layer")
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            hint = " (did you forget the parentheses, e.g. ow.Relu() instead of ow.Relu?)" if isinstance(layer, type) else ""
            raise TypeError(f"{where}: item {i} is {layer!r}, not an owidth layer{hint}")
    return layers


@dataclasses.dataclass(frozen=True)
class Serial(Layer):
    """Composition ``layers[-1] ∘ ... ∘ layers[0]``; build it with :func:`serial`."""

    _pixel_var = True

    layers: tuple[Layer, ...]

    def _has_weights(self) -> bool:
        return any(layer._has_weights() for layer in self.layers)

    def _ends_in_weights(self) -> bool:
        last = [layer for layer in self.layers if not layer._odd_linear()]
        return bool(last) and last[-1]._ends_in_weights()

    def _odd_linear(self) -> bool:
        return all(layer._odd_linear() for layer in self.layers)

    def _children(self) -> tuple:
        return self.layers

    def _kernel(self, ks):
        for layer in self.layers:
            ks = layer._kernel(ks)
        return ks

    def _init(self, key, dim, ctx):
        params = []
        for layer, k in zip(self.layers, jax.random.split(key, len(self.layers))):
            p, dim = layer._init(k, dim, ctx)
            params.append(p)
        return tuple(params), dim

    def _apply(self, params, x, dim, ctx):
        for layer, p in zip(self.layers, params):
            x, dim = layer._apply(p, x, dim, ctx)
        return x, dim


@dataclasses.dataclass(frozen=True)
class Parallel(Layer):
    """Sum of branches applied to the same input (fan-out, then fan-in sum).

    When of any two branches at least one ends in a fresh zero-mean weight
    layer, the cross covariances vanish and the kernels add:
    ``nngp = sum_b nngp_b``, ``ntk = sum_b ntk_b`` (Novak et al. 2020). At most
    one branch may end otherwise (an identity, an activation); ``ow.kernel``
    refuses other sums, whose kernels need the cross terms.
    """

    _pixel_var = True

    branches: tuple[Layer, ...]

    def _has_weights(self) -> bool:
        return any(b._has_weights() for b in self.branches)

    def _ends_in_weights(self) -> bool:
        return all(b._ends_in_weights() for b in self.branches)

    def _children(self) -> tuple:
        return self.branches

    def _kernel(self, ks):
        if ks.is_input and not self._has_weights():  # a sum of functions of the data itself: exact
            outs = [b._kernel(ks) for b in self.branches]
            x1 = sum(o.x1 for o in outs)
            x2 = None if ks.x2 is None else sum(o.x2 for o in outs)
            return ks.replace(x1=x1, x2=x2)
        # Kernels add only when cross terms E[a(x) b(x')] vanish, i.e. when of any two
        # branches at least one ends in a fresh zero-mean weight layer.
        free = [b for b in self.branches if not b._ends_in_weights()]
        if len(free) > 1:
            raise NotImplementedError(
                f"ow.kernel: parallel/Residual with {len(free)} branches that do not end in a weight layer "
                f"({', '.join(type(b).__name__ for b in free)}): their outputs are correlated and the kernel of "
                "the sum is not the sum of kernels. End all but one branch in a Dense layer (for Residual: end "
                "the block in a Dense)."
            )
        outs = [b._kernel(ks) for b in self.branches]
        outs = [o.materialize() for o in outs]
        fixed = {o.fixed for o in outs}
        if len(fixed) > 1:
            raise ValueError("ow.parallel: branches mix hidden (out=None) and fixed (out=k) widths; make them agree")
        shapes = {o.nngp.shape for o in outs}
        if len(shapes) > 1 or len({o.full for o in outs}) > 1:
            raise ValueError(
                f"ow.parallel: branch outputs have different spatial shapes ({sorted(o.spatial for o in outs)}); "
                "a fan-in sum needs equal shapes (use the same strides/padding in every branch)"
            )

        def total(values):
            values = [v for v in values if v is not None]
            return sum(values) if values else None

        return ks.replace(
            spatial=outs[0].spatial,
            full=outs[0].full,
            mean1=total(o.mean1 for o in outs),
            mean2=total(o.mean2 for o in outs),
            x1=None,
            x2=None,
            nngp=sum(o.nngp for o in outs),
            ntk=sum(o.ntk for o in outs) if ks.need_ntk else None,
            var1=sum(o.var1 for o in outs),
            var2=None if outs[0].var2 is None else sum(o.var2 for o in outs),
            gaussian=all(o.gaussian for o in outs),
            fixed=fixed.pop(),
            pre=None,
            act=None,
        )

    def _init(self, key, dim, ctx):
        params, dims = [], []
        for b, k in zip(self.branches, jax.random.split(key, len(self.branches))):
            p, d = b._init(k, dim, ctx)
            params.append(p)
            dims.append(d)
        if len(set(dims)) != 1:
            sizes = ", ".join(f"{d.size}{' (hidden)' if d.scales else ''}" for d in dims)
            raise ValueError(f"ow.parallel: branch output widths differ ({sizes}); a fan-in sum needs equal widths")
        return tuple(params), dims[0]

    def _apply(self, params, x, dim, ctx):
        ys = [b._apply(p, x, dim, ctx) for b, p in zip(self.branches, params)]
        return sum(y for y, _ in ys), ys[0][1]


def serial(*layers: Layer) -> Serial:
    """Compose layers in order: ``serial(a, b)(x) = b(a(x))``."""
    return Serial(_check_layers("ow.serial", layers))


def parallel(*branches: Layer) -> Parallel:
    """Apply branches to the same input and sum their outputs."""
    return Parallel(_check_layers("ow.parallel", branches))


def Residual(*block: Layer) -> Parallel:  # noqa: N802 - a layer constructor
    """``x + block(x)``: the identity branch plus ``serial(*block)``.

    When the block ends in a weight layer the two branches are uncorrelated
    and the kernels add (Novak et al. 2020); the identity branch may carry a
    post-activation (``Relu()`` then ``Residual(Dense(), Relu(), Dense())``).
    """
    return Parallel((Identity(), serial(*block) if len(block) != 1 else _check_layers("ow.Residual", block)[0]))
