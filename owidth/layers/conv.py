"""Spatial layers: convolutions, pooling, flattening (channels-last inputs).

Inputs are ``(batch, *spatial, channels)``: NWC for 1-D, NHWC for 2-D. A
``Conv`` whose ``out`` is unset has ``width`` channels in a finite network.

Kernels (Arora et al. 2019, CNTK; Novak et al. 2019) act on pixel
covariances (see :mod:`owidth.kernels.spatial`). ``ow.kernel`` keeps only
what the architecture needs, decided by a static look at the spec
(the ``mixes_pixels`` capability): without pooling, only same-pixel covariances
(shape ``(n1, n2, *S)``); with ``AvgPool``/``GlobalAvgPool`` anywhere, all
pixel pairs (``(n1, n2, *S, *S)``).
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import jax
import jax.numpy as jnp

from owidth import _checks
from owidth.kernels import spatial as sp
from owidth.layers import masking
from owidth.kernels.state import KState, self_var
from owidth.layers._base import Caps, Dim, FiniteCtx, Layer, WeightLayer, has_bias, init_weights, own_ntk, zero_padding
from owidth.param import Role

__all__ = ["Conv", "ConvFields", "AvgPool", "SumPool", "Flatten", "GlobalAvgPool", "GlobalSumPool", "linear_pixels"]


def _need_spatial(ks: KState, where: str) -> None:
    if not ks.spatial:
        raise ValueError(
            f"ow.kernel: {where} needs spatial inputs of shape (batch, *spatial, channels); here its input "
            "has no spatial axes (rank-2 data, or after Flatten/GlobalAvgPool)"
        )


def linear_pixels(ks: KState, fn, *, var_fn=None, spatial, full, mean_fn=None, mixes=True) -> KState:
    """Apply a linear map of the pixel axes to nngp, ntk, the variances and the means.

    ``fn(x, lead)`` maps an array with ``lead`` batch axes; ``mean_fn`` maps the per-pixel means.
    Without x2 the variances are re-read from the diagonal (bit for bit). A map that ``mixes``
    pixels needs the full same-input blocks for its output variances: with per-pixel variances
    (``ks.var_pixel``) it takes them from the :class:`~owidth.kernels.state.VarTape`, and it records
    them there when the tape is recording."""
    nngp, ntk = sp.on_both(lambda x: fn(x, 2), ks.nngp, ks.ntk)
    var_fn = var_fn or fn
    if ks.var_pixel and mixes:
        var1, var2 = ks.tape.take()
    elif ks.var2 is None:
        var1, var2 = self_var(nngp), None
    else:
        var1, var2 = var_fn(ks.var1, 1), var_fn(ks.var2, 1)
    if mixes and ks.tape is not None and ks.tape.recording:
        ks.tape.record(sp.pixel_var(var1, len(spatial), full))
    var_pixel = ks.var_pixel and bool(spatial)
    if var_pixel and ks.var2 is None:
        raise AssertionError("owidth internal: per-pixel variances need x2")
    mean1 = None if ks.mean1 is None or mean_fn is None else mean_fn(ks.mean1)
    mean2 = None if ks.mean2 is None or mean_fn is None else mean_fn(ks.mean2)
    return ks.replace(nngp=nngp, ntk=ntk, var1=var1, var2=var2, spatial=spatial, full=full, mean1=mean1,
                      mean2=mean2, pre=None, act=None, var_pixel=var_pixel)



@dataclasses.dataclass(frozen=True)
class ConvFields(WeightLayer):
    """The fields of convolution-like weight layers (``Conv``, ``ConvTranspose``, ``ConvLocal``), checked:
    ``out``, ``filter_shape``, ``strides`` (default 1 per axis), ``padding``, ``w_std``, ``b_std``."""

    caps = Caps(weights=True, spatial=True, pixel_var=True)

    out: int | None = _checks.field(None, converter=_checks.optional_positive)
    filter_shape: tuple[int, ...] = _checks.field((3, 3), converter=_checks.int_tuple)
    strides: tuple[int, ...] | None = None
    padding: str = _checks.field("SAME", converter=_checks.padding)
    w_std: float = _checks.field(1.0, converter=_checks.std)
    b_std: float = _checks.field(0.0, converter=_checks.std)

    def __post_init__(self):
        super().__post_init__()
        _checks.convert_fields(self, strides=lambda c, n, v: _checks.int_tuple(c, n, v or 1, len(self.filter_shape)))


@dataclasses.dataclass(frozen=True)
class Conv(ConvFields):
    """Convolution over the spatial axes of channels-last inputs, NTK convention.

    ``z = (w_std / sqrt(prod(filter_shape) * C_in)) W * x + b_std b`` with
    ``W, b ~ N(0, 1)``; the number of spatial axes is ``len(filter_shape)``.

    Args:
      out: output channels; ``None`` (default) is a hidden layer (``width``).
      filter_shape: spatial size of the filter, e.g. ``(3, 3)``.
      strides: per spatial axis; default 1.
      padding: ``"SAME"`` or ``"VALID"``.
      w_std, b_std: standard deviations as for ``Dense``.

    References:
      - Novak et al. 2019, Bayesian Deep Convolutional Networks with Many Channels are Gaussian Processes. <https://arxiv.org/abs/1810.05148>
      - Arora et al. 2019, On Exact Computation with an Infinitely Wide Neural Net (CNTK). <https://arxiv.org/abs/1904.11955>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> x = np.ones((2, 4, 4, 1))                  # (batch, height, width, channels)
      >>> net = ow.serial(ow.Conv(filter_shape=(3, 3), padding="VALID"), ow.Relu(), ow.GlobalAvgPool(), ow.Dense(out=1))
      >>> k = ow.kernel(net, x)
      >>> k.nngp.shape
      (2, 2)
      >>> round(float(k.nngp[0, 0]), 4)              # every pixel pair sees the same patch: relu's q / 2
      0.5
    """

    caps = Caps(weights=True, spatial=True, pixel_var=True)
    _coord = "conv"
    _standard_ntk = True


    def _kernel(self, ks: KState) -> KState:
        """CNTK rule (Arora et al. 2019; Novak et al. 2019), ``|F|`` the filter size:

            nngp'(s, t) = w^2 (1/|F|) sum_{d in F} nngp(st s + d, st t + d) + b^2
            ntk'(s, t)  = w^2 (1/|F|) sum_{d in F} ntk(st s + d, st t + d) + nngp'(s, t)

        (``t = s`` in the diagonal representation); out-of-image pixels are zeros.
        """
        if ks.fixed:
            raise ValueError(
                "ow.kernel: a Conv layer follows a layer with a fixed out=k. The infinite-width kernel needs "
                "every weight layer but the readout to be hidden: leave out=None on all but the last one."
            )
        where = f"Conv(filter_shape={self.filter_shape})"
        if ks.is_input:
            return self._kernel_of_data(ks, where)
        ks = masking.remask(ks)  # padding feeds nothing into the windows
        out, pads = sp.out_shape_and_pads(where, ks.spatial, self.filter_shape, self.strides, self.padding)
        w2, b2, size = self.w_std**2, self.b_std**2, math.prod(self.filter_shape)
        nsp = len(self.filter_shape)

        def patch_mean(x, lead, full=ks.full):
            groups = sp.pixel_groups(lead, nsp, full)
            return sp.window_sum(x, groups, self.filter_shape, self.strides, pads, out) / size

        unscaled, ntk = sp.on_both(lambda x: patch_mean(x, 2), ks.nngp, ks.ntk)
        nngp = w2 * unscaled + b2
        own = nngp if ks.sp_width is None else own_ntk(ks, None, size, self, unscaled)
        ntk = None if ntk is None else w2 * ntk + own
        if ks.var2 is None:
            var1, var2 = self_var(nngp), None
        else:  # per-pixel variances (var_pixel) stay per pixel: the same-pixel entries of the rule
            vfull = ks.full and not ks.var_pixel
            var1, var2 = w2 * patch_mean(ks.var1, 1, vfull) + b2, w2 * patch_mean(ks.var2, 1, vfull) + b2
        return masking.carry(ks.replace(nngp=nngp, ntk=ntk, var1=var1, var2=var2, spatial=out, gaussian=True,
                                        fixed=self.out is not None, pre=None, act=None, mean1=None, mean2=None,
                                        width_mult=1), self._mask_out)

    def _kernel_of_data(self, ks: KState, where: str) -> KState:
        """First layer: ``nngp(s, t) = w^2 P1(s) . P2(t) / (|F| C) + b^2`` with ``P`` the image
        patches (zero-padded), one matrix product instead of a window sum over the data covariance;
        the NTK equals the NNGP (no earlier parameters)."""
        x1, x2 = ks.x1, ks.x2
        spatial = tuple(x1.shape[1:-1])
        out, pads = sp.out_shape_and_pads(where, spatial, self.filter_shape, self.strides, self.padding)
        p = math.prod(out)
        fan = math.prod(self.filter_shape) * x1.shape[-1]
        w2, b2 = self.w_std**2, self.b_std**2

        def patches(x):  # (n, P_out, |F| C)
            xp = jnp.pad(x, [(0, 0), *pads, (0, 0)])
            taps = []
            for offs in itertools.product(*[range(f) for f in self.filter_shape]):
                idx = (slice(None),) + tuple(slice(o, o + st * (n - 1) + 1, st)
                                             for o, st, n in zip(offs, self.strides, out)) + (slice(None),)
                taps.append(xp[idx])
            return jnp.stack(taps, -2).reshape(x.shape[0], p, fan)

        g, g1, g2 = sp.gram(patches(x1), None if x2 is None else patches(x2), out, full=ks.full,
                            var_full=ks.full and not ks.var_pixel)
        nngp = w2 * g + b2
        var1, var2 = (self_var(nngp), None) if x2 is None else (w2 * g1 + b2, w2 * g2 + b2)
        own = nngp if ks.sp_width is None else own_ntk(ks, x1.shape[-1], math.prod(self.filter_shape), self, g)
        ntk = own if ks.need_ntk else None
        return masking.carry(ks.replace(x1=None, x2=None, nngp=nngp, ntk=ntk, var1=var1, var2=var2, spatial=out,
                                        gaussian=True, fixed=self.out is not None, pre=None, act=None, mean1=None,
                                        mean2=None, width_mult=1), self._mask_out)

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
        return init_weights(key, (*self.filter_shape, dim.size, out.size), out.size, s, has_bias(self.b_std)), out

    def _takes_padding(self) -> bool:
        return True

    def _mask_out(self, mask):
        return masking.centre(mask, self.filter_shape, self.strides, self.padding)

    def _forward(self, params, x, dim, ctx):
        out, s = self._geometry(dim, ctx)
        x = zero_padding(x, ctx)
        spatial = "".join("HWDUVXYZ"[: len(self.filter_shape)])
        dn = (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C")
        y = jax.lax.conv_general_dilated(x, s.w_mult * params["w"], self.strides, self.padding, dimension_numbers=dn)
        if "b" in params:
            y = y + s.b_mult * params["b"].reshape((1,) * (y.ndim - 1) + (-1,))
        return y, out, s


@dataclasses.dataclass(frozen=True)
class AvgPool(Layer):
    """Average pooling over windows of the spatial axes (channels-last).

    ``y[s] = (1/|W|) sum_{d in W} x[st s + d]``; with ``padding="SAME"``
    out-of-image pixels count as zeros and the divisor stays ``|W|`` (as a
    convolution with a constant filter). Kernel rule, on all pixel pairs
    (Novak et al. 2019):

        K'(s, t) = (1/|W|^2) sum_{d, e in W} K(st s + d, st t + e)

    Args:
      window: spatial window, e.g. ``(2, 2)``.
      strides: per spatial axis; default: the window (non-overlapping).
      padding: ``"VALID"`` (default) or ``"SAME"``.

    References:
      - Novak et al. 2019, Bayesian Deep Convolutional Networks with Many Channels are Gaussian Processes. <https://arxiv.org/abs/1810.05148>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> x = np.ones((1, 4, 4, 1))
      >>> net = ow.serial(ow.Conv(filter_shape=(1, 1)), ow.AvgPool(window=(2, 2)), ow.Flatten(), ow.Dense(out=1))
      >>> k = ow.kernel(net, x)
      >>> k.nngp.shape, float(k.nngp[0, 0])          # constant image: all pixel covariances are 1
      ((1, 1), 1.0)
    """

    caps = Caps(spatial=True, mixes_pixels=True, pixel_var=True)

    window: tuple[int, ...] = _checks.field((2, 2), converter=_checks.int_tuple)
    strides: tuple[int, ...] | None = None
    padding: str = _checks.field("VALID", converter=_checks.padding)

    def __post_init__(self):
        super().__post_init__()
        _checks.convert_fields(self, strides=lambda c, n, v: _checks.int_tuple(c, n, v or self.window, len(self.window)))

    def _odd_linear(self) -> bool:
        return True

    def _geometry(self, spatial):
        return sp.out_shape_and_pads(f"AvgPool(window={self.window})", spatial, self.window, self.strides,
                                     self.padding)

    _divisor = True  # False: SumPool

    def _norm(self) -> float:
        return float(math.prod(self.window)) if self._divisor else 1.0

    def _pool(self, x, lead, groups, spatial):
        out, pads = self._geometry(spatial)
        for group in groups:
            x = sp.window_sum(x, (group,), self.window, self.strides, pads, out) / self._norm()
        return x

    def _takes_padding(self) -> bool:
        return True

    def _mask_out(self, mask):
        return masking.centre(mask, self.window, self.strides, self.padding)

    def _kernel(self, ks):
        if ks.is_input:  # the data itself (padding zeroed): pool it
            return masking.carry(ks.replace(x1=self._finite(ks.x1), x2=None if ks.x2 is None else self._finite(ks.x2)),
                                 self._mask_out)
        _need_spatial(ks, "AvgPool")
        if not ks.full:
            raise AssertionError("owidth internal: AvgPool reached with diagonal pixel covariances")
        ks = masking.remask(ks)  # padding adds zeros to the windows
        out, _ = self._geometry(ks.spatial)
        nsp = len(ks.spatial)

        def fn(x, lead):
            y = self._pool(x, lead, sp.pixel_groups(lead, nsp, True), ks.spatial)
            if lead == 2 and ks.var2 is None:  # the two groups were summed in different orders
                y = sp.mirror(y, nsp)
            return y

        return masking.carry(linear_pixels(ks, fn, spatial=out, full=True,
                                           mean_fn=lambda m: self._pool(m, 1, sp.pixel_groups(1, nsp, False),
                                                                        ks.spatial)), self._mask_out)

    def _finite(self, x):
        out, pads = self._geometry(tuple(x.shape[1:-1]))
        groups = (tuple(range(1, x.ndim - 1)),)
        return sp.window_sum(x, groups, self.window, self.strides, pads, out) / self._norm()

    def _init(self, key, dim, ctx):
        out, _ = self._geometry(dim.spatial)
        return (), dataclasses.replace(dim, spatial=out)

    def _apply(self, params, x, dim, ctx):
        out, _ = self._geometry(dim.spatial)
        return self._finite(zero_padding(x, ctx)), dataclasses.replace(dim, spatial=out)


@dataclasses.dataclass(frozen=True)
class Flatten(Layer):
    """``(batch, *spatial, channels) -> (batch, prod(spatial) * channels)``.

    Kernel rule: the mean over pixels of the same-pixel covariances,
    ``K' = (1/|S|) sum_s K(s, s)`` (the next Dense has fan-in ``|S| C``).

    References:
      - Novak et al. 2019, Bayesian Deep Convolutional Networks with Many Channels are Gaussian Processes. <https://arxiv.org/abs/1810.05148>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> import jax
      >>> model = ow.finite(ow.serial(ow.Conv(filter_shape=(2, 2)), ow.Flatten(), ow.Dense(out=1)), width=3)
      >>> x = np.ones((5, 4, 4, 1))
      >>> model.apply(model.init(jax.random.key(0), x), x).shape
      (5, 1)
    """

    caps = Caps(spatial=True, pixel_var=True)

    def _odd_linear(self) -> bool:
        return True

    def _mask_out(self, mask):
        return None

    def _kernel(self, ks):
        if ks.is_input:
            return ks.replace(x1=ks.x1.reshape(ks.x1.shape[0], -1),
                              x2=None if ks.x2 is None else ks.x2.reshape(ks.x2.shape[0], -1), mask1=None, mask2=None)
        if not ks.spatial:
            return ks
        ks = masking.remask(ks)  # padding positions flatten to zeros
        nsp = len(ks.spatial)

        def fn(x, lead):
            x = sp.pixel_var(x, nsp, True) if ks.full and lead == 1 and not ks.var_pixel else x
            if ks.full and lead == 2:
                p = math.prod(ks.spatial)
                x = jnp.diagonal(x.reshape(x.shape[:2] + (p, p)), axis1=2, axis2=3)
            y = jnp.mean(x.reshape(x.shape[:lead] + (-1,)), axis=-1)
            return sp.mirror(y) if lead == 2 and ks.var2 is None else y

        out = linear_pixels(ks, fn, spatial=(), full=False, mixes=False,
                            mean_fn=lambda m: jnp.mean(m.reshape(m.shape[0], -1), axis=-1))
        return out.replace(width_mult=ks.width_mult * math.prod(ks.spatial), mask1=None, mask2=None)  # |S| per channel

    def _init(self, key, dim, ctx):
        return (), Dim(math.prod(dim.spatial) * dim.size, dim.scales)

    def _takes_padding(self) -> bool:
        return True

    def _apply(self, params, x, dim, ctx):
        return zero_padding(x, ctx).reshape(x.shape[0], -1), Dim(math.prod(dim.spatial) * dim.size, dim.scales)


@dataclasses.dataclass(frozen=True)
class GlobalAvgPool(Layer):
    """Mean over all spatial axes: ``(batch, *spatial, channels) -> (batch, channels)``.

    Kernel rule: the mean over all pixel pairs, ``K' = (1/|S|^2) sum_{s, t} K(s, t)``
    (Arora et al. 2019; Novak et al. 2019).

    References:
      - Novak et al. 2019, Bayesian Deep Convolutional Networks with Many Channels are Gaussian Processes. <https://arxiv.org/abs/1810.05148>
      - Arora et al. 2019, On Exact Computation with an Infinitely Wide Neural Net (CNTK). <https://arxiv.org/abs/1904.11955>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> net = ow.serial(ow.Conv(filter_shape=(3, 3), padding="VALID"), ow.GlobalAvgPool(), ow.Dense(out=1))
      >>> k = ow.kernel(net, np.ones((1, 4, 4, 1)))
      >>> float(k.nngp[0, 0]), float(k.ntk[0, 0])    # constant image: 1; conv NTK 1 plus readout 1
      (1.0, 2.0)
    """

    caps = Caps(spatial=True, mixes_pixels=True, pixel_var=True)
    _reduce = staticmethod(jnp.mean)  # jnp.sum: GlobalSumPool

    def _odd_linear(self) -> bool:
        return True

    def _takes_padding(self) -> bool:
        return True

    def _mask_out(self, mask):
        return None

    def _weights(self, mask):
        """Per-position weights making the reduction one over the valid positions (padding: 0)."""
        return masking.average_weights(mask) if self._reduce is jnp.mean else ~mask

    def _kernel(self, ks):
        if ks.is_input:
            def f(x, m):
                if m is not None:
                    x = x * self._weights(m)[..., None].astype(x.dtype)
                return self._reduce(x, axis=tuple(range(1, x.ndim - 1)))

            m2 = ks.mask1 if ks.mask2 is None else ks.mask2
            return ks.replace(x1=f(ks.x1, ks.mask1), x2=None if ks.x2 is None else f(ks.x2, m2), mask1=None,
                              mask2=None)
        _need_spatial(ks, "GlobalAvgPool")
        if not ks.full:
            raise AssertionError("owidth internal: GlobalAvgPool reached with diagonal pixel covariances")
        if ks.mask1 is not None:  # a reduction over the valid positions only
            w1 = self._weights(ks.mask1)
            ks = masking.weigh(ks, w1, w1 if ks.mask2 is None else self._weights(ks.mask2)).replace(
                mask1=None, mask2=None)

        def fn(x, lead):
            y = self._reduce(x.reshape(x.shape[:lead] + (-1,)), axis=-1)
            if lead == 2 and ks.var2 is None:  # (i, j) and (j, i) may sum the pixel pairs in other orders
                y = sp.mirror(y)
            return y

        return linear_pixels(ks, fn, spatial=(), full=False,
                              mean_fn=lambda m: self._reduce(m.reshape(m.shape[0], -1), axis=-1))

    def _init(self, key, dim, ctx):
        return (), Dim(dim.size, dim.scales)

    def _apply(self, params, x, dim, ctx):
        if ctx.mask is not None and x.shape[:-1] == ctx.mask.shape:
            x = x * self._weights(ctx.mask)[..., None].astype(x.dtype)
        return self._reduce(x, axis=tuple(range(1, x.ndim - 1))), Dim(dim.size, dim.scales)


@dataclasses.dataclass(frozen=True)
class SumPool(AvgPool):
    """Sum pooling over windows of the spatial axes: ``AvgPool`` without the ``1/|W|`` (neural-tangents'
    ``SumPool``); its kernel is ``|W|^2`` times ``AvgPool``'s. Arguments as for :class:`AvgPool`
    (``window``, ``strides`` defaulting to the window, ``padding``).

    References:
      - Novak et al. 2019, Bayesian Deep Convolutional Networks with Many Channels are Gaussian Processes. <https://arxiv.org/abs/1810.05148>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> x = np.ones((1, 4, 4, 1))
      >>> net = ow.serial(ow.Conv(filter_shape=(1, 1)), ow.SumPool(window=(2, 2)), ow.Flatten(), ow.Dense(out=1))
      >>> float(ow.kernel(net, x).nngp[0, 0])          # constant image: (2 x 2)^2
      16.0
    """

    _divisor = False


@dataclasses.dataclass(frozen=True)
class GlobalSumPool(GlobalAvgPool):
    """Sum over all spatial axes: ``(batch, *spatial, channels) -> (batch, channels)`` (neural-tangents'
    ``GlobalSumPool``); its kernel is ``|S|^2`` times ``GlobalAvgPool``'s, ``K' = sum_{s, t} K(s, t)``.

    References:
      - Novak et al. 2019, Bayesian Deep Convolutional Networks with Many Channels are Gaussian Processes. <https://arxiv.org/abs/1810.05148>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> net = ow.serial(ow.Conv(filter_shape=(3, 3), padding="VALID"), ow.GlobalSumPool(), ow.Dense(out=1))
      >>> float(ow.kernel(net, np.ones((1, 4, 4, 1)), get="nngp").nngp[0, 0])    # constant image: 2 x 2 pixels, 4^2
      16.0
    """

    _reduce = staticmethod(jnp.sum)
