"""Kernels of conv/pooling/LayerNorm/residual networks vs Monte Carlo over finite networks.

The finite networks are built from the same spec by ``ow.finite`` (NTK
parametrization); the mean of ``f(x) f(x')`` and of the empirical NTK over
M independent initialisations must agree with ``ow.kernel`` within 4
standard errors (SE = sample std / sqrt(M)). Networks with one hidden layer
are exact in expectation at any width; deeper ones (and LayerNorm, whose
empirical statistics are width-dependent) have an O(1/width) bias, which at
the widths used here is below one SE (measured z-scores are in the report of
the commit that added this file).
"""

import jax
import numpy as np
import pytest

import owidth as ow


def mc_moments(net, x, *, width, seed, ntk, m):
    model = ow.finite(net, width=width)
    keys = jax.random.split(jax.random.key(seed), m)
    params = jax.vmap(model.init, in_axes=(0, None))(keys, x)
    f = jax.vmap(model.apply, in_axes=(0, None))(params, x)[..., 0]  # (M, n)
    samples = {"nngp": np.asarray(f[:, :, None] * f[:, None, :])}
    if ntk:
        one = lambda p: ow.empirical_ntk(model.apply, p, x, implementation="jacobian")  # noqa: E731
        samples["ntk"] = np.asarray(jax.lax.map(one, params, batch_size=50))
    return {k: (v.mean(0), v.std(0, ddof=1) / np.sqrt(m)) for k, v in samples.items()}


def z_scores(net, x, *, width, seed, ntk, m):
    k = ow.kernel(net, x)
    mc = mc_moments(net, x, width=width, seed=seed, ntk=ntk, m=m)
    return {name: np.abs(np.asarray(getattr(k, name)) - mean) / se for name, (mean, se) in mc.items()}


def images(n, size, c, seed):
    return np.random.default_rng(seed).standard_normal((n, *size, c))


CASES = {
    # one conv hidden layer: exact in expectation at any width (NNGP and NTK)
    "cnn1-gap": (ow.serial(ow.Conv(filter_shape=(3, 3), w_std=1.5, b_std=0.2), ow.Relu(), ow.GlobalAvgPool(),
                           ow.Dense(out=1, w_std=1.2, b_std=0.1)), (4, 4), 64, True),
    "cnn1-flatten": (ow.serial(ow.Conv(filter_shape=(2, 3), padding="VALID", w_std=1.5, b_std=0.2), ow.Erf(),
                               ow.Flatten(), ow.Dense(out=1, w_std=1.2, b_std=0.1)), (4, 5), 64, True),
    # two conv layers, strides, SAME padding, AvgPool: O(1/width) bias
    "cnn2-avgpool-gap": (ow.serial(ow.Conv(filter_shape=(3, 3), w_std=1.5, b_std=0.2), ow.Relu(),
                                   ow.Conv(filter_shape=(3, 3), strides=2, w_std=1.4), ow.Gelu(),
                                   ow.AvgPool(window=(2, 2), strides=(1, 1), padding="SAME"), ow.GlobalAvgPool(),
                                   ow.Dense(out=1, w_std=1.0)), (4, 4), 64, False),
    "cnn2-flatten": (ow.serial(ow.Conv(filter_shape=(3, 3), w_std=1.5, b_std=0.2), ow.Relu(),
                               ow.Conv(filter_shape=(2, 2), strides=2, padding="VALID", w_std=1.4), ow.Relu(),
                               ow.Flatten(), ow.Dense(out=1, w_std=1.0)), (4, 4), 128, False),
}


# all with the slow tests (~6-12 s each); conv kernels are checked by default against neural-tangents
# (test_reference_nt_cnn.py) and the conv finite network by test_conv.py
SLOW_CASES = ("cnn2-flatten", "cnn2-avgpool-gap", "cnn1-flatten", "cnn1-gap")


@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.slow, pytest.mark.compute_bound])
                                  if n in SLOW_CASES else n for n in sorted(CASES)])
