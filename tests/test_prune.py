"""Sparse networks (issue 19): ow.train's masks, ow.prune's scores (magnitude, random, SNIP, GraSP, SynFlow),
iterative magnitude pruning with rewinding, and the kernels of randomly pruned networks vs Monte Carlo."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import owidth as ow

RNG = np.random.default_rng(0)
X = RNG.standard_normal((16, 5))
Y = np.sin(X[:, :2] @ np.array([[1.0, -0.5], [0.3, 0.8]]))
NET = ow.serial(ow.Dense(b_std=0.1), ow.Relu(), ow.Dense(b_std=0.1), ow.Relu(), ow.Dense(out=2))


def _random_masks(params, density, seed, members=None):
    """Independent random masks (``members`` of them, leading axis) keeping ``density`` of each weight."""
    key = jax.random.key(seed)
    if members is None:
        return ow.prune.random(key, params, density)
    return jax.vmap(lambda k: ow.prune.random(k, params, density))(jax.random.split(key, members))


# --------------------------------------------------------------------------- #
# ow.train(masks=...)
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("optimizer, kw", [("sgd", {"weight_decay": 1e-2}), ("momentum", {}),
                                           ("adam", {}), ("adamw", {"weight_decay": 0.1})])
def test_masked_weights_stay_exactly_zero(optimizer, kw):
    """Per-member masks (2 seeds x 2 lrs, each its own mask): after training, every masked entry is exactly 0
    and the kept entries moved; the members whose masks differ train differently."""
    model = ow.finite(NET, width=16)
    params = model.init(jax.random.key(0), X)
    masks = _random_masks(params, 0.3, 1, members=4)
    masks = jax.tree.map(lambda m: m.reshape((2, 2, 1) + m.shape[1:]), masks)
    ds, out = ow.train(NET, (X, Y), widths=16, lr=[0.01, 0.02], steps=20, seeds=2, optimizer=optimizer,
                       masks=masks, return_params=True, progress_bar=False, **kw)
    assert (ds.status == "ok").all()
    final = out[16]
    for p, m in zip(jax.tree.leaves(final), jax.tree.leaves(masks)):
        p, m = np.asarray(p), np.asarray(m)
        assert np.all(p[~m] == 0.0)  # exactly
        if p.ndim >= 5:  # a weight: most kept entries moved
            assert np.mean(p[m] != 0.0) > 0.99
    assert float(ds.train_loss.isel(step=-1).max()) < float(ds.train_loss.isel(step=0).min())
    # density recorded per member: the fraction of all parameters kept (biases always)
    dense = ravel_pytree(params)[0].size
    kept = np.asarray([sum(int(np.asarray(m)[s, l, 0].sum()) for m in jax.tree.leaves(masks))
                       for s in range(2) for l in range(2)])
    np.testing.assert_allclose(ds.density.values.ravel(), kept / dense)


def test_masks_apply_in_the_forward_pass_and_equal_an_explicit_loop():
    """A masked run (uncentred SGD) equals gradient descent on the masked parameters by hand, and its step-0
    loss is that of the masked network."""
    model = ow.finite(NET, width=8)
    masks = _random_masks(model.init(jax.random.key(5), X), 0.5, 2)
    lr, steps = 0.05, 5
    ds, out = ow.train(NET, (X, Y), widths=8, lr=lr, steps=steps, center=False, masks=masks, return_params=True,
                       progress_bar=False)
    from owidth._train import member_keys

    params = ow.prune.apply(model.init(member_keys(jax.random.key(0))[0], X), masks)

    def loss(p):
        return 0.5 * jnp.mean(jnp.sum((model.apply(p, X) - Y) ** 2, -1))

    np.testing.assert_allclose(float(ds.train_loss.isel(step=0).squeeze()), float(loss(params)), rtol=1e-12)
    for _ in range(steps):
        params = ow.prune.apply(jax.tree.map(lambda p, g: p - lr * g, params, jax.grad(loss)(params)), masks)
    got = jax.tree.map(lambda a: a[0, 0, 0], out[8])
    np.testing.assert_allclose(ravel_pytree(got)[0], ravel_pytree(params)[0], rtol=1e-11, atol=1e-14)


def test_mask_bad_input_is_refused_before_compiling():
    model = ow.finite(NET, width=8)
    masks = ow.prune.random(jax.random.key(0), model.init(jax.random.key(0), X), 0.5)
    kw = dict(widths=8, lr=0.1, steps=2, progress_bar=False)
    wrong_shape = jax.tree.map(lambda m: m[..., :1] if m.ndim == 2 else m, masks)
    with pytest.raises(ValueError, match="masks leaf at width 8 has shape"):
        ow.train(NET, (X, Y), masks=wrong_shape, **kw)
    with pytest.raises(TypeError, match="dtype <U1"):
        ow.train(NET, (X, Y), masks=jax.tree.map(lambda m: np.full(m.shape, "a"), masks), **kw)
    with pytest.raises(ValueError, match="values other than 0 and 1"):
        ow.train(NET, (X, Y), masks=jax.tree.map(lambda m: 0.5 * np.asarray(m, float), masks), **kw)
    with pytest.raises(ValueError, match="structure"):
        ow.train(NET, (X, Y), masks=jax.tree.leaves(masks), **kw)
    with pytest.raises(ValueError, match="masks has nothing for widths"):
        ow.train(NET, (X, Y), masks={8: masks}, **{**kw, "widths": [8, 16]})
    # 0/1 integers are accepted and mean the same as booleans
    ints = jax.tree.map(lambda m: np.asarray(m, np.int32), masks)
    a = ow.train(NET, (X, Y), masks=ints, **kw)
    b = ow.train(NET, (X, Y), masks=masks, **kw)
    np.testing.assert_array_equal(a.train_loss, b.train_loss)


# --------------------------------------------------------------------------- #
# Scores and masks
# --------------------------------------------------------------------------- #
def test_masks_keep_exact_counts_and_only_prune_weights():
    model = ow.finite(NET, width=32)
    params = model.init(jax.random.key(0), X)
    weights = [p for p in jax.tree.leaves(params) if p.ndim >= 2]
    total = sum(p.size for p in weights)
    for scope in ("global", "layer"):
        for d in (1.0, 0.37, 1e-3):
            m = ow.prune.magnitude(params, d, scope=scope)
            kept = [int(np.sum(k)) for k, p in zip(jax.tree.leaves(m), jax.tree.leaves(params)) if p.ndim >= 2]
            if scope == "global":
                assert sum(kept) == max(1, round(d * total))
            else:
                assert kept == [max(1, round(d * p.size)) for p in weights]
            assert all(bool(np.all(k)) for k, p in zip(jax.tree.leaves(m), jax.tree.leaves(params)) if p.ndim < 2)
    # global magnitude keeps exactly the largest |theta|
    m = ow.prune.magnitude(params, 0.2)
    flat = np.concatenate([np.abs(np.ravel(p)) for p in weights])
    kept = np.concatenate([np.ravel(k) for k, p in zip(jax.tree.leaves(m), jax.tree.leaves(params)) if p.ndim >= 2])
    assert flat[kept].min() >= flat[~kept].max()
    # masks restrict: previously pruned weights are never kept again
    m2 = ow.prune.magnitude(params, 0.1, masks=m)
    assert all(bool(np.all(~a | b)) for a, b in zip(jax.tree.leaves(m2), jax.tree.leaves(m)))
    assert ow.prune.density(m2, params) == pytest.approx(0.1, abs=1.0 / total)


def test_random_masks_are_uniform_and_vmap():
    params = ow.finite(NET, width=64).init(jax.random.key(0), X)
    masks = jax.vmap(lambda k: ow.prune.random(k, params, 0.25))(jax.random.split(jax.random.key(1), 200))
    w = np.asarray(masks[2]["w"])  # (200, 64, 64)
    assert np.all(w.reshape(200, -1).sum(1) == 1024)
    freq = w.mean(0)  # each entry kept with probability 1/4: 200 draws, SE 0.031
    assert abs(freq.mean() - 0.25) < 1e-12 and freq.std() < 0.045


def test_snip_and_grasp_scores_against_the_dense_hessian():
    """SNIP keeps the largest |theta dL/dtheta|, GraSP the largest theta (H g), both computed here from
    jax.grad and the dense jax.hessian of the loss."""
    model = ow.finite(ow.serial(ow.Dense(), ow.Tanh(), ow.Dense(out=2)), width=6)
    params = model.init(jax.random.key(3), X)
    flat, unravel = ravel_pytree(params)

    def loss(u):
        return 0.5 * jnp.mean(jnp.sum((model.apply(unravel(u), X) - Y) ** 2, -1))

    g = np.asarray(jax.grad(loss)(flat))
    h = np.asarray(jax.hessian(loss)(flat))
    for fn, score in ((ow.prune.snip, np.abs(np.asarray(flat) * g)), (ow.prune.grasp, np.asarray(flat) * (h @ g))):
        m = ravel_pytree(fn(model.apply, params, (X, Y), 0.3))[0].astype(bool)
        k = round(0.3 * flat.size)
        assert m.sum() == k
        assert score[m].min() >= score[~m].max()
    with pytest.raises(ValueError, match="NaN"):
        ow.prune.snip(model.apply, params, (X, np.full_like(Y, np.nan)), 0.3)


# --------------------------------------------------------------------------- #
# SynFlow
# --------------------------------------------------------------------------- #
def test_synflow_conservation_law():
    """Tanaka et al. 2020, Theorem 1: for a bias-free ReLU MLP, every layer's synaptic saliencies sum to the
    same R = 1^T f(|theta|, 1) (Euler's identity), to 1e-12 relative in float64; also with a mask."""
    net = ow.serial(ow.Dense(), ow.Relu(), ow.Dense(), ow.Relu(), ow.Dense(), ow.Relu(), ow.Dense(out=3))
    model = ow.finite(net, width=40)
    params = model.init(jax.random.key(0), X)
    for masks in (None, ow.prune.random(jax.random.key(1), params, 0.3)):
        scores = ow.prune.synflow_scores(model.apply, params, X, masks=masks)
        sums = np.array([float(jnp.sum(s)) for s in jax.tree.leaves(scores)])
        p = params if masks is None else ow.prune.apply(params, masks)
        flow = float(jnp.sum(model.apply(jax.tree.map(jnp.abs, p), np.ones((1, X.shape[1])))))
        assert len(sums) == 4 and flow > 0
        np.testing.assert_allclose(sums, flow, rtol=1e-12)


def _flow(model, params, masks, x):
    return float(jnp.sum(model.apply(jax.tree.map(jnp.abs, ow.prune.apply(params, masks)), np.ones((1, x.shape[1])))))


def test_synflow_avoids_layer_collapse_where_magnitude_pruning_collapses():
    """SP MLP 64 -> 256 -> 256 -> 10 at density 1e-3 (84 of 84480 weights): global magnitude pruning keeps the
    input layer's larger weights (std 1/8 vs 1/16) and removes whole layers (the output is disconnected,
    R = 0); iterative SynFlow keeps weights in every layer and a connected network (R > 0)."""
    x = np.ones((1, 64))
    net = ow.serial(ow.Dense(), ow.Relu(), ow.Dense(), ow.Relu(), ow.Dense(out=10))
    model = ow.finite(net, width=256, param=ow.SP)
    params = model.init(jax.random.key(0), x)
    mag = ow.prune.magnitude(params, 1e-3)
    per_layer = [int(np.sum(m)) for m in jax.tree.leaves(mag)]
    assert sum(per_layer) == 84 and min(per_layer) == 0, per_layer
    assert _flow(model, params, mag, x) == 0.0
    syn = ow.prune.synflow(model.apply, params, x, 1e-3, iterations=100)
    per_layer = [int(np.sum(m)) for m in jax.tree.leaves(syn)]
    assert sum(per_layer) == 84 and min(per_layer) > 0, per_layer
    assert _flow(model, params, syn, x) > 0.0


# --------------------------------------------------------------------------- #
# Kernels of randomly pruned networks
# --------------------------------------------------------------------------- #
@pytest.mark.slow  # ~30-90 s: 4000 + 32 networks
@pytest.mark.compute_bound
def test_sparse_kernel_matches_monte_carlo():
    """NTP ReLU MLP (biases), each weight of the hidden and readout layers kept with probability 0.3 (an
    independent mask per network, the input layer dense): the Monte Carlo NNGP (4000 networks of width 128)
    and empirical NTK (32 networks of width 512) of the masked networks, with and without the fan-in
    rescaling, agree with ow.prune.sparse_kernel within 4 standard errors plus 2% (the O(1/n) finite-width
    bias); without rescaling the kernels are far from the dense ones, with it they equal them."""
    x = X[:4]
    p = 0.3
    dense = ow.kernel(NET, x)

    def member(key, width):
        model = ow.finite(NET, width=width)
        k1, k2 = jax.random.split(key)
        params = model.init(k1, x)
        return model, params, ow.prune.random(k2, params, p, keep_input=True)

    def outputs(key):
        model, params, masks = member(key, 128)
        return jnp.stack([ow.prune.masked_apply(model.apply, masks, rescale=r)(params, x) for r in (False, True)])

    def ntk(key):
        model, params, masks = member(key, 512)
        return jnp.stack([ow.empirical_ntk(ow.prune.masked_apply(model.apply, masks, rescale=r), params, x)
                          for r in (False, True)])

    f = np.asarray(jax.jit(jax.vmap(outputs))(jax.random.split(jax.random.key(0), 4000)))  # (S, 2, 4, 2)
    nngp = np.einsum("srik,srjk->srij", f, f) / f.shape[-1]
    ntks = np.asarray(jax.jit(lambda ks: jax.lax.map(ntk, ks))(jax.random.split(jax.random.key(1), 32)))
    for r, rescale in enumerate((False, True)):
        theory = ow.prune.sparse_kernel(NET, x, density=p, rescale=rescale)
        for samples, want in ((nngp[:, r], theory.nngp), (ntks[:, r], theory.ntk)):
            mean, se = samples.mean(0), samples.std(0, ddof=1) / np.sqrt(samples.shape[0])
            assert np.all(np.abs(mean - want) <= 4 * se + 0.02 * np.abs(want)), (rescale, mean, want, se)
        if rescale:
            np.testing.assert_array_equal(theory.ntk, dense.ntk)
        else:
            assert np.all(np.asarray(theory.ntk) < 0.5 * np.asarray(dense.ntk))


def test_sparse_kernel_bad_input():
    x = X[:3]
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        ow.prune.sparse_kernel(NET, x, density=0.0)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        ow.prune.magnitude({"w": np.ones((2, 2))}, 1.5)
    with pytest.raises(ValueError, match="do not pass param"):
        ow.prune.sparse_kernel(NET, x, density=0.5, param=ow.MUP)
    with pytest.raises(NotImplementedError, match="LayerNorm|Attention|Embedding"):
        ow.prune.sparse_kernel(ow.serial(ow.Embedding(vocab=5), ow.Dense(out=1)), np.zeros((2, 3), int), density=0.5)
    with pytest.raises(ValueError, match="scope"):
        ow.prune.magnitude({"w": np.ones((2, 2))}, 0.5, scope="row")


# --------------------------------------------------------------------------- #
# Iterative magnitude pruning with rewinding
# --------------------------------------------------------------------------- #
def test_imp_rounds_rewind_and_nest():
    net = ow.serial(ow.Dense(), ow.Relu(), ow.Dense(out=2))
    res = ow.prune.imp(net, (X, Y), width=32, density=0.2, rounds=2, steps=30, rewind_step=5, lr=0.2, seeds=2,
                       progress_bar=False)
    ds = res.results
    assert ds.train_loss.dims[:2] == ("round", "width")
    np.testing.assert_allclose(ds.density.values, [1.0, 0.2 ** 0.5, 0.2])
    model = ow.finite(net, width=32)
    params = model.init(jax.random.key(0), X)
    w = [i for i, p in enumerate(jax.tree.leaves(params)) if p.ndim >= 2]
    total = sum(jax.tree.leaves(params)[i].size for i in w)
    leaves = jax.tree.leaves(res.masks)  # (round, seed, lr, alpha, ...)
    for r, d in enumerate(ds.density.values):
        for s in range(2):
            kept = sum(int(np.asarray(leaves[i])[r, s, 0, 0].sum()) for i in w)
            assert kept == max(1, round(d * total))
            if r:  # nested: a pruned weight never comes back
                assert all(bool(np.all(~np.asarray(leaves[i])[r, s] | np.asarray(leaves[i])[r - 1, s])) for i in w)
    # the rewind point is the dense run's step 5, and every round starts there (masked)
    _, at5 = ow.train(net, (X, Y), widths=32, lr=0.2, steps=5, seeds=2, center=False, return_params=True,
                      progress_bar=False)
    for a, b in zip(jax.tree.leaves(res.rewind), jax.tree.leaves(at5[32])):
        np.testing.assert_array_equal(a, b)
    # round 0 starts at the rewind point (dense), round 2 at the same point masked
    for r in (0, 2):
        masks = jax.tree.map(lambda m: m[r], res.masks)
        start = jax.vmap(lambda p, m: model.apply(ow.prune.apply(p, m), X))(
            *(jax.tree.map(lambda a: a[:, 0, 0], t) for t in (res.rewind, masks)))
        want = 0.5 * np.mean(np.sum((np.asarray(start) - Y) ** 2, -1), axis=1)
        np.testing.assert_allclose(ds.train_loss.isel(round=r, step=0, width=0, lr=0, alpha=0), want, rtol=1e-10)
    assert bool((ds.status == "ok").all())
    with pytest.raises(ValueError, match="rewind_step"):
        ow.prune.imp(net, (X, Y), width=32, density=0.2, rounds=2, steps=30, rewind_step=30, lr=0.2)
    with pytest.raises(ValueError, match="center= is set by imp"):
        ow.prune.imp(net, (X, Y), width=32, density=0.2, rounds=2, steps=30, lr=0.2, center=True)


def test_metrics_of_a_masked_run_see_the_masked_network():
    """With masks, ow.measure.sharpness is the top eigenvalue of the Hessian restricted to the kept coordinates
    (the dense Hessian's submatrix, from jax.hessian), not of the full one, and ntk_top counts kept weights only."""
    net = ow.serial(ow.Dense(), ow.Tanh(), ow.Dense(out=2))
    model = ow.finite(net, width=6)
    from owidth._train import member_keys

    params = model.init(member_keys(jax.random.key(0))[0], X)
    masks = ow.prune.random(jax.random.key(3), params, 0.4)
    ds = ow.train(net, (X, Y), widths=6, lr=0.1, steps=1, center=False, masks=masks, progress_bar=False,
                  metrics={"sharp": ow.measure.sharpness(iters=40), "ntk": ow.measure.ntk_top()})
    flat, unravel = ravel_pytree(ow.prune.apply(params, masks))
    keep = ravel_pytree(masks)[0].astype(bool)

    def loss(u):
        return 0.5 * jnp.mean(jnp.sum((model.apply(unravel(u), X) - Y) ** 2, -1))

    h = np.asarray(jax.hessian(loss)(flat))
    kept_top = np.linalg.eigvalsh(h[np.ix_(keep, keep)])[-1]
    full_top = np.linalg.eigvalsh(h)[-1]
    assert full_top > 1.05 * kept_top  # the test can tell the two apart
    np.testing.assert_allclose(float(ds.sharp.isel(step=0).squeeze()), kept_top, rtol=1e-6)
    jac = np.asarray(jax.jacobian(lambda u: model.apply(unravel(u), X))(flat))[..., keep].reshape(-1, keep.sum())
    np.testing.assert_allclose(float(ds.ntk.isel(step=0).squeeze()), np.linalg.eigvalsh(jac @ jac.T)[-1] / len(X),
                               rtol=1e-8)
