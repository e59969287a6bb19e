"""Padded inputs (``owidth.layers.masking``) against neural-tangents 0.6.5's masking (``mask_constant``), and
the padded kernel and finite network against the unpadded inputs themselves. Reference files made in the
legacy venv (NaN at padding in owidth's inputs): ``benchmarks/peers/nt_reference.py --only mask`` (layers that
keep the position grid) and ``benchmarks/peers/nt_conv_reference.py`` (layers that change it: strided and VALID
convolutions, windowed pooling, transposed and local convolutions, resizing, indexing, spatial concatenation)."""

import pathlib

import jax
import numpy as np
import pytest

import owidth as ow
from helpers import build, check_padded_equals_cut, load_archs, load_inputs, max_reference_error, raises_before_compiling

REF = np.load(pathlib.Path(__file__).parents[1] / "reference" / "nt_masked_kernels.npz")
ARCHS = load_archs(REF)
GRID = np.load(pathlib.Path(__file__).parents[1] / "reference" / "nt_conv_masked_kernels.npz")


@pytest.mark.parametrize("name", [n if n == "mask_conv_gap" else pytest.param(n, marks=pytest.mark.slow)
                                  for n in sorted(ARCHS)])
def test_matches_neural_tangents(name):
    net = build(ARCHS[name])
    x1, x2 = load_inputs(REF, name)
    assert np.isnan(x1).any() and np.isnan(x2).any()
    assert max_reference_error(net, REF, name) < 1e-8
    # mask= is the same padding as NaN
    m1, m2 = np.isnan(x1).all(-1), np.isnan(x2).all(-1)
    k = ow.kernel(net, np.nan_to_num(x1), np.nan_to_num(x2), mask=(m1, m2))
    np.testing.assert_allclose(k.ntk, REF[f"{name}/ntk12"], rtol=1e-8 * np.abs(REF[f"{name}/ntk12"]).max())
    # and under an outer jax.jit, where the NaN cannot be read back on the host
    jitted = jax.jit(lambda a, b: ow.kernel(net, a, b, mask=(m1, m2)).ntk)(np.nan_to_num(x1), np.nan_to_num(x2))
    np.testing.assert_allclose(jitted, REF[f"{name}/ntk12"], rtol=1e-8 * np.abs(REF[f"{name}/ntk12"]).max())


@pytest.mark.parametrize("name", [n if n == "mask_convT_s2" else pytest.param(n, marks=pytest.mark.slow)
                                  for n in sorted(load_archs(GRID))])
def test_grid_changing_layers_match_neural_tangents(name):
    """NT's mask rules where the position grid changes: an output position of a strided/VALID convolution or a
    pooling window is padding when its window's centre is; a transposed convolution spreads padding to every
    output it reaches; a resized position is padding when no valid position reaches it; indexing selects."""
    x1, x2 = load_inputs(GRID, name)
    assert np.isnan(x1).any() and np.isnan(x2).any()
    assert max_reference_error(build(load_archs(GRID)[name]), GRID, name) < 1e-8


def _grid_net():
    """Every layer that changes the position grid, on sequences."""
    return ow.serial(ow.Conv(filter_shape=(3,), strides=(2,), w_std=1.3, b_std=0.2), ow.Relu(),
                     ow.ConvTranspose(filter_shape=(3,), strides=(2,), b_std=0.1), ow.Relu(),
                     ow.AvgPool(window=(2,), strides=(1,), padding="SAME"), ow.Index(ow.Slice[:, 1:]),
                     ow.ConvLocal(filter_shape=(2,), padding="VALID"), ow.Relu(),
                     ow.ImageResize(shape=(9,), method="linear"),
                     ow.concat(ow.Conv(filter_shape=(2,)), ow.Conv(filter_shape=(3,), strides=(2,)), axis=1),
                     ow.Relu(), ow.repeat(ow.serial(ow.Conv(filter_shape=(2,)), ow.Relu()), 3), ow.SumPool(window=(2,)),
                     ow.Conv(filter_shape=(2,), padding="VALID"), ow.Erf(), ow.GlobalAvgPool(), ow.Dense(out=1, b_std=0.1))


