"""``ow.kernel(..., param=ow.SP.with_base_width(n))`` against neural-tangents 0.6.5's
``parameterization='standard'`` kernels (hidden width n), and against Monte Carlo over finite networks
written out here in the standard parametrization (raw weights trained, not owidth's finite models).
Reference file made by ``benchmarks/peers/nt_reference.py --only sp`` in the legacy venv."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import owidth as ow
from helpers import build, load_archs, load_inputs, raises_before_compiling, sphere

REF = np.load(pathlib.Path(__file__).parents[1] / "reference" / "nt_standard_kernels.npz")
ARCHS = load_archs(REF)
SP = ow.SP.with_base_width(int(REF["sp_width"]))


@pytest.mark.parametrize("name", [n if n == "sp_relu3" else pytest.param(n, marks=pytest.mark.slow)
                                  for n in sorted(ARCHS)])
def test_matches_neural_tangents(name):
    net = build(ARCHS[name])
    x1, x2 = load_inputs(REF, name)
    for key, k in (("11", ow.kernel(net, x1, param=SP)), ("12", ow.kernel(net, x1, x2, param=SP))):
        for what in ("nngp", "ntk"):
            ref = REF[f"{name}/{what}{key}"]
            err = np.max(np.abs(np.asarray(getattr(k, what)) - ref)) / np.max(np.abs(ref))
            assert err < 1e-8, (name, what, key, err)
    # the NNGP does not depend on the parametrization; the NTK does
    ntp = ow.kernel(net, x1)
    np.testing.assert_allclose(ntp.nngp, REF[f"{name}/nngp11"], rtol=1e-10)
    assert np.max(np.abs(ntp.ntk - REF[f"{name}/ntk11"])) > 1e-2 * np.max(np.abs(REF[f"{name}/ntk11"]))


def _sp_mlp_moments(x, *, width, w1, b1, w2, b2, samples, key):
    """Mean and standard error of the output covariance and the empirical NTK (gradients with respect to
    the raw W1, b1, W2, b2) of f(x) = relu(x W1 + b1) W2 + b2, W1 ~ N(0, w1^2 / d), b1 ~ N(0, b1^2),
    W2 ~ N(0, w2^2 / width), b2 ~ N(0, b2^2): the standard parametrization, written out."""
    d = x.shape[1]

    def one(k):
        ks = jax.random.split(k, 4)
        params = (w1 / np.sqrt(d) * jax.random.normal(ks[0], (d, width)), b1 * jax.random.normal(ks[1], (width,)),
                  w2 / np.sqrt(width) * jax.random.normal(ks[2], (width,)), b2 * jax.random.normal(ks[3], ()))
        f = lambda p: jax.nn.relu(x @ p[0] + p[1][None]) @ p[2] + p[3]  # noqa: E731
        jac = jax.jacobian(f)(params)
        flat = jnp.concatenate([j.reshape(len(x), -1) for j in jac], axis=1)
        out = f(params)
        return jnp.outer(out, out), flat @ flat.T

    nngp, ntk = jax.jit(jax.vmap(one))(jax.random.split(key, samples))
    return {name: (np.mean(v, 0), np.std(v, 0, ddof=1) / np.sqrt(samples)) for name, v in (("nngp", nngp),
                                                                                            ("ntk", ntk))}


@pytest.mark.compute_bound
def test_one_hidden_layer_monte_carlo_and_power():
    """One hidden layer: the expected empirical NTK of the raw-weight network of width n equals the kernel
    at base_width n exactly; 3000 networks within 4 SE; base width 5% off (64 -> 67) is detected."""
    x = sphere(4, 3, 0)
    x[3] *= 0.5
    width = 64
    net = ow.serial(ow.Dense(w_std=1.3, b_std=0.4), ow.Relu(), ow.Dense(out=1, w_std=1.1, b_std=0.2))
    stats = _sp_mlp_moments(x, width=width, w1=1.3, b1=0.4, w2=1.1, b2=0.2, samples=3000, key=jax.random.key(0))
    exact = ow.kernel(net, x, param=ow.SP.with_base_width(width))
    for what, (mean, se) in stats.items():
        assert np.all(np.abs(mean - getattr(exact, what)) < 4 * se), what
    wrong = ow.kernel(net, x, param=ow.SP.with_base_width(67))
    assert np.max(np.abs(stats["ntk"][0] - wrong.ntk) / stats["ntk"][1]) > 4


def test_locally_connected_layers_flattened_have_the_cnn_kernel():
    """Novak et al. 2019, Sec. 3.2: an LCN read out through Flatten has the CNN's kernels (only same-pixel
    covariances reach the readout, and those are the same); under SP the fan-in of each unshared filter is
    the shared one's, so the identity holds for the standard-parametrization NTK too (strides included,
    which NT 0.6.5's standard ConvLocal fails on)."""
    x = np.random.default_rng(0).normal(size=(3, 6, 5, 2))

    def net(layer):
        return ow.serial(layer(filter_shape=(3, 3), strides=(2, 1), w_std=1.2, b_std=0.3), ow.Erf(),
                         layer(filter_shape=(2, 2), padding="VALID", w_std=1.1), ow.Relu(), ow.Flatten(),
                         ow.Dense(out=1, b_std=0.1))

    sp = ow.SP.with_base_width(64)
    lcn, cnn = ow.kernel(net(ow.ConvLocal), x, param=sp), ow.kernel(net(ow.Conv), x, param=sp)
    np.testing.assert_allclose(lcn.ntk, cnn.ntk, rtol=1e-12)
    np.testing.assert_allclose(lcn.nngp, cnn.nngp, rtol=1e-12)
    assert np.max(np.abs(lcn.ntk - ow.kernel(net(ow.ConvLocal), x).ntk)) > 0.1 * np.max(np.abs(lcn.ntk))


