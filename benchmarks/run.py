"""Every benchmark in one command, with owidth/peer ratios against the project's targets.

    python benchmarks/run.py [--quick] [--no-peer] [--only AREA ...] [--out-dir DIR] [--platform cpu|gpu]

Areas, each run by its own script in its own processes, one after another
(never concurrently, so that no measurement shares the machine with another):

=========  ==========================================================  ===========================
area       what                                                        target (issue 8)
=========  ==========================================================  ===========================
kernels    ``ow.kernel`` NNGP+NTK vs neural-tangents 0.6.5: depth-4     run time <= 0.5x NT; pooled
           ReLU MLP, N = 512, 2048 and 8192 (tiled); pooled CNTK of a   CNTK also lower peak memory
           2-conv net on 128 images 8x8x3 (``kernels.py``)
empirical  ``ow.empirical_ntk`` (auto) vs NT's best implementation:    run time <= 1.0x NT's best
           MLP widths 512 and 2048, a small CNN (``empirical_ntk.py``)
ensembles  256 networks as one vmapped ``ow.train`` vs a loop of        >= 10x faster than the loop
           ``ow.train`` calls (``ensembles.py``)
import     ``import owidth`` in a fresh interpreter, median of 5        < 1.5 s
dmft       ``ow.dmft`` time and peak memory as P and T grow             P = T = 100, 2 hidden
           (``dmft.py``, when present)                                 layers: < 60 s
compile    compile time of ``ow.repeat(block, 1000)`` (kernel, finite   < 10 s (issue 17)
           forward pass and gradient) vs the unrolled net (``compile.py``)
=========  ==========================================================  ===========================

Each area writes its own JSON (``DIR/kernels_TAG.json``, ...; every number
with its protocol: compile and steady state timed separately, steady state
the median of repeats ended by ``block_until_ready``); this runner then writes
``DIR/summary_TAG.json`` and ``DIR/summary_TAG.md``, one row per workload:
owidth's time, the peer's, the ratio, the target and whether it was met.
TAG is ``cpu`` or ``gpu`` (``--platform``); the JAX version and the machine
are recorded. Targets are reported, never asserted: a missed target is a row
that says "no".

``--quick`` is a smoke run (small sizes, float32, no peer unless
``--peer``), written to a fresh temporary directory unless ``--out-dir`` is
given; ``tests/test_benchmarks.py`` runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

from _common import fmt, jax_platforms, machine_info, markdown

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
AREAS = ("kernels", "empirical", "ensembles", "import", "dmft", "compile")
IMPORT_REPEATS = 5

KERNEL_TARGET = 0.5
CIFAR_TARGET = 0.1  # issue 22: owidth / neural-tangents on the CIFAR-size CNTK at the same N
CIFAR_SECONDS, CIFAR_GIB = 60, 4  # issue 22: N = 128 images of 32x32x3, 2 cores
EMPIRICAL_TARGET = 1.0
ENSEMBLE_TARGET = 10.0
IMPORT_TARGET_S = 1.5
DMFT_TARGET_S = 60.0
COMPILE_TARGET_S = 10.0


def _env(platform_name: str) -> dict:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "JAX_PLATFORMS": jax_platforms(platform_name),
            "OWIDTH_BENCH_PLATFORM": platform_name,
            "OWIDTH_NO_PROGRESS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}


def _run(cmd: list[str], env: dict, label: str) -> None:
    print(f"[run] {label}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-20:])
        raise RuntimeError(f"{label} failed (rc {proc.returncode}):\n{tail}")
    print(f"[run] {label}: done in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)


# ----------------------------------------------------------------- areas
def _script(script: str, out: pathlib.Path, args, env, label: str, quick: list[str], peer: bool = True) -> dict:
    """Run ``benchmarks/SCRIPT --out OUT`` (with ``--quick`` and ``quick`` arguments, ``--no-peer``); its JSON."""
    cmd = [sys.executable, str(HERE / script), "--out", str(out)]
    if args.quick:
        cmd += ["--quick", *quick]
    if peer and not args.peer:
        cmd.append("--no-peer")
    _run(cmd, env, label)
    return json.loads(out.read_text())


def run_kernels(out: pathlib.Path, args, env) -> list[dict]:
    return kernel_rows(_script("kernels.py", out, args, env, "kernels",
                               ["--dtypes", "float32", "--workloads", "ntk_relu_mlp_depth4_tiled"]))


def kernel_rows(report: dict) -> list[dict]:
    """Summary rows from ``kernels.py``'s JSON report."""
    rows = []
    for r in report["results"]:
        cntk = r["workload"].startswith("cntk")
        cifar = "32x32" in r["workload"]
        o, t = r["owidth"], r["neural_tangents"]
        tile = o.get("tile", r.get("batch_size"))
        tile = f", tiles of {tile}" + (" (auto)" if r.get("batch_size") == "auto" else "") if tile else ""
        if o.get("flops") and o.get("run_s"):
            tile += f", {o['flops'] / o['run_s'] / 1e9:.1f} GFLOP/s (XLA count)"
        met = None
        if cifar and t is None:  # issue 22: N = 128 CIFAR-size CNTK within a minute and 4 GiB on 2 cores
            target = f"<= {CIFAR_SECONDS} s, <= {CIFAR_GIB} GiB"
            if "device_peak_mib" in o:  # on an accelerator: its memory (the host RSS is mostly CUDA's libraries)
                mem = o["device_peak_mib"]
                tile += f", device peak {mem:.0f} MiB (host RSS {o.get('max_rss_mib', 0):.0f} MiB)"
            else:
                mem = o.get("max_rss_mib", o["peak_rss_mib"])  # the whole process, start-up included
                tile += f", process peak RSS {mem:.0f} MiB"
            met = o["run_s"] <= CIFAR_SECONDS and mem <= CIFAR_GIB * 1024
        elif cifar:
            target = f"<= {CIFAR_TARGET}x NT"
            met = r["ratio_run"] is not None and r["ratio_run"] <= CIFAR_TARGET
        else:
            target = f"<= {KERNEL_TARGET}x NT" + (", less memory" if cntk else "")
            if r["ratio_run"] is not None:
                met = r["ratio_run"] <= KERNEL_TARGET and (not cntk or r["ratio_peak_rss"] < 1.0)
        rows.append(_row("kernels", f"{r['workload']} N={r['n']} {r['dtype']}{tile}", o["run_s"],
                         t and t["run_s"], _peak(o), t and t["peak_rss_mib"], target, met,
                         ratio=r["ratio_run"]))
    return rows


