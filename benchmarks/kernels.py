"""Benchmark ``ow.kernel`` against neural-tangents 0.6.5 on CPU.

    python benchmarks/kernels.py [--quick] [--no-peer] [--out PATH] [--repeats R]

Workload ``ntk_relu_mlp_depth4``: the NNGP and NTK (both asked for) of a
depth-4 ReLU MLP (4 x [Dense(w_std=sqrt 2, b_std=sqrt 0.1), Relu] then
Dense(out=1, w_std=1, b_std=0)) between N inputs of dimension 16 and
themselves (x2=None), for N in {512, 2048} ({64, 128} with --quick), in
float32 (JAX's default) and float64 (jax_enable_x64 on).

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
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "kernels_cpu.json"
BUILD_VENV = HERE / "peers" / "build_venv.sh"
NT_RUNNER = HERE / "peers" / "nt_kernels_runner.py"

WORKLOAD = "ntk_relu_mlp_depth4"
DEPTH = 4
D_IN = 16
SEED = 0
SIZES = (512, 2048)
QUICK_SIZES = (64, 128)
REPEATS = 7
QUICK_REPEATS = 2
DTYPES = ("float32", "float64")
GET = ("nngp", "ntk")
# Both workers pin the CPU backend and silence TensorFlow/absl start-up noise.
WORKER_ENV = {"JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}

PEAK_RSS_NOTE = (
    "peak_rss_mib: ru_maxrss of a fresh process running only this measurement, minus its value after "
    "imports, backend start-up and input transfer; covers the first (compiling) call and the timed calls."
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
    peak_rss_mib = _max_rss_mib() - base_rss

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
    }
    return stats, tuple(np.asarray(k) for k in out)


def emit(stats: dict, kernels, save: str) -> None:
    """Save the kernels for the comparison and print the one JSON line."""
    nngp, ntk = kernels
    np.savez(save, nngp=nngp, ntk=ntk)
    print(json.dumps(stats), flush=True)


def owidth_net():
    import owidth as ow

    hidden = [l for _ in range(DEPTH) for l in (ow.Dense(w_std=2**0.5, b_std=0.1**0.5), ow.Relu())]
    return ow.serial(*hidden, ow.Dense(out=1, w_std=1.0, b_std=0.0))


def owidth_worker(args) -> None:
    import jax

    jax.config.update("jax_enable_x64", args.dtype == "float64")
    import owidth as ow

    net = owidth_net()
    x = load_input(args.x, args.dtype)

    def f(x):
        k = ow.kernel(net, x, get=GET)
        return k.nngp, k.ntk

    stats, kernels = measure(f, f, x, args.repeats)  # ow.kernel jits internally
    emit(stats, kernels, args.save)


# ---------------------------------------------------------------- parent side
def run_worker(cmd: list[str], quiet_stderr: bool = False) -> dict:
    """Run one worker to completion; its last stdout line is its JSON result."""
    env = {**os.environ, **WORKER_ENV}
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
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "backend": "cpu",
    }


def bench_one(n: int, dtype: str, x_path: str, tmp: str, repeats: int, peer_python: str | None) -> dict:
    """Measure owidth (and the peer) for one (N, dtype) and compare their kernels."""
    common = ["--x", x_path, "--dtype", dtype, "--repeats", str(repeats)]
    ow_save = os.path.join(tmp, f"ow_{dtype}_{n}.npz")
    ow_stats = run_worker([sys.executable, str(pathlib.Path(__file__).resolve()), "--worker", *common, "--save", ow_save])
    entry = {"workload": WORKLOAD, "n": n, "dtype": dtype, "owidth": ow_stats, "neural_tangents": None,
             "ratio_run": None, "ratio_compile": None,
             "max_rel_diff": None, "max_rel_diff_offdiag": None, "max_rel_diff_nngp": None}
    if peer_python is None:
        return entry
    nt_save = os.path.join(tmp, f"nt_{dtype}_{n}.npz")
    try:
        nt_stats = run_worker([peer_python, str(NT_RUNNER), *common, "--save", nt_save], quiet_stderr=True)
    except (OSError, RuntimeError, ValueError, IndexError) as err:
        print(f"[kernels] peer failed for n={n} {dtype}: {err}", file=sys.stderr)
        entry["peer_error"] = str(err).splitlines()[0]
        return entry
    with np.load(ow_save) as ko, np.load(nt_save) as kn:
        entry["max_rel_diff"] = max_rel_diff(ko["ntk"], kn["ntk"])
        entry["max_rel_diff_offdiag"] = max_rel_diff(ko["ntk"], kn["ntk"], ~np.eye(n, dtype=bool))
        entry["max_rel_diff_nngp"] = max_rel_diff(ko["nngp"], kn["nngp"])
    entry["neural_tangents"] = nt_stats
    entry["ratio_run"] = ow_stats["run_s"] / nt_stats["run_s"]
    entry["ratio_compile"] = ow_stats["compile_s"] / nt_stats["compile_s"]
    return entry


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def markdown_table(results: list[dict]) -> str:
    head = ("| dtype | N | owidth run ms | NT run ms | run ratio | owidth compile s | NT compile s "
            "| owidth 1st call s | NT 1st call s | owidth RSS MiB | NT RSS MiB | NTK max rel diff | off-diag |")
    rows = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in results:
        o, t = r["owidth"], r["neural_tangents"] or {}
        nt_run_ms = t["run_s"] * 1e3 if t else None
        rows.append(
            f"| {r['dtype']} | {r['n']} | {o['run_s'] * 1e3:.2f} | {_fmt(nt_run_ms, '.2f')} "
            f"| {_fmt(r['ratio_run'], '.2f')} | {o['compile_s']:.3f} | {_fmt(t.get('compile_s'), '.3f')} "
            f"| {o['first_call_s']:.3f} | {_fmt(t.get('first_call_s'), '.3f')} "
            f"| {o['peak_rss_mib']:.1f} | {_fmt(t.get('peak_rss_mib'), '.1f')} | {_fmt(r['max_rel_diff'], '.2e')} "
            f"| {_fmt(r['max_rel_diff_offdiag'], '.2e')} |"
        )
    return "\n".join(rows)


def main_parent(args) -> None:
    sizes, repeats = (QUICK_SIZES, QUICK_REPEATS) if args.quick else (SIZES, REPEATS)
    repeats = args.repeats if args.repeats is not None else repeats
    peer_python = None if args.no_peer else find_peer_python()
    peer = peer_versions(peer_python) if peer_python else None
    if peer is None:
        peer_python = None

    results = []
    with tempfile.TemporaryDirectory(prefix="owidth-bench-") as tmp:
        rng = np.random.RandomState(SEED)
        for n in sizes:
            x_path = os.path.join(tmp, f"x_{n}.npy")
            np.save(x_path, rng.randn(n, D_IN))  # float64; each worker casts to its dtype
            for dtype in DTYPES:
                print(f"[kernels] n={n} {dtype} ...", file=sys.stderr, flush=True)
                results.append(bench_one(n, dtype, x_path, tmp, repeats, peer_python))

    report = {
        "machine": machine_info(),
        "jax_version": importlib.metadata.version("jax"),
        "owidth_version": importlib.metadata.version("owidth"),
        "peer": peer,
        "config": {"workload": WORKLOAD, "depth": DEPTH, "d_in": D_IN, "seed": SEED, "get": list(GET),
                   "sizes": list(sizes), "dtypes": list(DTYPES), "repeats": repeats, "quick": args.quick},
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
    p.add_argument("--quick", action="store_true", help="N in {64, 128}, 2 repeats (smoke test)")
    p.add_argument("--no-peer", action="store_true", help="skip neural-tangents")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="JSON output (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=None, help=f"timed calls per measurement (default {REPEATS})")
    # internal: one owidth measurement in this (fresh) process
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--x", help=argparse.SUPPRESS)
    p.add_argument("--dtype", choices=DTYPES, help=argparse.SUPPRESS)
    p.add_argument("--save", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        owidth_worker(args)
    else:
        main_parent(args)


if __name__ == "__main__":
    main()
