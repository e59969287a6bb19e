"""Masked inputs: variable-length sequences, sets and graphs padded to one shape (neural-tangents' masking).

A position (pixel, token, node) of an input ``(batch, *S, C)`` is *padding* when all its ``C``
features are NaN, or where a boolean ``mask`` (``(batch, *S)``, True = padding) says so. Every
interpretation treats padding alike, as neural-tangents does (Novak et al. 2020, "masking"):

* padding positions are zero after every layer: they feed nothing into a convolution, an
  aggregation or a flattened readout, and entries of the kernels involving them are zero;
* ``GlobalAvgPool`` averages over the valid positions only (``GlobalSumPool`` sums them);
* ``Attention`` attends to the valid keys only (a softmax over them), and positional embeddings are
  zero at padding.

So an input padded with NaN has the kernel and the finite-network output of the unpadded input
(exactly so where the position grid is kept: Dense, activations, LayerNorm, Dropout, SAME stride-1
convolutions, Aggregate, Attention). Layers that change the grid carry the mask by neural-tangents'
rules (each layer's ``_mask_out``; the kernel and the finite network use the same one):

* strided or VALID convolutions (``Conv``, ``ConvLocal``) and windowed pooling (``AvgPool``,
  ``SumPool``): an output position is padding when the input position at its window's centre is;
* ``ConvTranspose``: every output position that a padding input reaches is padding;
* ``ImageResize``: an output position is padding when no valid position reaches it (its resized
  valid indicator is exactly 0);
* ``Index`` selects the mask with the positions; ``concat`` along a position axis concatenates the
  branches' masks; ``TakePosition(k)`` takes each sequence's k-th *valid* position;
* ``Flatten``, ``GlobalAvgPool``, ``GlobalSumPool`` end it.

On these grids "padded = cut" holds only where the windows of the padded and the cut input agree
(e.g. not for VALID windows that straddle the end). An input left with no valid position after such
a layer gives the layers' biases as outputs (neural-tangents zeroes its kernel entries instead).
``Embedding`` (integer tokens) does not take padding yet.

The mask rides in the data (NaN) through tiles and vmaps; it is read back with :func:`split`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from owidth.kernels.spatial import out_shape_and_pads
from owidth.kernels.state import KState
from owidth.layers._base import Caps, Layer

__all__ = ["Masked", "split", "remask", "weigh", "average_weights", "to_nan", "check_padding", "check_layers",
           "prepare", "carry", "centre"]


def split(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(x with padding zeroed, mask)``: the mask (batch, *S) is True where all features are NaN."""
    mask = jnp.all(jnp.isnan(x), axis=-1)
    return jnp.where(mask[..., None], 0.0, x).astype(x.dtype), mask


def to_nan(name: str, x, mask, *, where: str):
    """``x`` with the positions of a boolean ``mask`` (batch, *S) set to NaN (the in-data form of a mask)."""
    mask = np.asarray(mask)
    if mask.dtype != bool:
        raise TypeError(f"{where}: the mask of {name} must be boolean (True = padding), got dtype {mask.dtype}")
    if tuple(mask.shape) == tuple(np.shape(x)) and np.issubdtype(np.result_type(x), np.integer):
        raise NotImplementedError(f"{where}: a mask for the integer tokens {name} (an Embedding's input): Embedding "
                                  "does not take padding yet; cut or bucket the sequences by length")
    x = np.asarray(x, dtype=float) if not isinstance(x, jax.core.Tracer) else x
    if tuple(mask.shape) != tuple(np.shape(x)[:-1]):
        raise ValueError(f"{where}: the mask of {name} has shape {mask.shape}; it must be {tuple(np.shape(x)[:-1])}, "
                         f"{name}'s shape without its feature axis (True = padding)")
    return jnp.where(jnp.asarray(mask)[..., None], jnp.nan, x) if isinstance(x, jax.core.Tracer) else \
        np.where(mask[..., None], np.nan, x)


def check_padding(name: str, x, *, where: str) -> bool:
    """Whether concrete ``x`` holds NaN padding; refuses NaN that is not a whole position, inputs without
    position axes and inputs with no valid position. Tracers: False (nothing can be read)."""
    if isinstance(x, jax.core.Tracer):
        return False
    host = np.asarray(x)
    if not np.issubdtype(host.dtype, np.floating):
        return False
    nan = np.isnan(host)
    if not nan.any():
        return False
    if host.ndim < 3:
        raise ValueError(f"{where}: {name} contains NaN; NaN marks padding positions of (batch, *positions, features) "
                         "inputs (all features of a position NaN), and these inputs have no position axis. "
                         "Clean or impute the data.")
    whole = nan.all(axis=-1)
    if np.any(nan.any(axis=-1) & ~whole):
        raise ValueError(f"{where}: {name} has positions where only some features are NaN; NaN marks padding only "
                         "when all features of a position are NaN (use mask= to give padding explicitly)")
    if np.any(whole.reshape(whole.shape[0], -1).all(axis=1)):
        raise ValueError(f"{where}: an input of {name} is padding everywhere; each input needs a valid position")
    return True


def check_layers(net: Layer, *, where: str) -> None:
    """Refuse masked inputs for nets with a layer that does not take padding (before compiling)."""
    bad = sorted({type(layer).__name__ for layer in net.walk() if not layer._takes_padding()})
    if bad:
        raise NotImplementedError(
            f"{where}: the input has padding (NaN positions or mask=), which {', '.join(bad)} does not take yet "
            "(owidth.layers.masking lists the rules of the layers that do). Drop the padding (cut or bucket the "
            "inputs by length) or use another layer.")


