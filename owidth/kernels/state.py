"""The kernel pytree returned to users and the state threaded through layers."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from owidth.kernels import spatial as spatial_ops

__all__ = ["Kernel", "KState", "VarTape", "self_var"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Kernel:
    """Infinite-width kernels of a network's output, per output unit.

    Attributes:
      nngp: (n1, n2) NNGP covariance ``E[f(x1) f(x2)]`` over random
        initialisations (Neal 1996; Lee et al. 2018), or ``None`` if not
        requested.
      ntk: (n1, n2) neural tangent kernel ``<df(x1)/dtheta, df(x2)/dtheta>``
        in the NTK parametrisation (Jacot et al. 2018), or ``None``.
      var1: (n1,) the NNGP variances ``E[f(x1)^2]``.
      var2: (n2,) the NNGP variances ``E[f(x2)^2]`` (equal to ``var1`` when
        ``x2`` was not given).

    Different output units are independent, so the full output kernel is
    ``nngp ⊗ I_out`` (and likewise for ``ntk``).

    References:
      - Lee et al. 2018, Deep Neural Networks as Gaussian Processes. <https://arxiv.org/abs/1711.00165>
      - Jacot, Gabriel & Hongler 2018, Neural Tangent Kernel: Convergence and Generalization in Neural Networks. <https://arxiv.org/abs/1806.07572>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> k = ow.kernel(ow.Dense(out=1, w_std=2.0), np.array([[1.0, 2.0]]))
      >>> float(k.nngp[0, 0]), float(k.ntk[0, 0])    # w_std^2 |x|^2 / d = 4 * 5 / 2
      (10.0, 10.0)
      >>> k.var1.shape
      (1,)
    """

    nngp: jax.Array | None
    ntk: jax.Array | None
    var1: jax.Array
    var2: jax.Array


@dataclasses.dataclass(frozen=True)
class KState:
    """Second-moment state between layers (internal).

    While ``x1`` is set no weight layer has been applied yet and the state is
    the raw data itself (an activation then acts on the data elementwise).
    Afterwards the state holds per-unit covariances of an infinitely wide
    layer: ``nngp[i, j] = lim (1/n) sum_k z_k(x1_i) z_k(x2_j)`` and
    ``var1``, ``var2`` the matching diagonals.

    Spatial inputs ``(n, *S, C)`` (Arora et al. 2019; Novak et al. 2019):
    ``spatial`` is ``S`` and ``full`` says which pixel covariances are kept.
    Diagonal (``full=False``): ``nngp[i, j, s]`` is the covariance of pixel
    ``s`` of ``x1_i`` with the same pixel of ``x2_j``, shape ``(n1, n2, *S)``,
    and ``var1[i, s]`` the variance, ``(n1, *S)``. Full: ``nngp[i, j, s, t]``,
    ``(n1, n2, *S, *S)``, and ``var1[i, s, t]`` the covariance of pixels
    ``s, t`` of the same input, ``(n1, *S, *S)``. Without ``x2`` the
    variances are the (i, i) diagonal of ``nngp``, bit for bit.
    ``mean1``/``mean2`` (per pixel, ``None`` for zero) are the per-unit
    means ``E z_k(x)``, nonzero after an activation; only ``LayerNorm``
    (which centres its input) needs them.
    """

    x1: jax.Array | None = None
    x2: jax.Array | None = None
    nngp: jax.Array | None = None
    ntk: jax.Array | None = None
    var1: jax.Array | None = None
    var2: jax.Array | None = None
    need_ntk: bool = True
    gaussian: bool = False
    fixed: bool = False  # a weight layer with a fixed ``out`` was applied
    pre: KState | None = None  # the Gaussian state before the last activation (for compositions)
    act: object = None  # that activation
    spatial: tuple[int, ...] = ()  # pixel shape S of (n, *S, C) inputs
    full: bool = False  # keep all pixel-pixel covariances (pooling ahead) rather than the diagonal
    mean1: jax.Array | None = None  # per-unit means E z(x1) per pixel (None: zero)
    mean2: jax.Array | None = None
    var_pixel: bool = False  # full representation with per-pixel variances (n, *S) only (see VarTape)
    adj1: jax.Array | None = None  # graph adjacencies (n1, V, V) / (n2, V, V) of ``ow.kernel(..., adjacency=)``
    adj2: jax.Array | None = None  # (None without x2; read by ``Aggregate``, carried unchanged by other layers)
    # the standard parametrization's NTK (NT's parameterization='standard'): the width of hidden layers, whose
    # weights then contribute fan_in * (input covariance) rather than w_std^2 times it (None: NTK parametrization)
    sp_width: int | None = None
    # the residual branches' depth multiplier (L / L0)^-alpha of ow.kernel(..., param=) (1: none)
    depth_mult: float = 1.0
    # hidden features per unit of width on the feature axis: 1 after a hidden weight layer, |S| after flattening
    # |S| pixels, the sum over the branches of a concatenation (the weights of a fan-in average, and fan-ins)
    width_mult: int = 1
    # padding positions (batch, *S), True = padding, of x1 and x2 (None: no padding; see owidth.layers.masking)
    mask1: jax.Array | None = None
    mask2: jax.Array | None = None
    tape: VarTape | None = dataclasses.field(default=None, compare=False)

    @property
    def pixel_axes(self) -> int:
        """Number of trailing pixel axes of ``nngp``: ``len(S)`` (diagonal) or ``2 len(S)`` (full)."""
        return len(self.spatial) * (2 if self.full else 1)

    @property
    def is_input(self) -> bool:
        return self.x1 is not None

    def replace(self, **changes) -> KState:
        return dataclasses.replace(self, **changes)

    def arrays(self) -> tuple:
        """The arrays of the state (and of ``pre``, recursively) as a pytree: a ``lax.scan`` carry."""
        return (tuple(getattr(self, f) for f in _ARRAYS), None if self.pre is None else self.pre.arrays())

    def with_arrays(self, arrays: tuple) -> KState:
        """This state with the arrays of :meth:`arrays` replaced (the inverse of :meth:`arrays`)."""
        own, pre = arrays
        return self.replace(**dict(zip(_ARRAYS, own)), pre=None if pre is None else self.pre.with_arrays(pre))

    def structure(self) -> tuple:
        """Everything but the array values: which arrays are set, their shapes and dtypes, and the
        flags. Two states of equal structure can be one ``lax.scan`` carry."""
        shapes = tuple(None if a is None else (a.shape, a.dtype) for a in (getattr(self, f) for f in _ARRAYS))
        flags = tuple(getattr(self, f.name) for f in dataclasses.fields(self)
                      if f.name not in _ARRAYS and f.name not in ("pre", "tape"))
        return shapes, flags, self.tape is None, None if self.pre is None else self.pre.structure()

    def materialize(self) -> KState:
        """Turn a raw-data state into covariances ``x1 x2^T / d`` (NTK zero)."""
        if not self.is_input:
            return self
        x1, x2 = self.x1, self.x2
        d = x1.shape[-1]
        if x1.ndim > 2:
            return self._materialize_spatial()
        if x2 is None:
            g = x1 @ x1.T / d
            nngp = 0.5 * (g + g.T)
            # The variances must equal the diagonal bit for bit: correlations
            # of 1 +- ulp would cost sqrt(ulp) ~ 1e-8 in arc-cosine kernels.
            var1, var2 = jnp.diagonal(nngp), None
        else:
            nngp = x1 @ x2.T / d
            var1 = jnp.sum(x1 * x1, axis=-1) / d
            var2 = jnp.sum(x2 * x2, axis=-1) / d
        ntk = jnp.zeros_like(nngp) if self.need_ntk else None
        return self.replace(x1=None, x2=None, nngp=nngp, ntk=ntk, var1=var1, var2=var2)

    def _materialize_spatial(self) -> KState:
        """Pixel covariances of raw ``(n, *S, C)`` data: ``sum_c x1[i, s, c] x2[j, t, c] / C``."""
        x1, x2 = self.x1, self.x2
        spatial, c = tuple(x1.shape[1:-1]), x1.shape[-1]
        p = math.prod(spatial)
        a = x1.reshape(x1.shape[0], p, c)
        b = None if x2 is None else x2.reshape(x2.shape[0], p, c)
        nngp, var1, var2 = spatial_ops.gram(a, b, spatial, full=self.full, var_full=self.full and not self.var_pixel)
        if x2 is None:
            var1 = self_var(nngp)
        ntk = jnp.zeros_like(nngp) if self.need_ntk else None
        return self.replace(x1=None, x2=None, nngp=nngp, ntk=ntk, var1=var1, var2=var2, spatial=spatial)


class VarTape:
    """Per-pixel variances at the layers that mix pixels, recorded once per input and replayed.

    The kernel of two different inputs needs, at each activation, the per-pixel variances of both
    inputs. Conv, activations and Dense map per-pixel variances to per-pixel variances, but pooling
    (``AvgPool``, ``GlobalAvgPool``) needs all pixel pairs of the same input, ``(n, *S, *S)``: as
    costly as the pair itself and as large. ``ow.kernel``'s tiled path therefore computes every
    input's own block once (the diagonal tiles, or one pass per input of ``x2``), where each pooling
    layer *records* the per-pixel variances of its output, and then computes the tiles of different
    inputs with ``KState.var_pixel`` on, where the pooling layers *take* them back in the same
    order (the trace order of the layers, which is fixed). Entries are ``(var1, var2)`` pairs.
    """

    def __init__(self, entries=None):
        self.recording = entries is None
        self.entries = [] if entries is None else list(entries)
        self._pos = 0

    def record(self, var: jax.Array) -> None:
        if self.recording:
            self.entries.append(var)

    def take(self) -> tuple[jax.Array, jax.Array]:
        if self.recording or self._pos >= len(self.entries):
            raise AssertionError("owidth internal: VarTape replayed out of order")
        entry = self.entries[self._pos]
        self._pos += 1
        return entry


_ARRAYS = ("x1", "x2", "nngp", "ntk", "var1", "var2", "mean1", "mean2", "adj1", "adj2", "mask1", "mask2")


def self_var(nngp: jax.Array) -> jax.Array:
    """The (i, i) diagonal of ``nngp`` (n, n, ...) as an (n, ...) array: the variances without ``x2``."""
    return jnp.moveaxis(jnp.diagonal(nngp, axis1=0, axis2=1), -1, 0)
