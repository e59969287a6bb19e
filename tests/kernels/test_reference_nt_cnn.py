"""Conv-net kernels agree with neural-tangents 0.6.5 to float64 round-off.

The reference file, tests/reference/nt_cnn_kernels.npz, is made by
benchmarks/peers/nt_reference.py in the legacy venv (NT is never imported
here): the benchmark's CNTK, 2 x [Conv 3x3 SAME (w_std=sqrt 2, b_std=sqrt 0.1),
act], GlobalAvgPool, Dense(1), with act = Relu on 10x10x3 and 7x9x2 images
and Erf, Gelu on 7x9x2; and a Myrtle-style net (Shankar et al. 2020),
3 x [Conv, Relu] with AvgPool(2x2, stride 2) after the 2nd and 3rd,
GlobalAvgPool, Dense(1), on 8x8x3 images. Inputs and NT's NNGP/NTK, for
(x1, x1) and (x1, x2), are in the file.

These pin owidth's conv kernel engine: the measured errors (max |owidth - NT|
over max |NT|, per array) are <= 5.5e-15, so ``TOL`` leaves room for
summation-order changes only. One exception, ``TOL_NTK_DIAG``: the diagonal
of the (x1, x1) NTK holds the pixel pairs with correlation rho = 1, where the
ReLU derivative map (pi - arccos rho) / 2 pi has a sqrt singularity, so one
ulp of rho moves those entries by ~1e-10. NT itself shows it: its jitted
kernel_fn differs from its un-jitted one (which made the file) by up to
1.4e-10 there, and by ~1e-15 everywhere else. The
default run checks one call per case below (each compiles, ~1-2 s); all
twenty (net, x2, kernel) arrays run under ``pytest -m slow``.
"""

import pathlib

import numpy as np
import pytest

import owidth as ow
from helpers import build, load_archs, load_inputs

REF = np.load(pathlib.Path(__file__).parents[1] / "reference" / "nt_cnn_kernels.npz")
ARCHS = load_archs(REF)
TOL = 1e-11  # relative to the largest entry; measured <= 5.5e-15 when this file was written
TOL_NTK_DIAG = 1e-9  # the rho = 1 entries (module docstring); measured <= 5.5e-15 as well

# (net, cross) run by default: the benchmark net with x2=None on 3-channel square images, its
# cross kernel on non-square 2-channel images, and the pooled Myrtle net
FAST = {("cnn2_gap_relu_7x9x2", True)}
CASES = [pytest.param(name, cross, marks=() if (name, cross) in FAST else pytest.mark.slow,
                      id=f"{name}-{'x1x2' if cross else 'x1x1'}")
         for name in sorted(ARCHS) for cross in (False, True)]


@pytest.mark.parametrize("name,cross", CASES)
def test_conv_kernels_match_neural_tangents(name, cross):
    x1, x2 = load_inputs(REF, name)
    k = ow.kernel(build(ARCHS[name]), x1, x2 if cross else None)
    tag = "12" if cross else "11"
    for kind, got in [("nngp", k.nngp), ("ntk", k.ntk)]:
        ref = REF[f"{name}/{kind}{tag}"]
        got = np.asarray(got)
        assert got.shape == ref.shape and got.dtype == np.float64, (got.shape, got.dtype)
        diff = np.abs(got - ref) / np.max(np.abs(ref))
        diag = np.zeros(ref.shape, bool) if cross else np.eye(len(ref), dtype=bool)
        assert np.max(diff[~diag]) < TOL, (name, kind + tag, np.max(diff[~diag]))
        if not cross:
            tol = TOL_NTK_DIAG if kind == "ntk" else TOL
            assert np.max(diff[diag]) < tol, (name, kind + tag, "diagonal", np.max(diff[diag]))


def test_reference_covers_the_cases():
    assert len(ARCHS) == 5 and {n for n, _ in FAST} <= set(ARCHS)
    layers = {layer for arch in ARCHS.values() for layer, _ in arch}
    assert {"Conv", "Relu", "Erf", "Gelu", "AvgPool", "GlobalAvgPool", "Dense"} <= layers
    pools = [kw for arch in ARCHS.values() for layer, kw in arch if layer == "AvgPool"]
    # spelled out in the file because NT 0.6.5's AvgPool defaults to stride 1, owidth's to the window
    assert pools and all(kw["strides"] == kw["window"] == [2, 2] and kw["padding"] == "VALID" for kw in pools)
    assert ow.AvgPool(window=(2, 2)).strides == (2, 2) and ow.AvgPool(window=(2, 2)).padding == "VALID"
