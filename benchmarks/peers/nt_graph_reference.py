"""Dump neural-tangents 0.6.5 reference kernels of graph neural networks (``Aggregate``) for owidth's tests.

Run inside the legacy venv (never imported by owidth or its tests):

    $(bash benchmarks/peers/build_venv.sh) benchmarks/peers/nt_graph_reference.py

writes tests/reference/nt_graph_kernels.npz (tests/kernels/test_reference_nt_graph.py) with the
conventions of nt_reference.py: the architectures as JSON (a list of [layer, kwargs] in owidth's
names), which inputs each one takes (``inputs``: name -> kind), the inputs ``{kind}1``/``{kind}2``
(node features, (n, V, C)) with their adjacencies ``{kind}_adj1``/``{kind}_adj2`` ((n, V, V), in
owidth's orientation: ``A[v, u]`` is the arc u -> v, ``y[v] = sum_u A[v, u] x[u]``) and NT's NNGP/NTK
for (x1, x1) and (x1, x2), all float64.

Kinds: "g5" directed random graphs (each arc present with probability 1/2) with self-loops, 0/1
weights, V = 5 nodes, 3 features; "g6w" undirected graphs with self-loops, symmetrically normalised
``D^-1/2 (A + I) D^-1/2`` (Kipf & Welling 2017), V = 6 nodes, 2 features. The directed graphs pin the
orientation: NT's ``pattern[n, u, v]`` is the arc u -> v and its output is ``x @ pattern``, so NT is
given the transposed adjacencies.
"""

import json
import pathlib

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
from neural_tangents import stax  # noqa: E402

OUT = pathlib.Path(__file__).resolve().parents[2] / "tests" / "reference" / "nt_graph_kernels.npz"

R2, B = 2**0.5, 0.1**0.5
HID = {"w_std": R2, "b_std": B}
READ = ["Dense", {"out": 1, "w_std": 1.0, "b_std": 0.0}]

ARCHS = {
    # message passing after a first Dense: Dense, Relu, Aggregate, Dense, Relu, sum readout
    "gnn_relu_sum": [["Dense", HID], ["Relu", {}], ["Aggregate", {}], ["Dense", HID], ["Relu", {}],
                     ["GlobalSumPool", {}], READ],
    # GNTK form (Du et al. 2019): aggregate first (on the data), then an MLP per node, twice; mean readout
    "gntk_relu_avg": [["Aggregate", {}], ["Dense", HID], ["Relu", {}], ["Dense", HID], ["Relu", {}],
                      ["Aggregate", {}], ["Dense", HID], ["Relu", {}], ["GlobalAvgPool", {}], READ],
    # Aggregate of a Gaussian layer (before the activation), smooth activations, readout bias
    "gnn_preact_erf_gelu": [["Dense", {"w_std": 1.3, "b_std": 0.2}], ["Aggregate", {}], ["Erf", {}],
                            ["Dense", {"w_std": 1.1, "b_std": 0.1}], ["Aggregate", {}], ["Gelu", {}],
                            ["GlobalSumPool", {}], ["Dense", {"out": 1, "w_std": 0.9, "b_std": 0.1}]],
}
KINDS = ("g5", "g6w")


def nt_layer(name, kw):
    if name == "Dense":
        return stax.Dense(kw.get("out", 512), W_std=kw.get("w_std", 1.0), b_std=kw.get("b_std", 0.0))
    if name == "Relu":
        return stax.Relu()
    if name == "Erf":
        return stax.Erf()
    if name == "Gelu":
        return stax.Gelu(approximate=False)
    if name == "Aggregate":
        return stax.Aggregate()  # aggregate over all non-batch, non-channel axes (the node axis)
    if name == "GlobalSumPool":
        return stax.GlobalSumPool()
    if name == "GlobalAvgPool":
        return stax.GlobalAvgPool()
    raise ValueError(name)


def directed(rng, n, v):
    a = (rng.rand(n, v, v) < 0.5).astype(np.float64)
    return np.maximum(a, np.eye(v))  # self-loops


def normalised(rng, n, v):
    upper = np.triu(rng.rand(n, v, v) < 0.4, 1)
    a = (upper | np.swapaxes(upper, 1, 2)).astype(np.float64) + np.eye(v)
    d = a.sum(-1)
    return a / np.sqrt(d[:, :, None] * d[:, None, :])


def main():
    rng = np.random.RandomState(1905)
    data = {
        "g5": ((rng.randn(4, 5, 3), directed(rng, 4, 5)), (rng.randn(3, 5, 3), directed(rng, 3, 5))),
        "g6w": ((rng.randn(4, 6, 2), normalised(rng, 4, 6)), (rng.randn(3, 6, 2), normalised(rng, 3, 6))),
    }
    out = {}
    for kind, ((x1, a1), (x2, a2)) in data.items():
        out[f"{kind}1"], out[f"{kind}_adj1"], out[f"{kind}2"], out[f"{kind}_adj2"] = x1, a1, x2, a2
    archs, inputs = {}, {}
    for name, arch in ARCHS.items():
        for kind in KINDS:
            key = f"{name}_{kind}"
            archs[key], inputs[key] = arch, kind
            (x1, a1), (x2, a2) = data[kind]
            p1, p2 = np.swapaxes(a1, 1, 2), np.swapaxes(a2, 1, 2)  # NT's pattern: the transpose
            _, _, kfn = stax.serial(*[nt_layer(n, k) for n, k in arch])
            k11 = kfn(x1, None, ("nngp", "ntk"), pattern=(p1, p1))
            k12 = kfn(x1, x2, ("nngp", "ntk"), pattern=(p1, p2))
            out[f"{key}/nngp11"], out[f"{key}/ntk11"] = np.asarray(k11.nngp), np.asarray(k11.ntk)
            out[f"{key}/nngp12"], out[f"{key}/ntk12"] = np.asarray(k12.nngp), np.asarray(k12.ntk)
    out["archs"] = np.array(json.dumps(archs))
    out["inputs"] = np.array(json.dumps(inputs))
    out["versions"] = np.array(json.dumps({"jax": jax.__version__, "neural_tangents": "0.6.5"}))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez(OUT, **out)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(archs)} architectures)")


if __name__ == "__main__":
    main()
