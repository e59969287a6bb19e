"""Benchmark ``ow.empirical_ntk`` against neural-tangents 0.6.5 on CPU.

    python benchmarks/empirical_ntk.py [--quick] [--no-peer] [--out PATH] [--repeats R]

The empirical (finite-width) NTK, traced over the single output, of one
network with one set of weights between N inputs and themselves (x2=None),
in float32:

* ``mlp_w{512,2048}``: [Dense(w_std=sqrt 2, b_std=sqrt 0.1), Relu] x 2, then
  Dense(out=1, w_std=1, no bias); N = 64 inputs of dimension 16.
* ``cnn_w64``: [Conv 3x3 SAME (w_std=sqrt 2, b_std=sqrt 0.1), Relu] x 2,
  GlobalAvgPool, Dense(out=1, w_std=1, no bias); N = 32 NHWC images 8x8x3.

``--quick``: ``mlp_w128`` with N = 16 and ``cnn_w16`` with N = 8, 2 repeats.

Both libraries get the same function and the same weights: a first owidth
process (``--init``) draws ``ow.finite(net, width).init(key(0), x)`` and
saves it to an .npz; every worker loads it. owidth's NTK parametrisation
(``x @ (w_std / sqrt(fan_in) * w) + b_std * b``, HWIO convolutions on NHWC)
is neural-tangents' ``parameterization="ntk"``, so the NT runner
(``peers/nt_empirical_runner.py``) builds ``stax`` layers from the same
:data:`ARCHS` spec and fills the params from ``stax.serial``'s ``init_fn``
with those arrays (reshaping NT's broadcastable biases).

Every (workload, library, implementation) is measured in its own fresh
process, one after the other, by :func:`kernels.measure` (see
``benchmarks/kernels.py`` for ``first_call_s``, ``compile_s``, ``run_s``,
``run_s_min`` and ``peak_rss_mib``). The measured argument is the pytree
``(params, x)``, so the weights are arguments of the compiled function, never
constants folded into it. owidth: ``ow.empirical_ntk(model.apply, params, x,
None, implementation=impl)`` (jitted internally) for ``auto`` and every
explicit implementation that applies (``structured`` only for Dense-only
networks). neural-tangents: ``jax.jit(nt.empirical_ntk_fn(apply_fn,
trace_axes=(-1,), vmap_axes=0, implementation=X))`` for its three
implementations; the one with the smallest ``run_s`` is NT's number.

The parent never imports JAX. It compares every kernel with NT's best one
(elementwise max of ``|k - k_nt| / |k_nt|``, and the max absolute difference
over ``max |k_nt|``), writes the JSON (default
``benchmarks/results/empirical_ntk_cpu.json``) and prints markdown tables.
``--no-peer``, or a venv that cannot be built or run, leaves the peer out
(``null``). Numbers are reported, never asserted.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import pathlib
import sys
import tempfile

import numpy as np

import kernels  # numpy-only at import; shared measurement protocol and parent helpers
from _common import fmt as _fmt
from _common import markdown
from kernels import run_worker

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "empirical_ntk_cpu.json"
NT_RUNNER = HERE / "peers" / "nt_empirical_runner.py"

SEED = 0
DTYPE = "float32"
REPEATS = 5
QUICK_REPEATS = 2
R2, B = 2**0.5, 0.1**0.5
_HIDDEN_DENSE = ("Dense", {"w_std": R2, "b_std": B})
_HIDDEN_CONV = ("Conv", {"filter_shape": (3, 3), "padding": "SAME", "w_std": R2, "b_std": B})
_READOUT = ("Dense", {"out": 1, "w_std": 1.0})
# Layers in owidth's names and kwargs; width-carrying layers omit ``out``.
ARCHS = {
    "mlp": [_HIDDEN_DENSE, ("Relu", {}), _HIDDEN_DENSE, ("Relu", {}), _READOUT],
    "cnn": [_HIDDEN_CONV, ("Relu", {}), _HIDDEN_CONV, ("Relu", {}), ("GlobalAvgPool", {}), _READOUT],
}
# (arch, width, N, per-example input shape)
WORKLOADS = (("mlp", 512, 64, (16,)), ("mlp", 2048, 64, (16,)), ("cnn", 64, 32, (8, 8, 3)))
QUICK_WORKLOADS = (("mlp", 128, 16, (16,)), ("cnn", 16, 8, (8, 8, 3)))
OW_IMPLS = ("auto", "structured", "jacobian", "ntvp")
NT_IMPLS = ("JACOBIAN_CONTRACTION", "NTK_VECTOR_PRODUCTS", "STRUCTURED_DERIVATIVES")
JACOBIAN_BYTES = 2**31  # owidth's documented "auto" threshold

DIFF_NOTE = (
    "Reference: NT's best (smallest run_s) implementation's kernel. max_rel_diff: max over all entries of "
    "|k - k_ref| / |k_ref|; max_abs_diff_scaled: max |k - k_ref| / max |k_ref|. Per implementation in "
    "max_rel_diff_by_impl; the headline max_rel_diff is the max over owidth's implementations."
)
AUTO_NOTE = (
    "auto_expected: what owidth's documented rule picks (structured for Dense-only ow.finite models, else "
    "jacobian when N * outputs * n_params * itemsize <= 2 GiB, else ntvp). ratio_run_auto = owidth auto run_s / "
    "NT best run_s; ratio_run_best = owidth best run_s / NT best run_s (< 1: owidth faster)."
)


def workload_name(arch: str, width: int) -> str:
    return f"{arch}_w{width}"


def ow_impls(arch: str, only=None) -> list[str]:
    dense_only = all(name != "Conv" for name, _ in ARCHS[arch])
    return [i for i in OW_IMPLS if (i != "structured" or dense_only) and (only is None or i in only or i == "auto")]


def load_params(path: str) -> list[dict]:
    """Per-layer dicts of numpy arrays (empty for parameter-free layers) from ``--init``'s .npz."""
    with np.load(path) as f:
        n_layers = int(f["n_layers"])
        layers = [{} for _ in range(n_layers)]
        for key in f.files:
            if "/" in key:
                i, name = key.split("/")
                layers[int(i)][name] = f[key].astype(DTYPE)
    return layers


