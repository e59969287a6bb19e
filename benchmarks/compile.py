"""Compile time of deep networks: ``ow.repeat(block, depth)`` against the unrolled ``serial``.

    python benchmarks/compile.py --out results/compile_cpu.json [--quick]

Each workload runs in a fresh process (no compilation cache shared between rows): the kernel (NNGP
and NTK of ``[Dense, Relu] x depth + Dense(1)`` on 16 inputs), the finite network's forward pass and
its loss gradient at width 64, each timed as ``jax.jit(f).lower(...).compile()`` (compile), then one
call ended by ``block_until_ready`` (run). Issue 17's target: ``repeat(block, 1000)`` compiles in
under 10 s. The unrolled net is measured at depths where it still compiles in reasonable time.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import time

from _common import machine_info

TARGET_S = 10.0


def worker(kind: str, depth: int, unrolled: bool) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import owidth as ow

    block = ow.serial(ow.Dense(w_std=2**0.5, b_std=0.1), ow.Relu())
    body = ow.serial(*[block] * depth) if unrolled else ow.repeat(block, depth)
    net = ow.serial(body, ow.Dense(out=1))
    x = np.random.default_rng(0).normal(size=(16, 8)).astype(np.float32)
    if kind == "kernel":
        fn, args = jax.jit(lambda x: ow.kernel(net, x)), (x,)
    else:
        model = ow.finite(net, width=64)
        params = model.init(jax.random.key(0), x)
        if kind == "apply":
            fn, args = jax.jit(model.apply), (params, x)
        else:
            fn, args = jax.jit(jax.grad(lambda p, x: jnp.mean(model.apply(p, x) ** 2))), (params, x)
    t0 = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    return {"compile_s": compile_s, "run_s": time.perf_counter() - t0}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=pathlib.Path, required=True)
    p.add_argument("--quick", action="store_true", help="ow.repeat at depth 100, kernel and gradient only")
    p.add_argument("--worker", nargs=3, metavar=("KIND", "DEPTH", "UNROLLED"), help=argparse.SUPPRESS)
    args, _ = p.parse_known_args(argv)
    if args.worker:
        kind, depth, unrolled = args.worker
        print(json.dumps(worker(kind, int(depth), unrolled == "1")))
        return
    rows = []
    depths = [(100, False)] if args.quick else [(1000, False), (20, True), (20, False), (50, True)]
    for kind in ("kernel", "grad") if args.quick else ("kernel", "apply", "grad"):
        for depth, unrolled in depths:
            cmd = [sys.executable, __file__, "--out", str(args.out), "--worker", kind, str(depth), str(int(unrolled))]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            rows.append({"kind": kind, "depth": depth, "net": "unrolled serial" if unrolled else "ow.repeat",
                         **json.loads(out)})
            print(rows[-1], file=sys.stderr, flush=True)
    import jax

    report = {"machine": {**machine_info(jax.default_backend()), "jax": jax.__version__}, "rows": rows,
              "target": f"ow.repeat at depth 1000 compiles in < {TARGET_S:g} s",
              "protocol": "fresh process per row; jax.jit(f).lower(args).compile() timed, then one run ended by "
                          "block_until_ready; float32; 16 inputs of dimension 8; finite nets at width 64"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
