"""Deep smooth nets in float32 (issue 24): identical inputs stay exactly correlated, float32 within 1e-4 of
float64, ``x2=x1`` equals ``x2=None``; the scanned kernel of repeated blocks equals the unrolled one."""

import jax
import numpy as np
import pytest

import owidth as ow
from helpers import kernels_64_32
from owidth.layers import combinators

DEPTH = 50


def _net(act, depth=DEPTH):
    # w_std^2 = 4, b_std^2 = 0.1: the chaotic phase of erf/tanh, where correlation 1 is an unstable fixed
    # point (before the fix: identical inputs of the erf net came out with correlation 0.25 in float32)
    return ow.serial(*[layer for _ in range(depth) for layer in (ow.Dense(w_std=2.0, b_std=0.1**0.5), act)],
                     ow.Dense(out=1, w_std=2.0, b_std=0.1**0.5))


def _inputs():
    x = np.random.default_rng(0).normal(size=(4, 8))
    return np.concatenate([x, x[:1]])  # the last input duplicates the first


# ~5-12 s each: erf (closed form in the correlation) by default; tanh (quadrature, dual.at_identical) and
# gelu with the slow tests (test_properties.py draws float32 nets with both by default)
@pytest.mark.parametrize("act", [ow.Erf(), pytest.param(ow.Tanh(), marks=pytest.mark.slow),
                                 pytest.param(ow.Gelu(), marks=pytest.mark.slow)], ids=["erf", "tanh", "gelu"])
def test_depth_50_float32(act):
    for name, (a, b, c) in kernels_64_32(_net(act), _inputs()).items():
        np.testing.assert_allclose(b, a, rtol=1e-4, err_msg=name)            # float32 vs float64
        np.testing.assert_allclose(c, b, rtol=1e-5, err_msg=name)            # x2 = x1 vs x2 = None (~3e-6 seen)
        assert b[0, 4] == b[0, 0] == b[4, 4], (name, b[0, 0], b[0, 4])       # duplicates exactly correlated
        assert a[0, 4] == a[0, 0]
        assert np.all(np.isfinite(b))


# the unrolled depth-10 programs take 15-20 s to compile for erf, gelu and tanh: those run with the slow tests
@pytest.mark.parametrize("act", [pytest.param(ow.Erf(), marks=pytest.mark.slow), pytest.param(ow.Gelu(), marks=pytest.mark.slow), ow.Relu(),
                                 pytest.param(ow.Tanh(), marks=pytest.mark.slow)], ids=["erf", "gelu", "relu", "tanh"])
def test_scanned_blocks_equal_unrolled(act, monkeypatch):
    net, x = _net(act, depth=10), _inputs()
    xt = x[:3] + 0.5
    scanned = [ow.kernel(net, x), ow.kernel(net, x, xt)]
    monkeypatch.setattr(combinators, "_SCAN_REPEATS", 10**9)
    ow.clear_caches()
    unrolled = [ow.kernel(net, x), ow.kernel(net, x, xt)]
    ow.clear_caches()
    for s, u in zip(scanned, unrolled):
        np.testing.assert_allclose(s.nngp, u.nngp, rtol=1e-12)
        np.testing.assert_allclose(s.ntk, u.ntk, rtol=1e-12)


def test_large_inputs_float32_erf_ntk():
    """|x| ~ 1e6 in float32: q1 q2 - c^2 no longer cancels (NTK errors were up to 36%)."""
    x = np.random.default_rng(1).normal(size=(4, 3)) * 1e6
    net = ow.serial(ow.Dense(), ow.Erf(), ow.Dense(), ow.Erf(), ow.Dense(out=1))
    k64 = ow.kernel(net, x)
    with jax.enable_x64(False):
        k32 = ow.kernel(net, x.astype(np.float32))
    np.testing.assert_allclose(np.asarray(k32.ntk, np.float64), k64.ntk, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(k32.nngp, np.float64), k64.nngp, rtol=1e-4)
