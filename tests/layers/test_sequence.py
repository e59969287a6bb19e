"""Sequences: Embedding, causal Attention (logit scale from the parametrization), transformers, their kernels,
coordinate checks, sequence training, grokking."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import owidth as ow

VOCAB, LENGTH = 7, 5
TOKENS = np.random.default_rng(0).integers(0, VOCAB, (6, LENGTH))
MUPQ = dataclasses.replace(ow.MUP, zero_readout=True, zero_query=True)


def test_presets_coincide_at_base_width_and_attn_exponents():
    net = ow.transformer(depth=1, heads=2, vocab=VOCAB)
    outs = []
    for p in (ow.SP, ow.NTP, ow.MUP, ow.MF):
        model = ow.finite(net, width=16, param=p.with_base_width(16))
        outs.append(model.apply(model.init(jax.random.key(3), TOKENS), TOKENS))
    for out in outs[1:]:
        np.testing.assert_allclose(out, outs[0], rtol=1e-12, atol=1e-12)
    assert (ow.SP.attn, ow.NTP.attn, ow.MUP.attn, ow.MF.attn) == (0.5, 0.5, 1.0, 1.0)
    # 1/sqrt(d) under SP at every width, d0^1/2 / d under muP (heads fixed, d / d0 = n / n0)
    for n in (16, 64, 256):
        d = n // 4
        assert ow.SP.with_base_width(16).attn_scale(d_head=d, width=n) == pytest.approx(d**-0.5, rel=1e-14)
        assert ow.MUP.with_base_width(16).attn_scale(d_head=d, width=n) == pytest.approx(4**0.5 / d, rel=1e-14)


def test_roles_and_zero_init_options():
    net = ow.transformer(depth=1, heads=2, vocab=VOCAB)
    model = ow.finite(net, width=8, param=MUPQ)
    roles = model.roles(TOKENS)
    emb, (_, (_, attn)), _, _, _, readout = roles
    assert emb == {"w": ow.Role.INPUT, "pos": ow.Role.INPUT}
    assert attn == {k: ow.Role.HIDDEN for k in "qkvo"}
    assert readout == {"w": ow.Role.OUTPUT}
    params = model.init(jax.random.key(0), TOKENS)
    assert not np.any(params[1][1][1]["q"]) and np.any(params[1][1][1]["k"])
    assert not np.any(params[-1]["w"])
    # Adam learning rates: hidden projections / (n/n0), embedding and readout unscaled
    scales = ow.finite(net, width=32, param=MUPQ.with_base_width(8)).lr_scales(TOKENS, optimizer="adam")
    assert scales[1][1][1] == {k: 0.25 for k in "qkvo"} and scales[0] == {"w": 1.0, "pos": 1.0}


def test_attention_is_causal_and_heads_split_the_width():
    net = ow.serial(ow.Embedding(VOCAB), ow.Attention(heads=4), ow.Relu(), ow.Dense(out=3))
    model = ow.finite(net, width=16, param=ow.SP)
    params = model.init(jax.random.key(1), TOKENS)
    y = model.apply(params, TOKENS)
    assert y.shape == (6, LENGTH, 3)
    changed = TOKENS.copy()
    changed[:, 3] = (changed[:, 3] + 1) % VOCAB  # the future of positions 0..2
    y2 = model.apply(params, changed)
    np.testing.assert_array_equal(y2[:, :3], y[:, :3])
    assert np.abs(y2[:, 3:] - y[:, 3:]).max() > 1e-3
    with pytest.raises(ValueError, match="multiple of the heads"):
        ow.finite(net, width=18).init(jax.random.key(0), TOKENS)
    with pytest.raises(ValueError, match=r"integers in \[0, 7\)"):
        model.apply(params, TOKENS + VOCAB)


def test_attention_matches_a_hand_written_softmax_attention():
    """Single head, SP at base width 8: y = softmax(q k^T / sqrt(d) + causal mask) v W_o, written out here."""
    net = ow.serial(ow.Embedding(VOCAB, pos_std=0.0), ow.Attention(heads=1), ow.TakePosition(-1), ow.Dense(out=2))
    model = ow.finite(net, width=8, param=ow.SP.with_base_width(8))
    params = model.init(jax.random.key(2), TOKENS)
    att, ro = params[1], params[3]
    h = np.asarray(params[0]["w"])[TOKENS]  # embedding: w_std = 1, fan-in 1
    s = ow.SP.with_base_width(8).dense(ow.Role.HIDDEN, fan_in=8, width=8, w_std=1.0, b_std=0.0)
    assert s.w_mult == pytest.approx(8**-0.5)  # at the base width: W = w / sqrt(fan_in)
    q, k, v = (h @ (s.w_mult * np.asarray(att[n])) for n in "qkv")
    logits = np.einsum("bsd,btd->bst", q, k) / np.sqrt(8)
    logits = np.where(np.tril(np.ones((LENGTH, LENGTH), bool)), logits, -np.inf)
    a = np.exp(logits - logits.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    y = (a @ v) @ (s.w_mult * np.asarray(att["o"]))
    so = ow.SP.with_base_width(8).dense(ow.Role.OUTPUT, fan_in=8, width=8, w_std=1.0, b_std=0.0)
    expected = y[:, -1] @ (so.w_mult * np.asarray(ro["w"]))
    np.testing.assert_allclose(model.apply(params, TOKENS), expected, rtol=1e-10, atol=1e-12)


def test_kernel_invariants():
    net = ow.transformer(depth=1, heads=2, vocab=VOCAB)
    k = ow.kernel(net, TOKENS)
    np.testing.assert_array_equal(k.nngp, k.nngp.T)
    assert np.linalg.eigvalsh(k.nngp).min() > -1e-12 and np.linalg.eigvalsh(k.ntk).min() > -1e-12
    k2 = ow.kernel(net, TOKENS[:2], TOKENS)
    np.testing.assert_allclose(k2.nngp, k.nngp[:2], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(k2.ntk, k.ntk[:2], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(jax.jit(lambda t: ow.kernel(net, t).ntk)(TOKENS), k.ntk, rtol=1e-12)


def test_kernel_of_embedding_and_uniform_attention_in_closed_form():
    """Embedding -> Attention -> TakePosition(-1) -> Dense(out=1) under 1/d logits: the output is
    W_o-average of causal means of value-embeddings; at the last position of length-L sequences
    nngp = (1/L^2) sum_{s,t} ([x_s = x'_t] + [s = t]), written out by hand here."""
    net = ow.serial(ow.Embedding(VOCAB), ow.Attention(heads=2), ow.TakePosition(-1), ow.Dense(out=1))
    k = ow.kernel(net, TOKENS)
    same = (TOKENS[:, None, :, None] == TOKENS[None, :, None, :]).sum((2, 3)) + LENGTH
    np.testing.assert_allclose(k.nngp, same / LENGTH**2, rtol=1e-12)


# both sizes with the slow tests (2000 networks at width 384 took 85 s in CI: 1000 at 256 keep the check's
# power at a fifth of the cost); the default suite checks attention's kernel exactly
# (test_kernel_of_embedding_and_uniform_attention_in_closed_form) and its finite network against a
# hand-written softmax attention
@pytest.mark.slow
@pytest.mark.parametrize("n_nets,width", [(400, 128), pytest.param(1000, 256, marks=pytest.mark.compute_bound)])
def test_kernel_monte_carlo(n_nets, width):
    """NNGP of a transformer block under 1/d attention vs the empirical output covariance of random finite
    networks (NTP with attn = 1): within 4 standard errors of the Monte Carlo mean plus an O(1/width) allowance
    (the logits have variance ~ n0/n at width n)."""
    net = ow.serial(ow.Embedding(VOCAB), ow.Residual(ow.LayerNorm(), ow.Attention(heads=2)), ow.Relu(),
                    ow.TakePosition(-1), ow.Dense(out=1))
    tokens = TOKENS[:4]
    k = ow.kernel(net, tokens, get="nngp").nngp
    model = ow.finite(net, width=width, param=dataclasses.replace(ow.NTP, attn=1.0))
    keys = jax.random.split(jax.random.key(0), n_nets)
    f = jax.jit(lambda ks: jax.lax.map(lambda key: model.apply(model.init(key, tokens), tokens)[:, 0], ks,
                                       batch_size=100))(keys)  # (nets, 4), 100 networks in memory at a time
    f = np.asarray(f)
    prods = f[:, :, None] * f[:, None, :]
    mean, se = prods.mean(0), prods.std(0) / np.sqrt(n_nets)
    assert np.all(np.abs(mean - k) <= 4 * se + 4.0 / width * np.abs(k)), (mean, k, se)


@pytest.mark.slow
def test_train_next_token_labels_per_position():
    x, y = TOKENS, np.roll(TOKENS, -1, axis=1)
    net = ow.transformer(depth=1, heads=2, vocab=VOCAB, last_only=False)
    ds = ow.train(net, (x, y), widths=16, lr=[3e-2, 1e-1], steps=20, param=MUPQ.with_base_width(16),
                  optimizer="adam", loss="xent", seeds=2, record_every=10, progress_bar=False)
    loss = ds.train_loss.isel(width=0, alpha=0).values
    np.testing.assert_allclose(loss[..., 0], np.log(VOCAB), rtol=1e-12)  # zero readout: uniform predictions
    assert np.all(np.isfinite(loss)) and np.all(loss[..., -1] < 0.5 * loss[..., 0])
    assert ds.train_accuracy.shape == (1, 2, 2, 1, 3)
    with pytest.raises(ValueError, match=r"need outputs of shape \(6, 5, 'k'\)"):
        ow.train(ow.transformer(depth=1, heads=2, vocab=VOCAB), (x, y), widths=16, lr=0.01, steps=2, loss="xent",
                 progress_bar=False)


def _coord_check(widths, seeds):
    p_mod = 17
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, p_mod, (2, 64))
    tokens, labels = np.stack([a, b, np.full_like(a, p_mod)], 1), (a + b) % p_mod
    net = ow.transformer(depth=1, heads=2, vocab=p_mod + 1, out=p_mod)
    return {p.name: ow.coord_check(net, (tokens, labels), widths=widths, param=p.with_base_width(widths[0]), lr=0.01,
                                   loss="xent", steps=3, seeds=seeds) for p in (ow.SP, MUPQ)}


@pytest.mark.slow
def test_transformer_coord_check():
    """Tensor Programs V, Sec. D.1 for a transformer: after 3 Adam steps every recorded coordinate (embedding,
    q, k, v, attention logits, attention output, MLP and readout) has a size slope vs width within 0.1 of 0 under
    muP (1/d logits, zero query and readout); under SP the attention logits grow (slope > 0.3)."""
    res = _coord_check([64, 128, 256, 512], seeds=4)
    mup, sp = res["mup"], res["sp"]
    assert "attn.logits" in list(mup.layer_name.values)
    step3 = mup.slope_size.sel(step=3).values
    assert np.all(np.abs(step3) < 0.1), dict(zip(mup.layer_name.values, step3))
    logits = int(np.flatnonzero(sp.layer_name.values == "attn.logits")[0])
    assert float(sp.slope_size.sel(step=3, layer=logits)) > 0.3
    assert float(sp.slope_delta.sel(step=3, layer=logits)) > 0.3


@pytest.mark.slow
def test_grokking_quick(tmp_path, monkeypatch):
    """Kumar et al. (2023): the lazier the training (larger alpha), the later the test accuracy passes 90%."""
    monkeypatch.setenv("OWIDTH_NO_PROGRESS", "1")
    with jax.enable_x64(False):
        summary = ow.experiments.run("grokking", out=tmp_path, quick=True)
    grok, fit = summary["grok_step"], summary["fit_step"]
    assert all(r == summary["seeds"] for r in grok["reached"]), summary
    assert summary["grok_increases_with_alpha"] and np.all(np.diff(grok["mean"]) > 0), grok
    # the end points differ by far more than the seeds' spread, and the delay after fitting grows too
    assert grok["mean"][-1] - grok["mean"][0] > 3 * (grok["std"][-1] + grok["std"][0]), grok
    delay = summary["delay"]["mean"]
    assert delay[-1] > 2 * delay[0] and all(f < g for f, g in zip(fit["mean"], grok["mean"])), summary
    assert (tmp_path / "grokking.png").stat().st_size > 10_000


@pytest.mark.slow
def test_mutransfer_transformer_quick(tmp_path, monkeypatch):
    """The best Adam learning rate of a transformer stays within one grid step (x2) under muP, drifts under SP."""
    monkeypatch.setenv("OWIDTH_NO_PROGRESS", "1")
    with jax.enable_x64(False):
        summary = ow.experiments.run("mutransfer-transformer", out=tmp_path, quick=True)
    assert abs(summary["mup"]["shift_grid_steps"]) <= 1 < abs(summary["sp"]["shift_grid_steps"]), summary
    assert (tmp_path / "mutransfer_transformer.png").stat().st_size > 10_000


def test_kernel_of_sqrt_d_attention_is_refused_with_the_reason():
    net = ow.transformer(depth=1, heads=2, vocab=VOCAB)
    for p in (ow.SP, ow.NTP):
        with pytest.raises(NotImplementedError, match="Hron et al. 2020"):
            ow.kernel(net, TOKENS, attn=p.attn)
    np.testing.assert_array_equal(ow.kernel(net, TOKENS, attn=ow.MUP.attn).ntk, ow.kernel(net, TOKENS).ntk)
    mlp = ow.serial(ow.Dense(), ow.Relu(), ow.Dense(out=1))  # no attention: attn does not matter
    ow.kernel(mlp, np.ones((2, 3)), attn=0.5)


def test_bad_inputs():
    with pytest.raises(ValueError, match="heads"):
        ow.Attention(heads=0)
    with pytest.raises(ValueError, match="vocab"):
        ow.Embedding(0)
    with pytest.raises(ValueError, match="attn"):
        dataclasses.replace(ow.MUP, attn=float("nan"))
    with pytest.raises(ValueError, match="out of range"):
        ow.finite(ow.serial(ow.Embedding(3), ow.TakePosition(9), ow.Dense(out=1)), width=4).init(
            jax.random.key(0), TOKENS % 3)
    x = jnp.ones((2, 4))
    with pytest.raises(ValueError, match="sequences"):
        ow.kernel(ow.serial(ow.Dense(), ow.Attention(), ow.Dense(out=1)), x)
