"""Benchmark vmapped ensemble training (``ow.train``) against a Python loop over configurations.

    python benchmarks/ensembles.py [--quick] [--out PATH]

Workloads: 8 seeds x 8 learning rates x 4 richness scales alpha = 256 networks,
a 2-hidden-layer ReLU MLP under muP (base width 32) trained by
full-batch gradient descent for 100 steps on scikit-learn digits (float32):
``small`` (width 32, 64 points: per-call overhead dominates, the regime of
theory sweeps) and ``large`` (width 128, 512 points: compute dominates).

* ``vmapped``: one ``ow.train`` call, default settings: all 256 members in one
  compiled program (on CPU advanced in cache-sized batches, see
  ``members_per_batch``).
* ``vmapped_all``: the same with every member vmapped at once.
* ``loop_train``: 256 ``ow.train`` calls with one member each (what a user's
  for-loop over configurations does; the compiled program is reused because
  seed, lr and alpha are traced values, so only the first call compiles).
* ``loop_jit``: the same single-member compiled program called directly 256
  times (no ``ow.train`` bookkeeping): the fastest possible loop.

Each is timed twice: the first pass includes compilation (``first_s``); the
second pass (``run_s``) is steady state. ``roofline``: the FLOPs of the
training (XLA's cost analysis of one member's compiled step x steps x members)
and the GFLOP/s each variant reaches, next to a large float32 matmul's rate on
the same machine: when the loop already runs near that rate, no batching can
make the ensemble much faster than the loop. Every call ends in host numpy arrays,
so all work is finished (``block_until_ready`` semantics). Writes JSON
(default ``benchmarks/results/ensembles_cpu.json``) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import time

os.environ.setdefault("OWIDTH_NO_PROGRESS", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402

import owidth as ow  # noqa: E402
from owidth.experiments._common import digits  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Steady-state GFLOP/s of an (n, n) x (n, n) float32 matmul: the machine's practical peak."""
    a = jax.random.normal(jax.random.key(0), (n, n), jax.numpy.float32)
    f = jax.jit(lambda a: a @ a)
    jax.block_until_ready(f(a))
    t0 = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(f(a))
    return 2 * n**3 / ((time.perf_counter() - t0) / repeats) / 1e9


