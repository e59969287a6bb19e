"""Combinators: serial composition, fan-out sums, residual blocks."""

from __future__ import annotations

import dataclasses

import functools
import operator

import jax
import jax.numpy as jnp
import numpy as np

from owidth import _checks
from owidth.kernels import quadrature
from owidth.layers._base import BRANCH_TAG, Caps, Dim, Layer, Rng, after, check_layers, masks_through
from owidth.layers.activations import Identity

__all__ = ["Serial", "Parallel", "Concat", "Product", "Repeat", "serial", "parallel", "concat", "product", "Residual",
           "repeat"]


@dataclasses.dataclass(frozen=True)
class Serial(Layer):
    """Composition ``layers[-1] ∘ ... ∘ layers[0]``; build it with :func:`serial`.

    References:
      - Novak et al. 2020, Neural Tangents: Fast and Easy Infinite Neural Networks in Python. <https://arxiv.org/abs/1912.02803>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> net = ow.serial(ow.Dense(), ow.Relu(), ow.Dense(out=1))
      >>> type(net).__name__, len(net.layers)
      ('Serial', 3)
    """

    caps = Caps(transparent=True)

    layers: tuple[Layer, ...]

    def _ends_in_weights(self) -> bool:
        last = [layer for layer in self.layers if not layer._odd_linear()]
        return bool(last) and last[-1]._ends_in_weights()

    def _odd_linear(self) -> bool:
        return all(layer._odd_linear() for layer in self.layers)

    def _children(self) -> tuple:
        return self.layers

    def _kernel_extra_states(self) -> int:
        """Two nonlinearities in a row compose into one function with quadrature duals (the kink rule at
        its default size, the widest): its node grids."""
        acts = [layer.caps.nonlinear for layer in self.layers]
        return 2 * quadrature.inner_nodes(None, True) if any(a and b for a, b in zip(acts, acts[1:])) else 0

    def _kernel(self, ks):
        layers, i = self.layers, 0
        while i < len(layers):
            period, repeats = _repeats(layers, i)
            if repeats >= _SCAN_REPEATS and ks.tape is None and not ks.spatial:
                ks = _kernel_scanned(layers[i:i + period], repeats, ks)
                i += period * repeats
            else:
                ks = layers[i]._kernel(ks)
                i += 1
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
            ctx = after(layer, ctx)
        return x, dim

    def _mask_out(self, mask):
        return masks_through(self.layers, mask)


def _init_branches(branches, key, dim, ctx) -> tuple[tuple, list]:
    """The branches' parameters (a tuple) and output ``Dim`` s, each branch from its own key."""
    params, dims = [], []
    for b, k in zip(branches, jax.random.split(key, len(branches))):
        p, d = b._init(k, dim, ctx)
        params.append(p)
        dims.append(d)
    return tuple(params), dims


