"""The layer protocol shared by every layer family (internal API of :mod:`owidth.layers`).

A network is a tree of small frozen values. Each layer carries its rules for
every interpretation:

* ``_kernel(state)``: the infinite-width NNGP/NTK rule (Lee et al. 2018;
  Jacot et al. 2018; Novak et al. 2020 for the compositional form),
* ``_init(key, dim, ctx)`` / ``_apply(params, x, dim, ctx)``: the finite
  network at width ``ctx.width`` under ``ctx.param``.

What a layer *is* (owns weights, mixes pixels, ...) is declared once, in its
:class:`Caps`, and read by one tree walk (:meth:`Layer.walk`) in the kernel
engine, the finite model and the DMFT spec reader.

Widths never appear in the spec: a ``Dense`` whose ``out`` is unset is a
hidden layer (infinite for kernels, ``width`` for finite networks); ``out=k``
fixes it (a readout).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp

from owidth import _checks
from owidth.kernels.state import KState
from owidth.param import Parametrization

__all__ = ["Caps", "Dim", "Tape", "Rng", "FiniteCtx", "Layer", "WeightLayer", "KernelParam", "has_bias", "ntk_terms",
           "own_ntk", "zero_padding", "masks_through", "after", "init_weights", "enter_weights", "check_layers",
           "walk_any", "walk_all"]


@dataclasses.dataclass(frozen=True)
class Caps:
    """What a layer is, declared once per class (``caps = Caps(...)``) and read by :meth:`Layer.walk`.

    Attributes:
      weights: owns parameters.
      dense: a fully connected map ``x W + b`` of the last axis (``Dense``): its NTK has the
        structured form ``(x x'^T) (dz . dz')`` and the DMFT reader takes it as a layer.
      elementwise: a parameter-free pointwise function (activations).
      nonlinear: an elementwise function other than the identity (two in a row compose, by
        quadrature).
      spatial: acts on ``(batch, *spatial, channels)`` axes (convolutions, pooling, flattening,
        sequence layers): kernels of nets with such a layer carry pixel axes.
      mixes_pixels: its output pixel mixes several input pixels of one input (pooling,
        attention): kernels then need all pixel-pair covariances.
      pixel_var: its kernel rule accepts per-pixel variances (``KState.var_pixel``), as the tiled
        kernel of pooled CNNs replays them.
      attention: an attention layer (its limit depends on the logit exponent).
      branches: a fan-out (sum of branches); ``False`` for sequential combinators.
      transparent: a combinator: asks nothing itself, its children answer ("all" questions count it
        as yes).
      adjacency: reads the graph adjacency passed as ``adjacency=`` (``Aggregate``).
      random: draws random numbers in the forward pass given a key (``Dropout``'s masks, train mode).
    """

    weights: bool = False
    dense: bool = False
    elementwise: bool = False
    nonlinear: bool = False
    spatial: bool = False
    mixes_pixels: bool = False
    pixel_var: bool = False
    attention: bool = False
    branches: bool = False
    transparent: bool = False
    adjacency: bool = False
    random: bool = False

    def but(self, **changes) -> Caps:
        """A copy with ``changes`` (for subclasses: ``caps = Parent.caps.but(pixel_var=False)``)."""
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class Dim:
    """Feature dimension flowing through a finite network (internal)."""

    size: int
    scales: bool  # True when it is a hidden width (grows with ``width``)
    spatial: tuple[int, ...] = ()  # spatial shape of (batch, *spatial, features) inputs


class Tape:
    """Records weight layers during one trace of a finite network (internal).

    Every weight layer records its input, its scale constants and its output
    (:meth:`WeightLayer._apply`), and adds ``taps[i]`` (zeros) to its output so
    that the gradient with respect to the tap is the back-propagated signal
    ``df/dz`` (the structured empirical NTK); layers add other observables
    (attention logits, ...) with :meth:`observe`.
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
        """Record an intermediate (attention logits, ...) for coordinate checks only."""
        self.coords.append((name, y))


class Rng:
    """The PRNG keys of one forward pass (dropout masks), one per request in trace order (internal)."""

    def __init__(self, key: jax.Array):
        self.key = key
        self.count = 0

    def next(self) -> jax.Array:
        self.count += 1
        return jax.random.fold_in(self.key, self.count)


@dataclasses.dataclass(frozen=True)
class FiniteCtx:
    """Static context of a finite network (internal)."""

    width: int
    param: Parametrization
    tape: Tape | None = dataclasses.field(default=None, compare=False, hash=False)
    adjacency: jax.Array | None = dataclasses.field(default=None, compare=False, hash=False)  # (batch, V, V) graphs
    rng: Rng | None = dataclasses.field(default=None, compare=False, hash=False)  # dropout masks (train mode)
    mask: jax.Array | None = dataclasses.field(default=None, compare=False, hash=False)  # padding (batch, *S)
    depth: int = 0  # residual blocks of the whole network (residual_depth): L of the depth multiplier
    tag: bool = False  # shapes-only init marking the tensors inside residual branches with BRANCH_TAG


# dtype of the shapes-only parameters that a tagging init (FiniteCtx.tag) gives the tensors inside residual
# branches; every other tensor keeps its float dtype
BRANCH_TAG = jnp.int8


def residual_depth(layer) -> int:
    """``L``: the residual blocks (``ow.Residual``) of a network on its main path, ``ow.repeat`` copies
    counted; blocks nested inside a residual branch are not counted again."""
    if getattr(layer, "residual", False):
        return 1
    return sum(residual_depth(child) for child in layer._children())  # ow.repeat lists each copy


def masks_through(layers, mask):
    """``mask`` (padding, ``(batch, *S)``) carried through ``layers`` in order by their ``_mask_out``."""
    for layer in layers:
        if mask is None:
            return None
        mask = layer._mask_out(mask)
    return mask


def after(layer, ctx: FiniteCtx) -> FiniteCtx:
    """The context of the layer that follows ``layer``: its padding carried through ``layer``."""
    return ctx if ctx.mask is None else dataclasses.replace(ctx, mask=layer._mask_out(ctx.mask))


def zero_padding(x: jax.Array, ctx: FiniteCtx) -> jax.Array:
    """``x`` with the padding positions of ``ctx.mask`` zeroed (a no-op without a mask, or once the position
    axes are gone)."""
    if ctx.mask is None or x.shape[:-1] != ctx.mask.shape:
        return x
    return jnp.where(ctx.mask[..., None], jnp.zeros((), x.dtype), x)


def has_bias(b_std) -> bool:
    """Whether a finite weight layer gets a bias tensor: ``b_std > 0`` for a number; always for a JAX scalar,
    whose value may change under ``jax.jit`` while the parameter structure may not (a zero one then
    multiplies the bias by 0)."""
    return isinstance(b_std, jax.Array) or b_std > 0


def init_weights(key, w_shape: tuple[int, ...], out_size: int, scale, has_bias: bool) -> dict:
    """``{"w": N(0, w_init^2), "b": N(0, b_init^2)}`` parameters of a weight layer (internal)."""
    kw, kb = jax.random.split(key)
    dtype = jnp.result_type(float)
    params = {"w": scale.w_init * jax.random.normal(kw, w_shape, dtype)}
    if has_bias:
        params["b"] = scale.b_init * jax.random.normal(kb, (out_size,), dtype)
    return params


class Layer:
    """Base class of all layers. Subclasses are frozen dataclasses and declare their :class:`Caps`.

    References:
      - Novak et al. 2020, Neural Tangents: Fast and Easy Infinite Neural Networks in Python. <https://arxiv.org/abs/1912.02803>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> net = ow.serial(ow.Dense(), ow.Relu(), ow.Dense(out=1))
      >>> isinstance(net, ow.Layer), [type(layer).__name__ for layer in net.walk()]
      (True, ['Serial', 'Dense', 'Relu', 'Dense'])
      >>> hash(net) == hash(ow.serial(ow.Dense(), ow.Relu(), ow.Dense(out=1)))   # a static jit argument
      True
    """

    caps = Caps()
    _standard_ntk = False  # a weight layer whose kernel rule reads KState.sp_width (ow.kernel(..., param=ow.SP))

    def __post_init__(self):
        _checks.convert(self)  # the converters of fields declared with owidth._checks.field

    def _kernel(self, ks: KState) -> KState:
        raise NotImplementedError

    def _init(self, key: jax.Array, dim: Dim, ctx: FiniteCtx) -> tuple[Any, Dim]:
        raise NotImplementedError

    def _apply(self, params: Any, x: jax.Array, dim: Dim, ctx: FiniteCtx) -> tuple[jax.Array, Dim]:
        raise NotImplementedError

    def _children(self) -> tuple:
        return ()

    def walk(self) -> Iterator[Layer]:
        """This layer and every layer inside it, depth first in network order."""
        yield self
        for child in self._children():
            yield from child.walk()

    def _takes_padding(self) -> bool:
        """Whether the layer's rules handle padded inputs (``owidth.layers.masking``): pointwise layers do
        (padding is zeroed where positions mix); layers that change the position grid must say so."""
        return not self.caps.spatial or self.caps.transparent

    def _mask_out(self, mask: jax.Array) -> jax.Array | None:
        """The padding ``(batch, *S')`` of the layer's output given its input's ``(batch, *S)`` (True =
        padding; ``owidth.layers.masking``), or None once no position axis is left. Default: the grid is kept."""
        return mask

    def _has_weights(self) -> bool:
        return walk_any(self, "weights")

    def _ends_in_weights(self) -> bool:
        """True when the output is a fresh zero-mean weight layer (independent of any other branch)."""
        return self.caps.weights

    def _odd_linear(self) -> bool:
        """True for layers ``g`` with ``g(-z) = -g(z)`` and no parameters (identity, pooling, flatten,
        LayerNorm): after a weight layer, flipping its weights and biases flips the output, so the
        output stays uncorrelated with any other branch."""
        return False

    def _kernel_extra_states(self) -> int:
        """Kernel-sized arrays this layer's rule keeps alive beyond the engine's usual count (per entry:
        a quadrature rule's node grids), for the kernel's memory estimate."""
        return 0


def walk_any(net: Layer, capability: str) -> bool:
    """True when some layer of ``net`` declares ``capability``."""
    return any(getattr(layer.caps, capability) for layer in net.walk())


def walk_all(net: Layer, capability: str) -> bool:
    """True when every layer of ``net`` declares ``capability`` (combinators, ``transparent``, count as yes)."""
    return all(getattr(layer.caps, capability) or layer.caps.transparent for layer in net.walk())


class WeightLayer(Layer):
    """A layer that owns weights and ends in them (Dense, Conv, Embedding, Attention).

    Subclasses define ``_forward(params, x, dim, ctx) -> (y, out_dim, scale)``; :meth:`_apply`
    runs it and records the layer on the tape of a traced run (inputs, scales and outputs of
    every weight layer: coordinate checks, feature observables and the structured NTK read it).
    ``_coord`` names the output in coordinate checks.
    """

    caps = Caps(weights=True)
    _coord = "dense"

    def _forward(self, params: Any, x: jax.Array, dim: Dim, ctx: FiniteCtx):
        raise NotImplementedError

    def _apply(self, params, x, dim, ctx):
        y, out, scale = self._forward(params, x, dim, ctx)
        if ctx.tape is not None:
            y = ctx.tape.record(x, scale, "b" in params, y, self._coord)
        return y, out


def enter_weights(ks: KState, fixed_message: str) -> tuple[KState, bool]:
    """Kernel of a weight layer's input: refuse a fixed-width (out=k) input; also say whether it is the
    network's input (whose incoming NTK is zero)."""
    if ks.fixed:
        raise ValueError(fixed_message)
    return ks.materialize(), ks.is_input


def check_layers(where: str, layers) -> tuple[Layer, ...]:
    layers = tuple(layers)
    if not layers:
        raise ValueError(f"{where} needs at least one layer")
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            hint = " (did you forget the parentheses, e.g. ow.Relu() instead of ow.Relu?)" if isinstance(layer, type) else ""
            raise TypeError(f"{where}: item {i} is {layer!r}, not an owidth layer{hint}")
    return layers


def ntk_terms(ks: KState, *, channels: int | None, taps: int, w_std, b_std) -> tuple:
    """``(cw, cb)``: the NTK a weight layer adds from its own weights and bias, ``cw * m + cb``, with ``m``
    the covariance of its input averaged over the ``taps`` inputs of each unit (1 for ``Dense``, the
    filter area for a convolution), which the NNGP rule multiplies by ``w_std^2``.

    NTK parametrization (``ks.sp_width`` None): ``(w_std^2, b_std^2)``, the parameters being the
    normalised ``w = W sqrt(fan_in) / w_std``. Standard parametrization (neural-tangents'
    ``parameterization='standard'``, Sohl-Dickstein et al. 2020): the raw ``W`` and ``b`` are trained,
    so ``(fan_in, 1)`` (0 without a bias), ``fan_in = taps * channels`` with ``channels`` the input's
    (``None``: a hidden layer's, ``ks.sp_width`` times ``ks.width_mult``)."""
    if ks.sp_width is None:
        return w_std**2, b_std**2
    fan_in = taps * (ks.sp_width * ks.width_mult if channels is None else channels)
    return float(fan_in), 1.0 if has_bias(b_std) else 0.0


def own_ntk(ks: KState, channels: int | None, taps: int, layer, unscaled):
    """``cw * unscaled + cb`` (:func:`ntk_terms`) for a layer with ``w_std`` and ``b_std`` fields."""
    cw, cb = ntk_terms(ks, channels=channels, taps=taps, w_std=layer.w_std, b_std=layer.b_std)
    return cw * unscaled + cb


@dataclasses.dataclass(frozen=True)
class KernelParam(Layer):
    """``net`` whose kernel is taken under a parametrization other than the default NTP one (internal: made
    by ``ow.kernel(..., param=p)``). ``sp_width``: the standard parametrization's NTK at that hidden width
    (``ow.SP``; the NNGP is unchanged); ``depth_mult``: the residual branches' ``(L / L0)^-alpha``. The
    finite network reads both from the parametrization itself."""

    caps = Caps(transparent=True)

    net: Layer
    sp_width: int | None = None
    depth_mult: float = 1.0

    def _children(self) -> tuple:
        return (self.net,)

    def _kernel(self, ks):
        return self.net._kernel(ks.replace(sp_width=self.sp_width, depth_mult=self.depth_mult))

    def _kernel_extra_states(self) -> int:
        return self.net._kernel_extra_states()
