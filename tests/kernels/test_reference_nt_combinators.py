"""Agreement with neural-tangents 0.6.5 on fan-in concatenation (channels and a spatial axis), products,
``repeat``, train-mode ``Dropout`` and ``Index``. Reference file made by
``benchmarks/peers/nt_reference.py --only comb`` in the legacy venv; NT is never imported here."""

import functools
import pathlib

import numpy as np
import pytest

from helpers import build, load_archs, reference_kernels

REF = np.load(pathlib.Path(__file__).parents[1] / "reference" / "nt_combinator_kernels.npz")
ARCHS = load_archs(REF)
KEYS = ("nngp11", "ntk11", "nngp12", "ntk12")
# NT evaluates the ReLU arc-cosine rule of an input with itself at arccos(1 - eps) ~ 1e-8 rather than at 0
# (see test_reference_nt_activations.py); over the seven ReLU layers of repeat_relu its (x1, x1) diagonal
# drifts by up to 1.1e-8 relative (owidth's is computed at angle 0 exactly, and checked against an exact
# recursion in tests/layers/test_repeat.py). There the diagonal is held to 1e-7, the rest to 1e-8.
NT_DIAGONAL_DRIFT = {"repeat_relu"}


def _compare(name, kernels):
    for key in KEYS:
        got, ref = kernels[key], REF[f"{name}/{key}"]
        assert got.shape == ref.shape, (name, key, got.shape, ref.shape)
        err = np.abs(got - ref) / np.max(np.abs(ref))
        if name in NT_DIAGONAL_DRIFT and key.endswith("11"):
            assert np.max(np.diagonal(err)) < 1e-7, (name, key, np.max(np.diagonal(err)))
            err = err[~np.eye(len(err), dtype=bool)]
        assert np.max(err) < 1e-8, (name, key, np.max(err))


@functools.cache
def _owidth(name, batch=None):
    return reference_kernels(build(ARCHS[name]), REF, name, **({} if batch is None else {"batch_size": batch}))


# one per layer kind in the default suite (each compiles two kernel programs, ~1-3 s)
FAST = {"concat_dense", "product_dense", "repeat_relu", "dropout_mlp"}


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in sorted(ARCHS)])
def test_matches_neural_tangents(name):
    kernels = _owidth(name)
    _compare(name, kernels)
    # symmetric to rounding (the tests compile at -O0, whose fused operations may differ between (i, j), (j, i))
    np.testing.assert_allclose(kernels["nngp11"], kernels["nngp11"].T, rtol=1e-14, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["concat_pixels_gap", "dropout_conv_gap", "index_crop_gap", "product_conv_gap"])
def test_tiled_kernel_matches_neural_tangents(name):
    """The tiled path (batch=2 tiles: pooled nets replay per-pixel variances) gives the same kernels."""
    _compare(name, _owidth(name, batch=2))
