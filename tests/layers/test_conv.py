"""Kernels of spatial layers (Conv, AvgPool, GlobalAvgPool, Flatten) and LayerNorm: exact checks,
invariants and bad input. Monte Carlo agreement is in test_conv_monte_carlo.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import owidth as ow
from helpers import compiles_nothing, raises_before_compiling
from owidth import _kernel as kernel_api


def images(n, size, c, seed):
    return np.random.default_rng(seed).standard_normal((n, *size, c))


def patches_same(x, f, stride):
    """All (f x f) patches of x (n, H, W, C) with SAME zero padding, as lax pads: (n, P_out, f*f*C)."""
    n, h, w, c = x.shape
    out = [-(-h // stride), -(-w // stride)]
    pads = [max((o - 1) * stride + f - s, 0) for o, s in zip(out, (h, w))]
    xp = np.pad(x, ((0, 0), (pads[0] // 2, pads[0] - pads[0] // 2), (pads[1] // 2, pads[1] - pads[1] // 2), (0, 0)))
    ps = [xp[:, i * stride:i * stride + f, j * stride:j * stride + f].reshape(n, -1)
          for i in range(out[0]) for j in range(out[1])]
    return np.stack(ps, 1)


@pytest.mark.parametrize("head", ["gap", "flatten"])
def test_linear_conv_kernel_by_hand(head):
    """Conv (SAME, stride 2) then a readout: f = v . pool(W * x) is linear in the data, so
    E[f f'] is a quadratic form of explicit image patches (numpy, no kernel code)."""
    w1, b1, wr = 1.3, 0.4, 0.9
    x1, x2 = images(3, (5, 4), 2, seed=0), images(2, (5, 4), 2, seed=1)
    pool = ow.GlobalAvgPool() if head == "gap" else ow.Flatten()
    net = ow.serial(ow.Conv(filter_shape=(3, 3), strides=2, w_std=w1, b_std=b1), pool, ow.Dense(out=1, w_std=wr))
    p1, p2 = patches_same(x1, 3, 2), patches_same(x2, 3, 2)  # (n, P, 18)
    fan = p1.shape[-1]
    if head == "gap":  # mean over output pixels of the conv outputs: cov over all pixel pairs
        ref = wr**2 * (w1**2 * np.einsum("ipk,jqk->ij", p1, p2) / fan / p1.shape[1] ** 2 + b1**2)
    else:  # flatten: mean over pixels of same-pixel covariances
        ref = wr**2 * (w1**2 * np.einsum("ipk,jpk->ij", p1, p2) / fan / p1.shape[1] + b1**2)
    k = ow.kernel(net, x1, x2)
    np.testing.assert_allclose(k.nngp, ref, rtol=1e-12)
    # NTK: readout term (= the NNGP) + conv term (w_r^2 times the pooled conv NTK = its NNGP)
    np.testing.assert_allclose(k.ntk, 2 * ref, rtol=1e-12)


def test_avgpool_finite_matches_numpy():
    x = images(2, (5, 5), 3, seed=2)
    model = ow.finite(ow.serial(ow.AvgPool(window=(2, 2), strides=(2, 1), padding="VALID"), ow.Flatten(),
                                ow.Dense(out=1)), width=4)
    p = model.init(jax.random.key(0), x)
    pooled = np.stack([np.stack([x[:, 2 * i:2 * i + 2, j:j + 2].mean((1, 2)) for j in range(4)], 1)
                       for i in range(2)], 1)  # (2, 2, 4, 3)
    ref = pooled.reshape(2, -1) @ (np.asarray(p[2]["w"]) / np.sqrt(pooled[0].size))
    np.testing.assert_allclose(model.apply(p, x), ref, rtol=1e-12)


NETS = {
    "gap": ow.serial(ow.Conv(filter_shape=(3, 3), w_std=1.4, b_std=0.1), ow.Relu(),
                     ow.Conv(filter_shape=(2, 2), strides=2, w_std=1.3), ow.Gelu(), ow.GlobalAvgPool(),
                     ow.Dense(out=1)),
    "flatten-valid": ow.serial(ow.Conv(filter_shape=(3, 2), padding="VALID", w_std=1.4, b_std=0.1), ow.Erf(),
                               ow.Conv(filter_shape=(2, 2), w_std=1.3), ow.Relu(), ow.Flatten(),
                               ow.Dense(w_std=1.2), ow.Relu(), ow.Dense(out=1)),
    "avgpool-same-layernorm": ow.serial(ow.Conv(filter_shape=(3, 3), w_std=1.4, b_std=0.1), ow.Relu(),
                                        ow.AvgPool(window=(3, 3), strides=(2, 2), padding="SAME"), ow.LayerNorm(),
                                        ow.Conv(filter_shape=(2, 2), w_std=1.3), ow.Tanh(), ow.Flatten(),
                                        ow.Dense(out=1)),
    "residual-conv": ow.serial(ow.Conv(filter_shape=(3, 3), w_std=1.4), ow.Relu(),
                               ow.Residual(ow.Conv(filter_shape=(3, 3), w_std=1.3, b_std=0.1), ow.Relu(),
                                           ow.Conv(filter_shape=(1, 1))),
                               ow.GlobalAvgPool(), ow.Dense(out=1)),
    "conv1d": ow.serial(ow.Conv(filter_shape=(3,), strides=2, w_std=1.4, b_std=0.2), ow.Relu(),
                        ow.Conv(filter_shape=(2,), padding="VALID"), ow.Abs(), ow.GlobalAvgPool(), ow.Dense(out=1)),
}


def data_for(name, n, seed):
    return images(n, (7,) if name == "conv1d" else (5, 4), 3, seed)


# ~4-8 s each: the global-average-pooled net by default, the rest with the slow tests
@pytest.mark.parametrize("name", [n if n == "gap" else pytest.param(n, marks=pytest.mark.slow) for n in sorted(NETS)])
def test_symmetric_psd_and_cross_consistent(name):
    net = NETS[name]
    x1, x2 = data_for(name, 4, 0), data_for(name, 3, 1)
    x1[3] = x1[0]  # a duplicated input
    k = ow.kernel(net, x1)
    for m in (k.nngp, k.ntk):
        m = np.asarray(m)
        assert np.array_equal(m, m.T)
        assert np.linalg.eigvalsh(m).min() > -1e-12 * np.abs(m).max()
        np.testing.assert_allclose(m[0], m[3], rtol=1e-12)
    np.testing.assert_allclose(k.var1, np.diagonal(k.nngp), rtol=0)
    # x1 against itself via x2: same numbers; and a joint computation's off-diagonal block
    kx = ow.kernel(net, x1, x1)
    np.testing.assert_allclose(kx.nngp, k.nngp, rtol=1e-12)
    np.testing.assert_allclose(kx.ntk, k.ntk, rtol=1e-12)
    k12 = ow.kernel(net, x1, x2)
    kj = ow.kernel(net, np.concatenate([x1, x2]))
    np.testing.assert_allclose(k12.nngp, kj.nngp[:4, 4:], rtol=1e-12)
    np.testing.assert_allclose(k12.ntk, kj.ntk[:4, 4:], rtol=1e-12)
    np.testing.assert_allclose(k12.var2, np.diagonal(kj.nngp)[4:], rtol=1e-12)


@pytest.mark.slow  # ~13 s
def test_jit_and_grad_finite():
    net = NETS["gap"]
    x = images(3, (4, 3), 2, seed=3)
    x[2] = x[1]
    f = lambda a: jnp.sum(ow.kernel(net, a).ntk) + jnp.sum(ow.kernel(net, a, a[:2]).nngp)  # noqa: E731
    g = jax.jit(jax.grad(f))(x)
    assert np.all(np.isfinite(g)) and np.abs(g).max() > 0
    np.testing.assert_allclose(jax.jit(f)(x), f(x), rtol=1e-12)


def test_flatten_keeps_only_same_pixel_covariances():
    """Without pooling no intermediate has n^2 P^2 entries; with GAP some do."""
    x = images(4, (6, 6), 3, seed=4)
    n, p = 4, 36

    def largest(net):
        jaxpr = jax.make_jaxpr(lambda a: kernel_api._kernel_impl(net, a, None, ("nngp", "ntk")))(x)
        sizes = [v.aval.size for eqn in jaxpr.jaxpr.eqns for v in eqn.outvars if hasattr(v.aval, "size")]
        return max(sizes)

    conv = [ow.Conv(filter_shape=(3, 3), w_std=1.4), ow.Relu(), ow.Conv(filter_shape=(3, 3)), ow.Relu()]
    assert largest(ow.serial(*conv, ow.Flatten(), ow.Dense(out=1))) < n * n * p * p / 4
    assert largest(ow.serial(*conv, ow.GlobalAvgPool(), ow.Dense(out=1))) >= n * n * p * p


CNN = ow.serial(ow.Conv(filter_shape=(3, 3)), ow.Relu(), ow.GlobalAvgPool(), ow.Dense(out=1))
BAD = [
    ("conv net, rank-3 input", lambda: ow.kernel(CNN, np.ones((2, 5, 3))), ValueError, "2 spatial axes"),
    ("conv net, rank-2 input", lambda: ow.kernel(CNN, np.ones((2, 5))), ValueError, "spatial axes"),
    ("VALID filter larger than image",
     lambda: ow.kernel(ow.serial(ow.Conv(filter_shape=(4, 4), padding="VALID"), ow.Flatten(), ow.Dense(out=1)),
                       np.ones((2, 3, 5, 1))), ValueError, "does not fit"),
    ("pool window larger than image",
     lambda: ow.kernel(ow.serial(ow.Conv(filter_shape=(1, 1)), ow.AvgPool(window=(4, 4)), ow.Flatten(),
                                 ow.Dense(out=1)), np.ones((2, 3, 3, 1))), ValueError, "does not fit"),
    ("image size mismatch x1 x2", lambda: ow.kernel(CNN, np.ones((2, 5, 5, 3)), np.ones((2, 5, 4, 3))), ValueError,
     "same feature shape"),
    ("residual branch changes the image size",
     lambda: ow.kernel(ow.serial(ow.Conv(filter_shape=(3, 3)), ow.Relu(),
                                 ow.Residual(ow.Conv(filter_shape=(3, 3), strides=2)), ow.Flatten(), ow.Dense(out=1)),
                       np.ones((2, 5, 5, 1))), ValueError, "spatial shapes"),
    ("mlp, rank-4 input", lambda: ow.kernel(ow.serial(ow.Dense(), ow.Relu(), ow.Dense(out=1)), np.ones((2, 3, 3, 1))),
     ValueError, "x1 must have shape (batch, features)"),
    ("AvgPool padding", lambda: ow.AvgPool(window=(2, 2), padding="FULL"), ValueError, "padding"),
    ("AvgPool window", lambda: ow.AvgPool(window=(0, 2)), ValueError, "window"),
    ("LayerNorm eps", lambda: ow.LayerNorm(eps=-1.0), ValueError, "eps"),
]


@pytest.mark.parametrize("what,fn,exc,msg", BAD, ids=[b[0] for b in BAD])
def test_bad_input(what, fn, exc, msg):
    raises_before_compiling(fn, exc, msg)


def test_activation_after_layernorm_of_post_activations_is_refused():
    net = ow.serial(ow.Dense(), ow.Relu(), ow.LayerNorm(), ow.Relu(), ow.Dense(out=1))
    with pytest.raises(NotImplementedError, match="non-Gaussian input"):
        compiles_nothing(lambda: ow.kernel(net, np.ones((2, 3))))


def test_layernorm_of_gaussian_layer_normalises():
    """Dense then LayerNorm: the output covariance is a correlation matrix (unit diagonal)."""
    net = ow.serial(ow.Dense(w_std=1.7, b_std=0.3), ow.LayerNorm(eps=0.0), ow.Dense(out=1))
    x = images(4, (), 3, seed=5)
    k = ow.kernel(net, x)
    pre = ow.kernel(ow.serial(ow.Dense(w_std=1.7, b_std=0.3)), x).nngp
    d = np.sqrt(np.diagonal(pre))
    np.testing.assert_allclose(k.nngp, pre / d[:, None] / d[None, :], rtol=1e-12)


@pytest.mark.slow  # ~9 s: four pooled conv kernels with all pixel pairs
def test_sum_pools_are_scaled_average_pools():
    """SumPool = |W| AvgPool and GlobalSumPool = |S| GlobalAvgPool, for finite networks and kernels (|W|^2,
    |S|^2: the pooled layer is linear); the readout after them has the same fan-in."""
    x = np.random.default_rng(0).normal(size=(2, 4, 5, 2))

    def net(pool):
        return ow.serial(ow.Conv(filter_shape=(2, 2), w_std=1.3, b_std=0.2), ow.Relu(), pool,
                         ow.Conv(filter_shape=(2, 2), w_std=1.1), ow.Relu(), ow.Flatten(), ow.Dense(out=1))

    for avg, total, w in [(ow.AvgPool((2, 2), strides=(1, 2), padding="SAME"),
                           ow.SumPool((2, 2), strides=(1, 2), padding="SAME"), 4)]:
        # Relu is positively homogeneous: scaling the pooled layer by |W| scales the kernel by |W|^2
        ka, ks = ow.kernel(net(avg), x), ow.kernel(net(total), x)
        np.testing.assert_allclose(ks.nngp, w**2 * ka.nngp, rtol=1e-12)
        np.testing.assert_allclose(ks.ntk, w**2 * ka.ntk, rtol=1e-12)
        ma, ms = ow.finite(net(avg), width=4), ow.finite(net(total), width=4)
        p = ma.init(jax.random.key(0), x)
        np.testing.assert_allclose(ms.apply(p, x), w * ma.apply(p, x), rtol=1e-12)
    gap = ow.serial(ow.Conv(filter_shape=(3, 3), b_std=0.1), ow.Erf(), ow.GlobalAvgPool(), ow.Dense(out=1))
    gsp = ow.serial(ow.Conv(filter_shape=(3, 3), b_std=0.1), ow.Erf(), ow.GlobalSumPool(), ow.Dense(out=1))
    ka, ks = ow.kernel(gap, x), ow.kernel(gsp, x)
    np.testing.assert_allclose(ks.nngp, 20**2 * ka.nngp, rtol=1e-12)
    np.testing.assert_allclose(ks.ntk, 20**2 * ka.ntk, rtol=1e-12)
