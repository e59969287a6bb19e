"""Benchmark ``ow.kernel`` against neural-tangents 0.6.5 on CPU.

    python benchmarks/kernels.py [--quick] [--no-peer] [--out PATH] [--repeats R]

Workloads, each the NNGP and NTK (both asked for) between N inputs and
themselves (x2=None), in float32 (JAX's default) and float64 (jax_enable_x64
on):

* ``ntk_relu_mlp_depth4``: a depth-4 ReLU MLP (4 x [Dense(w_std=sqrt 2,
  b_std=sqrt 0.1), Relu] then Dense(out=1, w_std=1, b_std=0)) on inputs of
  dimension 16, N in {512, 2048, 8192} ({64, 128} with --quick); owidth computes N > 1024 (float32)
  in blocks of 256 rows inside one compiled call (no batch_size needed).
* ``ntk_relu_mlp_depth4_tiled``: the same net at N = 8192 (256 with
  --quick), owidth with ``batch_size=2048`` (64); the peer untiled.
* ``cntk_gap_cnn2_8x8x3``: the pooled CNTK (Arora et al. 2019) of
  2 x [Conv(3x3, SAME, w_std=sqrt 2, b_std=sqrt 0.1), Relu], GlobalAvgPool,
  Dense(out=1) on N = 128 images 8x8x3 (16 with --quick): all pixel-pair
  covariances, (N, N, 8, 8, 8, 8).
* ``cntk_gap_cnn2_8x8x3_tiled``: the same, owidth with ``batch_size=32``
  (8 with --quick); the peer untiled (one peer measurement serves both).

Every (library, dtype, N) is measured in its own fresh process, one after the
other, never concurrently: owidth by this script re-run as
``--worker``, neural-tangents by ``peers/nt_kernels_runner.py`` in the legacy
venv from ``peers/build_venv.sh`` (it needs jax 0.4.23). Both workers apply
the same protocol (:func:`measure`, which the runner imports from here) to
the same inputs, read from one temporary .npy file, and print one JSON line:

* ``first_call_s``: the first call, tracing + compilation + one run, timed
  after the JAX backend is up and the input is on the device.
* ``run_s``: median over ``repeats`` further calls, each ended with
  ``jax.block_until_ready`` (``run_s_min`` is the fastest).
* ``peak_rss_mib``: the process's peak resident set size (``ru_maxrss``)
  over the first call and the timed calls, minus its value just before the
  first call (after the imports, backend start-up and input transfer).
  ``ru_maxrss`` is process-wide and never decreases, which is why each
  measurement has a process of its own.
* ``compile_s``: after ``jax.clear_caches()``, the time of
  ``jax.jit(f).lower(x).compile()`` alone (tracing + XLA compilation).

owidth is called through its public API, ``ow.kernel(net, x)``, which jits
internally; neural-tangents' ``kernel_fn`` is wrapped in ``jax.jit`` by the
runner, as its users do. The parent process never imports JAX; it compares
the two NTKs (and NNGPs) the workers saved, as the elementwise maximum of
``|owidth - nt| / |nt|`` in the entry's dtype, writes the JSON (default
``benchmarks/results/kernels_cpu.json``) and prints a markdown table.
``--no-peer``, or a venv that cannot be built or run, leaves the peer out
(``null``) rather than failing. Numbers are reported, never asserted.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from _common import fmt as _fmt
from _common import machine_info as _machine_info
from _common import markdown
from _common import jax_platforms

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "kernels_cpu.json"
BUILD_VENV = HERE / "peers" / "build_venv.sh"
NT_RUNNER = HERE / "peers" / "nt_kernels_runner.py"

WORKLOAD = "ntk_relu_mlp_depth4"
DEPTH = 4
D_IN = 16
SEED = 0
SIZES = (512, 2048, 8192)
QUICK_SIZES = (64, 128)
REPEATS = 7
QUICK_REPEATS = 2
# name -> (net, input shape without batch, sizes, quick sizes, owidth batch_size (full, quick), repeats)
# batch_size: "auto" (ow.kernel's default: tiles from the memory budget), None (untiled) or an int.
WORKLOADS = {
    WORKLOAD: ("mlp", (D_IN,), SIZES, QUICK_SIZES, (None, None), REPEATS),
    "ntk_relu_mlp_depth4_tiled": ("mlp", (D_IN,), (8192,), (256,), (2048, 64), 3),
    "cntk_gap_cnn2_8x8x3": ("cnn", (8, 8, 3), (128,), (16,), (None, None), 3),
    "cntk_gap_cnn2_8x8x3_tiled": ("cnn", (8, 8, 3), (128,), (16,), (32, 8), 3),
    "cntk_gap_cnn2_8x8x3_auto": ("cnn", (8, 8, 3), (128,), (16,), ("auto", "auto"), 3),
    # CIFAR-size (Arora et al. 2019; Novak et al. 2019): 10^6 pixel pairs per image pair and layer
    "cntk_gap_cnn2_32x32x3": ("cnn", (32, 32, 3), (16, 128), (4,), ("auto", "auto"), 1),
    # Myrtle-style (Shankar et al. 2020): 3 x [Conv 3x3, Relu], AvgPool 2x2 after the 2nd and 3rd, GAP
    "cntk_myrtle_32x32x3": ("myrtle", (32, 32, 3), (16, 128), (4,), ("auto", "auto"), 1),
}
# The peer is run up to this N per workload (neural-tangents needs ~2 min and ~9 GB at N = 16 on
# 32x32 images, and had not finished N = 64 after 31 min: issue 22).
PEER_MAX_N = {"cntk_gap_cnn2_32x32x3": 16, "cntk_myrtle_32x32x3": 16}
# float32 only for the CIFAR-size rows (what the theory papers compute; float64 doubles the peer's minutes)
DTYPES_OF = {"cntk_gap_cnn2_32x32x3": ("float32",), "cntk_myrtle_32x32x3": ("float32",)}
DTYPES = ("float32", "float64")
GET = ("nngp", "ntk")
# Both workers pin one backend (OWIDTH_BENCH_PLATFORM: cpu unless benchmarks/run.py --platform says
# otherwise) and silence TensorFlow/absl start-up noise.
PLATFORM = os.environ.get("OWIDTH_BENCH_PLATFORM", "cpu")
WORKER_ENV = {"JAX_PLATFORMS": jax_platforms(PLATFORM), "TF_CPP_MIN_LOG_LEVEL": "3"}

PEAK_RSS_NOTE = (
    "peak_rss_mib: ru_maxrss of a fresh process running only this measurement, minus its value after "
    "imports, backend start-up and input transfer; covers the first (compiling) call and the timed calls. "
    "0 means the measurement never exceeded the memory the process had already touched at start-up. "
    "max_rss_mib: the process's whole peak (ru_maxrss), start-up included. device_peak_mib (accelerators "
    "only): the device allocator's peak bytes in use over the process, start-up included; the summary's "
    "peak column shows it instead of the host RSS when present."
)
TIMING_NOTE = (
    "first_call_s: first call incl. tracing and compilation; compile_s: jax.jit(f).lower(x).compile() "
    "after jax.clear_caches(); run_s: median of `repeats` calls ended by jax.block_until_ready (run_s_min: "
    "fastest). Each (library, dtype, n) runs alone in its own process; workers run one at a time."
)
DIFF_NOTE = (
    "max_rel_diff (max_rel_diff_nngp): max over all entries of |owidth - nt| / |nt| for the NTK (NNGP), in the "
    "entry's dtype; max_rel_diff_offdiag: the same for the NTK off the diagonal. On the diagonal (rho = 1) the "
    "ReLU NTK map has a sqrt singularity, so a one-ulp error in rho costs ~sqrt(eps) there."
)


# ---------------------------------------------------------------- worker side
def _max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def load_input(path: str, dtype: str):
    """The benchmark input as a device array of ``dtype`` (x64 must be set already)."""
    import jax

    x = jax.device_put(np.load(path).astype(dtype))
    if str(x.dtype) != dtype:
        raise RuntimeError(f"asked for {dtype} but JAX made {x.dtype}; is jax_enable_x64 set?")
    return jax.block_until_ready(x)


def measure(call, traceable, x, repeats: int):
    """Time ``call(x)`` (which returns ``(nngp, ntk)``) and compile ``traceable``.

    Shared by both workers so the peer is timed by the same protocol; it must
    run on jax 0.4.23 (the peer venv) as well as on current JAX.

    Returns ``(stats, (nngp, ntk))`` with the numbers described in the
    module docstring and the first call's kernels as numpy arrays.
    """
    import jax
    import jax.numpy as jnp

    jax.block_until_ready(jnp.zeros(()) + 1)  # backend up before any clock starts
    base_rss = _max_rss_mib()

    t0 = time.perf_counter()
    out = jax.block_until_ready(call(x))
    first_call_s = time.perf_counter() - t0

    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(call(x))
        times.append(time.perf_counter() - t0)
    max_rss_mib = _max_rss_mib()
    peak_rss_mib = max_rss_mib - base_rss

    jax.clear_caches()
    t0 = time.perf_counter()
    jax.jit(traceable).lower(x).compile()
    compile_s = time.perf_counter() - t0

    stats = {
        "first_call_s": first_call_s,
        "compile_s": compile_s,
        "run_s": statistics.median(times),
        "run_s_min": min(times),
        "repeats": repeats,
        "peak_rss_mib": peak_rss_mib,
        "max_rss_mib": max_rss_mib,
    }
    device_stats = jax.devices()[0].memory_stats() or {}  # None on CPU; on a GPU the allocator's counters
    if "peak_bytes_in_use" in device_stats:
        stats["device_peak_mib"] = device_stats["peak_bytes_in_use"] / 2**20
    return stats, tuple(np.asarray(k) for k in out)


def emit(stats: dict, kernels, save: str) -> None:
    """Save the kernels for the comparison and print the one JSON line."""
    nngp, ntk = kernels
    np.savez(save, nngp=nngp, ntk=ntk)
    print(json.dumps(stats), flush=True)


def owidth_net(kind: str = "mlp"):
    import owidth as ow

    w, b = 2**0.5, 0.1**0.5
    if kind == "myrtle":
        def block():
            return [ow.Conv(filter_shape=(3, 3), padding="SAME", w_std=w, b_std=b), ow.Relu()]

        return ow.serial(*block(), *block(), ow.AvgPool(window=(2, 2)), *block(), ow.AvgPool(window=(2, 2)),
                         ow.GlobalAvgPool(), ow.Dense(out=1, w_std=1.0, b_std=0.0))
    if kind == "cnn":
        conv = [l for _ in range(2) for l in (ow.Conv(filter_shape=(3, 3), padding="SAME", w_std=w, b_std=b),
                                              ow.Relu())]
        return ow.serial(*conv, ow.GlobalAvgPool(), ow.Dense(out=1, w_std=1.0, b_std=0.0))
    hidden = [l for _ in range(DEPTH) for l in (ow.Dense(w_std=w, b_std=b), ow.Relu())]
    return ow.serial(*hidden, ow.Dense(out=1, w_std=1.0, b_std=0.0))


def owidth_worker(args) -> None:
    import jax

    jax.config.update("jax_enable_x64", args.dtype == "float64")
    import owidth as ow

    from owidth import _kernel as _api

    net = owidth_net(args.net)
    x = load_input(args.x, args.dtype)
    bs = None if args.batch_size in (None, "none") else args.batch_size if args.batch_size == "auto" \
        else int(args.batch_size)
    tile = _api._tile_size(net, x, None, bs, None)  # the tile rows ow.kernel will use (None: untiled)

    def f(x):
        k = ow.kernel(net, x, get=GET, batch_size=bs, progress_bar=False)
        return k.nngp, k.ntk

    if tile is None:
        traceable = f
    else:  # tiles are assembled on the host: compile what they run, one tile with and one without x2
        def traceable(x):
            a = ow.kernel(net, x[:tile], get=GET, batch_size=None)
            b = ow.kernel(net, x[:tile], x[tile:2 * tile], get=GET, batch_size=None)
            return a.nngp, a.ntk, b.nngp, b.ntk

    stats, kernels = measure(f, traceable, x, args.repeats)  # ow.kernel jits internally
    stats["tile"] = tile
    stats.update(_flops(net, x, tile))
    emit(stats, kernels, args.save)


def _flops(net, x, tile) -> dict:
    """XLA's count of the floating-point operations and bytes of the whole kernel: the cost analysis
    of one untiled call on two inputs (x1 against x2: one pair of each kind, no symmetry savings),
    scaled by the n (n + 1) / 2 input pairs the call computes (n^2 / 2 + n tile / 2 when tiled)."""
    import jax

    import owidth as ow

    n = x.shape[0]

    def pair(a, b):
        k = ow.kernel(net, a, b, get=GET, batch_size=None)
        return k.nngp, k.ntk

    one = jax.jit(pair).lower(x[:1], x[1:2]).compile().cost_analysis()
    one = one[0] if isinstance(one, (list, tuple)) else one
    pairs = n * (n + 1) / 2 + (0 if tile is None else n * (tile - 1) / 2)
    return {"flops": float(one.get("flops", 0.0)) * pairs, "bytes_accessed": float(one.get("bytes accessed", 0.0)) * pairs,
            "pairs_computed": pairs}


# ---------------------------------------------------------------- parent side
def run_worker(cmd: list[str], quiet_stderr: bool = False) -> dict:
    """Run one worker to completion; its last stdout line is its JSON result."""
    # this checkout's owidth, whether or not (and wherever) owidth is installed
    path = os.pathsep.join(p for p in (str(HERE.parent), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, **WORKER_ENV, "PYTHONPATH": path}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=HERE.parent)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"worker failed (rc {proc.returncode}): {' '.join(cmd)}\n{tail}")
    if proc.stderr.strip() and not quiet_stderr:
        print(proc.stderr, file=sys.stderr, end="")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def find_peer_python() -> str | None:
    """The legacy venv's python, building the venv if needed; None if that fails."""
    try:
        proc = subprocess.run(["bash", str(BUILD_VENV)], capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.SubprocessError) as err:
        print(f"[kernels] peer skipped: {BUILD_VENV.name} did not run ({err})", file=sys.stderr)
        return None
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines or not os.access(lines[-1], os.X_OK):
        print(f"[kernels] peer skipped: {BUILD_VENV.name} failed (rc {proc.returncode})", file=sys.stderr)
        return None
    return lines[-1]


