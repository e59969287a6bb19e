"""``ow.kernel``: analytic infinite-width NNGP and NTK of a width-free spec."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from owidth import _checks
from owidth.kernels.state import Kernel, KState

_GETS = ("nngp", "ntk")


def _normalize_get(get) -> tuple[str, ...]:
    if isinstance(get, str):
        get = (get,)
    try:
        get = tuple(get)
    except TypeError as err:
        raise TypeError(f"ow.kernel: get must be 'nngp', 'ntk' or a tuple of them, got {get!r}") from err
    bad = [g for g in get if g not in _GETS]
    if bad or not get:
        raise ValueError(f"ow.kernel: get={get!r} is not valid; use 'nngp', 'ntk' or ('nngp', 'ntk')")
    return tuple(g for g in _GETS if g in get)


@functools.lru_cache(maxsize=256)
def _check_structure(net, get: tuple[str, ...], same: bool, features: tuple[int, ...]) -> None:
    """Trace the layer rules on tiny abstract inputs (no FLOPs, no compilation)
    so that structural errors (wrong rank for a conv net, a VALID filter larger
    than the image) surface before anything is compiled. Memoised per
    (net, get, same, feature shape): it runs once per architecture."""
    x = jax.ShapeDtypeStruct((2, *features), jnp.result_type(float))
    jax.eval_shape(lambda a, b: _kernel_impl(net, a, b, get), x, None if same else x)


@functools.lru_cache(maxsize=256)
def _spatial_info(net) -> tuple[bool, bool]:
    """(has spatial layers, needs all pixel-pixel covariances), from a static pass over the spec."""
    from owidth.spec_seq import Attention, Embedding, TakePosition
    from owidth.spec_spatial import AvgPool, Conv, Flatten, GlobalAvgPool, needs_full_pixels

    def has(layer):
        return isinstance(layer, (Conv, AvgPool, Flatten, GlobalAvgPool, Attention, Embedding, TakePosition)) or any(
            has(c) for c in layer._children())

    return has(net), needs_full_pixels(net)


def _kernel_impl(net, x1, x2, get):
    ks = KState(x1=x1, x2=x2, need_ntk="ntk" in get, full=_spatial_info(net)[1])
    ks = net._kernel(ks).materialize()
    var2 = ks.var1 if ks.var2 is None else ks.var2
    return Kernel(
        nngp=ks.nngp if "nngp" in get else None,
        ntk=ks.ntk if "ntk" in get else None,
        var1=ks.var1,
        var2=var2,
    )


# Kernels of non-spatial nets whose (n1, n2) kernel exceeds _SELF_BLOCK_BYTES are
# computed in blocks of _SELF_BLOCK rows inside the compiled program (:func:`_blocked`).
# Measured on a 2-core CPU (depth-4 ReLU NNGP+NTK): the elementwise recursion is memory-bound once
# its (n, n) intermediates leave the cache; blocks of 256 rows stay in cache and skip the lower
# triangle: n = 2048 float64 0.71 s -> 0.21 s, n = 4096 float32 0.75 s -> 0.33 s (blocks of 128
# and 512 were slower; below ~4 MiB the one-piece computation is as fast).
_SELF_BLOCK = 256
_SELF_BLOCK_BYTES = 4 * 2**20


def _kernel_auto(net, x1, x2, get):
    """``_kernel_impl``, by blocks (:func:`_blocked`) when the kernel is large and the net non-spatial."""
    n1, n2 = x1.shape[0], x1.shape[0] if x2 is None else x2.shape[0]
    big = n1 * n2 * x1.dtype.itemsize > _SELF_BLOCK_BYTES and max(n1, n2) > 2 * _SELF_BLOCK
    if big and x1.ndim == 2 and not _spatial_info(net)[0]:
        return _blocked(net, x1, x2, get, _SELF_BLOCK)
    return _kernel_impl(net, x1, x2, get)


def _blocks(x, size: int):
    """``x`` padded to a multiple of ``size`` rows (repeating its last row), as (t, size, ...)."""
    n = x.shape[0]
    t = -(-n // size)
    xp = jnp.concatenate([x, jnp.repeat(x[-1:], t * size - n, axis=0)]) if t * size > n else x
    return xp.reshape((t, size) + x.shape[1:])


def _blocked(net, x1, x2, get, size: int) -> Kernel:
    """``_kernel_impl(net, x1, x2, get)`` for an MLP-type net, by blocks of ``size`` rows.

    One block pair at a time (``lax.map``), so that the intermediates of the elementwise recursion
    stay in cache. Without ``x2``, diagonal blocks are self-kernels (rho = 1 exactly on the
    diagonal, made exactly symmetric) and only the blocks above them are computed, then mirrored:
    about ``(t + 1) / (2 t)`` of the one-piece work for ``t`` blocks. Rows are padded to a multiple
    of ``size`` by repeating the last input and cropped. Off-diagonal blocks differ from the
    one-piece computation only by rounding (their variances are computed as with ``x2`` given
    rather than read off a diagonal), as for ``batch_size`` tiles.
    """
    import numpy as np

    b1 = _blocks(x1, size)
    t1 = b1.shape[0]

    def grid(blocks, t_rows, t_cols):  # (t_rows, t_cols, size, size) -> (t_rows size, t_cols size)
        return blocks.transpose(0, 2, 1, 3).reshape(t_rows * size, t_cols * size)

    if x2 is not None:
        b2 = _blocks(x2, size)
        t2 = b2.shape[0]
        ii, jj = (a.ravel() for a in np.meshgrid(np.arange(t1), np.arange(t2), indexing="ij"))
        k = jax.lax.map(lambda ij: _kernel_impl(net, b1[ij[0]], b2[ij[1]], get), (jnp.asarray(ii), jnp.asarray(jj)))
        n1, n2 = x1.shape[0], x2.shape[0]
        out = {f: None if getattr(k, f) is None else grid(getattr(k, f).reshape(t1, t2, size, size), t1, t2)[:n1, :n2]
               for f in ("nngp", "ntk")}
        var1 = k.var1.reshape(t1, t2, size)[:, 0].reshape(-1)[:n1]
        var2 = k.var2.reshape(t1, t2, size)[0].reshape(-1)[:n2]
        return Kernel(nngp=out["nngp"], ntk=out["ntk"], var1=var1, var2=var2)

    upper = np.triu(np.ones((size, size), bool))

    def self_block(u):
        k = _kernel_impl(net, u, None, get)
        sym = {f: None if getattr(k, f) is None else jnp.where(upper, getattr(k, f), getattr(k, f).T)
               for f in ("nngp", "ntk")}
        return Kernel(nngp=sym["nngp"], ntk=sym["ntk"], var1=k.var1, var2=k.var1)

    diag = jax.lax.map(self_block, b1)
    ii, jj = np.triu_indices(t1, 1)
    off = jax.lax.map(lambda ij: _kernel_impl(net, b1[ij[0]], b1[ij[1]], get), (jnp.asarray(ii), jnp.asarray(jj)))
    n = x1.shape[0]

    # block (I, J) of the result: diag[I] on the diagonal, off[k] above it and off[k]^T below,
    # where k numbers the pairs I < J; one static gather builds the grid
    pair = {(i, j): k for k, (i, j) in enumerate(zip(ii, jj))}
    src = np.array([[i if i == j else t1 + pair[i, j] if i < j else t1 + len(ii) + pair[j, i] for j in range(t1)]
                    for i in range(t1)])

    def assemble(d, o):
        stacked = jnp.concatenate([d, o, jnp.swapaxes(o, 1, 2)])
        return grid(stacked[src], t1, t1)[:n, :n]

    out = {f: None if getattr(diag, f) is None else assemble(getattr(diag, f), getattr(off, f))
           for f in ("nngp", "ntk")}
    var = diag.var1.reshape(-1)[:n]
    return Kernel(nngp=out["nngp"], ntk=out["ntk"], var1=var, var2=var)


_kernel = jax.jit(_kernel_auto, static_argnames=("net", "get"))


def _check_attn(net, attn) -> None:
    """``ow.kernel(..., attn=)``: the attention limit is implemented for logit exponents above 1/2 only."""
    if attn is None:
        return
    if isinstance(attn, bool) or not isinstance(attn, (int, float)) or attn != attn:
        raise TypeError(f"ow.kernel: attn must be a float (Parametrization.attn), got {attn!r}")
    from owidth.spec_seq import Attention

    def has(layer):
        return isinstance(layer, Attention) or any(has(c) for c in layer._children())

    if attn <= 0.5 and has(net):
        what = ("the logits q.k / sqrt(d) stay O(1) Gaussian at infinite width, so attention stays random; the "
                "output is a Gaussian process only when heads -> inf as well (Hron et al. 2020, Thm 3), with a "
                "kernel needing E[softmax(u) softmax(v)^T] over Gaussian logits u, v, which owidth does not compute"
                if attn == 0.5 else
                "the logits grow with width and attention tends to a hard (argmax) attention with no Gaussian limit")
        raise NotImplementedError(
            f"ow.kernel: the infinite-width kernel of Attention with attention-logit exponent attn={attn:g} is not "
            f"implemented: {what}. Implemented: attn > 1/2 (e.g. the 1/d logits of ow.MUP and ow.MF, attn=1), "
            "where the logits vanish and attention is uniform causal averaging."
        )


def kernel(net, x1, x2=None, *, get=("nngp", "ntk"), batch_size: int | None = None,
           attn: float | None = None) -> Kernel:
    """Infinite-width NNGP and NTK of ``net`` between ``x1`` and ``x2``.

    For a network whose hidden layers are infinitely wide, the output at
    initialisation is a Gaussian process with covariance ``nngp`` (Neal 1996;
    Lee et al. 2018; Matthews et al. 2018), and gradient descent in the NTK
    parametrisation evolves it as a linear model with the deterministic kernel
    ``ntk`` (Jacot et al. 2018). Both are computed layer by layer:

        Dense:       nngp' = w^2 nngp + b^2,          ntk' = w^2 ntk + nngp'
        activation:  nngp' = E[phi(u) phi(v)],        ntk' = ntk * E[phi'(u) phi'(v)]

    with ``(u, v)`` Gaussian with the incoming covariance. Closed forms are
    used for Relu, LeakyRelu, Abs, Erf, Gelu, Sin and Identity (see
    :mod:`owidth.kernels.dual`); Tanh, Sigmoid, Silu, Softplus, ``ActivationFn``
    and consecutive smooth nonlinearities use quadrature (see
    :mod:`owidth.kernels.quadrature`).

    Args:
      net: a width-free spec (``ow.serial(...)`` or a single layer).
      x1: (n1, d) inputs, or (n1, *spatial, channels) for networks with
        spatial layers (``Conv``, ``AvgPool``, ``GlobalAvgPool``, ``Flatten``),
        or (n1, length) tokens for sequence networks starting with
        ``Embedding`` (``Attention`` is taken in its ``1/d``-logit limit: see
        :class:`ow.Attention`).
      x2: (n2, d) inputs (same feature shape as ``x1``), or ``None`` for ``x1`` against itself (the result is
        then exactly symmetric).
      get: ``"nngp"``, ``"ntk"`` or both (default); what is not asked for is
        ``None`` in the result (the NTK is skipped with ``get="nngp"``; the
        NTK always needs the NNGP).
      batch_size: if set, compute in tiles of ``batch_size`` rows of ``x1``
        by ``batch_size`` rows of ``x2`` (any N: the last tile is padded and
        cropped), so that intermediates take memory for one tile per device
        rather than for the whole kernel; tiles are spread over
        ``jax.devices()`` with ``jax.sharding``. Without ``x2`` only tiles on
        and above the diagonal are computed and mirrored (exactly
        symmetric), about half the work of the untiled call: for pooled
        CNNs, whose kernels keep all pixel pairs, tiles of 32 are both
        faster and far smaller in memory (``benchmarks/kernels.py``).
        Same result as untiled up to rounding (see :func:`_tiled`).
      attn: the attention-logit exponent (:attr:`ow.Parametrization.attn`)
        of the finite networks whose limit is wanted, for specs with
        ``Attention``. ``None`` (default) or any value above 1/2: logits
        vanish at infinite width (the ``1/d`` rule of muP has ``attn = 1``)
        and the kernel is that of uniform causal averaging (see
        :class:`ow.Attention`). ``attn <= 1/2`` (``1/sqrt(d)``: SP, NTP)
        raises ``NotImplementedError``: that limit (Hron et al. 2020) is not
        implemented.

    Returns:
      A :class:`Kernel` with ``nngp``/``ntk`` of shape (n1, n2), per output
      unit (with trailing pixel axes when the network ends on spatial
      layers). Computed in float64 when ``jax_enable_x64`` is on, else float32.

    The computation is jit-compiled once per (net, get, shapes); it can also
    be called inside ``jax.jit``/``jax.grad`` by the user.
    """
    from owidth.spec import Layer  # local: spec imports the kernel package

    if not isinstance(net, Layer):
        raise TypeError(f"ow.kernel: net must be an owidth layer or ow.serial(...), got {type(net).__name__}")
    get = _normalize_get(get)
    _check_attn(net, attn)
    if not net._has_weights():
        raise ValueError("ow.kernel: net has no weight layer (Dense); add one, e.g. ow.serial(..., ow.Dense(out=1))")
    rank = None if _spatial_info(net)[0] else 2
    x1 = _checks.as_float_array("x1", x1, where="ow.kernel", rank=rank)
    if x2 is not None:
        x2 = _checks.as_float_array("x2", x2, where="ow.kernel", rank=rank)
        _checks.same_features(x1, x2, where="ow.kernel")
    _check_structure(net, get, x2 is None, tuple(x1.shape[1:]))
    if batch_size is not None:
        batch_size = _checks.positive_int("batch_size", batch_size, where="ow.kernel")
        if max(x1.shape[0], 0 if x2 is None else x2.shape[0]) > batch_size:
            return _tiled(net, x1, x2, get, batch_size)
    return _kernel(net, x1, x2, get)


@functools.partial(jax.jit, static_argnames=("net", "get"))
def _kernel_tiles(net, a, b, get):
    """``_kernel_impl`` over a stack of tiles (leading axis, sharded over devices by the caller)."""
    if b is None:
        return jax.vmap(lambda u: _kernel_auto(net, u, None, get))(a)
    return jax.vmap(lambda u, v: _kernel_auto(net, u, v, get))(a, b)


def _tiled(net, x1, x2, get, size: int) -> Kernel:
    """Tiled kernel: blocks (I, J) of ``size`` rows are computed with ``x2`` given (off-diagonal
    blocks, and all blocks when ``x2`` is given) or without it (diagonal blocks of x1 against itself,
    exactly symmetric with rho = 1 on the diagonal), and assembled on the host.

    Blocks go to the devices ``len(jax.devices())`` at a time: stacked on a leading axis that a
    ``NamedSharding`` splits over a 1-D mesh, so each device computes its own tile. Rows are padded
    to a multiple of ``size`` by repeating the last input, so every block has one shape (two
    compilations: with and without x2) whatever N. Off-diagonal blocks differ from the untiled
    computation only by rounding (the untiled one reads the variances off the diagonal, the tiled
    one computes them as in the x2 case).
    """
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    if any(isinstance(x, jax.core.Tracer) for x in (x1, x2) if x is not None):
        raise ValueError("ow.kernel: batch_size needs concrete inputs (tiles are assembled on the host); "
                         "call it outside jax.jit/grad, or leave batch_size=None inside a transformation")
    devices = jax.devices()
    mesh = Mesh(np.array(devices), ("tiles",))
    shard = NamedSharding(mesh, PartitionSpec("tiles"))

    def tiles(x):
        b = _blocks(x, size)
        return b, b.shape[0]

    def run(pairs, ta, tb):
        """Kernels of the blocks ``pairs`` [(I, J)], ``len(devices)`` at a time (tb None: diagonal blocks)."""
        out = []
        d = len(devices)
        for k in range(0, len(pairs), d):
            chunk = pairs[k:k + d]
            chunk = chunk + [chunk[0]] * (d - len(chunk))  # same shape for every call
            a = jax.device_put(ta[np.array([i for i, _ in chunk])], shard)
            b = None if tb is None else jax.device_put(tb[np.array([j for _, j in chunk])], shard)
            res = jax.block_until_ready(_kernel_tiles(net, a, b, get))
            host = {f: None if getattr(res, f) is None else np.asarray(getattr(res, f))
                    for f in ("nngp", "ntk", "var1", "var2")}
            out.extend({f: None if v is None else v[m] for f, v in host.items()} for m in range(len(pairs[k:k + d])))
        return out

    t1x, t1 = tiles(x1)
    n1 = x1.shape[0]
    fields = [f for f in ("nngp", "ntk") if f in get]
    if x2 is None:
        diag = run([(i, i) for i in range(t1)], t1x, None)
        upper = [(i, j) for i in range(t1) for j in range(i + 1, t1)]
        off = dict(zip(upper, run(upper, t1x, t1x)))
        trail = diag[0]["var1"].shape[1:]
        full_out = len(diag[0]["nngp"].shape) > 2 and _spatial_info(net)[1]
        nsp = len(trail) // 2 if full_out else 0

        def transpose(block):  # (j, i) block from the (i, j) one: swap inputs (and pixel groups)
            rest = tuple(range(2 + nsp, 2 + 2 * nsp)) + tuple(range(2, 2 + nsp)) if full_out else \
                tuple(range(2, block.ndim))
            return np.transpose(block, (1, 0) + rest)

        result = {}
        for f in fields:
            shape = (t1 * size, t1 * size) + diag[0][f].shape[2:]
            full = np.empty(shape, diag[0][f].dtype)
            upper = np.triu(np.ones((size, size), bool)).reshape((size, size) + (1,) * (full.ndim - 2))
            for i in range(t1):
                # the vmapped self-kernel may round (i, j) and (j, i) differently (other fusion than
                # the untiled one): keep the upper triangle and mirror it, so the result is symmetric
                full[i * size:(i + 1) * size, i * size:(i + 1) * size] = np.where(upper, diag[i][f],
                                                                                transpose(diag[i][f]))
            for (i, j), blk in off.items():
                full[i * size:(i + 1) * size, j * size:(j + 1) * size] = blk[f]
                full[j * size:(j + 1) * size, i * size:(i + 1) * size] = transpose(blk[f])
            result[f] = jnp.asarray(full[:n1, :n1])
        var1 = jnp.asarray(np.concatenate([blk["var1"] for blk in diag])[:n1])
        var2 = var1
    else:
        t2x, t2 = tiles(x2)
        n2 = x2.shape[0]
        pairs = [(i, j) for i in range(t1) for j in range(t2)]
        blocks = dict(zip(pairs, run(pairs, t1x, t2x)))
        result = {}
        for f in fields:
            rows = [np.concatenate([blocks[i, j][f] for j in range(t2)], axis=1) for i in range(t1)]
            result[f] = jnp.asarray(np.concatenate(rows, axis=0)[:n1, :n2])
        var1 = jnp.asarray(np.concatenate([blocks[i, 0]["var1"] for i in range(t1)])[:n1])
        var2 = jnp.asarray(np.concatenate([blocks[0, j]["var2"] for j in range(t2)])[:n2])
    return Kernel(nngp=result.get("nngp"), ntk=result.get("ntk"), var1=var1, var2=var2)