def run_empirical(out: pathlib.Path, args, env) -> list[dict]:
    report = _script("empirical_ntk.py", out, args, env, "empirical", ["--archs", "mlp", "--impls", "auto"])
    rows = []
    for r in report["results"]:
        o = r["owidth"]["auto"]
        t = (r["neural_tangents"] or {}).get(r["nt_best"]) if r["nt_best"] else None
        ratio = r["ratio_run_auto"]
        rows.append(_row("empirical", f"{r['workload']} N={r['n']} (owidth auto vs NT {r['nt_best'] or '-'})",
                         o["run_s"], t and t["run_s"], _peak(o), t and t["peak_rss_mib"],
                         f"<= {EMPIRICAL_TARGET}x NT best", None if ratio is None else ratio <= EMPIRICAL_TARGET,
                         ratio=ratio))
    return rows


def run_ensembles(out: pathlib.Path, args, env) -> list[dict]:
    report = _script("ensembles.py", out, args, env, "ensembles", ["--workloads", "small"], peer=False)
    rows = []
    for name, w in report.items():
        if name == "machine":
            continue
        res = w["results"]
        speedup = w["speedup_vs_loop_train"]
        rows.append(_row("ensembles", f"{name}: {w['workload']}; peer = loop of ow.train", res["vmapped"]["run_s"],
                         res["loop_train"]["run_s"], None, None, f">= {ENSEMBLE_TARGET:g}x faster than the loop",
                         speedup >= ENSEMBLE_TARGET, ratio=res["vmapped"]["run_s"] / res["loop_train"]["run_s"]))
    return rows


