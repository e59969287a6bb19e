"""Agreement with neural-tangents 0.6.5 on ``ConvTranspose``, ``ConvLocal`` and ``ImageResize`` (nearest and
linear; 1-D and 2-D; strides, SAME and VALID; Flatten and GlobalAvgPool readouts). Reference file made by
``benchmarks/peers/nt_conv_reference.py`` in the legacy venv; NT is never imported here.

Measured when this file was written: max |owidth - NT| / max |NT| <= 2.6e-15 over every array but the
(x1, x1) NTKs of three ReLU nets, whose diagonals NT evaluates at arccos(1 - eps) (<= 1.1e-9; see
test_reference_nt_combinators.py), all under ``TOL``.

NT 0.6.5's ``ImageResize`` kernel ignores the order in which NT's shared-weight convolutions store the
pixel axes of full pixel covariances (``Kernel.is_reversed``, flipped by each such convolution): after an
odd number of them it resizes the height to the width's target size and the width to the height's. Its
finite network (``jax.image.resize``) does not. The three nets of ``NT_RESIZE_SWAPPED`` hit that: they are
compared with owidth's kernel of the same net with the two target sizes swapped (which reproduces NT's
value to round-off, pinning the defect), and their ``_2conv`` versions (two convolutions before the
resize) with owidth's as is. owidth's own rule is checked against finite networks in
tests/layers/test_conv_more.py."""

import copy
import functools
import pathlib

import numpy as np
import pytest

import owidth as ow
from helpers import build, load_archs, load_inputs, reference_kernels

REF = np.load(pathlib.Path(__file__).parents[1] / "reference" / "nt_conv_more_kernels.npz")
ARCHS = load_archs(REF)
KEYS = ("nngp11", "ntk11", "nngp12", "ntk12")
TOL = 1e-8  # relative to the largest entry
# NT resizes the spatial axes swapped here (see the module docstring): owidth's kernel with the target sizes
# swapped, e.g. (8, 6) -> (6, 8), and (3, -1) -> (4, 3) on 5 x 4 pixels
NT_RESIZE_SWAPPED = {"resize_linear_up_flatten": (6, 8), "resize_nearest_up_flatten": (9, 7),
                     "resize_linear_down_gap": (4, 3)}


def _arch(name):
    arch = ARCHS[name]
    if name in NT_RESIZE_SWAPPED:
        arch = copy.deepcopy(arch)
        for layer, kw in arch:
            if layer == "ImageResize":
                kw["shape"] = list(NT_RESIZE_SWAPPED[name])
    return arch


@functools.cache
def _owidth(name, batch=None):
    return reference_kernels(build(_arch(name)), REF, name, batch_size=batch, progress_bar=False)


def _compare(name, kernels):
    for key in KEYS:
        got, ref = kernels[key], REF[f"{name}/{key}"]
        assert got.shape == ref.shape and got.dtype == np.float64, (name, key, got.shape, ref.shape)
        err = np.max(np.abs(got - ref)) / np.max(np.abs(ref))
        assert err < TOL, (name, key, err)


FAST = {"convlocal_valid_gap"}  # one in the default suite (~2 s each); the rest, and the other layers, with the slow tests


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in sorted(ARCHS)])
def test_matches_neural_tangents(name):
    kernels = _owidth(name)
    _compare(name, kernels)
    # symmetric to rounding (the tests compile at -O0, whose fused operations may differ between (i, j), (j, i))
    np.testing.assert_allclose(kernels["nngp11"], kernels["nngp11"].T, rtol=1e-14, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["convT_valid_gap", "convlocal_valid_gap", "resize_linear_down_gap_2conv",
                                  "resize_nearest_down_gap"])
def test_tiled_kernel_matches_neural_tangents(name):
    """Tiles of 2 inputs (pooled nets replay per-pixel variances, ``KState.var_pixel``) give the same kernels."""
    _compare(name, _owidth(name, batch=2))


@pytest.mark.slow
def test_nt_resize_defect_is_pinned():
    """owidth's kernel of the nets as written is far from NT's there (NT's is that of swapped sizes)."""
    for name in NT_RESIZE_SWAPPED:
        x1, x2 = load_inputs(REF, name)
        k = ow.kernel(build(ARCHS[name]), x1, x2, get="nngp", progress_bar=False)
        ref = REF[f"{name}/nngp12"]
        assert np.max(np.abs(k.nngp - ref)) / np.max(np.abs(ref)) > 1e-2, name


def test_reference_covers_the_cases():
    layers = [(layer, kw) for arch in ARCHS.values() for layer, kw in arch]
    names = {layer for layer, _ in layers}
    assert {"ConvTranspose", "ConvLocal", "ImageResize", "Flatten", "GlobalAvgPool"} <= names
    for layer in ("ConvTranspose", "ConvLocal"):
        kws = [kw for name, kw in layers if name == layer]
        assert {len(kw["filter_shape"]) for kw in kws} == {1, 2}
        assert {kw["padding"] for kw in kws} == {"SAME", "VALID"}
        assert any(max(kw.get("strides", [1])) > 1 for kw in kws)
    methods = {kw["method"] for name, kw in layers if name == "ImageResize"}
    assert methods == {"linear", "nearest"}