@dataclasses.dataclass(frozen=True)
class Parallel(Layer):
    """Sum of branches applied to the same input (fan-out, then fan-in sum), ``sum_b w_b f_b(x)`` with
    fixed branch multipliers ``weights`` (default all 1; :func:`Residual` sets ``(1, scale)``).

    When of any two branches at least one ends in a fresh zero-mean weight
    layer, the cross covariances vanish and the kernels add:
    ``nngp = sum_b w_b^2 nngp_b``, ``ntk = sum_b w_b^2 ntk_b`` (Novak et al. 2020). At most
    one branch may end otherwise (an identity, an activation); ``ow.kernel``
    refuses other sums, whose kernels need the cross terms.

    References:
      - Novak et al. 2020, Neural Tangents: Fast and Easy Infinite Neural Networks in Python. <https://arxiv.org/abs/1912.02803>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> net = ow.parallel(ow.Dense(), ow.Dense())
      >>> type(net).__name__, len(net.branches)
      ('Parallel', 2)
    """

    caps = Caps(transparent=True, branches=True)

    branches: tuple[Layer, ...]
    weights: tuple[float, ...] | None = None
    residual: bool = False  # built by Residual: (identity, block), the block scaled by the depth multiplier

    def __post_init__(self):
        if self.residual and len(self.branches) != 2:
            raise ValueError("ow.parallel: residual=True needs the two branches (identity, block) of ow.Residual")
        if self.weights is not None:
            w = tuple(self.weights)
            if len(w) != len(self.branches) or not all(
                    isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and np.isfinite(v)
                    for v in w):
                raise ValueError(f"ow.parallel: weights={self.weights!r} must be one finite number per branch "
                                 f"({len(self.branches)})")
            object.__setattr__(self, "weights", tuple(float(v) for v in w))

    def _w(self) -> tuple[float, ...]:
        return (1.0,) * len(self.branches) if self.weights is None else self.weights

    def _ends_in_weights(self) -> bool:
        return all(b._ends_in_weights() for b in self.branches)

    def _children(self) -> tuple:
        return self.branches

    def _kernel(self, ks):
        w = self._depth_weights(ks.depth_mult) or self._w()
        if ks.is_input and not self._has_weights():  # a sum of functions of the data itself: exact
            outs = [b._kernel(ks) for b in self.branches]
            x1 = sum(c * o.x1 for c, o in zip(w, outs))
            x2 = None if ks.x2 is None else sum(c * o.x2 for c, o in zip(w, outs))
            return ks.replace(x1=x1, x2=x2, mask1=outs[0].mask1, mask2=outs[0].mask2)
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

        def total(values, power):  # sum_b w_b^power v_b over the branches that have v
            values = [(c**power) * v for c, v in zip(w, values) if v is not None]
            return sum(values) if values else None

        return ks.replace(
            spatial=outs[0].spatial,
            full=outs[0].full,
            mean1=total([o.mean1 for o in outs], 1),
            mean2=total([o.mean2 for o in outs], 1),
            x1=None,
            x2=None,
            nngp=total([o.nngp for o in outs], 2),
            ntk=total([o.ntk for o in outs], 2) if ks.need_ntk else None,
            var1=total([o.var1 for o in outs], 2),
            var2=None if outs[0].var2 is None else total([o.var2 for o in outs], 2),
            gaussian=all(o.gaussian for o in outs),
            fixed=fixed.pop(),
            pre=None,
            act=None,
            mask1=outs[0].mask1,  # the branches agree on the position grid (and so on its padding)
            mask2=outs[0].mask2,
        )

    def _init(self, key, dim, ctx):
        params, dims = _init_branches(self.branches, key, dim, ctx)
        if len(set(dims)) != 1:
            sizes = ", ".join(f"{d.size}{' (hidden)' if d.scales else ''}" for d in dims)
            raise ValueError(f"ow.parallel: branch output widths differ ({sizes}); a fan-in sum needs equal widths")
        if self.residual and ctx.tag:  # shapes-only run marking the block's tensors (FiniteModel.in_branches)
            params = (params[0], jax.tree.map(lambda a: jnp.zeros(a.shape, BRANCH_TAG), params[1]))
        return tuple(params), dims[0]

    def _depth_weights(self, mult: float) -> tuple[float, ...] | None:
        """``weights`` with a residual block's branch times its depth multiplier ``mult = (L / L0)^-alpha``
        (kernel: ``KState.depth_mult``; finite network: the parametrization's); ``weights`` unchanged
        (None: all 1) for other sums or ``mult = 1``."""
        if not self.residual or mult == 1.0:
            return self.weights
        w = self._w()
        return (w[0], w[1] * mult)

    def _apply(self, params, x, dim, ctx):
        ys = [b._apply(p, x, dim, ctx) for b, p in zip(self.branches, params)]
        weights = self._depth_weights(ctx.param.depth_multiplier(ctx.depth)) if self.residual else self.weights
        if weights is None:
            return sum(y for y, _ in ys), ys[0][1]
        return sum(w * y for w, (y, _) in zip(weights, ys)), ys[0][1]

    def _mask_out(self, mask):
        return self.branches[0]._mask_out(mask)


def _fan_in_outs(where: str, branches, ks, *, independent: bool) -> list:
    """The branches' kernel states for a fan-in other than a sum, materialised and hidden (``out=None``).
    ``independent``: the rule needs the branches' outputs independent, so at most one branch may end
    without a fresh weight layer (as for :class:`Parallel`)."""
    free = [b for b in branches if not b._ends_in_weights()]
    if independent and len(free) > 1:
        raise NotImplementedError(
            f"ow.kernel: {where} with {len(free)} branches that do not end in a weight layer "
            f"({', '.join(type(b).__name__ for b in free)}): their outputs are correlated, and the kernel would "
            "need their joint law. End all but one branch in a Dense (or Conv) layer.")
    outs = [b._kernel(ks) for b in branches]
    if any(o.is_input for o in outs):
        raw = [type(b).__name__ for b, o in zip(branches, outs) if o.is_input]
        raise NotImplementedError(
            f"ow.kernel: {where} of a branch without weight layers ({', '.join(raw)}: a function of the data, with "
            "its fixed number of features) and branches of hidden (infinitely wide) layers: the two kinds of "
            "features do not match in number. Give every branch a weight layer, or apply the fan-in to the data "
            "before the first weight layer.")
    outs = [o.materialize() for o in outs]
    if any(o.fixed for o in outs):
        raise NotImplementedError(
            f"ow.kernel: {where} of a branch ending in a fixed-width layer (out=k): the units of the result would "
            "not share one kernel. Leave out=None on the branches and put the readout after the fan-in.")
    return outs


