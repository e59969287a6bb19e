"""Pixel-covariance helpers for the kernels of spatial layers (internal).

Layout (see :class:`owidth.kernels.state.KState`): a kernel has two leading
batch axes ``(n1, n2)`` followed by the pixel axes, ``S`` for the diagonal
representation (pixel ``s`` of ``x1`` against the same pixel of ``x2``) and
``S + S`` for the full one (pixel ``s`` of ``x1`` against pixel ``t`` of
``x2``). Same-input blocks (``var1``) have one batch axis.

The window sums below realise convolution and average pooling on these
covariances (Arora et al. 2019, CNTK; Novak et al. 2019):

* conv, filter ``F``: ``K'(s, t) = (1/|F|) sum_{d in F} K(st s + d, st t + d)``
  (the same offset on both sides: different filter taps have independent
  weights), on either representation;
* pooling, window ``W``: ``K'(s, t) = (1/|W|^2) sum_{d, e in W} K(st s + d, st t + e)``
  (needs the full representation).

Out-of-image pixels (SAME padding) count as zeros, as in the finite network.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "out_shape_and_pads", "window_sum", "on_both", "flat_pixels", "unflat_pixels", "pixel_groups", "pixel_var",
    "outer", "block", "diag_mask", "pixel_eye", "mirror", "gram",
]


def out_shape_and_pads(where: str, spatial, window, strides, padding: str):
    """Output pixel shape and per-axis ``(low, high)`` padding, as ``lax.conv_general_dilated`` pads."""
    if len(spatial) != len(window):
        raise ValueError(
            f"{where} needs inputs with {len(window)} spatial axes, shape (batch, *spatial, channels) with "
            f"{len(window)} spatial axes; got {len(spatial)} spatial axes {tuple(spatial)}. "
            f"Pass inputs of rank {len(window) + 2} or change the layer's window/filter_shape."
        )
    if padding == "SAME":
        out = tuple(-(-s // st) for s, st in zip(spatial, strides))
        pads = []
        for s, f, st, o in zip(spatial, window, strides, out):
            total = max((o - 1) * st + f - s, 0)
            pads.append((total // 2, total - total // 2))
        return out, tuple(pads)
    out = tuple((s - f) // st + 1 for s, f, st in zip(spatial, window, strides))
    if min(out) <= 0:
        raise ValueError(
            f"{where}: a VALID window {tuple(window)} does not fit inputs of spatial size {tuple(spatial)}; "
            "use padding='SAME' or a smaller window"
        )
    return out, tuple((0, 0) for _ in spatial)


def window_sum(x: jax.Array, groups, window, strides, pads, out) -> jax.Array:
    """``sum_{d in window} x[..., st s + d - lo, ...]`` with the same offset ``d`` on every axis group.

    ``groups`` lists the axis indices of each group (one entry per spatial
    axis). Out-of-range pixels count as zeros. The window is a product of
    per-axis offset ranges, so the sum is taken one spatial axis at a time
    (``sum_{d_1} ... sum_{d_k}``): ``sum(window)`` static shifted slices of a
    zero-padded copy instead of ``prod(window)`` (6 instead of 9 for 3x3),
    each pass one fused loop over the array. Stride 1 with same-size output
    (SAME convolutions) takes :func:`_window_sum_flat`. The terms are added
    in a fixed order that treats the groups alike,
    so swapping two groups of a symmetric input gives a symmetric output bit
    for bit.
    """
    if all(f == 1 for f in window) and all(st == 1 for st in strides):
        return x
    if all(st == 1 for st in strides) and tuple(out) == tuple(x.shape[groups[0][0]:groups[0][0] + len(window)]) \
            and all(g == tuple(range(g[0], g[0] + len(window))) for g in groups) \
            and groups[-1][-1] == x.ndim - 1 and all(a[-1] + 1 == b[0] for a, b in zip(groups, groups[1:])):
        return _window_sum_flat(x, len(groups), window, pads)
    for i, (f, st, pad, n) in enumerate(zip(window, strides, pads, out)):
        axes = [group[i] for group in groups]
        if f == 1 and st == 1:
            continue
        cfg = [(0, 0)] * x.ndim
        for ax in axes:
            cfg[ax] = pad
        xp = jnp.pad(x, cfg) if pad != (0, 0) else x
        extent = st * (n - 1) + 1

        def shifted(d, xp=xp, axes=axes, extent=extent, st=st):
            idx = [slice(None)] * xp.ndim
            for ax in axes:
                idx[ax] = slice(d, d + extent, st)
            return xp[tuple(idx)]

        acc = shifted(0)
        for d in range(1, f):
            acc = acc + shifted(d)
        x = acc
    return x


def _window_sum_flat(x: jax.Array, n_groups: int, window, pads) -> jax.Array:
    """:func:`window_sum` for stride 1 and SAME-size output, with the pixel groups the trailing axes.

    In row-major order a shift of every group by the same offset ``d`` is one constant shift of
    the flattened trailing axes, so the sum is ``sum_d mask_d * x_flat[k + o_d]``: one fused loop
    of contiguous reads (XLA:CPU vectorises it), where slices of a many-axis zero-padded array
    are emitted with per-element index arithmetic. ``mask_d`` zeroes the terms whose pixel, in
    any group, leaves the image: a product of one (P,) mask per group, applied on the
    ``(..., P, P)`` view.
    """
    nsp = len(window)
    lead = x.ndim - n_groups * nsp
    spatial = tuple(x.shape[lead:lead + nsp])
    p = math.prod(spatial)
    length = p ** n_groups
    terms = []
    for d in itertools.product(*[range(f) for f in window]):
        shift = [di - lo for di, (lo, _) in zip(d, pads)]
        off_group = sum(sh * math.prod(spatial[i + 1:]) for i, sh in enumerate(shift))  # within one group
        off = sum(off_group * p ** (n_groups - 1 - g) for g in range(n_groups))
        valid = np.ones(spatial, bool)
        for i, (sh, n) in enumerate(zip(shift, spatial)):
            pos = np.arange(n) + sh
            shape = [1] * nsp
            shape[i] = n
            valid = valid & ((pos >= 0) & (pos < n)).reshape(shape)
        terms.append((off, None if valid.all() else valid.reshape(p)))
    reach = max(abs(off) for off, _ in terms)
    flat = x.reshape(x.shape[:lead] + (length,))
    xp = jnp.pad(flat, [(0, 0)] * lead + [(reach, reach)])
    view = x.shape[:lead] + (p,) * n_groups
    acc = None
    for off, mask in terms:
        t = jax.lax.slice_in_dim(xp, reach + off, reach + off + length, axis=lead).reshape(view)
        if mask is not None:
            m = None
            for g in range(n_groups):
                shape = [1] * n_groups
                shape[g] = p
                mg = jnp.asarray(mask).reshape(shape)
                m = mg if m is None else m & mg
            t = jnp.where(m, t, jnp.zeros((), t.dtype))
        acc = t if acc is None else acc + t
    return acc.reshape(x.shape)


def on_both(fn, nngp: jax.Array, ntk: jax.Array | None):
    """``(fn(nngp), fn(ntk))`` for a linear pixel map ``fn`` (window sums, pooling, means), as one
    pass over the two stacked: their producer, an activation's dual kernel, is then one fused loop
    that computes its shared square roots and polynomial once per entry, where two consumers make
    XLA store them or compute them twice."""
    if ntk is None:
        return fn(nngp), None
    both = jax.vmap(fn)(jnp.stack([nngp, ntk]))
    return both[0], both[1]


def flat_pixels(ks):
    """``ks`` with its pixel axes flattened to one, ``S -> (prod S,)`` (reshapes only, no copies)."""
    p = math.prod(ks.spatial)

    def flat(x, lead, groups):
        return None if x is None else x.reshape(x.shape[:lead] + (p,) * groups)

    g = 2 if ks.full else 1
    gv = 1 if ks.var_pixel else g
    return ks.replace(nngp=flat(ks.nngp, 2, g), ntk=flat(ks.ntk, 2, g), var1=flat(ks.var1, 1, gv),
                      var2=flat(ks.var2, 1, gv), mean1=flat(ks.mean1, 1, 1), mean2=flat(ks.mean2, 1, 1),
                      spatial=(p,))


def unflat_pixels(out, ks):
    """Inverse of :func:`flat_pixels` on a pixelwise rule's result ``out``, back to ``ks``'s pixel shape
    (its Gaussian predecessor, kept for compositions, is ``ks`` itself)."""
    s = tuple(ks.spatial)

    def unflat(x, lead):
        return None if x is None else x.reshape(x.shape[:lead] + s * (x.ndim - lead))  # one S per flat group

    return out.replace(nngp=unflat(out.nngp, 2), ntk=unflat(out.ntk, 2), var1=unflat(out.var1, 1),
                       var2=unflat(out.var2, 1), mean1=unflat(out.mean1, 1), mean2=unflat(out.mean2, 1),
                       spatial=s, pre=ks if out.pre is not None else None)


def pixel_groups(lead: int, nsp: int, full: bool):
    """Axis groups of the pixel axes after ``lead`` batch axes."""
    g1 = tuple(range(lead, lead + nsp))
    return (g1, tuple(range(lead + nsp, lead + 2 * nsp))) if full else (g1,)


def pixel_var(var: jax.Array, nsp: int, full: bool) -> jax.Array:
    """Per-pixel variances ``(n, *S)`` from a same-input block ((n, *S) or (n, *S, *S))."""
    if not full or nsp == 0:
        return var
    spatial = var.shape[1:1 + nsp]
    p = math.prod(spatial)
    return jnp.diagonal(var.reshape(var.shape[0], p, p), axis1=1, axis2=2).reshape(var.shape[:1 + nsp])


def outer(a: jax.Array, b: jax.Array, nsp: int, full: bool):
    """Broadcast per-pixel ``a`` (n1, *S) and ``b`` (n2, *S) to the kernel layout (n1, n2, pixels)."""
    ones = (1,) * nsp
    if full:
        return (a.reshape(a.shape[:1] + (1,) + a.shape[1:] + ones),
                b.reshape((1,) + b.shape[:1] + ones + b.shape[1:]))
    return a[:, None], b[None, :]


def block(a: jax.Array, nsp: int):
    """Broadcast per-pixel ``a`` (n, *S) to a full same-input block (n, *S, *S): ``(a[s], a[t])``."""
    ones = (1,) * nsp
    return a.reshape(a.shape + ones), a.reshape(a.shape[:1] + ones + a.shape[1:])


def diag_mask(n: int, nsp: int, spatial, full: bool) -> jax.Array:
    """Boolean mask of the entries with the same input and the same pixel, kernel layout."""
    eye = jnp.eye(n, dtype=bool).reshape((n, n) + (1,) * (2 * nsp if full else nsp))
    if not full or nsp == 0:
        return eye
    p = math.prod(spatial)
    return eye & jnp.eye(p, dtype=bool).reshape((1, 1) + tuple(spatial) * 2)


def pixel_eye(spatial) -> jax.Array:
    """Boolean (1, *S, *S) mask of same-pixel pairs (for same-input blocks)."""
    p = math.prod(spatial)
    return jnp.eye(p, dtype=bool).reshape((1,) + tuple(spatial) * 2)


def mirror(y: jax.Array, nsp: int = 0) -> jax.Array:
    """Exactly symmetric copy of a nearly symmetric self-kernel: entry (i, s; j, t) is read from
    (min, max) of the flat indices (i, s) and (j, t), so both entries are the same computation.

    ``y`` is (n, n) or, in the full representation, (n, n, *S, *S). Used after reductions over
    pixels, whose summation order XLA may choose differently for (i, j) and (j, i)."""
    n = y.shape[0]
    spatial = y.shape[2:2 + nsp]
    p = math.prod(spatial)
    flat = y.reshape((n, n, p, p)).transpose(0, 2, 1, 3).reshape(n * p, n * p) if nsp else y
    i = jnp.arange(n * p)
    lo, hi = jnp.minimum(i[:, None], i[None, :]), jnp.maximum(i[:, None], i[None, :])
    flat = flat[lo, hi]
    if not nsp:
        return flat
    return flat.reshape(n, p, n, p).transpose(0, 2, 1, 3).reshape(y.shape)


def gram(a, b, out: tuple[int, ...], *, full: bool, var_full: bool):
    """Pixel Gram matrices of per-pixel features ``a`` (n1, P, k) and ``b`` (n2, P, k; ``None``: ``a``
    against itself), divided by ``k``: the covariances of a first linear layer, before its weight and
    bias scales.

    Returns ``(g, g1, g2)``: ``g`` of shape (n1, n2, *out) (same-pixel) or (n1, n2, *out, *out) (all
    pixel pairs, ``full``), exactly symmetric when ``b`` is ``None``; ``g1``/``g2`` the same-input
    blocks of ``a``/``b``, per pixel or all pixel pairs (``var_full``), or ``None`` when ``b`` is
    ``None`` (read them off ``g``'s diagonal, bit for bit). With all pixel pairs the product is batched
    over the input pairs so that it writes (i, j, p, q) in place: the plain ``"ipk,jqk->ijpq"`` writes
    (i, p, j, q) and transposes, whose strided reads cost more than the product at 32x32 pixels.
    """
    k = a.shape[-1]
    other = a if b is None else b
    if full:
        n1, n2 = a.shape[0], other.shape[0]
        g = jnp.einsum("ijpk,ijqk->ijpq", jnp.broadcast_to(a[:, None], (n1, n2) + a.shape[1:]),
                       jnp.broadcast_to(other[None], (n1, n2) + other.shape[1:]))
        swap = (1, 0, 3, 2)
    else:
        g = jnp.einsum("ipk,jpk->ijp", a, other)
        swap = (1, 0, 2)
    if b is None:
        g = 0.5 * (g + jnp.transpose(g, swap))  # exactly symmetric
    g = g.reshape(g.shape[:2] + out * (2 if full else 1)) / k
    if b is None:
        return g, None, None

    def block(z):
        v = jnp.einsum("ipk,iqk->ipq", z, z) if var_full else jnp.sum(z * z, axis=-1)
        return v.reshape((z.shape[0],) + out * (2 if var_full else 1)) / k

    return g, block(a), block(b)
