"""Kernels in tiles: memory budgets, tile sizes, and the tiled driver of ``ow.kernel`` (internal).

A kernel between ``n1`` and ``n2`` inputs is computed as blocks of ``size x size`` input pairs
(``ow.kernel(..., batch_size=)``; ``"auto"`` picks ``size`` from a memory budget). Without ``x2``
only the blocks on and above the diagonal are computed and the rest mirrored.

Pooled CNNs (``AvgPool``/``GlobalAvgPool``) keep all pixel pairs, ``(n1, n2, *S, *S)``: at
32x32 pixels a single input pair carries 10^6 covariances per layer, so memory and time are those
of the pairs themselves. There the driver makes every input's own block once -- the diagonal
blocks (without ``x2``) or one pass per input (with ``x2``) -- and records, at each pooling
layer, the per-pixel variances of its output on a :class:`~owidth.kernels.state.VarTape`. The
blocks of different inputs then run with per-pixel variances only (``KState.var_pixel``) and
take those records back, so that no block recomputes an input's own ``(*S, *S)`` covariances:
``n (n + 1) / 2`` pair computations in all, the minimum, instead of ``n^2 + 2 n size`` with
variances recomputed per block.
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from owidth.kernels import hyper
from owidth.kernels.state import Kernel, VarTape

__all__ = [
    "LIVE_STATES", "SPEED_TILE_BYTES", "TILES_PER_CALL", "default_budget", "entries_per_pair", "choose_tile",
    "blocks", "tiled",
]

# Peak bytes of a block of input pairs, in units of one pair's largest layer state (its NNGP at the
# widest layer, ``entries_per_pair`` numbers): the NNGP and NTK of two consecutive layers, the
# zero-padded copies the window sums read, and the dual kernel's temporaries. Measured in
# ``benchmarks/kernels.py`` (peak RSS of pooled 32x32 CNN tiles); the estimate must not be below it.
LIVE_STATES = 10
# Pooled CNNs: blocks of input pairs whose states stay about this large run fastest: they stay in
# cache (measured, 2-conv + GAP CNTK, N = 128, float32, 2 cores: 8x8 images 0.91, 0.64, 0.63, 0.68,
# 1.01 s for blocks of 1, 4, 8, 16, 32 rows, 1.66 s untiled; 32x32 images 3.9 ms per input pair with
# blocks of 1 row against 12 ms with 2), and memory stays low.
SPEED_TILE_BYTES = 8 * 2**20
# Blocks per device in one compiled call (run one after the other inside it, ``lax.map``).
TILES_PER_CALL = 64


def default_budget() -> int:
    """Bytes ``ow.kernel`` may use when ``memory_budget`` is not given: half the free memory of an
    accelerator, or a quarter of the host's available memory (``MemAvailable``) on CPU."""
    dev = jax.devices()[0]
    if dev.platform != "cpu":
        stats = dev.memory_stats() or {}
        if "bytes_limit" in stats:
            return int((stats["bytes_limit"] - stats.get("bytes_in_use", 0)) // 2)
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        available = int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            available = 8 * 2**30
    return int(available // 4)


def entries_per_pair(features: tuple[int, ...], spatial: bool, full: bool) -> int:
    """Numbers in the largest per-layer state of one input pair: ``|S|^2`` for pooled CNNs, ``|S|``
    for other spatial nets, 1 for MLPs (``|S|`` the input's pixel count, which no layer exceeds
    with SAME or VALID padding)."""
    if not spatial or len(features) < 2:
        return 1
    p = math.prod(features[:-1])
    return p * p if full else p


def choose_tile(n1: int, n2: int, *, pair_bytes: int, budget: int, devices: int, full: bool,
                live: int = LIVE_STATES, where: str = "ow.kernel") -> int | None:
    """Rows per tile for ``batch_size="auto"``: ``None`` (one untiled call) when the whole kernel's
    states fit the budget and the net does not keep all pixel pairs, else the largest square tile
    whose states (on every device at once) fit, and for pooled CNNs at most ``SPEED_TILE_BYTES``.
    ``live``: states alive at once per pair (``LIVE_STATES``, more with quadrature node grids).
    Raises ``MemoryError`` when not even one input pair fits."""
    per_pair = pair_bytes * live
    if per_pair * devices > budget:
        raise MemoryError(
            f"{where}: one input pair needs about {per_pair / 2**30:.3g} GiB of kernel states here "
            f"(x {devices} device(s)), more than memory_budget={budget / 2**30:.3g} GiB. Raise memory_budget, "
            "use fewer pixels (pool or stride earlier), or compute the kernel in float32."
        )
    if not full and n1 * n2 * per_pair <= budget:
        return None
    rows = math.isqrt(budget // (per_pair * devices))
    if full:
        rows = min(rows, max(1, math.isqrt(SPEED_TILE_BYTES // per_pair)))
    rows = max(1, min(rows, max(n1, n2)))
    if not full and rows >= max(n1, n2):
        return None
    return rows


def blocks(x, size: int):
    """``x`` padded to a multiple of ``size`` rows (repeating its last row), as (t, size, ...)."""
    n = x.shape[0]
    t = -(-n // size)
    xp = jnp.concatenate([x, jnp.repeat(x[-1:], t * size - n, axis=0)]) if t * size > n else x
    return xp.reshape((t, size) + x.shape[1:])


@hyper.jit_net(static_argnames=("impl", "get", "record", "singles"))
def _self_tiles(net, impl, a, get, record, singles, adj=None):
    """Self-kernels of blocks ``a`` (d, G, size, ...) and the variances they record: the ``d`` device
    slices in parallel (vmap over the sharded axis), the ``G`` blocks of each one after the other
    (``lax.map``: one block's states at a time, one dispatch for all).

    ``singles``: each input of a block alone (its own block only, not the pairs between them).
    ``adj``: the graph adjacencies of ``a``'s inputs, blocked like them (``None`` for other nets)."""
    def one(u, au):
        tape = VarTape() if record else None
        k = impl(net, u, None, get, tape=tape, adj=None if au is None else (au, None))
        return k, (tuple(tape.entries) if record else ())

    def block(args):
        u, au = args
        if not singles:
            return one(u, au)
        k, entries = jax.vmap(lambda v, av: one(v[None], None if av is None else av[None]))(u, au)
        var = k.var1[:, 0]
        return Kernel(nngp=None, ntk=None, var1=var, var2=var), tuple(e[:, 0] for e in entries)

    return jax.vmap(lambda g, ga: jax.lax.map(block, (g, ga)))(a, adj)


@hyper.jit_net(static_argnames=("impl", "get", "pixel"))
def _cross_tiles(net, impl, a, b, get, pixel, ta, tb, adj=None):
    """Kernels of block pairs ``(a[., k], b[., k])`` (d, G, size, ...) as in :func:`_self_tiles`; with
    ``pixel``, per-pixel variances replayed from the records ``ta``/``tb`` of the two blocks; ``adj``:
    the pair of blocked adjacencies of ``a`` and ``b`` (graph nets) or None."""
    def one(args):
        u, v, eu, ev, adj_uv = args
        tape = VarTape(list(zip(eu, ev))) if pixel else None
        return impl(net, u, v, get, tape=tape, adj=adj_uv)

    return jax.vmap(lambda *g: jax.lax.map(one, g))(a, b, ta, tb, adj)


def tiled(impl, net, x1, x2, get, size: int, *, full: bool, pixel: bool, progress_bar: bool = True,
          adj=None) -> Kernel:
    """The kernel from blocks of ``size`` rows, computed ``len(jax.devices())`` blocks at a time.

    ``impl(net, u, v, get, tape=)`` computes one block (``v`` None: ``u`` against itself, exactly
    symmetric with rho = 1 on its diagonal). Blocks are stacked on a leading axis that a
    ``NamedSharding`` splits over a 1-D mesh, so each device computes its own. Rows are padded to a
    multiple of ``size`` by repeating the last input, so every block has one shape whatever N.
    Blocks of different inputs differ from the untiled computation only by rounding (they compute
    the variances as in the x2 case, or replay them with ``pixel``). ``full``: the net keeps all pixel
    pairs; if its output still has pixel axes, mirrored blocks swap the pixel groups. ``adj``:
    ``(a1, a2)``, graph adjacencies (``Aggregate``) blocked and paired exactly as ``x1``/``x2``.
    """
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from owidth._progress import progress

    if any(isinstance(x, jax.core.Tracer) for x in (x1, x2) if x is not None):
        raise ValueError("ow.kernel: batch_size needs concrete inputs (tiles are assembled on the host); "
                         "call it outside jax.jit/grad, or pass batch_size=None inside a transformation")
    devices = jax.devices()
    d = len(devices)
    shard = NamedSharding(Mesh(np.array(devices), ("tiles",)), PartitionSpec("tiles"))
    fields = [f for f in ("nngp", "ntk") if f in get]
    b1 = np.asarray(blocks(x1, size))  # on the host: tiles are gathered there, one transfer per call
    t1, n1 = b1.shape[0], x1.shape[0]
    b2 = None if x2 is None else np.asarray(blocks(x2, size))
    g1, g2 = (None, None) if adj is None else (np.asarray(blocks(adj[0], size)),
                                               None if adj[1] is None else np.asarray(blocks(adj[1], size)))
    t2 = t1 if x2 is None else b2.shape[0]
    n_self = (t1 if x2 is None else (t1 + t2 if pixel else 0))
    n_cross = t1 * (t1 - 1) // 2 if x2 is None else t1 * t2
    bar = progress(total=n_self + n_cross, desc="ow.kernel tiles", enabled=progress_bar and n_self + n_cross > 1,
                   delay=3.0)

    def put(stack):
        return jax.tree.map(lambda v: jax.device_put(v, shard), stack)

    def run(fn, items, args_of):
        """``fn`` over ``items``, ``d x G`` per call (the last call padded); per-item host pytrees.

        ``G`` blocks per device and call (about 8 calls per run, at most ``TILES_PER_CALL``) keep the
        per-call dispatch and transfer off the critical path without holding more than one block's
        states per device at a time."""
        if not items:
            return []
        g = max(1, min(TILES_PER_CALL, -(-len(items) // (8 * d))))
        per_call = d * g
        out = []
        for k in range(0, len(items), per_call):
            chunk = items[k:k + per_call]
            padded = chunk + [chunk[0]] * (per_call - len(chunk))
            args = jax.tree.map(lambda v: v.reshape((d, g) + v.shape[1:]), args_of(padded))
            res = jax.block_until_ready(fn(*put(args)))
            host = jax.tree.map(lambda v: np.asarray(v).reshape((per_call,) + v.shape[2:]), res)
            out.extend(jax.tree.map(lambda v, m=m: v[m], host) for m in range(len(chunk)))
            bar.update(len(chunk))
        return out

    def stack_entries(tapes, idx):
        return tuple(np.stack([tapes[i][k] for i in idx]) for k in range(len(tapes[idx[0]])))

    def self_fn(singles):
        return lambda a, ga: _self_tiles(net, impl, a, get, pixel, singles, ga)

    def self_args(b, g):
        return lambda c: (b[np.array(c)], None if g is None else g[np.array(c)])

    def cross(pairs, ba, bb, tapes_a, tapes_b, ga, gb):
        fn = lambda a, b, ta, tb, g: _cross_tiles(net, impl, a, b, get, pixel, ta, tb, g)  # noqa: E731

        def args_of(chunk):
            ia, ib = [i for i, _ in chunk], [j for _, j in chunk]
            ta = stack_entries(tapes_a, ia) if pixel else ()
            tb = stack_entries(tapes_b, ib) if pixel else ()
            g = None if ga is None else (ga[np.array(ia)], gb[np.array(ib)])
            return ba[np.array(ia)], bb[np.array(ib)], ta, tb, g

        return run(fn, pairs, args_of)

    try:
        if x2 is None:
            diag = run(self_fn(False), list(range(t1)), self_args(b1, g1))
            tapes = [entries for _, entries in diag]
            diag = [k for k, _ in diag]
            upper = [(i, j) for i in range(t1) for j in range(i + 1, t1)]
            off = dict(zip(upper, cross(upper, b1, b1, tapes, tapes, g1, g1)))
        else:
            if pixel:
                s1 = run(self_fn(True), list(range(t1)), self_args(b1, g1))
                s2 = run(self_fn(True), list(range(t2)), self_args(b2, g2))
                tapes1, tapes2 = [e for _, e in s1], [e for _, e in s2]
            else:
                tapes1 = tapes2 = None
            pairs = [(i, j) for i in range(t1) for j in range(t2)]
            blocks_ = dict(zip(pairs, cross(pairs, b1, b2, tapes1, tapes2, g1, g2)))
    finally:
        bar.close()

    if x2 is None:
        trail = np.asarray(diag[0].var1).shape[1:]
        full_out = full and len(trail) > 0  # the output keeps all pixel pairs (a pooled net ending on pixels)
        nsp = len(trail) // 2 if full_out else 0

        def transpose(block):  # (j, i) block from the (i, j) one: swap inputs (and pixel groups)
            rest = tuple(range(2 + nsp, 2 + 2 * nsp)) + tuple(range(2, 2 + nsp)) if full_out else \
                tuple(range(2, block.ndim))
            return np.transpose(block, (1, 0) + rest)

        result = {}
        for f in fields:
            first = getattr(diag[0], f)
            full = np.empty((t1 * size, t1 * size) + first.shape[2:], first.dtype)
            upper_mask = np.triu(np.ones((size, size), bool)).reshape((size, size) + (1,) * (full.ndim - 2))
            for i in range(t1):
                # the vmapped self-kernel may round (i, j) and (j, i) differently (other fusion than
                # the untiled one): keep the upper triangle and mirror it, so the result is symmetric
                blk = getattr(diag[i], f)
                full[i * size:(i + 1) * size, i * size:(i + 1) * size] = np.where(upper_mask, blk, transpose(blk))
            for (i, j), k in off.items():
                blk = getattr(k, f)
                full[i * size:(i + 1) * size, j * size:(j + 1) * size] = blk
                full[j * size:(j + 1) * size, i * size:(i + 1) * size] = transpose(blk)
            result[f] = jnp.asarray(full[:n1, :n1])
        var1 = jnp.asarray(np.concatenate([k.var1 for k in diag])[:n1])
        var2 = var1
    else:
        n2 = x2.shape[0]
        result = {}
        for f in fields:
            rows = [np.concatenate([getattr(blocks_[i, j], f) for j in range(t2)], axis=1) for i in range(t1)]
            result[f] = jnp.asarray(np.concatenate(rows, axis=0)[:n1, :n2])
        if pixel:
            var1 = jnp.asarray(np.concatenate([k.var1 for k, _ in s1])[:n1])
            var2 = jnp.asarray(np.concatenate([k.var1 for k, _ in s2])[:n2])
        else:
            var1 = jnp.asarray(np.concatenate([blocks_[i, 0].var1 for i in range(t1)])[:n1])
            var2 = jnp.asarray(np.concatenate([blocks_[0, j].var2 for j in range(t2)])[:n2])
    return Kernel(nngp=result.get("nngp"), ntk=result.get("ntk"), var1=var1, var2=var2)