def _pad_concat(mats, axis: int, diag_axis: int | None):
    """Concatenate ``mats`` along ``axis``; with ``diag_axis`` (a pixel axis that appears twice, for
    full pixel covariances) block-diagonally: zeros between different branches' pixels."""
    if diag_axis is None:
        return jnp.concatenate(mats, axis=axis)
    sizes = [m.shape[diag_axis] for m in mats]
    rows, start = [], 0
    for m, size in zip(mats, sizes):
        pads = [(0, 0)] * m.ndim
        pads[diag_axis] = (start, sum(sizes) - start - size)
        rows.append(jnp.pad(m, pads))
        start += size
    return jnp.concatenate(rows, axis=axis)


@dataclasses.dataclass(frozen=True)
class Concat(Layer):
    """Branches applied to the same input, outputs concatenated along ``axis`` (build it with :func:`concat`).

    Channels (``axis=-1``): the next weight layer reads all ``B n`` units, each from one branch, so
    its input covariance is the average of the branches' (Novak et al. 2020, ``FanInConcat``):

        nngp = (1/B) sum_b nngp_b,    ntk = (1/B) sum_b ntk_b,

    weighted by the branches' numbers of units where they differ (a flattened branch of ``|S|``
    pixels has ``|S| n``).

    Each unit comes from one branch, so no cross-branch covariance enters and the branches may end
    anywhere (in activations too). The result is a mixture of differently distributed units, not
    one Gaussian process, so an activation may not follow directly (a weight layer must). A spatial axis (``1 .. len(S)``
    of ``(batch, *S, C)`` inputs): pixels of different branches are stacked; their covariances
    vanish when every branch ends in a weight layer (which the kernel then requires).

    References:
      - Novak et al. 2020, Neural Tangents: Fast and Easy Infinite Neural Networks in Python. <https://arxiv.org/abs/1912.02803>
    """

    caps = Caps(transparent=True, branches=True)

    branches: tuple[Layer, ...]
    axis: int = -1

    def _children(self) -> tuple:
        return self.branches

    def _ends_in_weights(self) -> bool:
        return all(b._ends_in_weights() for b in self.branches)

    def _mask_out(self, mask):
        masks = [b._mask_out(mask) for b in self.branches]
        if masks[0] is None:
            return None
        axis = self._rank_axis(masks[0].ndim + 1)  # of the activations, whose last axis is the channels
        return masks[0] if axis == masks[0].ndim else jnp.concatenate(masks, axis=axis)

    def _rank_axis(self, rank: int) -> int:
        """``axis`` as a non-negative axis of a rank-``rank`` activation (batch first, channels last)."""
        if not -rank <= self.axis < rank:
            raise ValueError(f"ow.concat: axis={self.axis} is out of range for inputs of rank {rank} "
                             f"(batch, {'*spatial, ' if rank > 2 else ''}features)")
        axis = self.axis % rank
        if axis == 0:
            raise ValueError("ow.concat: axis=0 is the batch axis; concatenate features (axis=-1) or a spatial axis")
        return axis

    def _kernel(self, ks):
        rank = (ks.x1.ndim if ks.is_input else len(ks.spatial) + 2)
        axis = self._rank_axis(rank)
        if ks.is_input and not self._has_weights():  # functions of the data itself: exact
            outs = [b._kernel(ks) for b in self.branches]
            if all(o.is_input for o in outs):
                x1 = jnp.concatenate([o.x1 for o in outs], axis=axis)
                x2 = None if ks.x2 is None else jnp.concatenate([o.x2 for o in outs], axis=axis)
                return ks.replace(x1=x1, x2=x2, **_cat_masks(outs, axis if axis < rank - 1 else None))
        channels = axis == rank - 1
        if not channels and not self._ends_in_weights():
            raise NotImplementedError(
                "ow.kernel: ow.concat along a spatial axis needs every branch to end in a weight layer (Dense or "
                "Conv): then pixels of different branches are independent and their covariances vanish.")
        outs = _fan_in_outs("ow.concat", self.branches, ks, independent=False)
        if channels:
            return self._kernel_channels(ks, outs)
        return self._kernel_spatial(ks, outs, axis - 1)

    def _kernel_channels(self, ks, outs):
        if len({o.nngp.shape for o in outs}) > 1:
            raise ValueError(
                f"ow.concat: branch outputs have different pixel shapes ({sorted(o.spatial for o in outs)}); "
                "concatenating channels needs equal shapes (use the same strides/padding in every branch)")
        # each branch's share of the units: width_mult of them per unit of width (|S| for a flattened branch)
        total = sum(o.width_mult for o in outs)
        weights = [o.width_mult / total for o in outs]

        def mean(name):  # None where every branch has None (a zero mean counts as 0 next to others)
            values = [getattr(o, name) for o in outs]
            if all(v is None for v in values):
                return None
            return sum(w * (0.0 if v is None else v) for w, v in zip(weights, values))

        return ks.replace(spatial=outs[0].spatial, full=outs[0].full, x1=None, x2=None, width_mult=total,
                          nngp=mean("nngp"), ntk=mean("ntk"), var1=mean("var1"), var2=mean("var2"),
                          mean1=mean("mean1"), mean2=mean("mean2"),
                          gaussian=len(outs) == 1 and outs[0].gaussian, fixed=False,
                          pre=outs[0].pre if len(outs) == 1 else None, act=outs[0].act if len(outs) == 1 else None,
                          mask1=outs[0].mask1, mask2=outs[0].mask2)

    def _kernel_spatial(self, ks, outs, k: int):
        """Stack pixel axis ``k`` of the branches' pixel covariances (zero across branches)."""
        nsp = len(outs[0].spatial)
        others = {o.spatial[:k] + o.spatial[k + 1:] for o in outs}
        if len(others) > 1 or any(len(o.spatial) != nsp for o in outs):
            raise ValueError(f"ow.concat: branch outputs have pixel shapes {[o.spatial for o in outs]}, which differ "
                             f"on axes other than the concatenated one (axis={self.axis})")
        full = outs[0].full
        spatial = list(outs[0].spatial)
        spatial[k] = sum(o.spatial[k] for o in outs)

        def cat(arrays, lead: int, pair: bool):
            """``lead`` batch axes first; ``pair``: the pixel axes appear twice (full covariances)."""
            if arrays[0] is None:
                return None
            return _pad_concat(arrays, lead + k, lead + nsp + k if pair else None)

        var_full = full and not ks.var_pixel
        return ks.replace(spatial=tuple(spatial), x1=None, x2=None,
                          nngp=cat([o.nngp for o in outs], 2, full),
                          ntk=cat([o.ntk for o in outs], 2, full) if ks.need_ntk else None,
                          var1=cat([o.var1 for o in outs], 1, var_full),
                          var2=cat([o.var2 for o in outs], 1, var_full),
                          mean1=None, mean2=None, gaussian=all(o.gaussian for o in outs), fixed=False, pre=None, act=None,
                          **_cat_masks(outs, k + 1))

    def _init(self, key, dim, ctx):
        params, dims = _init_branches(self.branches, key, dim, ctx)
        return params, self._out_dim(dims)

    def _out_dim(self, dims):
        rank = len(dims[0].spatial) + 2
        axis = self._rank_axis(rank)
        if axis == rank - 1:
            if len({d.spatial for d in dims}) > 1:
                raise ValueError(f"ow.concat: branch outputs have pixel shapes {[d.spatial for d in dims]}; "
                                 "concatenating channels needs equal shapes")
            scales = {d.scales for d in dims}
            return Dim(sum(d.size for d in dims), True in scales, dims[0].spatial)
        k = axis - 1
        if len({(d.size, d.spatial[:k] + d.spatial[k + 1:]) for d in dims}) > 1:
            raise ValueError(f"ow.concat: along axis {self.axis} the branches must agree on every other axis; got "
                             f"features {[d.size for d in dims]} on pixels {[d.spatial for d in dims]}")
        spatial = list(dims[0].spatial)
        spatial[k] = sum(d.spatial[k] for d in dims)
        return dataclasses.replace(dims[0], spatial=tuple(spatial))

    def _apply(self, params, x, dim, ctx):
        ys = [b._apply(p, x, dim, ctx) for b, p in zip(self.branches, params)]
        out = self._out_dim([d for _, d in ys])
        return jnp.concatenate([y for y, _ in ys], axis=self._rank_axis(x.ndim)), out