def run_import(out: pathlib.Path, args, env) -> list[dict]:
    """Wall time of ``import owidth`` (and of ``import jax`` alone) in fresh interpreters."""
    code = "import time; t = time.perf_counter(); import {mod}; print(time.perf_counter() - t)"
    result = {}
    for mod in ("jax", "owidth"):
        times = []
        for _ in range(2 if args.quick else IMPORT_REPEATS):
            proc = subprocess.run([sys.executable, "-c", code.format(mod=mod)], env=env, cwd=tempfile.gettempdir(),
                                  capture_output=True, text=True, check=True)
            times.append(float(proc.stdout.strip().splitlines()[-1]))
        result[mod] = {"median_s": statistics.median(times), "times_s": times}
    out.write_text(json.dumps({"machine": _machine(args.platform), "import": result,
                               "note": "wall time of `import MOD` in a fresh interpreter (OS file cache warm after the "
                                       "first run); median over the runs"}, indent=2) + "\n")
    s = result["owidth"]["median_s"]
    return [_row("import", f"import owidth (import jax alone: {result['jax']['median_s']:.2f} s)", s, None, None, None,
                 f"< {IMPORT_TARGET_S} s", s < IMPORT_TARGET_S)]


def run_dmft(out: pathlib.Path, args, env) -> list[dict]:
    script = HERE / "dmft.py"
    if not script.exists():
        print("[run] dmft: benchmarks/dmft.py not present, skipped", file=sys.stderr)
        return []
    return dmft_rows(_script("dmft.py", out, args, env, "dmft", [], peer=False))


def dmft_rows(report: dict) -> list[dict]:
    """Summary rows from ``dmft.py``'s JSON report."""
    rows = []
    for r in report["rows"]:
        total = r["compile_s"] + r["run_s"]
        headline = r["P"] == 100 and r["T"] == 100
        mc = (f", {r['samples']} MC samples ({r.get('response_samples', 64)} response)" if r["samples"]
              else " (exact)")
        rows.append(_row("dmft", f"{r['workload']} 2-hidden-layer MLP, P={r['P']} T={r['T']}{mc}; compile + run",
                         total, None, r["peak_mb"], None, f"< {DMFT_TARGET_S:g} s" if headline else "-",
                         (total < DMFT_TARGET_S) if headline else None))
    if report["rows"] and not any(r["workload"] == "tanh" and r["P"] == 100 and r["T"] == 100 for r in report["rows"]):
        from owidth.meanfield import _spec, nonlinear
        import owidth as ow

        net = ow.serial(ow.Dense(), ow.Tanh(), ow.Dense(), ow.Tanh(), ow.Dense(out=1))
        gib = nonlinear.memory_bytes(_spec.parse(net, ow.MUP, where="bench"), samples=1000, response_samples=64,
                                     tau=101, q=100, itemsize=8) / 2**30
        rows.append(_row("dmft", f"tanh 2-hidden-layer MLP, P=100 T=100, 1000 MC samples (64 response): not run, "
                         f"its arrays alone need {gib:.0f} GiB", None, None, None, None, f"< {DMFT_TARGET_S:g} s",
                         False))
    return rows


def run_compile(out: pathlib.Path, args, env) -> list[dict]:
    report = _script("compile.py", out, args, env, "compile", [], peer=False)
    rows = []
    for r in report["rows"]:
        headline = r["net"] == "ow.repeat" and r["depth"] >= 1000
        rows.append(_row("compile", f"{r['kind']} of {r['net']} [Dense, Relu] x {r['depth']}: compile "
                         f"(run {r['run_s'] * 1e3:.1f} ms)", r["compile_s"], None, None, None,
                         f"< {COMPILE_TARGET_S:g} s" if headline else "-",
                         (r["compile_s"] < COMPILE_TARGET_S) if headline else None))
    return rows


RUNNERS = {"kernels": run_kernels, "empirical": run_empirical, "ensembles": run_ensembles, "import": run_import,
           "dmft": run_dmft, "compile": run_compile}
FILES = {"kernels": "kernels", "empirical": "empirical_ntk", "ensembles": "ensembles", "import": "import",
         "dmft": "dmft", "compile": "compile"}


# ----------------------------------------------------------------- summary
def _peak(stats: dict) -> float:
    """The peak memory of a measurement: the device's on an accelerator, else the host RSS growth."""
    return stats.get("device_peak_mib", stats["peak_rss_mib"])