def emit(stats: dict, kernel, save: str) -> None:
    """Save the kernel for the comparison and print the one JSON line."""
    np.savez(save, ntk=kernel)
    print(json.dumps(stats), flush=True)


def measure_and_emit(call, traceable, params, x, args) -> None:
    """:func:`kernels.measure` on the argument pytree ``(params, x)``; ``call`` returns ``(kernel,)``."""
    stats, (kernel,) = kernels.measure(call, traceable, (params, x), args.repeats)
    stats["implementation"] = args.impl
    emit(stats, kernel, args.save)


# ---------------------------------------------------------------- worker side
def owidth_model(arch: str, width: int):
    import owidth as ow

    net = ow.serial(*[getattr(ow, name)(**kw) for name, kw in ARCHS[arch]])
    return ow.finite(net, width=width)


def owidth_init(args) -> None:
    """Draw owidth's params for this workload, save them flat to ``--save``; print their count."""
    import jax

    model = owidth_model(args.arch, args.width)
    x = kernels.load_input(args.x, DTYPE)
    params = model.init(jax.random.key(SEED), x)
    flat = {"n_layers": np.array(len(params))}
    for i, layer in enumerate(params):
        for name, value in (layer.items() if isinstance(layer, dict) else ()):
            flat[f"{i}/{name}"] = np.asarray(value)
    np.savez(args.save, **flat)
    n_params = sum(v.size for k, v in flat.items() if "/" in k)
    print(json.dumps({"n_params": int(n_params), "shapes": {k: list(v.shape) for k, v in flat.items() if "/" in k}}))


def owidth_worker(args) -> None:
    import jax

    import owidth as ow

    model = owidth_model(args.arch, args.width)
    x = kernels.load_input(args.x, DTYPE)
    params = jax.device_put(tuple(layer or () for layer in load_params(args.params)))

    def f(px):
        return (ow.empirical_ntk(model.apply, px[0], px[1], None, implementation=args.impl),)

    measure_and_emit(f, f, params, x, args)  # ow.empirical_ntk jits internally


# ---------------------------------------------------------------- parent side
def init_params(arch: str, width: int, x_path: str, params_path: str) -> dict:
    cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "--init", "--arch", arch, "--width", str(width),
           "--x", x_path, "--save", params_path]
    return run_worker(cmd)