def _cat_masks(outs, axis: int | None) -> dict:
    """The branches' paddings concatenated along ``axis`` of ``(batch, *S)`` (None: channels, the first's)."""
    def cat(name):
        masks = [getattr(o, name) for o in outs]
        if masks[0] is None or axis is None:
            return masks[0]
        return jnp.concatenate(masks, axis=axis)
    return {"mask1": cat("mask1"), "mask2": cat("mask2")}


@dataclasses.dataclass(frozen=True)
class Product(Layer):
    """Elementwise product of branches applied to the same input (build it with :func:`product`).

    Branches with independent weights are independent in the infinite-width limit, so (Novak et
    al. 2020, ``FanInProd``)

        nngp = prod_b nngp_b,    ntk = sum_b ntk_b prod_{c != b} nngp_c.

    At most one branch may end without a weight layer (their outputs would be correlated); the
    product of Gaussians is not Gaussian, so a weight layer must follow before an activation.

    References:
      - Novak et al. 2020, Neural Tangents: Fast and Easy Infinite Neural Networks in Python. <https://arxiv.org/abs/1912.02803>
    """

    caps = Caps(transparent=True, branches=True)

    branches: tuple[Layer, ...]

    def _children(self) -> tuple:
        return self.branches

    def _ends_in_weights(self) -> bool:
        return any(b._ends_in_weights() for b in self.branches)

    def _kernel(self, ks):
        if ks.is_input and not self._has_weights():  # functions of the data itself: exact
            outs = [b._kernel(ks) for b in self.branches]
            if all(o.is_input for o in outs):
                x1 = functools.reduce(operator.mul, [o.x1 for o in outs])
                x2 = None if ks.x2 is None else functools.reduce(operator.mul, [o.x2 for o in outs])
                return ks.replace(x1=x1, x2=x2, mask1=outs[0].mask1, mask2=outs[0].mask2)
        outs = _fan_in_outs("ow.product", self.branches, ks, independent=True)
        if len({o.nngp.shape for o in outs}) > 1 or len({o.var1.shape for o in outs}) > 1:
            raise ValueError(f"ow.product: branch outputs have different pixel shapes ({[o.spatial for o in outs]}); "
                             "an elementwise product needs equal shapes")
        nngp, ntk = outs[0].nngp, outs[0].ntk
        for o in outs[1:]:
            ntk = None if ntk is None else ntk * o.nngp + nngp * o.ntk
            nngp = nngp * o.nngp

        def prod(name):
            values = [getattr(o, name) for o in outs]
            return None if values[0] is None else functools.reduce(operator.mul, values)

        zero_mean = any(b._ends_in_weights() for b in self.branches)
        return ks.replace(spatial=outs[0].spatial, full=outs[0].full, x1=None, x2=None, nngp=nngp, ntk=ntk,
                          var1=prod("var1"), var2=prod("var2"),
                          mean1=None if zero_mean else prod("mean1"), mean2=None if zero_mean else prod("mean2"),
                          gaussian=len(outs) == 1 and outs[0].gaussian, fixed=False,
                          pre=outs[0].pre if len(outs) == 1 else None, act=outs[0].act if len(outs) == 1 else None,
                          mask1=outs[0].mask1, mask2=outs[0].mask2)

    def _init(self, key, dim, ctx):
        params, dims = _init_branches(self.branches, key, dim, ctx)
        if len(set(dims)) != 1:
            raise ValueError(f"ow.product: branch outputs differ ({', '.join(_show(d) for d in dims)}); an elementwise "
                             "product needs equal shapes")
        return tuple(params), dims[0]

    def _apply(self, params, x, dim, ctx):
        ys = [b._apply(p, x, dim, ctx) for b, p in zip(self.branches, params)]
        return functools.reduce(operator.mul, [y for y, _ in ys]), ys[0][1]

    def _mask_out(self, mask):
        return self.branches[0]._mask_out(mask)