def workload(*, width: int, points: int, quick: bool) -> dict:
    n_seed, n_lr, n_alpha, steps = (2, 2, 2, 20) if quick else (8, 8, 4, 100)
    x, y, _, _ = digits(0)
    x, y = x[:points], np.eye(10)[y[:points]]
    net = ow.serial(ow.Dense(w_std=2**0.5), ow.Relu(), ow.Dense(w_std=2**0.5), ow.Relu(), ow.Dense(out=10))
    seeds = list(range(n_seed))
    lrs = list(np.geomspace(0.01, 1.0, n_lr))
    alphas = list(np.geomspace(0.5, 4.0, n_alpha))
    common = dict(widths=width, steps=steps, param=ow.MUP.with_base_width(32), record_every=steps, progress_bar=False)

    def vmapped():
        return ow.train(net, (x, y), seeds=seeds, lr=lrs, alpha=alphas, **common).train_loss.values

    def vmapped_all():
        return ow.train(net, (x, y), seeds=seeds, lr=lrs, alpha=alphas, members_per_batch=10**9, **common).train_loss.values

    def loop_train():
        return [ow.train(net, (x, y), seeds=[s], lr=lr, alpha=a, **common).train_loss.values
                for s in seeds for lr in lrs for a in alphas]

    from owidth._train import init_members, member_step, plan, record_members, run_chunk

    # one member's program: the plan of a one-member ow.train call (all members at once: no member batches)
    cfg = plan(net, (x, y), seeds=[0], lr=lrs[0], alpha=alphas[0], members_per_batch=1, **common).program(width)
    xj, yj = jax.numpy.asarray(x), jax.numpy.asarray(y, dtype=jax.numpy.float32)

    def loop_jit():
        out = []
        for s in seeds:
            for lr in lrs:
                for a in alphas:
                    state = init_members(cfg, jax.random.key(s)[None], jax.numpy.full(1, lr), jax.numpy.full(1, a), xj, None)
                    state, rec = run_chunk(cfg, state, 0, xj, yj, None, None)
                    out.append(np.asarray(record_members(cfg, state, xj, yj, None, None)["train_loss"]))
        return out

    results = {}
    variants = (("vmapped", vmapped), ("vmapped_all", vmapped_all), ("loop_jit", loop_jit), ("loop_train", loop_train))
    for name, fn in variants if not quick else (variants[0], variants[-1]):  # quick: the headline pair only
        t0 = time.perf_counter()
        fn()
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        fn()
        results[name] = {"first_s": first, "run_s": time.perf_counter() - t0}
    members = n_seed * n_lr * n_alpha
    # Roofline: FLOPs of one member's training step (XLA's cost analysis of the compiled step) times
    # steps and members, against the rate of a large float32 matmul on this machine.
    st = jax.tree.map(lambda a: a[0], init_members(cfg, jax.random.key(0)[None], jax.numpy.full(1, lrs[0]),
                                                 jax.numpy.full(1, alphas[0]), xj, None))
    cost = jax.jit(lambda s: member_step(cfg, s, 0, xj, yj)).lower(st).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    total_flops = float(cost["flops"]) * steps * members
    roofline = {"flops_per_member_step": float(cost["flops"]), "total_gflop": total_flops / 1e9,
                "matmul_gflops": matmul_gflops(),
                **{f"{k}_gflops": total_flops / 1e9 / v["run_s"] for k, v in results.items()}}
    return {
        "roofline": roofline,
        "workload": f"{n_seed} seeds x {n_lr} lrs x {n_alpha} alphas = {members} MLPs (width {width}, 2 hidden ReLU "
                    f"layers, muP), full-batch GD, {steps} steps, {points} digits, float32",
        "results": results,
        "speedup_vs_loop_train": results["loop_train"]["run_s"] / results["vmapped"]["run_s"],
        "speedup_vs_loop_jit": results["loop_jit"]["run_s"] / results["vmapped"]["run_s"] if "loop_jit" in results
        else None,
    }


WORKLOADS = {"small": {"width": 32, "points": 64}, "large": {"width": 128, "points": 512}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 x 2 x 2 members, 20 steps")
    ap.add_argument("--out", type=pathlib.Path, default=HERE / "results" / "ensembles_cpu.json")
    ap.add_argument("--workloads", nargs="+", choices=sorted(WORKLOADS), default=list(WORKLOADS),
                    help="which workloads (default: both)")
    args = ap.parse_args()
    report = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "device": str(jax.devices()[0]), "jax": jax.__version__},
        **{name: workload(**WORKLOADS[name], quick=args.quick) for name in args.workloads},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print("| workload | variant | first call (s) | steady state (s) |\n|---|---|---|---|")
    for wl in args.workloads:
        for name, r in report[wl]["results"].items():
            print(f"| {wl} | {name} | {r['first_s']:.2f} | {r['run_s']:.2f} |")
        rf = report[wl]["roofline"]
        print(f"{wl}: {rf['total_gflop']:.1f} GFLOP of training; vmapped {rf['vmapped_gflops']:.1f} GFLOP/s, "
              f"loop of ow.train {rf['loop_train_gflops']:.1f} GFLOP/s, a 2048^2 matmul {rf['matmul_gflops']:.1f} GFLOP/s")
        jit_loop = report[wl]["speedup_vs_loop_jit"]
        print(f"{wl}: vmapped speed-up {report[wl]['speedup_vs_loop_train']:.1f}x vs a loop of ow.train calls"
              + ("" if jit_loop is None else f", {jit_loop:.1f}x vs a loop of the compiled single-member program"))


if __name__ == "__main__":
    main()