def peer_versions(python: str) -> dict | None:
    code = (
        "import json, importlib.metadata as m; "
        "print(json.dumps({'neural_tangents': m.version('neural-tangents'), 'jax': m.version('jax')}))"
    )
    try:
        proc = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120)
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as err:
        print(f"[kernels] peer skipped: cannot query its versions ({err})", file=sys.stderr)
        return None


def max_rel_diff(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    rel = np.abs(a - b) / np.abs(b)
    return float(np.max(rel if mask is None else rel[mask]))


def machine_info() -> dict:
    return _machine_info(PLATFORM)


def bench_one(workload: str, n: int, dtype: str, x_path: str, tmp: str, repeats: int, peer_python: str | None,
              batch_size: int | None, peer_cache: dict) -> dict:
    """Measure owidth (and the peer) for one (workload, N, dtype) and compare their kernels.

    The peer is always untiled; one peer measurement per (net, N, dtype) serves the tiled and the
    untiled owidth workload (``peer_cache``)."""
    net = WORKLOADS[workload][0]
    common = ["--x", x_path, "--dtype", dtype, "--repeats", str(repeats), "--net", net]
    ow_save = os.path.join(tmp, f"ow_{workload}_{dtype}_{n}.npz")
    extra = ["--batch-size", "none" if batch_size is None else str(batch_size)]
    ow_stats = run_worker([sys.executable, str(pathlib.Path(__file__).resolve()), "--worker", *common, *extra,
                           "--save", ow_save])
    entry = {"workload": workload, "n": n, "dtype": dtype, "batch_size": batch_size, "owidth": ow_stats,
             "neural_tangents": None, "ratio_run": None, "ratio_compile": None, "ratio_peak_rss": None,
             "max_rel_diff": None, "max_rel_diff_offdiag": None, "max_rel_diff_nngp": None}
    if peer_python is None:
        return entry
    key = (net, n, dtype)
    nt_save = os.path.join(tmp, f"nt_{net}_{dtype}_{n}.npz")
    try:
        if key not in peer_cache:
            peer_cache[key] = run_worker([peer_python, str(NT_RUNNER), *common, "--save", nt_save],
                                         quiet_stderr=True)
        nt_stats = peer_cache[key]
    except (OSError, RuntimeError, ValueError, IndexError) as err:
        print(f"[kernels] peer failed for {workload} n={n} {dtype}: {err}", file=sys.stderr)
        entry["peer_error"] = str(err).splitlines()[0]
        peer_cache[key] = None
        return entry
    if nt_stats is None:
        return entry
    with np.load(ow_save) as ko, np.load(nt_save) as kn:
        entry["max_rel_diff"] = max_rel_diff(ko["ntk"], kn["ntk"])
        entry["max_rel_diff_offdiag"] = max_rel_diff(ko["ntk"], kn["ntk"], ~np.eye(n, dtype=bool))
        entry["max_rel_diff_nngp"] = max_rel_diff(ko["nngp"], kn["nngp"])
    entry["neural_tangents"] = nt_stats
    entry["ratio_run"] = ow_stats["run_s"] / nt_stats["run_s"]
    entry["ratio_compile"] = ow_stats["compile_s"] / nt_stats["compile_s"]
    entry["ratio_peak_rss"] = ow_stats["peak_rss_mib"] / max(nt_stats["peak_rss_mib"], 1e-9)
    return entry


def markdown_table(results: list[dict]) -> str:
    head = ("workload", "tile rows", "dtype", "N", "owidth run ms", "NT run ms", "run ratio", "owidth compile s",
            "NT compile s", "owidth 1st call s", "NT 1st call s", "owidth RSS MiB", "NT RSS MiB", "NTK max rel diff",
            "off-diag", "owidth GFLOP/s (XLA count)", "owidth GB/s (XLA count)")
    rows = []
    for r in results:
        o, t = r["owidth"], r["neural_tangents"] or {}
        rows.append((
            r["workload"], _fmt(o.get("tile", r.get("batch_size")), "") + (" (auto)" if r.get("batch_size") == "auto" else ""),
            r["dtype"], r["n"], f"{o['run_s'] * 1e3:.2f}",
            _fmt(t["run_s"] * 1e3 if t else None, ".2f"), _fmt(r["ratio_run"], ".2f"), f"{o['compile_s']:.3f}",
            _fmt(t.get("compile_s"), ".3f"), f"{o['first_call_s']:.3f}", _fmt(t.get("first_call_s"), ".3f"),
            f"{o['peak_rss_mib']:.1f}", _fmt(t.get("peak_rss_mib"), ".1f"), _fmt(r["max_rel_diff"], ".2e"),
            _fmt(r["max_rel_diff_offdiag"], ".2e"),
            _fmt(o["flops"] / o["run_s"] / 1e9 if o.get("flops") else None, ".1f"),
            _fmt(o["bytes_accessed"] / o["run_s"] / 1e9 if o.get("bytes_accessed") else None, ".1f"),
        ))
    return markdown(head, rows)


def _owidth_version() -> str:
    text = (HERE.parent / "pyproject.toml").read_text()
    return next((l.split("=", 1)[1].strip().strip('"') for l in text.splitlines() if l.startswith("version")), "?")


def main_parent(args) -> None:
    workloads = args.workloads or list(WORKLOADS)
    peer_python = None if args.no_peer else find_peer_python()
    peer = peer_versions(peer_python) if peer_python else None
    if peer is None:
        peer_python = None

    results = []
    peer_cache: dict = {}
    with tempfile.TemporaryDirectory(prefix="owidth-bench-") as tmp:
        for workload in workloads:
            _, shape, sizes, quick_sizes, (bs, quick_bs), repeats = WORKLOADS[workload]
            sizes, bs = (quick_sizes, quick_bs) if args.quick else (sizes, bs)
            repeats = args.repeats if args.repeats is not None else (QUICK_REPEATS if args.quick else repeats)
            for n in sizes:
                x_path = os.path.join(tmp, f"x_{'x'.join(map(str, shape))}_{n}.npy")
                if not os.path.exists(x_path):  # same inputs for the tiled and untiled workloads
                    np.save(x_path, np.random.RandomState(SEED).randn(n, *shape))  # float64; workers cast
                peer = peer_python if n <= PEER_MAX_N.get(workload, n) else None
                for dtype in [d for d in args.dtypes if d in DTYPES_OF.get(workload, DTYPES)]:
                    print(f"[kernels] {workload} n={n} {dtype} ...", file=sys.stderr, flush=True)
                    results.append(bench_one(workload, n, dtype, x_path, tmp, repeats, peer, bs, peer_cache))

    report = {
        "machine": machine_info(),
        "jax_version": importlib.metadata.version("jax"),
        "owidth_version": _owidth_version(),
        "peer": peer,
        "config": {"workloads": {w: {"net": WORKLOADS[w][0], "input_shape": list(WORKLOADS[w][1]),
                                     "sizes": list(WORKLOADS[w][3 if args.quick else 2]),
                                     "batch_size": WORKLOADS[w][4][1 if args.quick else 0],
                                     "repeats": args.repeats or (QUICK_REPEATS if args.quick else WORKLOADS[w][5])}
                                 for w in workloads},
                   "depth_mlp": DEPTH, "seed": SEED, "get": list(GET), "dtypes": list(args.dtypes), "quick": args.quick},
        "notes": {"timing": TIMING_NOTE, "peak_rss_mib": PEAK_RSS_NOTE, "max_rel_diff": DIFF_NOTE},
        "results": results,
    }
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown_table(results))
    print(f"\nwrote {out}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small N, 2 repeats (smoke test)")
    p.add_argument("--workloads", nargs="*", choices=list(WORKLOADS), help="subset of workloads (default: all)")
    p.add_argument("--dtypes", nargs="+", choices=DTYPES, default=list(DTYPES), help="dtypes (default: both)")
    p.add_argument("--no-peer", action="store_true", help="skip neural-tangents")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="JSON output (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=None, help=f"timed calls per measurement (default {REPEATS})")
    # internal: one owidth measurement in this (fresh) process
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--x", help=argparse.SUPPRESS)
    p.add_argument("--dtype", choices=DTYPES, help=argparse.SUPPRESS)
    p.add_argument("--save", help=argparse.SUPPRESS)
    p.add_argument("--net", choices=("mlp", "cnn", "myrtle"), default="mlp", help=argparse.SUPPRESS)
    p.add_argument("--batch-size", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        owidth_worker(args)
    else:
        main_parent(args)


if __name__ == "__main__":
    main()
