"""Kernel matrices larger than memory: :func:`kernel_to_zarr` writes ``ow.kernel`` tile by tile into a zarr store
and returns it as dask-backed ``xarray`` (issue 21). zarr and dask are imported only here, when used
(``pip install -e ".[dist]"``)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
from typing import Any

import numpy as np

from owidth import _checks, _executor
from owidth._progress import progress as _progress_bar

__all__ = ["kernel_to_zarr"]

_WHERE = "ow.kernel_to_zarr"
_FORMAT = 1
# (tile, tile) float64 arrays the kernel engine holds at once per requested kernel while computing a tile of an
# MLP (nngp, ntk, their variances and the dual kernel's temporaries), for the memory check
_STATES_PER_KERNEL = 8


def _fingerprint(net, x1, x2, tile: int, get: tuple, dtype: str) -> str:
    h = hashlib.sha256()
    h.update(repr(net).encode())
    for x in (x1, x2):  # in float64, whatever precision this process computes in (jax_enable_x64)
        if x is not None:
            h.update(str(x.shape).encode())
            h.update(np.ascontiguousarray(x, np.float64).tobytes())
    h.update(json.dumps([tile, list(get), dtype]).encode())
    return h.hexdigest()


def _open(store: str, *, mode: str):
    import zarr

    return zarr.open_group(store, mode=mode)


def _tile(net, x1, x2, store: str, i: int, j: int, tile: int, get: tuple, dtype: str, memory_budget: int):
    """Compute tile ``(i, j)`` and write it, then mark it done (a tile marked done is complete)."""
    from owidth._kernel import kernel

    a = x1[i * tile:(i + 1) * tile]
    b = (x1 if x2 is None else x2)[j * tile:(j + 1) * tile]
    k = kernel(net, a, b, get=get, memory_budget=memory_budget, progress_bar=False)
    group = _open(store, mode="r+")
    for name in get:
        group[name][i * tile:i * tile + a.shape[0], j * tile:j * tile + b.shape[0]] = np.asarray(getattr(k, name), dtype)
    group["done"][i, j] = 1
    return i, j


def kernel_to_zarr(net, x1, x2=None, store=None, *, tile: int = 1024, executor=None, get=("nngp", "ntk"),
                   memory_budget: int = 2**30, dtype: str = "float32", retries: int = 2, progress: bool = True):
    """Write the NNGP/NTK of ``net`` between ``x1`` and ``x2`` to a zarr store, tile by tile, resumably, and
    return it as an ``xarray.Dataset`` backed by dask arrays.

    The kernel is split into ``tile x tile`` blocks, each one call of :func:`ow.kernel` and one zarr chunk, so
    a process holds one tile's states at a time (checked against ``memory_budget`` before anything runs) and
    tiles can be computed anywhere: in this process, or as tasks on ``executor`` (any object with
    ``submit(fn, *args)``: a ``concurrent.futures.ProcessPoolExecutor`` with the "spawn" context, a
    ``dask.distributed.Client``), whose workers write their chunks themselves (``store`` must then be a path
    every worker sees). With ``x2=None`` only the tiles on and above the diagonal are computed and the lower
    triangle is mirrored on read. A tile is marked done in the store (array ``done``) after its data is written:
    rerunning the same call skips completed tiles, so a run killed half-way resumes where it stopped; the
    number of tiles computed by this call is ``attrs["tiles_computed"]``.

    Args:
      net: the width-free network.
      x1, x2: (n1, ...) and (n2, ...) inputs (``x2=None``: ``x1`` against itself).
      store: a folder path for a new zarr store, or one this function wrote for the same arguments;
        anything else (another kernel's store, a foreign zarr store, a non-empty folder) is refused.
      tile: rows and columns per tile (and zarr chunk).
      executor: where tiles run (default: here, in order, with a progress bar).
      get: ``"nngp"``, ``"ntk"`` or both.
      memory_budget: bytes one tile may use (``ow.kernel``'s budget inside the tile too).
      dtype: the stored dtype (default float32: 4 bytes per entry and kernel).
      retries: resubmissions of a failed tile on ``executor``.
      progress: show a progress bar over tiles.

    Returns:
      ``xarray.Dataset`` with the requested kernels over ``(x1, x2)`` as dask arrays (nothing is loaded until
      computed), ``attrs``: ``store``, ``tile``, ``tiles_computed``, ``tiles_total``.

    Examples:
      >>> import tempfile, numpy as np
      >>> import owidth as ow
      >>> x = np.random.default_rng(0).standard_normal((10, 3))
      >>> net = ow.serial(ow.Dense(), ow.Relu(), ow.Dense(out=1))
      >>> with tempfile.TemporaryDirectory() as d:
      ...     ds = ow.kernel_to_zarr(net, x, store=d + "/k.zarr", tile=4, progress=False)
      ...     full = ow.kernel(net, x)
      ...     ok = bool(np.allclose(ds.ntk.values, full.ntk, rtol=1e-5, atol=1e-6))
      ...     again = ow.kernel_to_zarr(net, x, store=d + "/k.zarr", tile=4, progress=False)
      >>> ok, ds.attrs["tiles_computed"], again.attrs["tiles_computed"]   # 3 x 3 tiles, upper triangle
      (True, 6, 0)
    """
    missing = [m for m in ("zarr", "dask") if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"{_WHERE} needs zarr and dask: pip install -e '.[dist]' (or pip install zarr "
                          f"'dask[distributed]'); missing: {', '.join(missing)}")
    import dask.array as da
    import xarray as xr

    _executor.check(executor, where=_WHERE)
    if store is None:
        raise TypeError(f"{_WHERE}: pass store=, a path for the zarr store")
    get = (get,) if isinstance(get, str) else tuple(get)
    if not get or any(g not in ("nngp", "ntk") for g in get) or len(set(get)) != len(get):
        raise ValueError(f"{_WHERE}: get must be 'nngp', 'ntk' or both, got {get!r}")
    x1 = np.asarray(_checks.as_float_array("x1", x1, where=_WHERE, rank=None))
    x2 = None if x2 is None else np.asarray(_checks.as_float_array("x2", x2, where=_WHERE, rank=None))
    if x1.ndim < 2 or (x2 is not None and (x2.ndim != x1.ndim or x2.shape[1:] != x1.shape[1:])):
        raise ValueError(f"{_WHERE}: x1 and x2 must be (n, ...) with the same feature shape, got "
                         f"{x1.shape} and {None if x2 is None else x2.shape}")
    tile = _checks.positive_int("tile", tile, where=_WHERE)
    memory_budget = _checks.positive_int("memory_budget", memory_budget, where=_WHERE)
    n1, n2 = x1.shape[0], (x1 if x2 is None else x2).shape[0]
    tile_bytes = _STATES_PER_KERNEL * 8 * tile * tile * len(get)
    if tile_bytes > memory_budget:
        fit = int(math.sqrt(memory_budget / (_STATES_PER_KERNEL * 8 * len(get))))
        raise ValueError(f"{_WHERE}: a tile of {tile} x {tile} needs about {tile_bytes / 2**20:.0f} MiB of kernel "
                         f"states, above memory_budget = {memory_budget / 2**20:.0f} MiB; use tile <= {fit}")
    if tile > max(n1, n2):
        raise ValueError(f"{_WHERE}: tile = {tile} is larger than the kernel ({n1} x {n2}); use tile <= "
                         f"{max(n1, n2)} or ow.kernel for a kernel this small")
    symmetric = x2 is None
    nt1, nt2 = -(-n1 // tile), -(-n2 // tile)
    fingerprint = _fingerprint(net, x1, x2, tile, get, str(np.dtype(dtype)))
    path = os.fspath(store)
    group = _open_or_create(path, fingerprint, n1, n2, nt1, nt2, tile, get, dtype)
    done = np.asarray(group["done"][:])
    todo = [(i, j) for i in range(nt1) for j in range(i if symmetric else 0, nt2) if not done[i, j]]
    total = nt1 * (nt1 + 1) // 2 if symmetric else nt1 * nt2
    bar = _progress_bar(total=total, desc="ow.kernel_to_zarr", enabled=progress)
    bar.update(total - len(todo))
    args = (net, x1, x2, path)
    try:
        if executor is None:
            for i, j in todo:
                _tile(*args, i, j, tile, get, dtype, memory_budget)
                bar.update(1)
        else:
            failed = _executor.run(executor, _tile, (((i, j), (*args, i, j, tile, get, dtype, memory_budget))
                                                    for i, j in todo),
                                   retries=retries, on_result=lambda key, result: bar.update(1))
            if failed:
                raise RuntimeError(f"{_WHERE}: {_executor.failure_message(failed, what='tiles', total=len(todo), retries=retries)}; "
                                   f"the other tiles are saved in {path}: rerun to resume")
    finally:
        bar.close()
    data = {}
    for name in get:
        arr = da.from_zarr(path, component=name)
        if symmetric:  # only tiles on and above the diagonal were written
            arr = da.triu(arr) + da.triu(arr, 1).T
        data[name] = (("x1", "x2"), arr)
    return xr.Dataset(data, attrs={"store": path, "tile": tile, "tiles_computed": len(todo), "tiles_total": total,
                                   "symmetric": int(symmetric)})


def _open_or_create(path: str, fingerprint: str, n1, n2, nt1, nt2, tile, get, dtype):
    """The store's group: created for this kernel, or reopened if it holds exactly this kernel; refused if it
    holds anything else."""
    import zarr

    try:
        group = zarr.open_group(path, mode="r+")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        group = None
    except Exception as err:  # noqa: BLE001 - e.g. a folder that is not a zarr store
        raise ValueError(f"{_WHERE}: {path} exists and is not a zarr group ({type(err).__name__}: {err}); use a "
                         "new store path") from err
    if group is not None:
        meta: Any = group.attrs.get("owidth_kernel")
        if meta is None:
            raise ValueError(f"{_WHERE}: {path} is a zarr store that ow.kernel_to_zarr did not write; use a new "
                             "store path")
        if meta.get("fingerprint") != fingerprint:
            raise ValueError(f"{_WHERE}: {path} holds another kernel (other net, inputs, tile, get or dtype); use a "
                             "new store path, or delete it to recompute")
        return group
    if os.path.isdir(path) and os.listdir(path):
        raise ValueError(f"{_WHERE}: {path} is a folder that is not empty and not a zarr store; use a new store "
                         "path")
    try:
        group = zarr.open_group(path, mode="w-")
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"{_WHERE}: cannot create a zarr store at {path} ({type(err).__name__}: {err})") from err
    for name in get:
        group.create_array(name, shape=(n1, n2), chunks=(tile, tile), dtype=dtype, fill_value=0)
    group.create_array("done", shape=(nt1, nt2), chunks=(1, 1), dtype="int8", fill_value=0)
    group.attrs["owidth_kernel"] = {"format": _FORMAT, "fingerprint": fingerprint, "tile": tile, "get": list(get)}
    return group