def test_cnn_kernels_match_monte_carlo(name):
    net, size, width, ntk = CASES[name]
    # NNGP-only cases are cheap per network: more of them (entries are correlated, so a 1-in-100
    # fluctuation moves all of them; measured max z 3.3 at M = 400, 1.2 at M = 3000 for avgpool-gap on
    # 5x5 images at width 128)
    z = z_scores(net, images(3, size, 2, seed=1), width=width, seed=2, ntk=ntk, m=400 if ntk else 1000)
    for what, zz in z.items():
        assert np.all(zz < 4.0), f"{name} {what}: |analytic - MC| / SE = {np.round(zz, 2)}"


def sphere(n, d, seed):
    x = np.random.default_rng(seed).standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True) * np.sqrt(d) * np.array([1.0, 0.5, 1.5])[:, None]


MLP_CASES = {
    # LayerNorm of post-activations: needs the mean E relu = sqrt(q / 2 pi); dividing by sqrt(var1 var2)
    # alone is off by ~30% (test_layernorm_centring_matters)
    "layernorm-after-relu": ow.serial(ow.Dense(w_std=1.5, b_std=0.3), ow.Relu(), ow.LayerNorm(),
                                      ow.Dense(out=1, w_std=1.1, b_std=0.1)),
    "layernorm-after-gelu": ow.serial(ow.Dense(w_std=1.5, b_std=0.3), ow.Gelu(), ow.LayerNorm(),
                                      ow.Dense(out=1, w_std=1.1, b_std=0.1)),
    # identity branch carrying a post-activation
    "residual-identity-after-relu": ow.serial(ow.Dense(w_std=1.3, b_std=0.2), ow.Relu(),
                                              ow.Residual(ow.Dense(w_std=1.0, b_std=0.1), ow.Relu(),
                                                          ow.Dense(w_std=0.8)),
                                              ow.Dense(out=1, w_std=1.0, b_std=0.1)),
}


# the residual case (~20 s) runs with the slow tests: test_mlp_monte_carlo's residual-after-relu checks
# the same post-activation identity branch by default
@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.compute_bound, pytest.mark.slow])
                                  if n.startswith("residual") else n for n in sorted(MLP_CASES)])
def test_mlp_kernels_match_monte_carlo(name):
    # LayerNorm's NTK has an O(1/width) bias: measured z up to 5.3 at width 256 with M = 4000,
    # 2.7 at width 1024 (bias/SE ~ width^-1/2 sqrt(M)); width 512 with M = 400 keeps it near 1.
    # The residual net (max z 2.2 at width 256, M = 400) is costlier per width: 256.
    width = 256 if name.startswith("residual") else 512
    z = z_scores(MLP_CASES[name], sphere(3, 4, seed=3), width=width, seed=4, ntk=True, m=400)
    for what, zz in z.items():
        assert np.all(zz < 4.0), f"{name} {what}: |analytic - MC| / SE = {np.round(zz, 2)}"


def test_monte_carlo_detects_wrong_pixel_and_centring_rules():
    """The checks have power: pooling read as same-pixel covariances (Flatten's rule instead of
    GAP's), and LayerNorm without centring (dividing by sqrt(var1 var2) alone, the rule for
    zero-mean inputs), are both rejected."""
    net, size, width, _ = CASES["cnn1-gap"]
    x = images(3, size, 2, seed=1)
    mean, se = mc_moments(net, x, width=width, seed=2, ntk=False, m=400)["nngp"]
    flat = ow.serial(*net.layers[:2], ow.Flatten(), net.layers[3])
    assert np.max(np.abs(np.asarray(ow.kernel(flat, x).nngp) - mean) / se) > 4.0

    x = sphere(3, 4, seed=3)
    mean, se = mc_moments(MLP_CASES["layernorm-after-relu"], x, width=512, seed=4, ntk=False, m=400)["nngp"]
    post = np.asarray(ow.kernel(ow.serial(ow.Dense(w_std=1.5, b_std=0.3), ow.Relu()), x).nngp)
    d = np.sqrt(np.diagonal(post))
    uncentred = 1.1**2 * post / d[:, None] / d[None, :] + 0.1**2
    assert np.max(np.abs(uncentred - mean) / se) > 4.0
