"""Residual branch multipliers (``ow.Residual(*block, scale=s)``): the kernel rule against an equivalent net,
the finite network, and the infinite-depth limit of residual MLPs under ``scale = 1/sqrt(L)`` (Hayou et al.
2021; the branch multiplier of depth-muP)."""

import jax
import numpy as np
import pytest

import owidth as ow
from helpers import raises_before_compiling

X = np.random.default_rng(0).normal(size=(4, 5))
X *= np.sqrt(5) / np.linalg.norm(X, axis=1, keepdims=True)


def _net(scale, w_std=1.2, b_std=0.1, **res):
    return ow.serial(ow.Dense(), ow.Residual(ow.Relu(), ow.Dense(w_std=w_std, b_std=b_std), scale=scale, **res),
                     ow.Relu(), ow.Dense(out=1))


def test_branch_scale_is_a_rescaled_last_layer():
    """``s * Dense(w, b)(h)`` is ``Dense(s w, s b)(h)`` as a function of the same NTK-parametrized weights, so
    both nets have the same kernels (NNGP and NTK) and, given the same parameters, the same outputs."""
    s = 0.37
    scaled, folded = _net(s), _net(1.0, w_std=1.2 * s, b_std=0.1 * s)
    for a, b in ((ow.kernel(scaled, X), ow.kernel(folded, X)),):
        np.testing.assert_allclose(a.nngp, b.nngp, rtol=1e-13)
        np.testing.assert_allclose(a.ntk, b.ntk, rtol=1e-13)
    assert np.max(np.abs(ow.kernel(_net(1.0), X).ntk - ow.kernel(scaled, X).ntk)) > 0.1
    m1, m2 = ow.finite(scaled, width=16), ow.finite(folded, width=16)
    params = m1.init(jax.random.key(0), X)
    np.testing.assert_allclose(m1.apply(params, X), m2.apply(params, X), rtol=1e-13)
    for bad in (float("nan"), "0.5", True):
        with pytest.raises(ValueError, match="scale"):
            ow.Residual(ow.Dense(), scale=bad)
    raises_before_compiling(lambda: ow.parallel(ow.Dense(), ow.Dense()).__class__(
        (ow.Dense(), ow.Dense()), (1.0,)), ValueError, "one finite number per branch")


def _deep(depth, scaled):
    block = ow.Residual(ow.Relu(), ow.Dense(w_std=1.2, b_std=0.1), scale=depth**-0.5 if scaled else 1.0)
    return ow.serial(ow.Dense(), ow.repeat(block, depth), ow.Relu(), ow.Dense(out=1))


def test_kernels_of_deep_residual_nets_converge_under_inverse_sqrt_depth_branches():
    """Depths 16, 64, 256, 1024 with branches scaled by 1/sqrt(L): each block is an Euler step of size 1/L of
    an ODE in depth, so successive differences shrink like 1/L (ratio 4 per factor 4 in depth; measured 3.9-4.0
    for both kernels). Unscaled, the NNGP grows like (1 + c)^L (above 1e50 at depth 256) and the inputs'
    correlations go to 1 (the kernel degenerates)."""
    ks = [ow.kernel(_deep(depth, True), X) for depth in (16, 64, 256, 1024)]
    for what in ("nngp", "ntk"):
        diffs = [np.max(np.abs(getattr(b, what) - getattr(a, what))) for a, b in zip(ks, ks[1:])]
        ratios = np.array(diffs[:-1]) / np.array(diffs[1:])
        assert np.all((3.5 < ratios) & (ratios < 4.5)), (what, diffs)
    corr = lambda k: k[0, 1] / np.sqrt(k[0, 0] * k[1, 1])  # noqa: E731
    unscaled = [np.asarray(ow.kernel(_deep(depth, False), X, get="nngp").nngp) for depth in (16, 64, 256)]
    assert unscaled[-1][0, 0] > 1e50
    assert 1 - corr(unscaled[-1]) < 0.05 * (1 - corr(unscaled[0]))  # measured 0.870 at depth 16, 0.997 at 256
    assert abs(corr(np.asarray(ks[-1].nngp)) - corr(np.asarray(ks[-2].nngp))) < 1e-3  # the limit keeps them apart
