"""Benchmark the DMFT solver (``ow.dmft``): time and peak memory as P, T (and samples) grow.

    python benchmarks/dmft.py [--quick] [--out PATH]

Workloads (2 hidden layers, full-batch GD, gamma0 = 1, lr = 0.2, float64):

* ``linear``: deep linear network, exact deterministic DMFT in weight space (one causal
  sweep), input dimension D = 8; P and T grow (P enters only through the error vectors,
  O(T P D)). ``linear-picard``: the same by Picard iteration (``method="picard"``).
* ``tanh``: tanh network, Monte Carlo DMFT in function space (one replica): one causal sweep
  over time with ``samples`` Monte Carlo neurons, ``response_samples`` of which carry the
  pathwise response Jacobians; P, T, samples and response samples grow. ``model_mb`` is
  the solver's own estimate of the arrays it carries (``memory_bytes``).
* ``tanh-population``: the same tanh network by ``method="population"``: ``replicas`` pairs of
  populations of widths ``samples`` and ``samples / 2`` trained in weight space and
  Richardson-extrapolated in 1/n (no response Jacobians); ``response_samples`` holds the replicas.
  ``f_se`` is the largest standard error of the outputs.

Each row runs in a fresh process: the first ``ow.dmft`` call (compilation + solve) and a
second identical call (solve only, the compiled iteration reused) are timed; every call
ends in host numpy arrays, so all work is finished (``block_until_ready`` semantics).
``compile_s`` is their difference. ``peak_mb`` is the process's peak resident memory.
Writes JSON (default ``benchmarks/results/dmft_cpu.json``) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent

_CHILD = r"""
import json, os, resource, sys, time
os.environ.setdefault("OWIDTH_NO_PROGRESS", "1")
import jax
jax.config.update("jax_enable_x64", True)
import numpy as np
import owidth as ow
kind, p, t, samples, resp = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
rng = np.random.default_rng(0)
d = 8
x = rng.standard_normal((p, d)); y = np.sin(x[:, 0] + 0.5 * x[:, 1])
act = ow.Identity() if kind.startswith("linear") else ow.Tanh()
net = ow.serial(ow.Dense(), act, ow.Dense(), act, ow.Dense(out=1))
if kind.startswith("linear"):
    kw = dict(method="picard") if kind == "linear-picard" else {}
elif kind == "tanh-population":
    kw = dict(method="population", samples=samples, replicas=resp)
else:
    kw = dict(method="monte-carlo", samples=samples, response_samples=resp, replicas=1)
t0 = time.perf_counter(); r = ow.dmft(net, x, y, gamma0=1.0, lr=0.2, steps=t, **kw); t1 = time.perf_counter()
r = ow.dmft(net, x, y, gamma0=1.0, lr=0.2, steps=t, **kw); t2 = time.perf_counter()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
model = 0.0
if kind == "tanh":
    from owidth.meanfield import _spec, nonlinear
    model = nonlinear.memory_bytes(_spec.parse(net, ow.MUP, where="bench"), samples=samples, response_samples=resp,
                                   tau=t + 1, q=p, itemsize=8) / 2**20
print(json.dumps({"first_s": t1 - t0, "run_s": t2 - t1, "compile_s": max(0.0, (t1 - t0) - (t2 - t1)),
                  "peak_mb": peak, "model_mb": model, "iterations": r.iterations,
                  "final_loss": float(r.train_loss[-1]), "f_se": float(np.nanmax(r.f_train_se))}))
"""


def _measure(kind: str, p: int, t: int, samples: int, resp: int) -> dict:
    env = dict(os.environ, OWIDTH_NO_PROGRESS="1")
    out = subprocess.run([sys.executable, "-c", _CHILD, kind, str(p), str(t), str(samples), str(resp)],
                         capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool) -> list[dict]:
    """Rows ``{workload, P, T, samples, response_samples, compile_s, run_s, peak_mb, model_mb, iterations}``."""
    if quick:
        grid = [("linear", 20, 20, 0, 0), ("linear", 100, 20, 0, 0), ("tanh", 4, 8, 200, 32),
                ("tanh-population", 4, 8, 128, 2)]
    else:
        grid = [("linear", 100, t, 0, 0) for t in (25, 50, 100)] + [("linear", p, 100, 0, 0) for p in (10, 1000)]
        grid += [("linear-picard", 100, 100, 0, 0), ("linear", 100, 200, 0, 0)]
        grid += [("tanh", 8, t, 1000, 64) for t in (10, 20, 40)] + [("tanh", p, 20, 1000, 64) for p in (16, 32)]
        grid += [("tanh", 10, t, 1000, 64) for t in (50, 100)] + [("tanh", 20, 50, 1000, 64)]
        grid += [("tanh", 8, 20, s, 64) for s in (250, 4000)] + [("tanh", 8, 20, 1000, r) for r in (16, 256)]
        grid += [("tanh", 5, 50, 1000, 64), ("tanh", 40, 50, 1000, 64), ("tanh", 20, 100, 1000, 64)]
        grid += [("tanh-population", 10, 50, 1024, 8), ("tanh-population", 100, 100, 1024, 8),
                 ("tanh-population", 100, 100, 2048, 4), ("tanh-population", 100, 50, 1024, 8),
                 ("tanh-population", 200, 100, 1024, 8)]
    rows = []
    for kind, p, t, samples, resp in grid:
        m = _measure(kind, p, t, samples, resp)
        rows.append({"workload": kind, "P": p, "T": t, "samples": samples, "response_samples": resp, **m})
        print(f"{kind:15s} P={p:5d} T={t:4d} samples={samples:5d} resp={resp:4d}  compile {m['compile_s']:7.2f} s  "
              f"run {m['run_s']:7.2f} s  peak {m['peak_mb']:7.0f} MiB (model {m['model_mb']:6.0f})  "
              f"iterations {m['iterations']}", flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results" / "dmft_cpu.json"))
    args = ap.parse_args(argv)
    rows = run(args.quick)
    meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "quick": args.quick}
    pathlib.Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
