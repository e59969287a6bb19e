"""More spatial layers of neural-tangents' ``stax``: transposed convolutions (``ConvTranspose``), locally
connected layers (``ConvLocal``, no weight sharing) and image resizing (``ImageResize``).

Inputs are channels-last, ``(batch, *spatial, channels)``, as for :class:`ow.Conv`. The kernel rules act
on the pixel covariances of :mod:`owidth.kernels.spatial` (same-pixel ``(n1, n2, *S)`` or all pixel
pairs ``(n1, n2, *S, *S)``, as the architecture needs):

* ``ConvTranspose``: a convolution over the input dilated by the strides, so the same-offset window
  sum of ``Conv``'s rule on the dilated, padded covariance; it keeps the same-pixel representation.
* ``ConvLocal``: ``Conv``'s rule on the same-pixel covariances; covariances of different output pixels
  vanish (their weights are independent).
* ``ImageResize``: a fixed linear map ``M`` of each spatial axis, ``K' = M K M^T`` on both pixel axes;
  nearest-neighbour resizing selects pixels and keeps the same-pixel representation, the other methods
  mix pixels (all pixel pairs).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from owidth import _checks
from owidth.kernels import spatial as sp
from owidth.kernels.state import KState, self_var
from owidth.layers import masking
from owidth.layers._base import (Caps, Dim, FiniteCtx, Layer, enter_weights, has_bias, init_weights, own_ntk,
                                 zero_padding)
from owidth.layers.conv import Conv, ConvFields, linear_pixels
from owidth.param import Role

__all__ = ["ConvTranspose", "ConvLocal", "ImageResize"]

_AXES = "HWDUVXYZ"  # names of spatial axes in dimension numbers


def _dimension_numbers(nsp: int) -> tuple[str, str, str]:
    s = _AXES[:nsp]
    return f"N{s}C", f"{s}IO", f"N{s}C"


def _fixed_message(name: str) -> str:
    return (f"ow.kernel: a {name} layer follows a layer with a fixed out=k. The infinite-width kernel needs every "
            "weight layer but the readout to be hidden: leave out=None on all but the last one.")


def _check_rank(where: str, spatial, nsp: int) -> None:
    if len(spatial) != nsp:
        what = "no spatial axes (rank-2 data, or after Flatten/GlobalAvgPool)" if not spatial else \
            f"{len(spatial)} spatial axes {tuple(spatial)}"
        raise ValueError(f"{where} needs inputs with {nsp} spatial axes, shape (batch, *spatial, channels) of rank "
                         f"{nsp + 2}; here its input has {what}. Pass inputs of rank {nsp + 2} or change the layer's "
                         "filter_shape/shape.")


@dataclasses.dataclass(frozen=True)
class _ConvLike(ConvFields):
    """Fields and checks shared by ``ConvTranspose`` and ``ConvLocal`` (as :class:`ow.Conv`'s)."""

    caps = Caps(weights=True, spatial=True, pixel_var=True)


    def _where(self) -> str:
        return f"{type(self).__name__}(filter_shape={self.filter_shape})"

    def _out_dim(self, spatial, ctx: FiniteCtx) -> Dim:
        return Dim(ctx.width, True, spatial) if self.out is None else Dim(self.out, False, spatial)

    def _scale(self, dim: Dim, out: Dim, ctx: FiniteCtx):
        fan_in = math.prod(self.filter_shape) * dim.size
        return ctx.param.dense(Role.of(dim.scales, out.scales), fan_in=fan_in, width=ctx.width, w_std=self.w_std,
                               b_std=self.b_std)


def transpose_geometry(where: str, spatial, filter_shape, strides, padding: str):
    """Output pixel shape and per-axis ``(low, high)`` padding of the dilated input of a transposed
    convolution, as ``jax.lax.conv_transpose`` (and Keras' ``Conv2DTranspose``) lay it out.

    The input of size ``n`` is dilated to ``(n - 1) st + 1`` (``st - 1`` zeros between pixels), padded
    by ``(lo, hi)`` and convolved with stride 1: ``out = n st`` (SAME) or ``n st + max(f - st, 0)``
    (VALID); VALID pads ``f - 1`` on both sides (every tap that touches a pixel), SAME ``f + st - 2``
    in all, ``f - 1`` before it when ``st > f - 1``, else half of it rounded up."""
    _check_rank(where, spatial, len(filter_shape))
    out, pads = [], []
    for n, f, st in zip(spatial, filter_shape, strides):
        if padding == "SAME":
            total = f + st - 2
            lo = f - 1 if st > f - 1 else -(-total // 2)
            out.append(n * st)
        else:
            total = f + st - 2 + max(f - st, 0)
            lo = f - 1
            out.append(n * st + max(f - st, 0))
        pads.append((lo, total - lo))
    return tuple(out), tuple(pads)


@dataclasses.dataclass(frozen=True)
class ConvTranspose(_ConvLike):
    """Transposed convolution ("deconvolution") of channels-last inputs, NTK convention.

    ``z = (w_std / sqrt(|F| C_in)) W *^T x + b_std b`` with ``W, b ~ N(0, 1)`` and ``*^T`` the
    transposed convolution of ``jax.lax.conv_transpose`` (the input dilated by the strides, padded,
    and convolved with stride 1; the filter is not flipped). Output size per axis: ``n st`` (SAME) or
    ``n st + max(f - st, 0)`` (VALID). The fan-in is ``|F| C_in`` (filter area times input channels)
    whatever the strides, as in neural-tangents' ``ConvTranspose``: with ``st > 1`` an output pixel
    meets fewer than ``|F|`` input pixels, so its variance is below that of a ``Conv``.

    Kernel rule, with ``D`` the dilated and padded pixel grid (zeros off the input pixels) and
    ``K_D`` the covariance on it:

        nngp'(s, t) = w^2 (1/|F|) sum_{d in F} K_D(s + d, t + d) + b^2
        ntk'(s, t)  = w^2 (1/|F|) sum_{d in F} ntk_D(s + d, t + d) + nngp'(s, t)

    the same offset ``d`` on both sides (different taps have independent weights), so same-pixel
    covariances need only same-pixel ones (``t = s``).

    Args:
      out: output channels; ``None`` (default) is a hidden layer (``width``).
      filter_shape: spatial size of the filter, e.g. ``(3, 3)``; its length is the number of spatial axes.
      strides: per spatial axis (the upsampling factor); default 1.
      padding: ``"SAME"`` (default, as ``ow.Conv``; NT's default is ``"VALID"``) or ``"VALID"``.
      w_std, b_std: standard deviations as for ``Dense``.

    References:
      - Novak et al. 2020, Neural Tangents: Fast and Easy Infinite Neural Networks in Python (``stax.ConvTranspose``). <https://arxiv.org/abs/1912.02803>
      - Dumoulin & Visin 2016, A guide to convolution arithmetic for deep learning (transposed convolutions, Sec. 4). <https://arxiv.org/abs/1603.07285>
      - Novak et al. 2019, Bayesian Deep Convolutional Networks with Many Channels are Gaussian Processes. <https://arxiv.org/abs/1810.05148>

    Examples:
      >>> import jax
      >>> import numpy as np
      >>> import owidth as ow
      >>> x = np.ones((2, 3, 3, 1))
      >>> up = ow.ConvTranspose(filter_shape=(2, 2), strides=(2, 2))
      >>> ow.kernel(ow.serial(up, ow.Relu(), ow.Flatten(), ow.Dense(out=1)), x).nngp.shape
      (2, 2)
      >>> model = ow.finite(up, width=4)              # 3 x 3 -> 6 x 6 pixels
      >>> model.apply(model.init(jax.random.key(0), x), x).shape
      (2, 6, 6, 4)
      >>> k = ow.kernel(ow.serial(ow.ConvTranspose(filter_shape=(2, 2), strides=(2, 2)), ow.Flatten(), ow.Dense(out=1)), x)
      >>> float(k.nngp[0, 0])     # each output pixel meets 1 of the 4 taps: 1/4 of the input variance 1
      0.25
    """

    _coord = "conv_transpose"
    _standard_ntk = True

    def _geometry(self, spatial):
        return transpose_geometry(self._where(), spatial, self.filter_shape, self.strides, self.padding)

    def _window(self, x, lead: int, groups: int, pads, out):
        """``(1/|F|) sum_d x_D(s + d, ...)`` on ``groups`` pixel-axis groups after ``lead`` batch axes."""
        nsp = len(self.filter_shape)
        cfg = [(0, 0, 0)] * x.ndim
        for g in range(groups):
            for i, ((lo, hi), st) in enumerate(zip(pads, self.strides)):
                cfg[lead + g * nsp + i] = (lo, hi, st - 1)
        xd = jax.lax.pad(x, jnp.zeros((), x.dtype), cfg)
        zero = ((0, 0),) * nsp
        window = sp.window_sum(xd, sp.pixel_groups(lead, nsp, groups == 2), self.filter_shape, (1,) * nsp, zero, out)
        return window / math.prod(self.filter_shape)

    def _takes_padding(self) -> bool:
        return True

    def _mask_out(self, mask):
        """Every output position a padding input reaches is padding (neural-tangents' rule: the transposed
        convolution of the mask with a filter of ones)."""
        ones = jnp.ones((*self.filter_shape, 1, 1), jnp.float32)
        hits = jax.lax.conv_transpose(mask[..., None].astype(jnp.float32), ones, self.strides, self.padding,
                                      dimension_numbers=_dimension_numbers(len(self.filter_shape)))
        return hits[..., 0] > 0.5

    def _kernel(self, ks: KState) -> KState:
        channels = ks.x1.shape[-1] if ks.is_input else None  # the data's, for the standard parametrization
        ks, _ = enter_weights(ks, _fixed_message("ConvTranspose"))
        ks = masking.remask(ks)  # padding feeds nothing into the output
        out, pads = self._geometry(ks.spatial)
        w2, b2 = self.w_std**2, self.b_std**2
        groups = 2 if ks.full else 1
        unscaled, ntk = sp.on_both(lambda x: self._window(x, 2, groups, pads, out), ks.nngp, ks.ntk)
        nngp = w2 * unscaled + b2
        own = nngp if ks.sp_width is None else own_ntk(ks, channels, math.prod(self.filter_shape), self, unscaled)
        ntk = None if ntk is None else w2 * ntk + own
        if ks.var2 is None:
            var1, var2 = self_var(nngp), None
        else:  # per-pixel variances (var_pixel) stay per pixel
            vg = 2 if ks.full and not ks.var_pixel else 1
            var1, var2 = (w2 * self._window(v, 1, vg, pads, out) + b2 for v in (ks.var1, ks.var2))
        return masking.carry(ks.replace(nngp=nngp, ntk=ntk, var1=var1, var2=var2, spatial=out, gaussian=True,
                                        fixed=self.out is not None, pre=None, act=None, mean1=None, mean2=None,
                                        width_mult=1), self._mask_out)

    def _init(self, key, dim, ctx):
        out_spatial, _ = self._geometry(dim.spatial)
        out = self._out_dim(out_spatial, ctx)
        s = self._scale(dim, out, ctx)
        return init_weights(key, (*self.filter_shape, dim.size, out.size), out.size, s, has_bias(self.b_std)), out

    def _forward(self, params, x, dim, ctx):
        out_spatial, _ = self._geometry(dim.spatial)
        out = self._out_dim(out_spatial, ctx)
        s = self._scale(dim, out, ctx)
        want = (*self.filter_shape, dim.size, out.size)
        if params["w"].shape != want:
            raise ValueError(f"ConvTranspose: parameters have shape {params['w'].shape}, expected {want} here; were "
                             "the params made by init() with inputs of this shape and this width?")
        x = zero_padding(x, ctx)
        y = jax.lax.conv_transpose(x, s.w_mult * params["w"], self.strides, self.padding,
                                   dimension_numbers=_dimension_numbers(len(self.filter_shape)))
        if "b" in params:
            y = y + s.b_mult * params["b"].reshape((1,) * (y.ndim - 1) + (-1,))
        return y, out, s


def _pixel_diag(x, lead: int, spatial):
    """Same-pixel entries ``x[..., s, s]`` of an array with all pixel pairs, ``(..., *S, *S) -> (..., *S)``."""
    p = math.prod(spatial)
    d = jnp.diagonal(x.reshape(x.shape[:lead] + (p, p)), axis1=lead, axis2=lead + 1)
    return d.reshape(x.shape[:lead] + tuple(spatial))


def _diag_embed(x, lead: int, spatial):
    """All pixel pairs from same-pixel entries, zero for different pixels, ``(..., *S) -> (..., *S, *S)``."""
    p = math.prod(spatial)
    flat = x.reshape(x.shape[:lead] + (p, 1))
    y = jnp.where(jnp.eye(p, dtype=bool), flat, jnp.zeros((), x.dtype))
    return y.reshape(x.shape[:lead] + tuple(spatial) * 2)


@dataclasses.dataclass(frozen=True)
class ConvLocal(_ConvLike):
    """Locally connected layer (LCN): a convolution with separate weights and biases at every output pixel.

    ``z[s] = (w_std / sqrt(|F| C_in)) sum_{d in F} W[s, d] x[st s + d] + b_std b[s]`` with
    ``W, b ~ N(0, 1)`` (``jax.lax.conv_general_dilated_local``; out-of-image pixels are zeros, as for
    ``Conv``). Parameters: ``w`` of shape ``(*S_out, |F| C_in, C_out)``, ``b`` of shape ``(*S_out, C_out)``.

    Kernel rule: the same-pixel covariances are those of :class:`ow.Conv`,

        nngp'(s, s) = w^2 (1/|F|) sum_{d in F} nngp(st s + d, st s + d) + b^2
        ntk'(s, s)  = w^2 (1/|F|) sum_{d in F} ntk(st s + d, st s + d) + nngp'(s, s)

    and covariances of different output pixels vanish: ``K'(s, t) = 0`` for ``s != t`` (their
    weights and biases are independent). So an LCN followed by ``Flatten`` has the kernel of the CNN,
    and global pooling after it sees no cross-pixel terms (Novak et al. 2019, Sec. 3.2).

    Args:
      out: output channels; ``None`` (default) is a hidden layer (``width``).
      filter_shape: spatial size of each pixel's receptive field, e.g. ``(3, 3)``.
      strides: per spatial axis; default 1.
      padding: ``"SAME"`` (default, as ``ow.Conv``; NT's default is ``"VALID"``) or ``"VALID"``.
      w_std, b_std: standard deviations as for ``Dense``.

    References:
      - Novak et al. 2019, Bayesian Deep Convolutional Networks with Many Channels are Gaussian Processes (LCNs, Sec. 3.2). <https://arxiv.org/abs/1810.05148>
      - Novak et al. 2020, Neural Tangents: Fast and Easy Infinite Neural Networks in Python (``stax.ConvLocal``). <https://arxiv.org/abs/1912.02803>

    Examples:
      >>> import jax
      >>> import numpy as np
      >>> import owidth as ow
      >>> x = np.ones((1, 4, 4, 1))
      >>> lcn = ow.serial(ow.ConvLocal(filter_shape=(3, 3), padding="VALID"), ow.GlobalAvgPool(), ow.Dense(out=1))
      >>> cnn = ow.serial(ow.Conv(filter_shape=(3, 3), padding="VALID"), ow.GlobalAvgPool(), ow.Dense(out=1))
      >>> float(ow.kernel(lcn, x).nngp[0, 0]), float(ow.kernel(cnn, x).nngp[0, 0])   # 2 x 2 pixels: 4 of 16 pairs
      (0.25, 1.0)
      >>> model = ow.finite(lcn, width=3)
      >>> [p["w"].shape for p in model.init(jax.random.key(0), x) if p]      # one 9 x 3 filter per output pixel
      [(2, 2, 9, 3), (3, 1)]
    """

    _coord = "conv_local"
    _standard_ntk = True  # Conv's rule (below) reads the standard parametrization

    def _conv(self) -> Conv:
        return Conv(out=self.out, filter_shape=self.filter_shape, strides=self.strides, padding=self.padding,
                    w_std=self.w_std, b_std=self.b_std)

    def _takes_padding(self) -> bool:
        return True

    def _mask_out(self, mask):
        return masking.centre(mask, self.filter_shape, self.strides, self.padding)  # as Conv

    def _kernel(self, ks: KState) -> KState:
        if ks.fixed:
            raise ValueError(_fixed_message("ConvLocal"))
        spatial = tuple(ks.x1.shape[1:-1]) if ks.is_input else ks.spatial
        ks = masking.remask(ks)  # padding feeds nothing into the windows (Conv's rule below carries the masks)
        out, _ = sp.out_shape_and_pads(self._where(), spatial, self.filter_shape, self.strides, self.padding)
        if not ks.full:  # same-pixel covariances only: the rule of Conv
            return self._conv()._kernel(ks)
        var_full = not ks.var_pixel and (ks.x2 if ks.is_input else ks.var2) is not None  # same-input blocks, all pairs
        diag = ks.replace(full=False)
        if not ks.is_input:
            diag = diag.replace(nngp=_pixel_diag(ks.nngp, 2, spatial),
                                ntk=None if ks.ntk is None else _pixel_diag(ks.ntk, 2, spatial),
                                var1=_pixel_diag(ks.var1, 1, spatial) if var_full else ks.var1,
                                var2=_pixel_diag(ks.var2, 1, spatial) if var_full else ks.var2)
        res = self._conv()._kernel(diag)
        nngp = _diag_embed(res.nngp, 2, out)
        ntk = None if res.ntk is None else _diag_embed(res.ntk, 2, out)
        if res.var2 is None:
            var1, var2 = self_var(nngp), None
        elif var_full:
            var1, var2 = _diag_embed(res.var1, 1, out), _diag_embed(res.var2, 1, out)
        else:
            var1, var2 = res.var1, res.var2
        return res.replace(nngp=nngp, ntk=ntk, var1=var1, var2=var2, full=True)

    def _geometry(self, dim: Dim, ctx: FiniteCtx):
        out_spatial, _ = sp.out_shape_and_pads(self._where(), dim.spatial, self.filter_shape, self.strides,
                                               self.padding)
        out = self._out_dim(out_spatial, ctx)
        return out, self._scale(dim, out, ctx)

    def _init(self, key, dim, ctx):
        out, s = self._geometry(dim, ctx)
        fan = math.prod(self.filter_shape) * dim.size
        kw, kb = jax.random.split(key)
        dtype = jnp.result_type(float)
        params = {"w": s.w_init * jax.random.normal(kw, (*out.spatial, fan, out.size), dtype)}
        if has_bias(self.b_std):  # one bias per output pixel and channel (unshared, as the weights)
            params["b"] = s.b_init * jax.random.normal(kb, (*out.spatial, out.size), dtype)
        return params, out

    def _forward(self, params, x, dim, ctx):
        out, s = self._geometry(dim, ctx)
        want = (*out.spatial, math.prod(self.filter_shape) * dim.size, out.size)
        if params["w"].shape != want:
            raise ValueError(f"ConvLocal: parameters have shape {params['w'].shape}, expected {want} here; were the "
                             "params made by init() with inputs of this shape and this width?")
        x = zero_padding(x, ctx)
        y = jax.lax.conv_general_dilated_local(x, s.w_mult * params["w"], self.strides, self.padding,
                                               self.filter_shape,
                                               dimension_numbers=_dimension_numbers(len(self.filter_shape)))
        if "b" in params:
            y = y + s.b_mult * params["b"][None]
        return y, out, s


_METHODS = {"nearest": "nearest", "linear": "linear", "bilinear": "linear", "trilinear": "linear",
            "triangle": "linear", "cubic": "cubic", "bicubic": "cubic", "tricubic": "cubic",
            "lanczos3": "lanczos3", "lanczos5": "lanczos5"}


def _method(cls: str, name: str, value) -> str:
    if isinstance(value, jax.image.ResizeMethod):
        value = value.name
    if not isinstance(value, str):
        raise TypeError(f"{cls}({name}=...) must be a string or a jax.image.ResizeMethod, got {value!r}")
    method = _METHODS.get(value.lower())
    if method is None:
        raise ValueError(f"{cls}({name}={value!r}) must be one of {', '.join(repr(m) for m in _METHODS)} (the linear "
                         "methods of jax.image.resize)")
    return method


def _resize_shape(cls: str, name: str, value) -> tuple[int, ...]:
    if isinstance(value, (int,)) and not isinstance(value, bool):
        value = (value,)
    try:
        value = tuple(value)
    except TypeError as err:
        raise TypeError(f"{cls}({name}=...) must be a tuple of ints (the output size of each spatial axis), got "
                        f"{value!r}") from err
    if not value or not all(isinstance(v, int) and not isinstance(v, bool) and (v > 0 or v == -1) for v in value):
        raise ValueError(f"{cls}({name}={value!r}) must hold one positive int per spatial axis (-1 keeps that axis), "
                         "e.g. (8, 8) for (batch, H, W, C) images; batch and channels are never resized")
    return tuple(int(v) for v in value)


_RESIZE_CAPS = Caps(spatial=True, mixes_pixels=True, pixel_var=True)


@dataclasses.dataclass(frozen=True)
class ImageResize(Layer):
    """Resize the spatial axes of ``(batch, *spatial, channels)`` activations with ``jax.image.resize``.

    Every method of ``jax.image.resize`` is linear and acts on each spatial axis separately:
    ``y = (M_1 x M_2 x ...) x`` with ``M_i`` the ``(out_i, in_i)`` interpolation matrix of axis ``i``
    (nearest neighbour: one 1 per row; linear, cubic, Lanczos: interpolation weights, with an
    antialiasing filter when downsampling if ``antialias``). Kernel rule: the same map on both pixel
    axes,

        K'(s, t) = sum_{u, v} M(s, u) M(t, v) K(u, v)

    for nngp, ntk and the variances, i.e. ``jax.image.resize`` of the pixel covariances. Nearest
    neighbour selects pixels, ``K'(s, t) = K(u(s), u(t))``, and so keeps the same-pixel representation;
    the other methods mix pixels and make ``ow.kernel`` keep all pixel pairs. Resizing Gaussian
    pre-activations keeps them Gaussian (an activation may follow); resizing post-activations needs a
    weight layer next, as for pooling.

    Args:
      shape: output size of each spatial axis, e.g. ``(8, 8)``; ``-1`` keeps an axis (NT's
        ``shape=(-1, 8, 8, -1)`` is ``(8, 8)`` here: the batch and channels are never resized).
      method: ``"nearest"``, ``"linear"`` (aliases ``"bilinear"``, ``"trilinear"``, ``"triangle"``),
        ``"cubic"`` (``"bicubic"``, ``"tricubic"``), ``"lanczos3"``, ``"lanczos5"``, or a
        ``jax.image.ResizeMethod``. NT's kernel supports only nearest and linear; the others follow
        from the same rule (checked against finite networks).
      antialias: antialiasing filter when downsampling (default ``True``, as ``jax.image.resize`` and NT).

    References:
      - Novak et al. 2020, Neural Tangents: Fast and Easy Infinite Neural Networks in Python (``stax.ImageResize``). <https://arxiv.org/abs/1912.02803>
      - Novak et al. 2019, Bayesian Deep Convolutional Networks with Many Channels are Gaussian Processes (linear maps of pixels). <https://arxiv.org/abs/1810.05148>

    Examples:
      >>> import jax
      >>> import numpy as np
      >>> import owidth as ow
      >>> x = np.random.default_rng(0).normal(size=(2, 4, 4, 3))
      >>> net = ow.serial(ow.Conv(filter_shape=(3, 3)), ow.ImageResize((8, 8), "linear"), ow.Relu(), ow.Flatten(),
      ...                 ow.Dense(out=1))
      >>> ow.kernel(net, x).nngp.shape
      (2, 2)
      >>> model = ow.finite(ow.ImageResize((2, -1), "nearest"), width=1)
      >>> model.apply(model.init(jax.random.key(0), x), x).shape
      (2, 2, 4, 3)
      >>> up = ow.serial(ow.Conv(filter_shape=(1, 1)), ow.ImageResize((8, 8), "nearest"), ow.Flatten(), ow.Dense(out=1))
      >>> same = ow.serial(ow.Conv(filter_shape=(1, 1)), ow.Flatten(), ow.Dense(out=1))
      >>> bool(np.allclose(ow.kernel(up, x).nngp, ow.kernel(same, x).nngp))   # each pixel copied 4 times
      True
    """

    shape: tuple[int, ...] = _checks.field(converter=_resize_shape)
    method: str = _checks.field("linear", converter=_method)
    antialias: bool = _checks.field(True, converter=_checks.boolean)

    @property
    def caps(self) -> Caps:  # nearest neighbour selects pixels: same-pixel covariances suffice
        return _RESIZE_CAPS.but(mixes_pixels=False) if self.method == "nearest" else _RESIZE_CAPS

    def _odd_linear(self) -> bool:
        return True

    def _out(self, spatial, where: str = "ImageResize") -> tuple[int, ...]:
        _check_rank(f"{where}(shape={self.shape})", spatial, len(self.shape))
        return tuple(n if m == -1 else m for n, m in zip(spatial, self.shape))

    def _resize(self, x, lead: int, out):
        """``x`` with each group of pixel axes after ``lead`` batch axes resized to ``out``."""
        groups = (x.ndim - lead) // len(out)
        return jax.image.resize(x, x.shape[:lead] + tuple(out) * groups, self.method, antialias=self.antialias,
                                precision=jax.lax.Precision.HIGHEST)

    def _finite(self, x):
        out = self._out(tuple(x.shape[1:-1]))
        return jax.image.resize(x, (x.shape[0], *out, x.shape[-1]), self.method, antialias=self.antialias,
                                precision=jax.lax.Precision.HIGHEST)

    def _takes_padding(self) -> bool:
        return True

    def _mask_out(self, mask):
        """Output positions that receive nothing from valid positions (their resized valid indicator is exactly
        0 in float32) are padding: neural-tangents' rule (content has precedence over padding)."""
        out = self._out(tuple(mask.shape[1:]))
        valid = jax.image.resize((~mask).astype(jnp.float32), (mask.shape[0], *out), self.method,
                                 antialias=self.antialias)
        return valid == 0

    def _kernel(self, ks: KState) -> KState:
        if ks.is_input:  # the data itself (padding zeroed): resize it
            return masking.carry(ks.replace(x1=self._finite(ks.x1), x2=None if ks.x2 is None else self._finite(ks.x2)),
                                 self._mask_out)
        ks = masking.remask(ks)
        out = self._out(ks.spatial)
        nsp = len(out)
        mixes = self.method != "nearest"

        def fn(x, lead):
            y = self._resize(x, lead, out)
            if mixes and lead == 2 and ks.var2 is None and ks.full:  # exactly symmetric self-kernel
                y = sp.mirror(y, nsp)
            return y

        return masking.carry(linear_pixels(ks, fn, spatial=out, full=ks.full, mixes=mixes,
                                           mean_fn=lambda m: self._resize(m, 1, out)), self._mask_out)

    def _init(self, key, dim, ctx):
        return (), dataclasses.replace(dim, spatial=self._out(dim.spatial))

    def _apply(self, params, x, dim, ctx):
        return self._finite(zero_padding(x, ctx)), dataclasses.replace(dim, spatial=self._out(dim.spatial))