# A block of layers repeated this many times in a row or more (e.g. ``[Dense(), Erf()] * 50``) runs its
# kernel rule in a ``lax.scan``: XLA then compiles one block, not every copy. Unrolled, compile time grew
# faster than linearly in depth although the program grew linearly (Erf on a 2-core CPU: 3.4 s at depth
# 10, 8.1 s at 20, 31 s at 40); a loop also stops XLA from fusing the layers' elementwise maps into one
# pass over the kernel, which pays for shallow nets, so short runs stay unrolled.
_SCAN_REPEATS = 8
_MAX_PERIOD = 4


def _same(a: Layer, b: Layer) -> bool:
    """``a == b`` for layers with static hyperparameters (traced ones compare as different)."""
    try:
        return bool(a == b) and hash(a) == hash(b)
    except Exception:  # noqa: BLE001 - array hyperparameters: no static equality
        return False


def _repeats(layers, i: int) -> tuple[int, int]:
    """``(period, repeats)``: the block ``layers[i:i + period]`` repeated most often in a row from ``i``
    (the longest stretch of layers; the shortest period on ties)."""
    best = (1, 1)
    for period in range(1, _MAX_PERIOD + 1):
        r = 1
        while i + (r + 1) * period <= len(layers) and all(
                _same(layers[i + k], layers[i + r * period + k]) for k in range(period)):
            r += 1
        if r > 1 and period * r > best[0] * best[1]:
            best = (period, r)
    return best


