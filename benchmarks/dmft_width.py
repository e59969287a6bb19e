"""Do muP networks approach the DMFT of P = T = 100 as they widen? (tanh, 2 hidden layers, CPU)

    python benchmarks/dmft_width.py [--quick] [--out PATH]

The infinite-width limit comes from ``ow.dmft(method="population")`` (pairs of width-n and n/2
populations, Richardson-extrapolated in 1/n). Independent muP networks (``ow.train``, other
seeds than the populations') of widths 512..4096 are trained on the same problem, and each
network's distance to the limit, the RMS over training points and steps of ``F_net - F_dmft``,
is averaged over seeds. Writes JSON (default ``benchmarks/results/dmft_width_cpu.json``) with the
distances, their standard errors, the least-squares log-log slope over widths and the DMFT's
own standard error (the floor the distances cannot go below), and a PNG beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import time

os.environ.setdefault("OWIDTH_NO_PROGRESS", "1")

HERE = pathlib.Path(__file__).resolve().parent


def run(quick: bool) -> dict:
    import jax

    jax.config.update("jax_enable_x64", True)
    import numpy as np

    import owidth as ow

    p, steps = (20, 20) if quick else (100, 100)
    widths = [128, 256, 512] if quick else [512, 1024, 2048, 4096]
    seeds = 2 if quick else 4
    rng = np.random.default_rng(0)
    x = rng.standard_normal((p, 8))
    y = np.sin(x[:, 0] + 0.5 * x[:, 1])
    net = ow.serial(ow.Dense(), ow.Tanh(), ow.Dense(), ow.Tanh(), ow.Dense(out=1))
    kw = dict(gamma0=1.0, lr=0.2, steps=steps)
    t0 = time.perf_counter()
    limit = ow.dmft(net, x, y, **kw, method="population", samples=256, replicas=64 if quick else 512, seed=0)
    solve_s = time.perf_counter() - t0
    rows = []
    for n in widths:
        t0 = time.perf_counter()
        ds = ow.train(net, (x, y), test=(x, y), widths=n, param=ow.MUP, seeds=seeds, record_every=1,
                      record_outputs=True, progress_bar=False, **kw)
        f = ds.test_output.values[0, :, 0, 0, :, :, 0]  # (seed, step, point)
        dist = np.sqrt(((f - limit.f_train[None]) ** 2).mean(axis=(1, 2)))
        rows.append({"width": n, "distance": float(dist.mean()), "distance_se": float(dist.std(ddof=1) / np.sqrt(seeds)),
                     "train_s": time.perf_counter() - t0})
        print(f"width {n:5d}: distance {dist.mean():.4f} +- {rows[-1]['distance_se']:.4f} "
              f"({rows[-1]['train_s']:.1f} s)", flush=True)
    slope = float(np.polyfit(np.log([r["width"] for r in rows]), np.log([r["distance"] for r in rows]), 1)[0])
    floor = float(np.sqrt((limit.f_train_se**2).mean()))
    print(f"slope {slope:.3f}; the DMFT's own RMS standard error {floor:.4f}; solve {solve_s:.1f} s", flush=True)
    return {"P": p, "T": steps, "seeds": seeds, "dmft_samples": limit.samples, "dmft_replicas": limit.replicas,
            "dmft_solve_s": solve_s, "dmft_rms_se": floor, "slope": slope, "rows": rows}


def plot(result: dict, path: pathlib.Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    w = np.array([r["width"] for r in result["rows"]])
    d = np.array([r["distance"] for r in result["rows"]])
    se = np.array([r["distance_se"] for r in result["rows"]])
    fig, ax = plt.subplots(figsize=(4.5, 3.4))
    ax.errorbar(w, d, yerr=se, marker="o", label="muP networks")
    ax.plot(w, d[0] * (w / w[0]) ** -0.5, "k--", lw=1, label=r"$n^{-1/2}$")
    ax.axhline(result["dmft_rms_se"], color="gray", lw=1, ls=":", label="DMFT standard error")
    ax.set(xscale="log", yscale="log", xlabel="width n", ylabel="RMS distance to the DMFT",
           title=f"tanh, P = {result['P']}, T = {result['T']}: slope {result['slope']:.2f}")
    ax.set_xticks(w, [str(v) for v in w])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results" / "dmft_width_cpu.json"))
    args = ap.parse_args(argv)
    result = run(args.quick)
    out = pathlib.Path(args.out)
    out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