def carry(out: KState, mask_fn) -> KState:
    """``out`` (a layer's output state) with its masks mapped by ``mask_fn`` (the layer's ``_mask_out``)."""
    if out.mask1 is None:
        return out
    return out.replace(mask1=mask_fn(out.mask1), mask2=None if out.mask2 is None else mask_fn(out.mask2))


def centre(mask: jax.Array, window, strides, padding: str) -> jax.Array:
    """The padding of a windowed layer's output (strided or VALID convolutions and pooling): each output
    position is padding when the input position at its window's centre is (neural-tangents' rule, for
    windows ``st s - lo + d``, ``d < f``: the centre ``d = (f - 1) // 2``)."""
    out, pads = out_shape_and_pads("padding", tuple(mask.shape[1:]), tuple(window), tuple(strides), padding)
    idx = (slice(None),) + tuple(slice((f - 1) // 2 - lo, (f - 1) // 2 - lo + (o - 1) * st + 1, st)
                                 for f, st, (lo, _), o in zip(window, strides, pads, out))
    return mask[idx]


def remask(ks: KState) -> KState:
    """``ks`` with every entry involving a padding position zeroed (covariances, variances, means)."""
    if ks.mask1 is None or ks.is_input or not ks.spatial:
        return ks
    v1 = ~ks.mask1
    return weigh(ks, v1, v1 if ks.mask2 is None else ~ks.mask2)


def average_weights(mask: jax.Array) -> jax.Array:
    """Per-position weights ``|S| / (valid count)`` at valid positions, 0 at padding: a mean over all
    positions of weighted entries is then the mean over the valid ones."""
    valid = ~mask
    count = jnp.sum(valid.reshape(valid.shape[0], -1), axis=1)
    size = np.prod(mask.shape[1:])
    return jnp.where(valid, (size / count).reshape((-1,) + (1,) * (mask.ndim - 1)), 0.0)


def weigh(ks: KState, w1: jax.Array, w2: jax.Array) -> KState:
    """``ks`` with entry ``(i, s; j, t)`` multiplied by ``w1[i, s] w2[j, t]`` (booleans: kept or zeroed), the
    same-input variances by ``w[i, s] w[i, t]`` and the means by ``w[i, s]``."""
    nsp = len(ks.spatial)
    v1, v2 = w1, w2
    ones = (1,) * nsp
    both = (lambda a, b: a & b) if v1.dtype == bool else (lambda a, b: a * b)
    if ks.full:
        pair = both(v1.reshape(v1.shape[:1] + (1,) + v1.shape[1:] + ones),
                    v2.reshape((1,) + v2.shape[:1] + ones + v2.shape[1:]))
    else:
        pair = both(v1[:, None], v2[None, :])

    def keep(a, m):
        if a is None:
            return None
        if m.dtype == bool:
            return jnp.where(m, a, jnp.zeros((), a.dtype))
        return a * m.astype(a.dtype)

    def var(a, v):
        if a is None:
            return None
        if a.ndim == v.ndim + nsp:  # all position pairs (n, *S, *S)
            return keep(a, both(v.reshape(v.shape + ones), v.reshape(v.shape[:1] + ones + v.shape[1:])))
        return keep(a, v)

    return ks.replace(nngp=keep(ks.nngp, pair), ntk=keep(ks.ntk, pair), var1=var(ks.var1, v1),
                      var2=var(ks.var2, v2), mean1=keep(ks.mean1, v1), mean2=keep(ks.mean2, v2))


@dataclasses.dataclass(frozen=True)
class Masked(Layer):
    """``net`` on inputs with NaN padding (internal: ``ow.kernel`` wraps a net whose inputs have padding).

    Reads the masks from the data, zeroes the padding, runs ``net`` (whose layers read ``KState.mask1``
    and ``mask2``) and zeroes padding entries of a spatial output."""

    caps = Caps(transparent=True)

    net: Layer

    def _children(self) -> tuple:
        return (self.net,)

    def _kernel_extra_states(self) -> int:
        return self.net._kernel_extra_states()

    def _kernel(self, ks):
        x1, m1 = split(ks.x1)
        x2, m2 = (None, None) if ks.x2 is None else split(ks.x2)
        out = self.net._kernel(ks.replace(x1=x1, x2=x2, mask1=m1, mask2=m2))
        return remask(out.materialize()).replace(mask1=None, mask2=None)


def prepare(where: str, net, x1, x2, mask):
    """``(x1, x2, padded)``: a ``mask`` (``m1``, or ``(m1, m2)`` with ``x2``) turned into NaN padding, and
    whether the inputs have padding; then every layer of ``net`` must take it (checked here, before
    compiling)."""
    if mask is not None:
        if x2 is not None and not (isinstance(mask, tuple) and len(mask) == 2):
            raise ValueError(f"{where}: with x2 given, mask must be a pair (m1, m2) of boolean arrays")
        m1, m2 = mask if x2 is not None else (mask, None)
        x1 = to_nan("x1", x1, m1, where=where)
        x2 = x2 if m2 is None else to_nan("x2", x2, m2, where=where)
    padded = check_padding("x1", x1, where=where)
    padded = (x2 is not None and check_padding("x2", x2, where=where)) or padded
    padded = padded or mask is not None  # under an outer jax.jit the NaN cannot be read back: the mask says so
    if padded and isinstance(net, Layer):
        check_layers(net, where=where)
    return x1, x2, padded