def test_padding_content_never_reaches_the_outputs_through_grid_changing_layers():
    """The padding's values (here 5.0 under mask=) change nothing anywhere: every layer zeroes the padding of
    its input, as the masks propagate through the grid changes (the finite network, also under jit; the kernels'
    rules are checked against NT above and against Monte Carlo below)."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, 9, 2))
    for i, n in enumerate((9, 6, 4)):
        x[i, n:] = np.nan
    mask = np.isnan(x).all(-1)
    junk = np.where(np.isnan(x), 5.0, x)
    net = _grid_net()
    model = ow.finite(net, width=6)
    params = model.init(jax.random.key(0), x)
    y = model.apply(params, x)
    np.testing.assert_allclose(model.apply(params, junk, mask=mask), y, rtol=1e-13)
    np.testing.assert_allclose(jax.jit(lambda p, a: model.apply(p, a, mask=mask))(params, junk), y, rtol=1e-13)
    assert np.max(np.abs(model.apply(params, junk) - y)) > 1e-3  # unmasked, the junk does reach the outputs


def _net(pool):
    return ow.serial(ow.Conv(filter_shape=(3,), w_std=1.3, b_std=0.2), ow.Relu(), ow.Conv(filter_shape=(2,), b_std=0.1),
                     ow.Erf(), pool, ow.Dense(out=1, b_std=0.1))


@pytest.mark.slow  # ~10 s (a kernel per sequence length); padding is checked against NT by default
@pytest.mark.parametrize("pool", ["GlobalAvgPool", "GlobalSumPool"])
def test_padding_gives_the_unpadded_inputs_kernel_and_output(pool):
    """A padded sequence's kernel with itself, and a finite network's output on it, are those of the
    sequence cut to its length (SAME convolutions see zeros beyond the end either way)."""
    net = _net(getattr(ow, pool)())
    check_padded_equals_cut(net, np.random.default_rng(0).normal(size=(3, 7, 2)), (7, 4, 2))


@pytest.mark.slow  # ~40-60 s
@pytest.mark.compute_bound
def test_monte_carlo_over_padded_inputs_through_grid_changes_and_power():
    """A strided convolution, a transposed one (the mask spreads), Index and a VALID convolution on padded
    sequences, then a mean over the valid positions: the kernels within 4 standard errors of 1000 NTP networks
    at width 64, allowing the O(1/width) finite-width bias (2 / width relative; measured the same, -1% to -2% on
    the NTK, on the unpadded inputs, halving at width 128). Power: the inputs with padding read as zeros are
    far off (~80 standard errors)."""
    net = ow.serial(ow.Conv(filter_shape=(3,), strides=(2,), w_std=1.3, b_std=0.2), ow.Relu(),
                    ow.ConvTranspose(filter_shape=(3,), strides=(2,), b_std=0.1), ow.Relu(),
                    ow.Index(ow.Slice[:, 1:]), ow.Conv(filter_shape=(2,), padding="VALID", w_std=1.2), ow.Erf(),
                    ow.GlobalAvgPool(), ow.Dense(out=1, b_std=0.1))
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 8, 2))
    for i, n in enumerate((8, 5, 3)):
        x[i, n:] = np.nan
    width = 64
    mc = ow.monte_carlo_kernel(net, x, width=width, samples=1000, key=jax.random.key(7), progress_bar=False)
    exact = ow.kernel(net, x)
    for what in ("nngp", "ntk"):
        want = np.asarray(getattr(exact, what))
        z = np.abs(np.asarray(getattr(mc, what)) - want) / (np.asarray(getattr(mc.stderr, what))
                                                            + 2 / width * np.abs(want))
        assert np.all(z < 4), (what, z)
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
    tokens = ow.serial(ow.Embedding(vocab=5), ow.GlobalAvgPool(), ow.Dense(out=1))
    ids = np.array([[1, 2, 3, 0], [4, 1, 0, 0]])
    raises_before_compiling(lambda: ow.kernel(tokens, ids, mask=ids == 0), NotImplementedError,
                            "Embedding does not take")
    inner_embedding = ow.serial(ow.Dense(), ow.Embedding(vocab=3), ow.GlobalAvgPool(), ow.Dense(out=1))  # by name
    raises_before_compiling(lambda: ow.kernel(inner_embedding, x, mask=np.zeros((2, 4), bool)), NotImplementedError,
                            "Embedding does not take")
    raises_before_compiling(lambda: ow.kernel(net, x, mask=np.zeros((2, 3), bool)), ValueError, "must be (2, 4)")
    raises_before_compiling(lambda: ow.kernel(net, x, mask=np.zeros((2, 4))), TypeError, "boolean")
    with pytest.raises(NotImplementedError, match="does not take"):
        model = ow.finite(tokens, width=4)
        model.apply(model.init(jax.random.key(0), ids), ids, mask=ids == 0)