def _kernel_scanned(block, repeats: int, ks):
    """The kernel rule of ``block`` applied ``repeats`` times: twice unrolled (the state reaches the
    structure it keeps), then in a ``lax.scan`` over the rest if that structure is a fixed point."""
    def apply(s):
        for layer in block:
            s = layer._kernel(s)
        return s

    first = apply(ks)
    second = apply(first)
    if first.structure() != second.structure():  # not a steady state: stay unrolled
        for _ in range(repeats - 2):
            second = apply(second)
        return second

    def body(arrays, _):
        return apply(second.with_arrays(arrays)).arrays(), None

    arrays, _ = jax.lax.scan(body, second.arrays(), None, length=repeats - 2)
    return second.with_arrays(arrays)


def serial(*layers: Layer) -> Serial:
    """Compose layers in order: ``serial(a, b)(x) = b(a(x))``.

    References:
      - Novak et al. 2020, Neural Tangents: Fast and Easy Infinite Neural Networks in Python. <https://arxiv.org/abs/1912.02803>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> net = ow.serial(ow.Dense(w_std=2.0), ow.Relu(), ow.Dense(out=1))
      >>> float(ow.kernel(net, np.ones((1, 2)), get="nngp").nngp[0, 0])   # Dense: 4 q, then relu: half of it
      2.0
    """
    return Serial(check_layers("ow.serial", layers))


def parallel(*branches: Layer) -> Parallel:
    """Apply branches to the same input and sum their outputs.

    References:
      - Novak et al. 2020, Neural Tangents: Fast and Easy Infinite Neural Networks in Python. <https://arxiv.org/abs/1912.02803>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> net = ow.serial(ow.parallel(ow.Dense(), ow.Dense()), ow.Dense(out=1))
      >>> k = ow.kernel(net, np.ones((1, 2)))
      >>> float(k.nngp[0, 0]), float(k.ntk[0, 0])    # two independent branches: q + q; NTK 2 + 2
      (2.0, 4.0)
    """
    return Parallel(check_layers("ow.parallel", branches))


def Residual(*block: Layer, scale: float = 1.0) -> Parallel:  # noqa: N802 - a layer constructor
    """``x + scale * block(x)``: the identity branch plus ``serial(*block)`` times a branch multiplier.

    When the block ends in a weight layer the two branches are uncorrelated
    and the kernels add (Novak et al. 2020); the identity branch may carry a
    post-activation (``Relu()`` then ``Residual(Dense(), Relu(), Dense())``):

        nngp' = nngp + scale^2 nngp_block,    ntk' = ntk + scale^2 ntk_block.

    With ``scale = 1 / sqrt(L)`` over ``L`` blocks the recursion is an Euler step of size ``1/L`` of an
    ODE in depth, so the kernels of depth-``L`` residual nets converge (like ``1/L``) to an
    infinite-depth limit (Hayou et al. 2021; the branch multiplier of depth-muP, Yang et al. 2023 and
    Bordelon et al. 2023); with ``scale = 1`` they grow like ``(1 + c)^L``.

    Under a parametrization with a depth exponent (``ow.DEPTH_MUP``, ``ow.COMPLETEP``, or any with
    ``alpha > 0``) the branch is multiplied by ``(L / L0)^-alpha`` on top of ``scale``, with ``L`` the
    number of residual blocks of the whole network: in ``ow.finite`` networks, and in ``ow.kernel(...,
    param=p)``; the tensors inside the branch then also get the depth learning-rate factors.

    References:
      - Novak et al. 2020, Neural Tangents: Fast and Easy Infinite Neural Networks in Python. <https://arxiv.org/abs/1912.02803>
      - Hayou et al. 2021, Stable ResNet. <https://arxiv.org/abs/2010.12859>
      - Yang et al. 2023, Tensor Programs VI: Feature Learning in Infinite-Depth Neural Networks. <https://arxiv.org/abs/2310.02244>
      - Bordelon et al. 2023, Depthwise Hyperparameter Transfer in Residual Networks. <https://arxiv.org/abs/2309.16620>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> net = ow.serial(ow.Dense(), ow.Residual(ow.Relu(), ow.Dense()), ow.Dense(out=1))
      >>> float(ow.kernel(net, np.ones((1, 2)), get="nngp").nngp[0, 0])   # q + q / 2, q = 1
      1.5
      >>> scaled = ow.serial(ow.Dense(), ow.Residual(ow.Relu(), ow.Dense(), scale=0.5), ow.Dense(out=1))
      >>> float(ow.kernel(scaled, np.ones((1, 2)), get="nngp").nngp[0, 0])   # q + q / 2 / 4
      1.125
    """
    branch = serial(*block) if len(block) != 1 else check_layers("ow.Residual", block)[0]
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.integer, np.floating)) or not np.isfinite(scale):
        raise ValueError(f"ow.Residual(scale={scale!r}) must be a finite number (the branch multiplier)")
    return Parallel((Identity(), branch), None if scale == 1 else (1.0, float(scale)), residual=True)