def diffs(k: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    return kernels.max_rel_diff(k, ref), float(np.max(np.abs(k - ref)) / np.max(np.abs(ref)))


def best(stats: dict) -> str | None:
    ok = {impl: s for impl, s in stats.items() if s is not None}
    return min(ok, key=lambda impl: ok[impl]["run_s"]) if ok else None


def bench_workload(arch, width, n, shape, tmp, repeats, peer_python, only_impls=None) -> dict:
    name = workload_name(arch, width)
    x_path = os.path.join(tmp, f"x_{name}.npy")
    np.save(x_path, np.random.RandomState(SEED).randn(n, *shape))  # float64; workers cast to float32
    params_path = os.path.join(tmp, f"params_{name}.npz")
    info = init_params(arch, width, x_path, params_path)
    n_params = info["n_params"]
    dense_only = "structured" in ow_impls(arch)
    jac_bytes = n * 1 * n_params * np.dtype(DTYPE).itemsize
    entry = {
        "workload": name, "arch": arch, "width": width, "n": n, "input_shape": [n, *shape], "dtype": DTYPE,
        "n_params": n_params, "param_shapes": info["shapes"], "jacobian_bytes": jac_bytes,
        "auto_expected": "structured" if dense_only else ("jacobian" if jac_bytes <= JACOBIAN_BYTES else "ntvp"),
        "owidth": {}, "neural_tangents": None, "peer_errors": {},
    }
    common = ["--arch", arch, "--width", str(width), "--x", x_path, "--params", params_path,
              "--repeats", str(repeats)]
    saved = {}
    for impl in ow_impls(arch, only_impls):
        print(f"[empirical_ntk] {name} owidth {impl} ...", file=sys.stderr, flush=True)
        save = os.path.join(tmp, f"ow_{name}_{impl}.npz")
        entry["owidth"][impl] = run_worker([sys.executable, str(pathlib.Path(__file__).resolve()), "--worker",
                                            *common, "--impl", impl, "--save", save])
        saved[f"owidth/{impl}"] = save
    if peer_python is not None:
        entry["neural_tangents"] = {}
        for impl in NT_IMPLS:
            print(f"[empirical_ntk] {name} neural-tangents {impl} ...", file=sys.stderr, flush=True)
            save = os.path.join(tmp, f"nt_{name}_{impl}.npz")
            try:
                entry["neural_tangents"][impl] = run_worker([peer_python, str(NT_RUNNER), *common, "--impl", impl,
                                                             "--save", save], quiet_stderr=True)
                saved[f"neural_tangents/{impl}"] = save
            except (OSError, RuntimeError, ValueError, IndexError) as err:
                print(f"[empirical_ntk] peer failed for {name} {impl}: {err}", file=sys.stderr)
                entry["neural_tangents"][impl] = None
                entry["peer_errors"][impl] = str(err).splitlines()[0]
    summarize(entry, saved)
    return entry


def summarize(entry: dict, saved: dict) -> None:
    """Best implementations, run-time ratios and kernel differences against NT's best kernel."""
    ow, nt = entry["owidth"], entry["neural_tangents"] or {}
    entry["owidth_best"] = best(ow)
    entry["nt_best"] = best(nt)
    entry.update(ratio_run_auto=None, ratio_run_best=None, ratio_compile_auto=None, max_rel_diff=None,
                 max_rel_diff_by_impl=None, max_abs_diff_scaled_by_impl=None)
    if entry["nt_best"] is None:
        return
    ref_stats = nt[entry["nt_best"]]
    entry["ratio_run_auto"] = ow["auto"]["run_s"] / ref_stats["run_s"]
    entry["ratio_run_best"] = ow[entry["owidth_best"]]["run_s"] / ref_stats["run_s"]
    entry["ratio_compile_auto"] = ow["auto"]["compile_s"] / ref_stats["compile_s"]
    with np.load(saved[f"neural_tangents/{entry['nt_best']}"]) as f:
        ref = f["ntk"]
    rel, scaled = {}, {}
    for key, path in saved.items():
        with np.load(path) as f:
            rel[key], scaled[key] = diffs(f["ntk"], ref)
    entry["max_rel_diff_by_impl"], entry["max_abs_diff_scaled_by_impl"] = rel, scaled
    entry["max_rel_diff"] = max(v for k, v in rel.items() if k.startswith("owidth/"))


def _ms(stats: dict | None) -> str:
    return "-" if not stats else f"{stats['run_s'] * 1e3:.2f}"


def markdown_tables(results: list[dict]) -> str:
    head = ("workload", "N", "params", "owidth auto ms", "owidth best ms", "NT best ms", "auto / NT", "best / NT",
            "owidth auto compile s", "NT best compile s", "owidth auto RSS MiB", "NT best RSS MiB", "max rel diff")
    rows = []
    for r in results:
        o = r["owidth"]
        t = (r["neural_tangents"] or {}).get(r["nt_best"]) or {}
        rows.append((
            r["workload"], r["n"], r["n_params"], f"{_ms(o['auto'])} ({r['auto_expected']})",
            f"{_ms(o[r['owidth_best']])} ({r['owidth_best']})", f"{_ms(t)} ({r['nt_best'] or '-'})",
            _fmt(r["ratio_run_auto"], ".2f"), _fmt(r["ratio_run_best"], ".2f"), f"{o['auto']['compile_s']:.3f}",
            _fmt(t.get("compile_s"), ".3f"), f"{o['auto']['peak_rss_mib']:.1f}", _fmt(t.get("peak_rss_mib"), ".1f"),
            _fmt(r["max_rel_diff"], ".2e"),
        ))
    head2 = ("workload", "library", "implementation", "run ms (median)", "run ms (min)", "compile s", "1st call s",
             "RSS MiB", "max rel diff vs NT best")
    rows2 = []
    for r in results:
        for lib, key in (("owidth", "owidth"), ("neural-tangents", "neural_tangents")):
            for impl, s in (r[key] or {}).items():
                d = (r["max_rel_diff_by_impl"] or {}).get(f"{key}/{impl}")
                if s is None:
                    rows2.append((r["workload"], lib, impl, "failed", "", "", "", "", ""))
                    continue
                rows2.append((r["workload"], lib, impl, f"{s['run_s'] * 1e3:.2f}", f"{s['run_s_min'] * 1e3:.2f}",
                              f"{s['compile_s']:.3f}", f"{s['first_call_s']:.3f}", f"{s['peak_rss_mib']:.1f}",
                              _fmt(d, ".2e")))
    return markdown(head, rows) + "\n\n" + markdown(head2, rows2)


def _owidth_version() -> str:
    """The installed owidth's version, or the source tree's (benchmarks/gpu_check.sh runs uninstalled)."""
    try:
        return importlib.metadata.version("owidth")
    except importlib.metadata.PackageNotFoundError:
        import owidth

        return f"{owidth.__version__} (source checkout)"


def main_parent(args) -> None:
    workloads, repeats = (QUICK_WORKLOADS, QUICK_REPEATS) if args.quick else (WORKLOADS, REPEATS)
    if args.archs:
        workloads = tuple(w for w in workloads if w[0] in args.archs)
    repeats = args.repeats if args.repeats is not None else repeats
    peer_python = None if args.no_peer else kernels.find_peer_python()
    peer = kernels.peer_versions(peer_python) if peer_python else None
    if peer is None:
        peer_python = None

    with tempfile.TemporaryDirectory(prefix="owidth-bench-entk-") as tmp:
        results = [bench_workload(*w, tmp, repeats, peer_python, args.impls) for w in workloads]

    report = {
        "machine": kernels.machine_info(),
        "jax_version": importlib.metadata.version("jax"),
        "owidth_version": _owidth_version(),
        "peer": peer,
        "config": {
            "workloads": [{"workload": workload_name(a, w), "arch": a, "width": w, "n": n, "input_shape": list(s)}
                          for a, w, n, s in workloads],
            "archs": {k: [[name, {kk: list(v) if isinstance(v, tuple) else v for kk, v in kw.items()}]
                          for name, kw in layers] for k, layers in ARCHS.items()},
            "dtype": DTYPE, "seed": SEED, "repeats": repeats, "quick": args.quick,
            "owidth_call": "ow.empirical_ntk(model.apply, params, x, None, implementation=impl)",
            "nt_call": "jax.jit(nt.empirical_ntk_fn(apply_fn, trace_axes=(-1,), vmap_axes=0, implementation=X))"
                       "(x, None, params)",
        },
        "notes": {"timing": kernels.TIMING_NOTE, "peak_rss_mib": kernels.PEAK_RSS_NOTE, "max_rel_diff": DIFF_NOTE,
                  "auto": AUTO_NOTE},
        "results": results,
    }
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown_tables(results))
    print(f"\nwrote {out}")


