"""Padded inputs (``owidth.layers.masking``) against neural-tangents 0.6.5's masking (``mask_constant``), and
the padded kernel and finite network against the unpadded inputs themselves. Reference file made by
``benchmarks/peers/nt_reference.py --only mask`` in the legacy venv (NaN at padding in owidth's inputs)."""

import pathlib

import jax
import numpy as np
import pytest

import owidth as ow
from helpers import build, load_archs, load_inputs, raises_before_compiling

REF = np.load(pathlib.Path(__file__).parents[1] / "reference" / "nt_masked_kernels.npz")
ARCHS = load_archs(REF)


@pytest.mark.parametrize("name", [n if n == "mask_conv_gap" else pytest.param(n, marks=pytest.mark.slow)
                                  for n in sorted(ARCHS)])
def test_matches_neural_tangents(name):
    net = build(ARCHS[name])
    x1, x2 = load_inputs(REF, name)
    assert np.isnan(x1).any() and np.isnan(x2).any()
    for key, k in (("11", ow.kernel(net, x1)), ("12", ow.kernel(net, x1, x2))):
        for what in ("nngp", "ntk"):
            ref = REF[f"{name}/{what}{key}"]
            err = np.max(np.abs(np.asarray(getattr(k, what)) - ref)) / np.max(np.abs(ref))
            assert err < 1e-8, (name, what, key, err)
    # mask= is the same padding as NaN
    m1, m2 = np.isnan(x1).all(-1), np.isnan(x2).all(-1)
    k = ow.kernel(net, np.nan_to_num(x1), np.nan_to_num(x2), mask=(m1, m2))
    np.testing.assert_allclose(k.ntk, REF[f"{name}/ntk12"], rtol=1e-8 * np.abs(REF[f"{name}/ntk12"]).max())
    # and under an outer jax.jit, where the NaN cannot be read back on the host
    jitted = jax.jit(lambda a, b: ow.kernel(net, a, b, mask=(m1, m2)).ntk)(np.nan_to_num(x1), np.nan_to_num(x2))
    np.testing.assert_allclose(jitted, REF[f"{name}/ntk12"], rtol=1e-8 * np.abs(REF[f"{name}/ntk12"]).max())


def _net(pool):
    return ow.serial(ow.Conv(filter_shape=(3,), w_std=1.3, b_std=0.2), ow.Relu(), ow.Conv(filter_shape=(2,), b_std=0.1),
                     ow.Erf(), pool, ow.Dense(out=1, b_std=0.1))


@pytest.mark.slow  # ~10 s (a kernel per sequence length); padding is checked against NT by default
@pytest.mark.parametrize("pool", ["GlobalAvgPool", "GlobalSumPool"])
def test_padding_gives_the_unpadded_inputs_kernel_and_output(pool):
    """A padded sequence's kernel with itself, and a finite network's output on it, are those of the
    sequence cut to its length (SAME convolutions see zeros beyond the end either way)."""
    net = _net(getattr(ow, pool)())
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 7, 2))
    lengths = (7, 4, 2)
    padded = x.copy()
    for i, n in enumerate(lengths):
        padded[i, n:] = np.nan
    k = ow.kernel(net, padded)
    model = ow.finite(net, width=8)
    params = model.init(jax.random.key(0), padded)
    y = model.apply(params, padded)
    for i, n in enumerate(lengths):
        alone = ow.kernel(net, x[i:i + 1, :n])
        np.testing.assert_allclose(k.nngp[i, i], alone.nngp[0, 0], rtol=1e-12)
        np.testing.assert_allclose(k.ntk[i, i], alone.ntk[0, 0], rtol=1e-12)
        np.testing.assert_allclose(y[i], model.apply(params, x[i:i + 1, :n])[0], rtol=1e-12)


@pytest.mark.slow
@pytest.mark.compute_bound
def test_monte_carlo_over_padded_inputs_and_power():
    net = _net(ow.GlobalAvgPool())
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 6, 2))
    for i, n in enumerate((6, 4, 2)):
        x[i, n:] = np.nan
    mc = ow.monte_carlo_kernel(net, x, width=64, samples=2000, key=jax.random.key(0), progress_bar=False)
    exact = ow.kernel(net, x)
    for what in ("nngp", "ntk"):
        z = np.abs(np.asarray(getattr(mc, what)) - getattr(exact, what)) / np.asarray(getattr(mc.stderr, what))
        assert np.all(z < 4), (what, z)
    # power: the same inputs with padding read as zeros (no mask) differ detectably
    wrong = ow.kernel(net, np.nan_to_num(x))
    assert np.max(np.abs(np.asarray(mc.ntk) - wrong.ntk) / np.asarray(mc.stderr.ntk)) > 4


def test_bad_padding():
    x = np.ones((2, 4, 2))
    net = _net(ow.GlobalAvgPool())
    partial = x.copy()
    partial[0, 1, 0] = np.nan
    raises_before_compiling(lambda: ow.kernel(net, partial), ValueError, "only some features")
    empty = x.copy()
    empty[1] = np.nan
    raises_before_compiling(lambda: ow.kernel(net, empty), ValueError, "padding everywhere")
    flat = np.ones((2, 3))
    flat[0, 0] = np.nan
    raises_before_compiling(lambda: ow.kernel(ow.serial(ow.Dense(), ow.Dense(out=1)), flat), ValueError,
                            "no position axis")
    strided = ow.serial(ow.Conv(filter_shape=(2,), strides=(2,)), ow.GlobalAvgPool(), ow.Dense(out=1))
    padded = x.copy()
    padded[0, 3] = np.nan
    raises_before_compiling(lambda: ow.kernel(strided, padded), NotImplementedError, "Conv does not take")
    raises_before_compiling(lambda: ow.kernel(net, x, mask=np.zeros((2, 3), bool)), ValueError, "must be (2, 4)")
    raises_before_compiling(lambda: ow.kernel(net, x, mask=np.zeros((2, 4))), TypeError, "boolean")
    with pytest.raises(NotImplementedError, match="does not take"):
        model = ow.finite(strided, width=4)
        model.apply(model.init(jax.random.key(0), padded), padded)
