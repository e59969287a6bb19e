"""Graph-network (``ow.Aggregate``) kernels agree with neural-tangents 0.6.5 to float64 round-off.

The reference file, tests/reference/nt_graph_kernels.npz, is made by
benchmarks/peers/nt_graph_reference.py in the legacy venv (NT is never imported here): three GNNs
(Dense/Relu/Aggregate/Dense with a GlobalSumPool readout; the GNTK form of Du et al. 2019,
Aggregate then a per-node MLP, twice, with GlobalAvgPool; Aggregate of Gaussian pre-activations
with Erf and Gelu) on two kinds of small random graphs: directed 0/1 graphs with self-loops (V = 5),
which pin the orientation of the adjacency (NT's ``pattern`` is owidth's adjacency transposed), and
undirected symmetrically normalised ones (V = 6). Inputs, adjacencies and NT's NNGP/NTK, for
(x1, x1) and (x1, x2), are in the file.

Measured when this file was written: max |owidth - NT| / max |NT| <= 5.6e-16 over all 24 arrays,
through ``ow.kernel``'s default (tiled) path. ``TOL`` is the 1e-8 asked of peer agreement.
"""

import json
import pathlib

import numpy as np
import pytest

import owidth as ow
from helpers import build, load_archs

REF = np.load(pathlib.Path(__file__).parents[1] / "reference" / "nt_graph_kernels.npz")
ARCHS = load_archs(REF)
KINDS = json.loads(str(REF["inputs"]))
TOL = 1e-8  # relative to the largest entry; measured <= 5.6e-16

FAST = {("gnn_relu_sum_g5", True)}
CASES = [pytest.param(name, cross, marks=() if (name, cross) in FAST else pytest.mark.slow,
                      id=f"{name}-{'x1x2' if cross else 'x1x1'}")
         for name in sorted(ARCHS) for cross in (False, True)]


def graphs(name):
    kind = KINDS[name]
    return REF[f"{kind}1"], REF[f"{kind}_adj1"], REF[f"{kind}2"], REF[f"{kind}_adj2"]


def rel_err(got, ref):
    return np.max(np.abs(np.asarray(got) - ref)) / np.max(np.abs(ref))


@pytest.mark.parametrize("name,cross", CASES)
def test_graph_kernels_match_neural_tangents(name, cross):
    x1, a1, x2, a2 = graphs(name)
    net = build(ARCHS[name])
    k = ow.kernel(net, x1, x2, adjacency=(a1, a2)) if cross else ow.kernel(net, x1, adjacency=a1)
    tag = "12" if cross else "11"
    for kind in ("nngp", "ntk"):
        ref = REF[f"{name}/{kind}{tag}"]
        got = np.asarray(getattr(k, kind))
        assert got.shape == ref.shape and got.dtype == np.float64, (got.shape, got.dtype)
        assert rel_err(got, ref) < TOL, (name, kind + tag, rel_err(got, ref))
    if not cross:
        assert np.array_equal(k.nngp, k.nngp.T) and np.array_equal(k.ntk, k.ntk.T)


@pytest.mark.slow
def test_orientation_is_pinned_and_tiles_slice_the_adjacency():
    """The reference tells A from A^T (directed graphs), and every tiling of ``ow.kernel`` (tiles of 1
    and 3 graphs, untiled) gives NT's values: the adjacencies travel with their graphs."""
    name = "gnn_relu_sum_g5"
    x1, a1, x2, a2 = graphs(name)
    net = build(ARCHS[name])
    flipped = ow.kernel(net, x1, x2, adjacency=(a1.transpose(0, 2, 1), a2.transpose(0, 2, 1)), get="nngp")
    assert rel_err(flipped.nngp, REF[f"{name}/nngp12"]) > 1e-2
    for batch_size in (None, 1, 3):
        k12 = ow.kernel(net, x1, x2, adjacency=(a1, a2), batch_size=batch_size, progress_bar=False)
        k11 = ow.kernel(net, x1, adjacency=a1, batch_size=batch_size, progress_bar=False)
        for got, ref in [(k12.ntk, REF[f"{name}/ntk12"]), (k11.ntk, REF[f"{name}/ntk11"]),
                         (k12.nngp, REF[f"{name}/nngp12"]), (k11.nngp, REF[f"{name}/nngp11"])]:
            assert rel_err(got, ref) < TOL, (batch_size, rel_err(got, ref))


def test_reference_covers_the_cases():
    layers = {layer for arch in ARCHS.values() for layer, _ in arch}
    assert {"Aggregate", "Dense", "Relu", "GlobalSumPool", "GlobalAvgPool", "Erf", "Gelu"} <= layers
    assert set(KINDS.values()) == {"g5", "g6w"}
    a = REF["g5_adj1"]  # directed graphs with self-loops
    assert not np.array_equal(a, a.transpose(0, 2, 1)) and np.all(np.diagonal(a, axis1=1, axis2=2) == 1)