@pytest.mark.slow  # ~15 s
@pytest.mark.compute_bound
def test_transposed_convolution_monte_carlo_and_power():
    """A strided transposed convolution on the data, ReLU, Flatten, readout, written out here in the standard
    parametrization (raw W1 ~ N(0, w1^2 / (|F| C)), W2 ~ N(0, w2^2 / (|S| n)), biases N(0, b^2), all trained):
    its expected empirical NTK at width n is the kernel at base width n exactly (one hidden layer); 2000
    networks within 4 SE; base width 5% off (64 -> 67) is detected."""
    x = np.random.default_rng(1).normal(size=(3, 4, 3, 2))
    (w1, b1, w2, b2), width, fs, strides = (1.3, 0.2, 1.1, 0.1), 64, (3, 2), (2, 1)
    net = ow.serial(ow.ConvTranspose(filter_shape=fs, strides=strides, w_std=w1, b_std=b1), ow.Relu(),
                    ow.Flatten(), ow.Dense(out=1, w_std=w2, b_std=b2))

    def hidden(p):
        y = jax.lax.conv_transpose(jnp.asarray(x), p[0], strides, "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jax.nn.relu(y + p[1].reshape(1, 1, 1, -1)).reshape(len(x), -1)

    pixels = hidden((jnp.zeros((*fs, 2, width)), jnp.zeros(width))).shape[1] // width

    def one(k):
        ks = jax.random.split(k, 4)
        p = (w1 / np.sqrt(np.prod(fs) * 2) * jax.random.normal(ks[0], (*fs, 2, width)),
             b1 * jax.random.normal(ks[1], (width,)),
             w2 / np.sqrt(pixels * width) * jax.random.normal(ks[2], (pixels * width,)), b2 * jax.random.normal(ks[3], ()))
        f = lambda q: hidden(q) @ q[2] + q[3]  # noqa: E731
        flat = jnp.concatenate([j.reshape(len(x), -1) for j in jax.jacobian(f)(p)], axis=1)
        out = f(p)
        return jnp.outer(out, out), flat @ flat.T

    samples = 2000
    nngp, ntk = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(0), samples))
    exact = ow.kernel(net, x, param=ow.SP.with_base_width(width))
    for name, v in (("nngp", nngp), ("ntk", ntk)):
        mean, se = np.mean(v, 0), np.std(v, 0, ddof=1) / np.sqrt(samples)
        assert np.all(np.abs(mean - getattr(exact, name)) < 4 * se), name
    wrong = ow.kernel(net, x, param=ow.SP.with_base_width(67))
    assert np.max(np.abs(np.mean(ntk, 0) - wrong.ntk) / (np.std(ntk, 0, ddof=1) / np.sqrt(samples))) > 4


def test_bad_parametrizations():
    x = np.ones((2, 3))
    net = ow.serial(ow.Dense(), ow.Relu(), ow.Dense(out=1))
    raises_before_compiling(lambda: ow.kernel(net, x, param=ow.MUP), ValueError, "not in the kernel regime")
    raises_before_compiling(lambda: ow.kernel(net, x, param="sp"), TypeError, "ow.Parametrization")
    seq = ow.transformer(vocab=5, depth=1, heads=1)
    raises_before_compiling(lambda: ow.kernel(seq, np.zeros((2, 3), int), param=ow.SP), NotImplementedError,
                            "Dense, Conv, ConvTranspose and ConvLocal")
    np.testing.assert_array_equal(ow.kernel(net, x, param=ow.NTP).ntk, ow.kernel(net, x).ntk)
