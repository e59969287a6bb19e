"""Agreement with neural-tangents 0.6.5 (reference file made by
benchmarks/peers/nt_reference.py in the legacy venv; NT is never imported here)."""

import pathlib

import numpy as np
import pytest

import owidth as ow
from helpers import build, load_archs, load_inputs

REF = np.load(pathlib.Path(__file__).parents[1] / "reference" / "nt_kernels.npz")
ARCHS = load_archs(REF)


# the two CNNs (~4-6 s each) with the slow tests: test_reference_nt_cnn.py checks conv kernels by default
# the CNNs (~4-6 s each) and the 1-d conv with the slow tests: test_reference_nt_cnn.py checks conv kernels by default
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n.startswith(("cnn", "conv1d")) else n
                                  for n in sorted(ARCHS)])
def test_matches_neural_tangents(name):
    net = build(ARCHS[name])
    x1, x2 = load_inputs(REF, name)
    k11 = ow.kernel(net, x1)
    k12 = ow.kernel(net, x1, x2)
    for got, key in [(k11.nngp, "nngp11"), (k11.ntk, "ntk11"), (k12.nngp, "nngp12"), (k12.ntk, "ntk12")]:
        ref = REF[f"{name}/{key}"]
        err = np.max(np.abs(np.asarray(got) - ref)) / np.max(np.abs(ref))
        assert err < 1e-8, (name, key, err)
    np.testing.assert_array_equal(k11.nngp, np.asarray(k11.nngp).T)


def test_reference_covers_the_spatial_layers():
    names = {layer for arch in ARCHS.values() for layer, _ in arch}
    assert {"Conv", "AvgPool", "GlobalAvgPool", "Flatten", "LayerNorm", "Residual"} <= names
