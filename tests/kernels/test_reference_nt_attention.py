"""Agreement with neural-tangents 0.6.5 on ``GlobalSelfAttention``: its linear scaling (``logits="tied"``) with
every mechanism, SUM/CONCAT positional embeddings (also in the values, and with a decay), and its 1/sqrt(d) rule
for the identity mechanism (``logits="gaussian"``); and on padded sequences (NT's masking). Reference files made by
``benchmarks/peers/nt_attention_reference.py`` in the legacy venv; NT is never imported here."""

import functools
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

from helpers import build, load_archs, load_inputs, max_reference_error, reference_kernels

REF = np.load(pathlib.Path(__file__).parents[1] / "reference" / "nt_attention_kernels.npz")
ARCHS = load_archs(REF)
MASKED = np.load(pathlib.Path(__file__).parents[1] / "reference" / "nt_attention_masked_kernels.npz")
KEYS = ("nngp11", "ntk11", "nngp12", "ntk12")


def _arch(arch):
    """The JSON ``"pos_decay": ["exp", ell]`` as the function ``d -> exp(-d / ell)`` (as the reference script)."""
    out = []
    for name, kw in arch:
        if name == "Attention" and kw.get("pos_decay") is not None:
            ell = kw["pos_decay"][1]
            kw = {**kw, "pos_decay": lambda d, ell=ell: jnp.exp(-d / ell)}
        out.append([name, kw])
    return out


@functools.cache
def _owidth(name):
    return reference_kernels(build(_arch(ARCHS[name])), REF, name)


# one per feature in the default suite (each compiles two kernel programs, ~1 s)
FAST = {"tied_softmax", "gauss_identity_sum"}  # one per logit scaling by default; the rest with the slow tests


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in sorted(ARCHS)])
def test_matches_neural_tangents(name):
    kernels = _owidth(name)
    for key in KEYS:
        got, ref = kernels[key], REF[f"{name}/{key}"]
        assert got.shape == ref.shape, (name, key, got.shape, ref.shape)
        err = np.abs(got - ref) / np.max(np.abs(ref))
        assert np.max(err) < 1e-8, (name, key, np.max(err))
    np.testing.assert_allclose(kernels["nngp11"], kernels["nngp11"].T, rtol=1e-14, atol=0)


@pytest.mark.parametrize("name", [n if n == "mask_tied_sum_val" else pytest.param(n, marks=pytest.mark.slow)
                                  for n in sorted(load_archs(MASKED))])
def test_padded_sequences_match_neural_tangents(name):
    """Sequences of lengths 6, 4, 2, 5 (x1) and 3, 6, 1 (x2), NaN-padded to 6: NT's masked attention, which
    leaves padding keys out and zeroes every kernel entry of a padding position."""
    x1, _ = load_inputs(MASKED, name)
    assert np.isnan(x1).any()
    assert max_reference_error(build(_arch(load_archs(MASKED)[name])), MASKED, name) < 1e-8
