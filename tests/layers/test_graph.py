"""``ow.Aggregate`` (graph neural networks): GNTK vs Monte Carlo over finite GNNs, every
parametrization, and bad input. The kernels are pinned against neural-tangents in
tests/kernels/test_reference_nt_graph.py.

Graph-classification data generated here: cycles C_V (randomly relabelled) against Erdos-Renyi
graphs G(V, 0.4), V = 6 nodes, adjacency with self-loops ``A + I``; node features
(1, degree / 2, a standard normal).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import owidth as ow
from helpers import raises_before_compiling

V = 6


def graph_dataset(n, seed=0):
    """``n`` graphs alternating cycle / Erdos-Renyi: node features (n, V, 3) and adjacency (n, V, V)."""
    rng = np.random.default_rng(seed)
    xs, adjs = [], []
    for i in range(n):
        a = np.zeros((V, V))
        if i % 2 == 0:  # a cycle through the nodes in random order
            perm = rng.permutation(V)
            a[perm, np.roll(perm, 1)] = 1.0
            a = np.maximum(a, a.T)
        else:
            upper = np.triu(rng.random((V, V)) < 0.4, 1)
            a = (upper | upper.T).astype(float)
        xs.append(np.stack([np.ones(V), a.sum(1) / 2.0, rng.standard_normal(V)], axis=-1))
        adjs.append(a + np.eye(V))
    return np.stack(xs), np.stack(adjs)


def one_hidden(w=1.5):
    """One width-``n`` layer: the NNGP and the NTK of the finite network equal ``ow.kernel``'s in expectation
    at any width (the output is a mean of i.i.d. per-unit terms; the readout is independent of them).
    Aggregate acts on the data, on the Gaussian pre-activations and on the post-activations."""
    return ow.serial(ow.Aggregate(), ow.Dense(w_std=w, b_std=0.2), ow.Aggregate(), ow.Relu(), ow.Aggregate(),
                     ow.GlobalSumPool(), ow.Dense(out=1, w_std=1.0, b_std=0.1))


def two_hidden(readout=1):
    return ow.serial(ow.Dense(w_std=2**0.5, b_std=0.1**0.5), ow.Relu(), ow.Aggregate(),
                     ow.Dense(w_std=2**0.5, b_std=0.1**0.5), ow.Relu(), ow.GlobalAvgPool(),
                     ow.Dense(out=readout, w_std=1.0, b_std=0.0))


def z_scores(net, mc, x, a, x2=None, a2=None):
    k = ow.kernel(net, x, x2, adjacency=a if x2 is None else (a, a2))
    return {f: np.abs(np.asarray(getattr(k, f)) - np.asarray(getattr(mc, f))) / np.asarray(getattr(mc.stderr, f))
            for f in ("nngp", "ntk")}


def test_gntk_matches_monte_carlo_cheap():
    """Default run: 300 networks of width 32 (a few seconds), x1 against x2 (other graphs)."""
    x, a = graph_dataset(4, seed=1)
    net = one_hidden()
    mc = ow.monte_carlo_kernel(net, x[:2], x[2:], width=32, samples=300, key=jax.random.key(0),
                               adjacency=(a[:2], a[2:]), progress_bar=False)
    for f, z in z_scores(net, mc, x[:2], a[:2], x[2:], a[2:]).items():
        assert np.all(z < 4.0), (f, np.round(z, 2))


@pytest.mark.slow
@pytest.mark.compute_bound
def test_gntk_matches_monte_carlo_with_power():
    """2000 finite GNNs of width 64 on 6 graphs (3 cycles, 3 Erdos-Renyi): every NNGP and NTK entry within
    4 standard errors of the analytic GNTK; the same data reject a 5% change of the hidden w_std."""
    x, a = graph_dataset(6, seed=2)
    net = one_hidden(1.5)
    mc = ow.monte_carlo_kernel(net, x, width=64, samples=2000, key=jax.random.key(1), adjacency=a,
                               progress_bar=False)
    for f, z in z_scores(net, mc, x, a).items():
        assert np.all(z < 4.0), (f, np.round(z, 2))
    wrong = z_scores(one_hidden(1.5 * 1.05), mc, x, a)
    assert max(np.max(z) for z in wrong.values()) > 4.0, {f: np.round(np.max(z), 2) for f, z in wrong.items()}


@pytest.mark.slow
@pytest.mark.compute_bound
def test_deeper_gnn_matches_monte_carlo():
    """Two hidden layers (Aggregate between them): an O(1/width) bias, small against the standard error
    at width 256 with 1000 networks."""
    x, a = graph_dataset(6, seed=3)
    net = two_hidden()
    mc = ow.monte_carlo_kernel(net, x, width=256, samples=1000, key=jax.random.key(2), adjacency=a,
                               progress_bar=False)
    for f, z in z_scores(net, mc, x, a).items():
        assert np.all(z < 4.0), (f, np.round(z, 2))


@pytest.mark.parametrize("param", [ow.NTP, *[pytest.param(p, marks=pytest.mark.slow) for p in (ow.SP, ow.MUP, ow.MF)]],
                         ids=lambda p: p.name)
def test_every_parametrization_runs_and_scales_with_width(param):
    """Hidden features of a finite GNN have the width-independent covariance of the infinite-width
    NNGP under every parametrization (their init differs only in where the 1/sqrt(n) sits); the
    output covariance is that covariance times (n / n0)^(1 - 2 (a + b)) of the readout: constant
    under NTP and SP, ~ 1/n under MUP and MF (Yang & Hu 2021)."""
    x, a = graph_dataset(4, seed=4)
    k = np.asarray(ow.kernel(two_hidden(), x, adjacency=a, get="nngp").nngp)
    a_out, b_out = param.a[2], param.b[2]
    for width in (256, 2048):
        model = ow.finite(two_hidden(readout=256), width=width, param=param)
        params = model.init(jax.random.key(width), x)
        rec = model.intermediates(params, x, adjacency=a)
        h = np.asarray(rec.features)
        assert h.shape == (4, width)
        feat = h @ h.T / width
        assert np.max(np.abs(feat - k)) / np.max(k) < (0.15 if width == 256 else 0.05), (width, feat, k)
        f = np.asarray(model.apply(params, x, adjacency=a))
        out = f @ f.T / f.shape[1] * (width / param.base_width) ** (2 * (a_out + b_out) - 1)
        assert np.max(np.abs(out - k)) / np.max(k) < 0.25, (width, out, k)


def test_finite_layer_is_the_neighbour_sum():
    """The finite layer against numpy: y[n, v] = sum_u A[n, v, u] x[n, u] (directed weights)."""
    rng = np.random.default_rng(5)
    x, a = rng.standard_normal((3, V, 2)), rng.random((3, V, V))
    model = ow.finite(ow.serial(ow.Aggregate(), ow.Dense(out=2, w_std=1.0)), width=4)
    params = model.init(jax.random.key(0), x)
    y = np.asarray(model.apply(params, x, adjacency=a))
    w = np.asarray(params[1]["w"]) / np.sqrt(2)  # NTP: w_std / sqrt(fan_in) times N(0, 1) weights
    want = np.stack([a[n] @ x[n] for n in range(3)]) @ w
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)


def test_jit_and_eager_agree():
    x, a = graph_dataset(3, seed=6)
    net = one_hidden()
    eager = ow.kernel(net, x, adjacency=a, batch_size=None)
    jitted = jax.jit(lambda xx, aa: ow.kernel(net, xx, adjacency=aa).ntk)(x, a)
    np.testing.assert_allclose(jitted, eager.ntk, rtol=1e-12)


NET = ow.serial(ow.Dense(), ow.Relu(), ow.Aggregate(), ow.GlobalSumPool(), ow.Dense(out=1))


@pytest.mark.parametrize("adj,msg", [
    (np.ones((2, V, V + 1)), "square"),
    (np.ones((2, V + 1, V + 1)), "same node count"),
    (np.ones((3, V, V)), "one (V, V) adjacency per graph"),
    (np.ones((V, V)), "rank 3"),
    (None, "adjacency=a1"),
    ((np.ones((2, V, V)), np.ones((2, V, V))), "rank 3"),
], ids=["non-square", "node-count", "batch", "rank", "missing", "pair-without-x2"])
def test_bad_adjacency_is_refused_before_compiling(adj, msg):
    x = np.ones((2, V, 3))
    raises_before_compiling(lambda: ow.kernel(NET, x, adjacency=adj), ValueError, msg)
    model = ow.finite(NET, width=4)
    params = model.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="adjacency"):
        model.apply(params, x, adjacency=adj)
    with pytest.raises(ValueError, match="adjacency"):
        ow.monte_carlo_kernel(NET, x, width=4, samples=2, key=jax.random.key(0), adjacency=adj, progress_bar=False)


def test_other_bad_calls_are_refused_before_compiling():
    x, a = np.ones((2, V, 3)), np.ones((2, V, V))
    raises_before_compiling(lambda: ow.kernel(NET, x, x, adjacency=a), ValueError, "adjacency=(a1, a2)")
    raises_before_compiling(lambda: ow.kernel(NET, x.reshape(2, -1), adjacency=a), ValueError, "(batch, V, channels)")
    mlp = ow.serial(ow.Dense(), ow.Relu(), ow.Dense(out=1))
    raises_before_compiling(lambda: ow.kernel(mlp, x[:, 0], adjacency=a), ValueError, "no Aggregate layer")
    late = ow.serial(ow.Dense(), ow.GlobalSumPool(), ow.Aggregate(), ow.Dense(out=1))
    raises_before_compiling(lambda: ow.kernel(late, x, adjacency=a), ValueError, "one node axis")
    with pytest.raises(ValueError, match="Aggregate"):  # intermediates too
        model = ow.finite(NET, width=4)
        model.intermediates(model.init(jax.random.key(0), x), x)


def test_boolean_adjacency_is_accepted():
    x, a = graph_dataset(2, seed=7)
    k_bool = ow.kernel(NET, x, adjacency=a > 0, get="nngp", batch_size=None)
    k_float = ow.kernel(NET, x, adjacency=jnp.asarray(a), get="nngp", batch_size=None)
    np.testing.assert_array_equal(k_bool.nngp, k_float.nngp)
