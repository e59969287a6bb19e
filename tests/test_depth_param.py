"""Depth- and optimizer-complete parametrizations (issue 18): ow.DEPTH_MUP, ow.COMPLETEP, ow.UMUP.

The branch multiplier, the depth learning-rate factors, Adam's epsilon factors and the weight decay are
checked against formulas written out here (not against the code's own helpers); the presets against
ow.MUP, which microsoft/mup's optimizers reproduce to 1e-15 (tests/test_param.py)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import owidth as ow

X = np.random.default_rng(0).standard_normal((6, 5))
Y = np.sin(X[:, :2])


def resnet(depth, *, scale=1.0):
    return ow.serial(ow.Dense(), *[ow.Residual(ow.Relu(), ow.Dense(), scale=scale) for _ in range(depth)],
                     ow.Relu(), ow.Dense(out=2))


def train(param, net, optimizer, **kw):
    kw = dict(widths=[16, 64], lr=[0.003, 0.03], steps=4, seeds=2, optimizer=optimizer, progress_bar=False) | kw
    return ow.train(net, (X, Y), param=param, **kw).train_loss.values


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_depth_presets_are_mup_at_the_base_depth_bit_for_bit(optimizer):
    """At L = L0 every depth factor is 1: DEPTH_MUP is MUP at every width; COMPLETEP is MUP with Adam's
    epsilon scaled like the gradients (its width rule), so exactly MUP under SGD and at the base width."""
    net, wd = resnet(3), (0.1 if optimizer == "adamw" else 0.0)
    mup = ow.MUP.with_base_width(16)
    want = train(mup, net, optimizer, weight_decay=wd)
    assert np.all(np.isfinite(want))
    np.testing.assert_array_equal(train(ow.DEPTH_MUP.with_base_width(16).with_base_depth(3), net, optimizer,
                                        weight_decay=wd), want)
    completep = ow.COMPLETEP.with_base_width(16).with_base_depth(3)
    eps_mup = dataclasses.replace(mup, scale_eps=True)
    np.testing.assert_array_equal(train(completep, net, optimizer, weight_decay=wd),
                                  train(eps_mup, net, optimizer, weight_decay=wd))
    if optimizer == "sgd":
        np.testing.assert_array_equal(train(completep, net, optimizer), want)
    base = dict(widths=[16])
    np.testing.assert_array_equal(train(completep, net, optimizer, weight_decay=wd, **base),
                                  train(mup, net, optimizer, weight_decay=wd, **base))


def test_all_presets_are_one_network_at_base_width_and_depth():
    net = resnet(2)
    kw = dict(widths=[32])
    want = train(ow.MUP.with_base_width(32), net, "adam", **kw)
    for p in (ow.DEPTH_MUP, ow.COMPLETEP, ow.UMUP, ow.MF):
        np.testing.assert_array_equal(train(p.with_base_width(32).with_base_depth(2), net, "adam", **kw), want)


@pytest.mark.parametrize("preset,alpha", [(ow.DEPTH_MUP, 0.5), (ow.COMPLETEP, 1.0)])
def test_residual_branch_multiplier_is_the_depth_factor(preset, alpha):
    """Under a depth preset with L residual blocks, each branch is multiplied by (L / L0)^-alpha: the same
    outputs, bit for bit, as MUP with that factor written into ow.Residual(scale=...)."""
    depth, base = 8, 2
    factor = (depth / base) ** -alpha
    model = ow.finite(resnet(depth, scale=0.7), width=32, param=preset.with_base_depth(base))
    ref = ow.finite(resnet(depth, scale=0.7 * factor), width=32, param=ow.MUP)
    params = model.init(jax.random.key(1), X)
    assert model.depth == depth
    np.testing.assert_array_equal(model.apply(params, X), ref.apply(params, X))
    # ow.repeat and ow.transformer count their residual blocks too
    rep = ow.finite(ow.serial(ow.Dense(), ow.repeat(ow.Residual(ow.Relu(), ow.Dense()), 5), ow.Dense(out=1)),
                    width=8, param=preset)
    assert rep.depth == 5
    assert ow.finite(ow.transformer(depth=3, heads=2, vocab=5), width=8).depth == 6  # attention + MLP branches


def _tree_ratio(a, b):
    return jax.tree.map(lambda u, v: float(jnp.max(jnp.abs(u)) / jnp.max(jnp.abs(v))), a, b)


@pytest.mark.parametrize("optimizer,exponent", [("sgd", 1.0), ("adam", 0.0), ("momentum", 1.0)])
def test_completep_learning_rates_inside_and_outside_the_branches(optimizer, exponent):
    """CompleteP at L = 4 L0: tensors inside residual branches step (L / L0)^(2 alpha - 1) = 4x (SGD) or
    (L / L0)^(alpha - 1) = 1x (Adam) what MUP's do; tensors outside exactly what MUP's do."""
    net = resnet(4)
    params = ow.finite(net, width=16, param=ow.MUP).init(jax.random.key(0), X)
    grads = jax.tree.map(lambda p: jnp.cos(3 * p) + 0.1, params)
    got, want = [], []
    for p, out in ((ow.COMPLETEP.with_base_width(16), got), (ow.MUP.with_base_width(16), want)):
        model = ow.finite(net, width=16, param=p)
        tx = ow.mu_optimizer(model, X, optimizer, lr=0.1, eps=0.0)  # eps 0: CompleteP's scaled epsilon aside
        out.append(tx.update(grads, tx.init(params), params)[0])
    ratio = _tree_ratio(got[0], want[0])
    inside = ow.finite(net, width=16, param=ow.COMPLETEP).in_branches(X)
    for r, b in zip(jax.tree.leaves(ratio), jax.tree.leaves(inside)):
        assert r == pytest.approx(4.0 ** exponent if b else 1.0, rel=1e-12)
    assert sum(jax.tree.leaves(inside)) == 4 and not all(jax.tree.leaves(inside))


def test_depth_mup_adam_learning_rate_and_weight_decay_per_step():
    """Depth-muP, Adam, L = 16 L0: branch tensors step (L / L0)^-1/2 = 1/4 of MUP's; AdamW's decay per step is
    lr wd w times the same depth factor (as CompleteP's reference implementation), never times the width factor."""
    net = resnet(16)
    width, lr, wd = 64, 0.1, 0.5
    model = ow.finite(net, width=width, param=ow.DEPTH_MUP.with_base_width(16))
    params = model.init(jax.random.key(0), X)
    inside = model.in_branches(X)
    zeros = jax.tree.map(jnp.zeros_like, params)
    tx = ow.mu_optimizer(model, X, "adamw", lr=lr, weight_decay=wd)
    decay, _ = tx.update(zeros, tx.init(params), params)
    for d, w, b in zip(jax.tree.leaves(decay), jax.tree.leaves(params), jax.tree.leaves(inside)):
        np.testing.assert_allclose(d, -lr * wd * (0.25 if b else 1.0) * w, rtol=1e-12)


def test_scaled_epsilon_is_adams_epsilon_times_each_tensors_gradient_scale():
    """scale_eps: the first Adam step of tensor w is -lr s_w g / (|g| + eps e_w) with
    e_w = (n / n0)^-e_role (L / L0)^-alpha inside branches, e = (1, 1, 1) for muP's exponents."""
    net = resnet(4)
    width, base, lr, eps = 64, 16, 0.1, 0.3  # a large eps, so that it matters
    param = ow.COMPLETEP.with_base_width(base)
    model = ow.finite(net, width=width, param=param)
    params = model.init(jax.random.key(0), X)
    grads = jax.tree.map(lambda p: jnp.cos(3 * p) * 0.2, params)
    tx = ow.mu_optimizer(model, X, "adam", lr=lr, eps=eps)
    updates, _ = tx.update(grads, tx.init(params), params)
    roles, inside, scales = model.roles(X), model.in_branches(X), model.lr_scales(X, optimizer="adam")
    e_role = {ow.Role.INPUT: 1.0, ow.Role.HIDDEN: 1.0, ow.Role.OUTPUT: 1.0}
    ratio = width / base
    for u, g, r, b, s in zip(*(jax.tree.leaves(t, is_leaf=lambda v: isinstance(v, ow.Role))
                                for t in (updates, grads, roles, inside, scales))):
        e = ratio ** -e_role[r] * (4.0 ** -1.0 if b else 1.0)
        np.testing.assert_allclose(u, -lr * s * g / (jnp.abs(g) + eps * e), rtol=1e-10)


def test_eps_exponents_follow_the_gradient_sizes():
    """The gradient entries of each role shrink with width like (n / n0)^-e (measured over widths 64..1024 on
    one batch at initialisation, NTP and muP): the exponents eps_exponents() returns, within 0.1."""
    net = ow.serial(ow.Dense(), ow.Relu(), ow.Dense(), ow.Relu(), ow.Dense(out=1))
    x, y = X, Y[:, 0]
    for p in (ow.NTP, ow.MUP, ow.SP):
        sizes = []
        widths = [64, 256, 1024]
        for width in widths:
            model = ow.finite(net, width=width, param=p)
            per_seed = []
            for seed in range(4):
                params = model.init(jax.random.key(seed), x)
                g = jax.grad(lambda q: jnp.mean((model.apply(q, x)[:, 0] - y) ** 2))(params)
                per_seed.append([float(jnp.sqrt(jnp.mean(leaf ** 2))) for leaf in jax.tree.leaves(g)])
            sizes.append(np.mean(per_seed, axis=0))
        slopes = np.polyfit(np.log(widths), np.log(np.array(sizes)), 1)[0]  # weights of layers 1..3
        want = [-e for e in p.eps_exponents()]  # input, hidden, output
        np.testing.assert_allclose(slopes, want, atol=0.1, err_msg=p.name)


def test_regimes_of_the_depth_presets():
    for p in (ow.DEPTH_MUP, ow.COMPLETEP):
        for opt in ("sgd", "adam"):
            reg = p.regime(optimizer=opt)
            assert reg.stable and reg.feature_learning and reg.depth_update == 0.0, (p.name, opt, reg)
    assert ow.MUP.regime().depth_update is None  # depth not scaled
    umup = ow.UMUP.regime(optimizer="adam")
    assert umup.stable and umup.feature_learning
    # the branch multiplier of depth-muP with muP's depth-constant Adam learning rate: blows up with depth
    half = dataclasses.replace(ow.MUP, alpha=0.5)
    reg = half.regime(optimizer="adam")
    assert not reg.stable and reg.depth_update == 0.5 and "use depth_c_adam = 0.5" in reg.reasons[0]
    assert half.regime(optimizer="sgd").stable  # depth-muP's SGD learning rate is constant in depth
    weak = dataclasses.replace(ow.DEPTH_MUP, alpha=0.25, depth_c_adam=0.75)
    assert any("grows like L^0.5 at initialisation" in r for r in weak.regime(optimizer="adam").reasons)
    lazy = dataclasses.replace(ow.COMPLETEP, depth_c_adam=0.5)  # the blocks' summed update vanishes like L^-1/2
    assert lazy.regime(optimizer="adam").stable and lazy.regime(optimizer="adam").depth_update == -0.5


@pytest.mark.parametrize("field,value,match", [
    ("alpha", -0.1, r"alpha must be a number in \[0, 1\]"),
    ("alpha", 1.5, r"alpha must be a number in \[0, 1\]"),
    ("alpha", True, r"alpha must be a number"),
    ("base_depth", 0, "base_depth must be a positive int"),
    ("base_depth", -2, "base_depth must be a positive int"),
    ("base_depth", 2.0, "base_depth must be a positive int"),
    ("depth_c_adam", float("nan"), "depth_c_adam must be a finite float"),
    ("scale_eps", 1, "scale_eps must be a bool"),
])
def test_bad_depth_settings_are_refused_when_built(field, value, match):
    with pytest.raises((ValueError, TypeError), match=match):
        dataclasses.replace(ow.MUP, **{field: value})


def test_bad_depths_are_refused():
    with pytest.raises(ValueError, match="depth must be a non-negative int"):
        ow.DEPTH_MUP.depth_multiplier(-1)
    with pytest.raises(ValueError, match="depth must be a non-negative int"):
        ow.COMPLETEP.depth_lr_scale(2.5, optimizer="adam")
    with pytest.raises(ValueError, match="residual=True needs the two branches"):
        ow.Parallel((ow.Dense(),), residual=True)


def test_flax_modules_get_width_scaled_epsilon_and_no_depth_factors():
    from flax import nnx

    class MLP(nnx.Module):
        def __init__(self, width, rngs):
            self.a, self.b = nnx.Linear(5, width, rngs=rngs), nnx.Linear(width, 1, rngs=rngs)

        def __call__(self, x):
            return self.b(jax.nn.relu(self.a(x)))

    model = ow.finite(ow.from_flax(MLP), width=32, param=ow.COMPLETEP.with_base_width(8))
    assert model.depth_scales(X, optimizer="adam") is None
    eps = model.eps_scales(X)
    assert sorted(set(jax.tree.leaves(eps))) == [0.25, 1.0]  # width-sized tensors (32 / 8)^-1; the readout bias 1


@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_kernel_with_a_depth_exponent_is_the_kernel_of_the_scaled_branches(alpha):
    """ow.kernel(net, x, param=NTP with alpha) = ow.kernel of the net whose Residual(scale=...) holds the factor
    (L / L0)^-alpha: both kernels, to rounding; a finite NTP network with that param has the same branches."""
    depth, base = 12, 3
    param = dataclasses.replace(ow.NTP, alpha=alpha, base_depth=base)
    factor = (depth / base) ** -alpha
    got = ow.kernel(resnet(depth, scale=0.8), X, param=param)
    want = ow.kernel(resnet(depth, scale=0.8 * factor), X)
    np.testing.assert_allclose(got.nngp, want.nngp, rtol=1e-14)
    np.testing.assert_allclose(got.ntk, want.ntk, rtol=1e-14)
    unscaled = ow.kernel(resnet(depth, scale=0.8), X)
    assert not np.allclose(unscaled.ntk, got.ntk, rtol=1e-3)  # the exponent does something
    model = ow.finite(resnet(depth, scale=0.8), width=16, param=param)
    ref = ow.finite(resnet(depth, scale=0.8 * factor), width=16, param=ow.NTP)
    params = model.init(jax.random.key(2), X)
    np.testing.assert_array_equal(model.apply(params, X), ref.apply(params, X))
    # under ow.repeat too (the residual blocks of the scanned copies)
    rep = ow.serial(ow.Dense(), ow.repeat(ow.Residual(ow.Relu(), ow.Dense(), scale=0.8), depth), ow.Relu(), ow.Dense(out=2))
    np.testing.assert_allclose(ow.kernel(rep, X, param=param).ntk, want.ntk, rtol=1e-12)
