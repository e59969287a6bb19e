"""Closed-form kernels vs Monte Carlo over random finite networks.

For a network with one hidden layer, E[f(x) f(x')] over initialisations equals
the NNGP *exactly* at any width, and E[Theta_emp] equals the NTK exactly, so
the only error is sampling error: we require agreement within 4 standard
errors (SE = sample std / sqrt(#nets)). Deeper nets have an O(1/width) bias,
far below the SE at the widths used.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import owidth as ow
from helpers import sphere

M = 1000  # networks per estimate (>= 500 as required)
X = sphere(3, 4, seed=0)
X[2] = 0.3 * X[2]  # one short input: different variances


def mc_moments(net, width, seed, *, ntk):
    model = ow.finite(net, width=width)
    keys = jax.random.split(jax.random.key(seed), M)
    params = jax.vmap(model.init, in_axes=(0, None))(keys, X)
    f = jax.vmap(model.apply, in_axes=(0, None))(params, X)[..., 0]  # (M, n)
    samples = {"nngp": f[:, :, None] * f[:, None, :]}
    if ntk:
        samples["ntk"] = jax.vmap(lambda p: ow.empirical_ntk(model.apply, p, X, implementation="jacobian"))(params)
    return {k: (np.mean(v, 0), np.std(v, 0, ddof=1) / np.sqrt(M)) for k, v in samples.items()}


def assert_within(k, mean, se, what):
    z = np.abs(np.asarray(k) - mean) / se
    assert np.all(z < 4.0), f"{what}: |analytic - MC| / SE = {np.round(z, 2)}"


ACTS = {
    "relu": ow.Relu(),
    "leaky": ow.LeakyRelu(0.2),
    "abs": ow.Abs(),
    "erf": ow.Erf(a=1.3, b=0.8, shift=0.2),
    "gelu": ow.Gelu(),
    "sin": ow.Sin(a=1.0, b=1.2, shift=0.3),
    "identity": ow.Identity(),
}


@pytest.mark.parametrize("name", sorted(ACTS))
def test_one_hidden_layer_exact_in_expectation(name):
    net = ow.serial(ow.Dense(w_std=1.4, b_std=0.3), ACTS[name], ow.Dense(out=1, w_std=1.1, b_std=0.2))
    k = ow.kernel(net, X)
    mc = mc_moments(net, width=64, seed=1, ntk=True)
    assert_within(k.nngp, *mc["nngp"], f"{name} nngp")
    assert_within(k.ntk, *mc["ntk"], f"{name} ntk")


@pytest.mark.parametrize(
    "name,net",
    [
        # ~11 s; deep relu kernels are also checked exactly against neural-tangents' by default
        pytest.param("relu-2-hidden", ow.serial(ow.Dense(w_std=2**0.5, b_std=0.3), ow.Relu(),
                                                ow.Dense(w_std=2**0.5, b_std=0.3), ow.Relu(), ow.Dense(out=1)),
                     marks=pytest.mark.slow),
        # identity branch carrying a post-activation: refused by neural-tangents, exact here
        ("residual-after-relu", ow.serial(ow.Dense(w_std=1.3, b_std=0.2), ow.Relu(),
                                          ow.Residual(ow.Dense(w_std=1.0, b_std=0.1), ow.Gelu(), ow.Dense(w_std=0.8)),
                                          ow.Dense(out=1, w_std=1.0, b_std=0.1))),
        # activation applied to the data itself, before any weight layer
        ("activation-on-data", ow.serial(ow.Sin(), ow.Dense(w_std=1.5, b_std=0.2), ow.Erf(), ow.Dense(out=1))),
    ],
)
@pytest.mark.compute_bound  # ~130 M normal draws: 4x faster to run optimised
def test_deeper_networks(name, net):
    # bias O(1/width): at width 128 under 1% of the kernel, against an SE of ~4% at M = 1000
    k = ow.kernel(net, X)
    mc = mc_moments(net, width=128, seed=2, ntk=False)
    assert_within(k.nngp, *mc["nngp"], f"{name} nngp")


def test_monte_carlo_detects_a_wrong_kernel():
    """The MC test has power: a 5% error in w_std is detected."""
    net = ow.serial(ow.Dense(w_std=1.4, b_std=0.3), ow.Relu(), ow.Dense(out=1, w_std=1.1))
    wrong = ow.serial(ow.Dense(w_std=1.4 * 1.05, b_std=0.3), ow.Relu(), ow.Dense(out=1, w_std=1.1 * 1.05))
    mean, se = mc_moments(net, width=64, seed=3, ntk=False)["nngp"]
    z = np.abs(np.asarray(ow.kernel(wrong, X, get="nngp").nngp) - mean) / se
    assert np.max(z) > 4.0


@pytest.mark.slow  # ~12 s (six widths compiled); the default suite checks the slope in test_cli's ntk-convergence run
def test_ntk_converges_like_inverse_sqrt_width():
    """Jacot et al. 2018: ||Theta_emp - Theta|| / ||Theta|| ~ width^-1/2."""
    net = ow.serial(ow.Dense(w_std=2**0.5, b_std=0.1), ow.Relu(), ow.Dense(w_std=2**0.5, b_std=0.1), ow.Relu(),
                    ow.Dense(out=1))
    x = sphere(6, 5, seed=4)
    theta = np.asarray(ow.kernel(net, x, get="ntk").ntk)
    widths = [32, 64, 128, 256, 512, 1024]
    errs = []
    for w in widths:
        model = ow.finite(net, width=w)
        e = []
        for s in range(8):
            p = model.init(jax.random.key(100 * w + s), x)
            emp = np.asarray(ow.empirical_ntk(model.apply, p, x))
            e.append(np.linalg.norm(emp - theta) / np.linalg.norm(theta))
        errs.append(np.mean(e))
    slope = np.polyfit(np.log(widths), np.log(errs), 1)[0]
    assert -0.65 <= slope <= -0.35, (slope, errs)


def _ntk_case():
    net = ow.serial(ow.Dense(w_std=1.3, b_std=0.2), ow.Gelu(), ow.Residual(ow.Dense(w_std=0.9), ow.Relu(), ow.Dense()),
                    ow.Dense(out=3, w_std=1.0, b_std=0.1))
    model = ow.finite(net, width=16)
    x1, x2 = sphere(4, 3, seed=5), sphere(5, 3, seed=6)
    return model, model.init(jax.random.key(0), x1), x1, x2


@pytest.mark.slow
def test_empirical_ntk_blocks_over_inputs_equal_one_piece():
    """Blocks over inputs (sizes not dividing N) give the same kernel, for every implementation."""
    model, p, x1, x2 = _ntk_case()
    for impl in ("jacobian", "ntvp", "structured"):
        for xb in (None, x2):
            np.testing.assert_allclose(
                ow.empirical_ntk(model.apply, p, x1, xb, implementation=impl, batch_size=3),
                ow.empirical_ntk(model.apply, p, x1, xb, implementation="jacobian"), rtol=1e-12, atol=1e-13)


def test_empirical_ntk_implementations_agree():
    model, p, x1, x2 = _ntk_case()
    for outputs in ("trace", "full"):
        a = ow.empirical_ntk(model.apply, p, x1, x2, outputs=outputs, implementation="jacobian")
        for impl in ("ntvp", "structured"):
            b = ow.empirical_ntk(model.apply, p, x1, x2, outputs=outputs, implementation=impl)
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(ow.empirical_ntk(model.apply, p, x1, outputs=outputs, implementation="structured"),
                                   ow.empirical_ntk(model.apply, p, x1, outputs=outputs, implementation="jacobian"),
                                   rtol=1e-10, atol=1e-12)
    full = ow.empirical_ntk(model.apply, p, x1, x2, outputs="full")
    trace = ow.empirical_ntk(model.apply, p, x1, x2)
    np.testing.assert_allclose(jnp.trace(full, axis1=2, axis2=3) / 3, trace, rtol=1e-12)
    # independent reference: explicit per-example gradients flattened with numpy
    @jax.jit
    def grads(x):
        g = jax.jacrev(lambda q: model.apply(q, x[None])[0, 0])(p)
        return jnp.concatenate([jnp.ravel(v) for v in jax.tree.leaves(g)])
    g1, g2 = (np.array([grads(a) for a in x]) for x in (x1, x2))
    ref = g1 @ g2.T
    np.testing.assert_allclose(np.asarray(full)[:, :, 0, 0], ref, rtol=1e-10)


@pytest.mark.slow  # ~5-20 s each; test_empirical_ntk_implementations_agree checks an MLP by default
@pytest.mark.parametrize("head", ["gap", "flatten"])
def test_empirical_ntk_implementations_agree_on_cnns(head):
    head = {"gap": ow.GlobalAvgPool(), "flatten": ow.Flatten()}[head]
    net = ow.serial(ow.Conv(filter_shape=(3, 3), w_std=1.4, b_std=0.1), ow.Relu(),
                    ow.Conv(filter_shape=(2, 2), strides=2, padding="VALID", w_std=1.4), ow.Gelu(), head,
                    ow.Dense(out=2, w_std=1.0, b_std=0.1))
    model = ow.finite(net, width=6)
    rng = np.random.default_rng(0)
    x1, x2 = rng.standard_normal((3, 6, 6, 2)), rng.standard_normal((2, 6, 6, 2))
    p = model.init(jax.random.key(0), x1)
    for outputs in ("trace", "full"):
        a = ow.empirical_ntk(model.apply, p, x1, x2, outputs=outputs, implementation="jacobian")
        for impl, indep in [("ntvp", True), ("ntvp", False), ("jacobian", False)]:
            b = ow.empirical_ntk(model.apply, p, x1, x2, outputs=outputs, implementation=impl,
                                 independent_examples=indep)
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    assert np.all(np.isfinite(a))


def test_conv_ntk_monte_carlo_sanity():
    """One conv layer + GAP + readout: E[f(x) f(x')] is exactly w_r^2 * mean over pixel pairs of the
    conv NNGP, computed here by hand from the data (independent of any kernel code)."""
    w1, w2 = 1.3, 0.9
    net = ow.serial(ow.Conv(filter_shape=(3,), padding="VALID", w_std=w1), ow.GlobalAvgPool(),
                    ow.Dense(out=1, w_std=w2))
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 7, 2))
    model = ow.finite(net, width=64)
    keys = jax.random.split(jax.random.key(3), 1000)
    f = jax.vmap(lambda k: model.apply(model.init(k, x), x))(keys)[..., 0]
    prod = np.asarray(f[:, :, None] * f[:, None, :])
    patches = np.stack([x[:, i:i + 3].reshape(2, -1) for i in range(5)], 1)  # (n, P, 6)
    ref = w2**2 * w1**2 * np.einsum("ipk,jqk->ij", patches, patches) / (6 * 25)
    se = prod.std(0, ddof=1) / np.sqrt(len(prod))
    assert np.all(np.abs(prod.mean(0) - ref) < 4 * se)


def test_parallel_with_correlated_branches_is_refused():
    ok = ow.serial(ow.Dense(w_std=1.3), ow.Relu(), ow.parallel(ow.Identity(), ow.Relu(), ow.serial(ow.Dense())),
                   ow.Dense(out=1))
    with pytest.raises(NotImplementedError, match="do not end in a weight layer"):
        ow.kernel(ok, X)
    for bad in (ow.Residual(ow.Dense(), ow.Relu()), ow.Residual(ow.Relu()),
                ow.parallel(ow.serial(ow.Dense(), ow.Relu()), ow.serial(ow.Dense(), ow.Relu()))):
        with pytest.raises(NotImplementedError, match="do not end in a weight layer"):
            ow.kernel(ow.serial(ow.Dense(), ow.Relu(), bad, ow.Dense(out=1)), X)


@pytest.mark.slow
@pytest.mark.compute_bound  # a thousand networks: unoptimised (the default for tests) it took 254 s
def test_parallel_sum_of_weight_ended_branches_is_exact():
    """identity + two weight-ended branches: kernels add; checked by Monte Carlo"""
    net = ow.serial(ow.Dense(w_std=1.3, b_std=0.2), ow.Relu(),
                    ow.parallel(ow.Identity(), ow.Dense(w_std=0.7), ow.serial(ow.Dense(), ow.Erf(), ow.Dense())),
                    ow.Dense(out=1, w_std=1.0, b_std=0.1))
    k = ow.kernel(net, X)
    mc = mc_moments(net, width=256, seed=9, ntk=False)  # O(1/width) bias far under the SE, as above
    assert_within(k.nngp, *mc["nngp"], "parallel nngp")