@dataclasses.dataclass(frozen=True)
class Repeat(Layer):
    """``block`` applied ``n`` times in a row, compiled once (build it with :func:`repeat`).

    Kernel: the block's rule twice unrolled, then a ``lax.scan`` over the other ``n - 2`` copies
    (once the state keeps its structure, as after any hidden layer). Finite network: the
    parameters of the copies are stacked on a leading axis and the forward pass scans over them;
    when the block changes the width of its input (a first ``Dense`` reading the data) the first
    copy has its own parameters. A traced run that records every layer (the structured empirical
    NTK, coordinate checks) is unrolled instead.

    Parameters: a pytree whose leaves have a leading axis of size ``n`` when the block keeps the
    shape of its input, else the pair ``(first copy, the other n - 1 stacked)``.
    """

    caps = Caps(transparent=True)

    block: Layer
    n: int

    def __post_init__(self):
        if not isinstance(self.block, Layer):
            raise TypeError(f"ow.repeat: block must be an owidth layer (or ow.serial(...)), got {self.block!r}")
        object.__setattr__(self, "n", _checks.positive_int("n", self.n, where="ow.repeat"))

    def _children(self) -> tuple:
        return (self.block,) * self.n  # network order: every copy (walk() sees the whole depth)

    def _ends_in_weights(self) -> bool:
        return self.block._ends_in_weights()

    def _odd_linear(self) -> bool:
        return self.block._odd_linear()

    def _kernel_extra_states(self) -> int:
        return self.block._kernel_extra_states()

    def _kernel(self, ks):
        if self.n < 3 or ks.tape is not None:  # too short to loop, or pooling layers record in order
            for _ in range(self.n):
                ks = self.block._kernel(ks)
            return ks
        return _kernel_scanned((self.block,), self.n, ks)

    def _maps(self, dim, ctx):
        """The block's output ``Dim`` for an input ``dim`` (traced on shapes only)."""
        box = []

        def init(k):
            params, out = self.block._init(k, dim, ctx)
            box.append(out)
            return params

        jax.eval_shape(init, jax.ShapeDtypeStruct((), jax.random.key(0).dtype))
        return box[0]

    def _init(self, key, dim, ctx):
        out = self._maps(dim, ctx)
        steady = out == dim
        if not steady:
            if self._maps(out, ctx) != out:
                raise ValueError(
                    f"ow.repeat: the block maps {_show(dim)} features to {_show(out)}, then {_show(out)} to "
                    f"{_show(self._maps(out, ctx))}; a repeated block must give its output the shape of its input "
                    "(after a first copy). End it in a hidden Dense/Conv (out=None) with SAME padding and stride 1, "
                    "or put the layer that changes the shape outside ow.repeat.")
            key, k_first = jax.random.split(key)
            first, _ = self.block._init(k_first, dim, ctx)
        count = self.n if steady else self.n - 1
        stacked = jax.vmap(lambda k: self.block._init(k, out, ctx)[0])(jax.random.split(key, count))
        return (stacked if steady else (first, stacked)), out

    def _apply(self, params, x, dim, ctx):
        count = self.n
        if self._maps(dim, ctx) != dim:
            first, params = params
            x, dim = self.block._apply(first, x, dim, ctx)
            ctx = after(self.block, ctx)
            count -= 1
        if ctx.tape is not None:  # a recording run sees every copy: unrolled
            for i in range(count):
                x, dim = self.block._apply(jax.tree.map(lambda a, i=i: a[i], params), x, dim, ctx)
                ctx = after(self.block, ctx)
            return x, dim

        base = None if ctx.rng is None else ctx.rng.next()

        def body(carry, xs):
            h, mask = carry  # the padding of each copy's input (the grid is the same for every copy)
            p, i = xs
            inner = ctx if base is None else dataclasses.replace(ctx, rng=Rng(jax.random.fold_in(base, i)))
            inner = inner if mask is None else dataclasses.replace(inner, mask=mask)
            return (self.block._apply(p, h, dim, inner)[0], None if mask is None else self.block._mask_out(mask)), None

        (x, _), _ = jax.lax.scan(body, (x, ctx.mask), (params, jnp.arange(count)), length=count)
        return x, dim

    def _mask_out(self, mask):
        return masks_through((self.block,) * self.n, mask)


