"""Invariants of the analytic kernels over random small architectures (hypothesis).

For every net drawn from Dense/Conv, Relu/Erf/Tanh/Gelu/Abs/LeakyRelu, Residual and the
pooling heads, with random weight and bias scales:
- the NNGP and the NTK of x against itself are symmetric and PSD, and k(x2, x1) = k(x1, x2)^T;
- NTK - NNGP is PSD: the NTK is a sum over the parameters of J J^T (each PSD), and the
  readout layer's share is exactly the NNGP (Jacot et al. 2018, eq. 4; Lee et al. 2019, eq. 8);
- the jitted kernel equals the eager one (``jax.disable_jit``; MLPs, eager CNNs are slow);
- at input scales 1e-2..30, in float32 with a duplicated input: finite, the duplicate correlated to 1e-6,
  ``x2=x1`` equal to ``x2=None``, float32 within 1e-4 of float64.
Each example compiles a new net, so the example counts are small.
"""

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import owidth as ow
from helpers import kernels_64_32, sphere

ACTS = [ow.Relu(), ow.Erf(), ow.Tanh(), ow.Gelu(), ow.Abs(), ow.LeakyRelu(0.2)]
# ~1-10 s of compilation per example on a 2-core CPU (Tanh, Conv and eager evaluation the dearest):
# a few examples per run, new ones each run (the file takes ~20-30 s).
SETTINGS = settings(max_examples=3, deadline=None)

scales = st.floats(0.5, 2.0)
biases = st.sampled_from([0.0, 0.1, 0.5])
acts = st.sampled_from(ACTS)


@st.composite
def mlps(draw):
    """Dense, then blocks [act, Residual(Dense, act, Dense)?, Dense], then act and Dense(out=1)."""
    layers = [ow.Dense(w_std=draw(scales), b_std=draw(biases))]
    for _ in range(draw(st.integers(0, 2))):
        layers.append(draw(acts))
        if draw(st.booleans()):
            layers.append(ow.Residual(ow.Dense(w_std=draw(scales)), draw(acts), ow.Dense(w_std=draw(scales))))
        layers.append(ow.Dense(w_std=draw(scales), b_std=draw(biases)))
    return ow.serial(*layers, draw(acts), ow.Dense(out=1, w_std=draw(scales), b_std=draw(biases)))


@st.composite
def cnns(draw):
    """Conv, act, [Residual(Conv, act, Conv), act]?, a pooling head, Dense(out=1), on 4x4 images."""
    k = draw(st.sampled_from([(1, 1), (2, 2), (3, 3)]))
    layers = [ow.Conv(filter_shape=k, strides=draw(st.sampled_from([1, 2])), w_std=draw(scales),
                      b_std=draw(biases)), draw(acts)]
    if draw(st.booleans()):
        layers += [ow.Residual(ow.Conv(filter_shape=(3, 3), w_std=draw(scales)), draw(acts),
                               ow.Conv(filter_shape=(3, 3), w_std=draw(scales))), ow.Conv(filter_shape=(2, 2)),
                   draw(acts)]
    head = draw(st.sampled_from([ow.GlobalAvgPool(), ow.Flatten()]))
    return ow.serial(*layers, head, ow.Dense(out=1, w_std=draw(scales), b_std=draw(biases)))


def images(n, seed):
    return np.random.default_rng(seed).standard_normal((n, 4, 4, 2))


def check_invariants(net, x1, x2):
    """x1 and x2 of the same shape, so that k(x1, x2) and k(x2, x1) share one compilation."""
    k = ow.kernel(net, x1)
    scale = np.trace(np.asarray(k.ntk))
    for m in (k.nngp, k.ntk, k.ntk - k.nngp):
        m = np.asarray(m)
        np.testing.assert_allclose(m, m.T, rtol=1e-12, atol=1e-14 * scale)
        assert np.linalg.eigvalsh(m).min() >= -1e-10 * scale, np.linalg.eigvalsh(m)
    k12, k21 = ow.kernel(net, x1, x2), ow.kernel(net, x2, x1)
    np.testing.assert_allclose(k12.nngp, k21.nngp.T, rtol=1e-10)
    np.testing.assert_allclose(k12.ntk, k21.ntk.T, rtol=1e-10)


def check_jit_equals_eager(net, x):
    jitted = ow.kernel(net, x)
    with jax.disable_jit():
        eager = ow.kernel(net, x)
    np.testing.assert_allclose(eager.nngp, jitted.nngp, rtol=1e-11)
    np.testing.assert_allclose(eager.ntk, jitted.ntk, rtol=1e-11)


@SETTINGS
@given(net=mlps(), seed=st.integers(0, 2**16))
def test_mlp_kernels_symmetric_psd(net, seed):
    check_invariants(net, sphere(5, 3, seed), sphere(5, 3, seed + 1))


@settings(SETTINGS, max_examples=1)  # ~8 s of compilation per CNN
@given(net=cnns(), seed=st.integers(0, 2**16))
def test_cnn_kernels_symmetric_psd(net, seed):
    check_invariants(net, images(3, seed), images(3, seed + 1))


@settings(SETTINGS, max_examples=1)  # op-by-op evaluation compiles every primitive: 5-10 s per net
@given(net=mlps(), seed=st.integers(0, 2**16))
def test_jit_equals_eager(net, seed):
    check_jit_equals_eager(net, sphere(3, 3, seed))


@pytest.mark.slow  # ~11 s: each example compiles float32 and float64 kernels
@settings(SETTINGS, max_examples=3)
@given(net=mlps(), seed=st.integers(0, 2**16), log_scale=st.floats(-2.0, 1.5))
def test_float32_duplicates_and_input_scale(net, seed, log_scale):
    """Inputs of norm 10^-2..10^1.5 per feature, with a duplicate: finite, the duplicate perfectly
    correlated (to 1e-6), x2 = x1 equals x2 = None, and float32 within 1e-4 (relative to the diagonal scale) of
    float64 (issue 24)."""
    x = sphere(4, 3, seed) * 10.0**log_scale
    x = np.concatenate([x, x[:1]])
    for name, (a, b, c) in kernels_64_32(net, x).items():
        scale = np.max(np.abs(np.diagonal(a)))
        assert np.all(np.isfinite(b)) and np.all(np.isfinite(c))
        # perfectly correlated up to float32 rounding (the duplicate's own variance can differ by an ulp: the
        # input Gram's matmul may sum its diagonal entries in different orders); before issue 24, deep chaotic
        # nets decorrelated them completely
        assert abs(b[0, 4] / np.sqrt(b[0, 0] * b[4, 4]) - 1) < 1e-6, (name, b[0, 0], b[0, 4], b[4, 4])
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * scale, err_msg=name)
        np.testing.assert_allclose(c, b, rtol=1e-5, atol=1e-6 * scale, err_msg=name)
