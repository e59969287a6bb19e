"""Spatial layers: convolutions, pooling, flattening (channels-last inputs).

Inputs are ``(batch, *spatial, channels)``: NWC for 1-D, NHWC for 2-D. A
``Conv`` whose ``out`` is unset has ``width`` channels in a finite network.

Finite networks only in this release: their analytic (infinite-width) kernel
rules, which need pixel-pixel covariances, are tracked in the kernel-engine
issue; ``ow.kernel`` raises ``NotImplementedError`` for them.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from owidth.kernels.state import KState
from owidth.param import Role
from owidth.spec import Dim, FiniteCtx, Layer, _check_weight_layer, init_weights

__all__ = ["Conv", "Flatten", "GlobalAvgPool"]


def _no_kernel(name: str):
    raise NotImplementedError(
        f"ow.kernel: the analytic kernel of {name} is not implemented yet (convolutional NNGP/NTK rules are "
        "planned); finite networks, ow.finite and ow.empirical_ntk support it"
    )


def _int_tuple(cls: str, name: str, value, n: int | None = None) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,) * (n or 1)
    try:
        value = tuple(value)
    except TypeError as err:
        raise TypeError(f"{cls}({name}=...) must be an int or a tuple of ints, got {value!r}") from err
    if not value or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        raise ValueError(f"{cls}({name}={value!r}) must hold positive ints")
    if n is not None and len(value) != n:
        raise ValueError(f"{cls}({name}={value!r}) must have {n} entries, one per spatial axis")
    return value


@dataclasses.dataclass(frozen=True)
class Conv(Layer):
    """Convolution over the spatial axes of channels-last inputs, NTK convention.

    ``z = (w_std / sqrt(prod(filter_shape) * C_in)) W * x + b_std b`` with
    ``W, b ~ N(0, 1)``; the number of spatial axes is ``len(filter_shape)``.

    Args:
      out: output channels; ``None`` (default) is a hidden layer (``width``).
      filter_shape: spatial size of the filter, e.g. ``(3, 3)``.
      strides: per spatial axis; default 1.
      padding: ``"SAME"`` or ``"VALID"``.
      w_std, b_std: standard deviations as for ``Dense``.
    """

    out: int | None = None
    filter_shape: tuple[int, ...] = (3, 3)
    strides: tuple[int, ...] | None = None
    padding: str = "SAME"
    w_std: float = 1.0
    b_std: float = 0.0

    def __post_init__(self):
        _check_weight_layer(self)
        fs = _int_tuple("Conv", "filter_shape", self.filter_shape)
        object.__setattr__(self, "filter_shape", fs)
        object.__setattr__(self, "strides", _int_tuple("Conv", "strides", self.strides or 1, len(fs)))
        if self.padding not in ("SAME", "VALID"):
            raise ValueError(f"Conv(padding={self.padding!r}) must be 'SAME' or 'VALID'")

    def _has_weights(self) -> bool:
        return True

    def _ends_in_weights(self) -> bool:
        return True

    def _kernel(self, ks: KState) -> KState:
        _no_kernel("Conv")

    def _geometry(self, dim: Dim, ctx: FiniteCtx):
        if len(dim.spatial) != len(self.filter_shape):
            raise ValueError(
                f"Conv(filter_shape={self.filter_shape}) needs inputs with {len(self.filter_shape)} spatial axes "
                f"(batch, *spatial, channels); got {len(dim.spatial)} spatial axes {dim.spatial}"
            )
        if self.padding == "SAME":
            spatial = tuple(-(-s // st) for s, st in zip(dim.spatial, self.strides))
        else:
            spatial = tuple((s - f) // st + 1 for s, f, st in zip(dim.spatial, self.filter_shape, self.strides))
            if min(spatial) <= 0:
                raise ValueError(f"Conv: a VALID filter {self.filter_shape} does not fit inputs of size {dim.spatial}")
        out = Dim(ctx.width, True, spatial) if self.out is None else Dim(self.out, False, spatial)
        fan_in = math.prod(self.filter_shape) * dim.size
        scale = ctx.param.dense(Role.of(dim.scales, out.scales), fan_in=fan_in, width=ctx.width, w_std=self.w_std,
                                b_std=self.b_std)
        return out, scale

    def _init(self, key, dim, ctx):
        out, s = self._geometry(dim, ctx)
        return init_weights(key, (*self.filter_shape, dim.size, out.size), out.size, s, self.b_std > 0), out

    def _apply(self, params, x, dim, ctx):
        out, s = self._geometry(dim, ctx)
        spatial = "".join("HWDUVXYZ"[: len(self.filter_shape)])
        dn = (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C")
        y = jax.lax.conv_general_dilated(x, s.w_mult * params["w"], self.strides, self.padding, dimension_numbers=dn)
        if "b" in params:
            y = y + s.b_mult * params["b"].reshape((1,) * (y.ndim - 1) + (-1,))
        return y, out


@dataclasses.dataclass(frozen=True)
class Flatten(Layer):
    """``(batch, *spatial, channels) -> (batch, prod(spatial) * channels)``."""

    def _kernel(self, ks):
        _no_kernel("Flatten")

    def _init(self, key, dim, ctx):
        return (), Dim(math.prod(dim.spatial) * dim.size, dim.scales)

    def _apply(self, params, x, dim, ctx):
        return x.reshape(x.shape[0], -1), Dim(math.prod(dim.spatial) * dim.size, dim.scales)


@dataclasses.dataclass(frozen=True)
class GlobalAvgPool(Layer):
    """Mean over all spatial axes: ``(batch, *spatial, channels) -> (batch, channels)``."""

    def _kernel(self, ks):
        _no_kernel("GlobalAvgPool")

    def _init(self, key, dim, ctx):
        return (), Dim(dim.size, dim.scales)

    def _apply(self, params, x, dim, ctx):
        return jnp.mean(x, axis=tuple(range(1, x.ndim - 1))), Dim(dim.size, dim.scales)