def _show(dim) -> str:
    return f"{dim.size}{' (hidden)' if dim.scales else ''}" + (f" on pixels {dim.spatial}" if dim.spatial else "")


def repeat(block: Layer, n: int) -> Repeat:
    """``block`` applied ``n`` times in a row: ``repeat(b, 3) == serial(b, b, b)``, compiled once.

    An unrolled net of depth L compiles in time growing with L (faster than linearly on XLA's CPU
    backend); ``repeat`` compiles one copy of the block (three for the kernel: two unrolled while
    the state reaches its steady structure, then one loop body), so ``repeat(block, 1000)``
    compiles as fast as depth 3. Kernels and finite networks equal those of the unrolled
    ``serial(*[block] * n)`` (same random parameters up to their layout: stacked on a leading
    axis, see :class:`Repeat`).

    Args:
      block: a layer or ``ow.serial(...)`` whose output has the shape of its input (after a
        first copy that may change it, e.g. ``serial(Dense(), Relu())`` on raw data).
      n: number of copies, >= 1.

    References:
      - Novak et al. 2020, Neural Tangents: Fast and Easy Infinite Neural Networks in Python (``stax.repeat``). <https://arxiv.org/abs/1912.02803>
      - Xiao et al. 2018, Dynamical Isometry and a Mean Field Theory of CNNs: How to Train 10,000-Layer Vanilla Convolutional Neural Networks. <https://arxiv.org/abs/1806.05393>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> block = ow.serial(ow.Dense(w_std=2**0.5), ow.Relu())
      >>> deep = ow.serial(ow.repeat(block, 100), ow.Dense(out=1))
      >>> k = ow.kernel(deep, np.eye(2), get="nngp")
      >>> round(float(k.nngp[0, 0]), 6)      # the critical ReLU net keeps the variance: 2 q / 2 = q
      0.5
    """
    if isinstance(block, (list, tuple)):
        block = serial(*block)
    if not isinstance(block, Layer):
        hint = " (did you forget the parentheses?)" if isinstance(block, type) else ""
        raise TypeError(f"ow.repeat: block must be an owidth layer or ow.serial(...), got {block!r}{hint}")
    return Repeat(block, n)


def concat(*branches: Layer, axis: int = -1) -> Concat:
    """Apply branches to the same input and concatenate their outputs along ``axis`` (NT's ``FanInConcat``).

    Args:
      branches: layers (or ``ow.serial(...)``) applied to the same input.
      axis: ``-1`` (features/channels, default) or a spatial axis ``1 .. len(S)`` of
        ``(batch, *S, C)`` inputs; not the batch axis.

    References:
      - Novak et al. 2020, Neural Tangents: Fast and Easy Infinite Neural Networks in Python. <https://arxiv.org/abs/1912.02803>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> net = ow.serial(ow.concat(ow.Dense(w_std=1.0), ow.Dense(w_std=2.0)), ow.Dense(out=1))
      >>> float(ow.kernel(net, np.ones((1, 2)), get="nngp").nngp[0, 0])   # the branches' average: (1 + 4) / 2
      2.5
    """
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise TypeError(f"ow.concat: axis must be an int, got {axis!r}")
    return Concat(check_layers("ow.concat", branches), axis)


def product(*branches: Layer) -> Product:
    """Apply branches to the same input and multiply their outputs elementwise (NT's ``FanInProd``).

    References:
      - Novak et al. 2020, Neural Tangents: Fast and Easy Infinite Neural Networks in Python. <https://arxiv.org/abs/1912.02803>

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> net = ow.serial(ow.product(ow.Dense(w_std=2.0), ow.Dense(w_std=3.0)), ow.Dense(out=1))
      >>> k = ow.kernel(net, np.ones((1, 2)))
      >>> float(k.nngp[0, 0]), float(k.ntk[0, 0])   # 4 * 9; NTK 4 * 9 + 9 * 4 + 36
      (36.0, 108.0)
    """
    return Product(check_layers("ow.product", branches))