def _row(area, workload, owidth_s, peer_s, owidth_mib, peer_mib, target, met, ratio=None) -> dict:
    if ratio is None and owidth_s is not None and peer_s:
        ratio = owidth_s / peer_s
    return {"area": area, "workload": workload, "owidth_s": owidth_s, "peer_s": peer_s, "ratio": ratio,
            "owidth_peak_mib": owidth_mib, "peer_peak_mib": peer_mib, "target": target, "met": met}


def _machine(platform_name: str) -> dict:
    import importlib.metadata

    return {**machine_info(platform_name), "jax": importlib.metadata.version("jax")}


def _seconds(v) -> str:
    if v is None:
        return "-"
    return f"{v * 1e3:.2f} ms" if v < 1.0 else f"{v:.2f} s"


def summary_markdown(summary: dict) -> str:
    m = summary["machine"]
    head = ("area", "workload", "owidth", "peer", "owidth / peer", "peak MiB owidth / peer", "target", "met")
    rows = [(r["area"], r["workload"], _seconds(r["owidth_s"]), _seconds(r["peer_s"]), fmt(r["ratio"], ".2f"),
             f"{fmt(r['owidth_peak_mib'], '.0f')} / {fmt(r['peer_peak_mib'], '.0f')}", r["target"],
             {True: "yes", False: "**no**", None: "-"}[r["met"]]) for r in summary["rows"]]
    gpu = f"{m['gpu']}; host " if m.get("gpu") else ""
    title = (f"# Benchmarks ({m['backend']}, {gpu}{m['cpu']}, {m['cpu_count']} cores, jax {m['jax']}"
             f"{', quick' if summary['quick'] else ''})\n\n"
             "Peer: neural-tangents 0.6.5 on jax 0.4.23 (isolated venv, benchmarks/peers/) for kernels and "
             "empirical NTKs; a Python loop of `ow.train` calls for ensembles. Times are steady state (median of "
             "repeats, `block_until_ready`); compile times and every raw number are in the per-area JSON files."
             + (" Peak memory: the device allocator's peak for kernels and empirical NTKs, host RSS elsewhere."
                if m.get("gpu") else "") + "\n\n")
    return title + markdown(head, rows) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: small sizes, float32, no peer")
    p.add_argument("--peer", action=argparse.BooleanOptionalAction, default=None,
                   help="time neural-tangents in its legacy venv (default: yes, except with --quick)")
    p.add_argument("--only", nargs="+", choices=AREAS, help="areas to run (default: all)")
    p.add_argument("--out-dir", type=pathlib.Path, default=None,
                   help="where the JSON and markdown go (default: benchmarks/results, or a temp dir with --quick)")
    p.add_argument("--platform", choices=("cpu", "gpu"), default="cpu", help="JAX backend to benchmark")
    args = p.parse_args(argv)
    if args.peer is None:
        args.peer = not args.quick
    out_dir = args.out_dir or (pathlib.Path(tempfile.mkdtemp(prefix="owidth-bench-")) if args.quick
                               else HERE / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    env = _env(args.platform)
    tag = args.platform

    rows, failed = [], {}
    for area in args.only or AREAS:
        try:
            rows += RUNNERS[area](out_dir / f"{FILES[area]}_{tag}.json", args, env)
        except (RuntimeError, OSError, KeyError, ValueError) as err:
            print(f"[run] {area} failed: {err}", file=sys.stderr)
            failed[area] = str(err).splitlines()[0]
    previous = out_dir / f"summary_{tag}.json"
    if args.only and previous.exists():  # re-running some areas keeps the other areas' rows
        kept = [r for r in json.loads(previous.read_text())["rows"] if r["area"] not in args.only]
        rows = [r for area in AREAS for r in kept + rows if r["area"] == area]
    summary = {"machine": _machine(args.platform), "quick": args.quick, "peer": args.peer, "rows": rows,
               "failed": failed}
    (out_dir / f"summary_{tag}.json").write_text(json.dumps(summary, indent=2) + "\n")
    md = summary_markdown(summary)
    (out_dir / f"summary_{tag}.md").write_text(md)
    print(md)
    print(f"wrote {out_dir / f'summary_{tag}.md'} (and .json)")
    if failed:
        sys.exit(f"benchmark areas failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