def worker_args(p: argparse.ArgumentParser, hidden: bool = False) -> None:
    """The per-measurement arguments shared by the owidth worker and the NT runner."""
    helps = {"--arch": "network (ARCHS key)", "--width": "hidden width", "--x": "input .npy (float64; cast to float32)",
             "--params": "owidth params .npz from --init", "--impl": "implementation to time",
             "--save": "where to write the kernel (.npz)"}
    for flag, text in helps.items():
        kw = {"choices": sorted(ARCHS)} if flag == "--arch" else {"type": int} if flag == "--width" else {}
        p.add_argument(flag, help=argparse.SUPPRESS if hidden else text, **kw)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="mlp_w128 (N=16) and cnn_w16 (N=8), 2 repeats")
    p.add_argument("--archs", nargs="+", choices=sorted(ARCHS), help="only these networks (default: all)")
    p.add_argument("--impls", nargs="+", choices=OW_IMPLS, help="only these owidth implementations (default: all)")
    p.add_argument("--no-peer", action="store_true", help="skip neural-tangents")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="JSON output (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=None, help=f"timed calls per measurement (default {REPEATS})")
    # internal: one owidth measurement (or the params draw) in this fresh process
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--init", action="store_true", help=argparse.SUPPRESS)
    worker_args(p, hidden=True)
    args = p.parse_args(argv)
    if args.init:
        owidth_init(args)
    elif args.worker:
        owidth_worker(args)
    else:
        main_parent(args)


if __name__ == "__main__":
    main()
