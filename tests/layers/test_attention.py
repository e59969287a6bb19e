"""Attention's three logit scalings (ow.Attention(logits=...)): the finite network against a hand-written
attention, under every parametrization; the kernels against Monte Carlo over finite networks (slow), the
Monte Carlo over logits against the identity mechanism's closed form (neural-tangents' values), and bad input.
Agreement with neural-tangents' GlobalSelfAttention: tests/kernels/test_reference_nt_attention.py."""

import pathlib

import jax
import numpy as np
import pytest

import owidth as ow
from helpers import build, check_padded_equals_cut, load_archs, raises_before_compiling

X = np.random.RandomState(7).randn(3, 5, 3)  # (batch, length, features)
PARAMS = (ow.NTP, ow.SP, ow.MUP, ow.MF)


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_tied_attention_matches_a_hand_written_one_under_every_parametrization():
    """NT's linear-scaling attention written out: x~ = x + pos_std P, k = x~ W (queries = keys),
    A = softmax(k_h k_h^T / d) per head, y = concat_h(A v_h) W_o + b, NTK-scaled weights at the base width 8."""
    att = ow.Attention(heads=2, w_std=1.3, qk_std=0.9, causal=False, logits="tied", pos_emb="sum", pos_std=0.7,
                       val_pos_emb=True, b_std=0.4)
    net = ow.serial(att, ow.Flatten(), ow.Dense(out=1))
    outs = []
    for p in PARAMS:
        model = ow.finite(net, width=8, param=p.with_base_width(8))
        params = model.init(jax.random.key(3), X)
        outs.append(np.asarray(model.apply(params, X)))
    for out in outs[1:]:
        np.testing.assert_allclose(out, outs[0], rtol=1e-12, atol=1e-12)
    model = ow.finite(net, width=8, param=ow.NTP)
    params = model.init(jax.random.key(3), X)
    a = {k: np.asarray(v) for k, v in params[0].items()}
    assert sorted(a) == ["b", "k", "o", "pos", "v"]  # tied: no separate query matrix
    xq = X + 0.7 * a["pos"][None]
    k = (xq @ (0.9 / np.sqrt(3) * a["k"])).reshape(3, 5, 2, 4)
    v = (xq @ (1.3 / np.sqrt(3) * a["v"])).reshape(3, 5, 2, 4)
    w = _softmax(np.einsum("bshd,bthd->bhst", k, k) / 4)
    y = np.einsum("bhst,bthd->bshd", w, v).reshape(3, 5, 8) @ (1.3 / np.sqrt(8) * a["o"]) + 0.4 * a["b"]
    readout = np.asarray(params[2]["w"])
    expected = y.reshape(3, 40) @ (readout / np.sqrt(40))
    np.testing.assert_allclose(outs[0], expected, rtol=1e-10, atol=1e-12)


def test_gaussian_attention_finite_network_and_mechanisms():
    """logits="gaussian": independent q, k with 1/sqrt(d) under every parametrization; relu attention masked
    causally (the future does not leak)."""
    att = ow.Attention(heads=2, logits="gaussian", mechanism="relu", pos_emb="concat")
    net = ow.serial(att, ow.Dense(out=2))
    outs = [np.asarray(ow.finite(net, width=8, param=p.with_base_width(8)).apply(
        ow.finite(net, width=8, param=p.with_base_width(8)).init(jax.random.key(0), X), X)) for p in PARAMS]
    for out in outs[1:]:
        np.testing.assert_allclose(out, outs[0], rtol=1e-12, atol=1e-12)
    model = ow.finite(net, width=8, param=ow.NTP)
    params = model.init(jax.random.key(0), X)
    assert params[0]["q"].shape == (6, 8) and params[0]["pos"].shape == (5, 3)  # concat: fan-in 2 x 3
    changed = X.copy()
    changed[:, 3] += 1.0
    y, y2 = model.apply(params, X), model.apply(params, changed)
    np.testing.assert_array_equal(y2[:, :3], y[:, :3])
    assert np.abs(y2[:, 3:] - y[:, 3:]).max() > 1e-3


@pytest.mark.slow  # ~30 s: 16384 logit samples for 16 + 8 input pairs, twice
def test_logit_monte_carlo_matches_the_identity_closed_form():
    """The Monte Carlo over Gaussian logits, forced on for the identity mechanism, against neural-tangents'
    closed form (tests/reference/nt_attention_kernels.npz) within 4 of its stated standard errors
    (c / sqrt(S), c ~ 2 for identity: 1.6% at S = 16384)."""
    ref = np.load(pathlib.Path(__file__).parents[1] / "reference" / "nt_attention_kernels.npz")

    class Sampled(ow.Attention):
        _closed_form_identity = False

    arch = load_archs(ref)["gauss_identity_sum"]
    net = build(arch)
    sampled = ow.serial(*[Sampled(**{**layer.__dict__, "logit_samples": 16384}) if isinstance(layer, ow.Attention)
                          else layer for layer in net.layers])
    k = ow.kernel(sampled, ref["seq1"])
    for key in ("nngp", "ntk"):
        want = ref[f"gauss_identity_sum/{key}11"]
        assert np.max(np.abs(getattr(k, key) - want)) / np.max(np.abs(want)) < 4 * 2 / np.sqrt(16384), key
    # deterministic, and kernel(x1, x2) is a block of kernel(x1): the same logit samples for every pair
    k2 = ow.kernel(sampled, ref["seq1"][:2], ref["seq1"])
    np.testing.assert_allclose(k2.ntk, k.ntk[:2], rtol=1e-10, atol=1e-12)


def _padded(x, lengths):
    out = np.array(x, dtype=float)
    for i, n in enumerate(lengths):
        out[i, n:] = np.nan
    return out


@pytest.mark.parametrize("att", [
    dict(heads=2),
    pytest.param(dict(logits="tied", mechanism="relu", causal=False, b_std=0.3), marks=pytest.mark.slow),
    pytest.param(dict(logits="gaussian", mechanism="identity", w_std=1.2), marks=pytest.mark.slow),
    pytest.param(dict(heads=2, logits="tied", pos_emb="concat", val_pos_emb=True, causal=False, pos_p_norm=1.0,
                      pos_decay=lambda d: np.exp(-d / 2.0)), marks=pytest.mark.slow),
])
def test_padding_gives_the_cut_sequences_kernel_and_output(att):
    """A sequence padded at its end (NaN) has the kernel, and a finite network the outputs, of the sequence cut
    to its length: padding keys get no attention and the positional embedding (whose Cholesky factor's leading
    block is that of the shorter sequence) is zero there. And the padding's content does not matter (mask=)."""
    net = ow.serial(ow.Dense(w_std=1.3, b_std=0.2), ow.Relu(), ow.Attention(**att), ow.Relu(), ow.GlobalAvgPool(),
                    ow.Dense(out=1, b_std=0.1))
    def cut(params, n):  # the positional embedding: its first n rows
        return jax.tree.map(lambda a: a[:n] if a.shape[:1] == X.shape[1:2] else a, params)

    padded, k, model, params, y = check_padded_equals_cut(net, X, (5, 3, 1), cut_params=cut)
    junk = np.where(np.isnan(padded), 5.0, padded)
    np.testing.assert_allclose(model.apply(params, junk, mask=np.isnan(padded).all(-1)), y, rtol=1e-13)
    # padding matters: the zero-filled sequences have another kernel
    assert np.max(np.abs(ow.kernel(net, np.nan_to_num(padded)).ntk - k.ntk)) > 1e-3 * np.max(np.abs(k.ntk))


def test_left_padding_under_causal_attention_has_no_nan_and_is_the_cut_sequence():
    """Padding at the start of a causal sequence leaves padding queries with no key at all: their weights are
    zero, with finite values and gradients; the valid positions see the cut sequence (no positions here)."""
    net = ow.serial(ow.Dense(w_std=1.3, b_std=0.2), ow.Relu(), ow.Attention(heads=2, logits="tied"), ow.Relu(),
                    ow.GlobalAvgPool(), ow.Dense(out=1))
    padded = np.array(X)
    padded[1, :2] = np.nan
    k = ow.kernel(net, padded)
    np.testing.assert_allclose(k.ntk[1, 1], ow.kernel(net, X[1:2, 2:]).ntk[0, 0], rtol=1e-12)
    model = ow.finite(net, width=8)
    params = model.init(jax.random.key(0), padded)
    x, m = np.nan_to_num(padded), np.isnan(padded).all(-1)
    np.testing.assert_allclose(model.apply(params, x, mask=m)[1], model.apply(params, X[1:2, 2:])[0], rtol=1e-12)
    grads = jax.grad(lambda p: model.apply(p, x, mask=m).sum())(params)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("index", [-1, pytest.param(1, marks=pytest.mark.slow)])
def test_take_position_counts_valid_positions(index):
    """TakePosition(k) reads each padded sequence's k-th valid position (-1: its last token), so the kernel
    and outputs are those of the cut sequences, padding at either end; no such position: zero features (the
    readout's bias alone, b_std^2 = 0.01 in the kernel)."""
    net = ow.serial(ow.Dense(w_std=1.3, b_std=0.2), ow.Relu(), ow.Attention(heads=2, logits="tied"),
                    ow.TakePosition(index), ow.Dense(out=1, b_std=0.1))
    padded = _padded(X, (5, 3, 1))
    padded[0, :2] = np.nan  # the first sequence: padding in front, 3 valid positions
    cut = [X[0:1, 2:], X[1:2, :3], X[2:3, :1]]
    k = ow.kernel(net, padded)
    model = ow.finite(net, width=8)
    params = model.init(jax.random.key(0), padded)
    y = model.apply(params, padded)
    for i, c in enumerate(cut):
        if index >= c.shape[1]:  # no such position
            np.testing.assert_allclose(k.ntk[i], 0.1**2, rtol=1e-12)
            np.testing.assert_allclose(y[i], 0.1 * params[-1]["b"], rtol=1e-12)  # NTP: b_std b
            continue
        np.testing.assert_allclose(k.ntk[i, i], ow.kernel(net, c).ntk[0, 0], rtol=1e-12)
        np.testing.assert_allclose(y[i], model.apply(params, c)[0], rtol=1e-12)
    np.testing.assert_allclose(k.ntk[0, 1], ow.kernel(net, cut[0], cut[1]).ntk[0, 0], rtol=1e-12)


def test_fixed_scale_attention_ignores_attn_and_param_mode_keeps_its_limit():
    tied = ow.serial(ow.Attention(logits="tied"), ow.Flatten(), ow.Dense(out=1))
    np.testing.assert_array_equal(ow.kernel(tied, X, attn=0.5).nngp, ow.kernel(tied, X).nngp)
    with pytest.raises(NotImplementedError, match="Hron et al. 2020"):
        ow.kernel(ow.serial(ow.Attention(), ow.Flatten(), ow.Dense(out=1)), X, attn=0.5)


def test_bad_inputs():
    for kw, msg in [({"mechanism": "tanh"}, "mechanism='tanh'"), ({"logits": "sqrt"}, "logits='sqrt'"),
                    ({"pos_emb": "learned"}, "pos_emb='learned'"), ({"val_pos_emb": True}, "pos_emb='sum'"),
                    ({"mechanism": "relu"}, "logits='tied'"), ({"pos_p_norm": 0.0}, "pos_p_norm"),
                    ({"logit_samples": 0}, "logit_samples"), ({"causal": 1}, "causal")]:
        with pytest.raises((ValueError, TypeError), match=msg):
            ow.Attention(**kw)
    with pytest.raises(TypeError, match="pos_decay"):
        ow.Attention(pos_emb="sum", pos_decay=2.0)
    # a decay that is not a covariance: refused before anything is compiled, and by init
    bad = ow.serial(ow.Attention(logits="tied", pos_emb="sum", pos_decay=lambda d: 1.0 - d, pos_p_norm=1.0),
                    ow.Flatten(), ow.Dense(out=1))
    raises_before_compiling(lambda: ow.kernel(bad, X), ValueError, "positive definite")
    with pytest.raises(ValueError, match="positive definite"):
        ow.finite(bad, width=4).init(jax.random.key(0), X)
    raises_before_compiling(lambda: ow.kernel(ow.serial(ow.Dense(), ow.Attention(logits="tied"), ow.Dense(out=1)),
                                              np.ones((2, 3))), ValueError, "sequences")
    model = ow.finite(ow.serial(ow.Attention(logits="tied", pos_emb="sum"), ow.Dense(out=1)), width=4)
    params = model.init(jax.random.key(0), X)
    with pytest.raises(ValueError, match="positional embedding has shape"):
        model.apply(params, X[:, :4])


# --------------------------------------------------------------------------- #
# Monte Carlo over finite networks (slow): 1000 networks each, ~1-2 min per configuration
# --------------------------------------------------------------------------- #
WIDTH, NETS = 256, 1000


def _mc_check(layers, alt, *, allowance, x=X):
    """Kernels of ``serial(*layers)`` within 4 standard errors (+ ``allowance / WIDTH`` relative) of NETS
    random NTP networks at WIDTH; and the check has power: the kernel of ``alt`` (one hyperparameter 5% off)
    fails it."""
    net = ow.serial(*layers)
    mc = ow.monte_carlo_kernel(net, x, width=WIDTH, samples=NETS, key=jax.random.key(1), progress_bar=False)
    k = ow.kernel(net, x)

    def z(kern):
        return {g: np.max(np.abs(np.asarray(getattr(mc, g)) - np.asarray(getattr(kern, g)))
                          / (np.asarray(getattr(mc.stderr, g)) + allowance / WIDTH * np.abs(np.asarray(getattr(kern, g)))))
                for g in ("nngp", "ntk")}

    ok, wrong = z(k), z(ow.kernel(ow.serial(*alt), x))
    assert max(ok.values()) < 4.0, ok
    assert max(wrong.values()) > 4.0, wrong
    return ok, wrong


@pytest.mark.slow
@pytest.mark.compute_bound
def test_monte_carlo_gaussian_logits_causal_softmax():
    """1/sqrt(d) softmax attention on the inputs (Hron et al. 2020, Thm 3): NNGP and NTK by Monte Carlo over
    logits vs 1000 networks with 4 heads (measured z: ~1.4 NNGP, ~2.9 NTK); power: w_std 5% off."""
    att = dict(heads=4, logits="gaussian", qk_std=1.3, logit_samples=8192)
    _mc_check([ow.Attention(**att), ow.Flatten(), ow.Dense(out=1)],
              [ow.Attention(**att, w_std=1.05), ow.Flatten(), ow.Dense(out=1)], allowance=0.0)


@pytest.mark.slow
@pytest.mark.compute_bound
def test_monte_carlo_gaussian_logits_positions_bias():
    """1/sqrt(d) softmax attention on hidden features with summed positional embeddings in keys, queries and
    values and a bias, one head, on padded sequences (lengths 5, 3, 4; padding keys left out of the Monte Carlo
    over logits too): the NTK (0.7% standard error) detects qk_std 5% off."""
    def layers(**kw):
        att = dict(heads=1, logits="gaussian", causal=False, pos_emb="sum", pos_std=0.8, val_pos_emb=True,
                   b_std=0.2, logit_samples=8192)
        return [ow.Dense(), ow.Relu(), ow.Attention(**{**att, **kw}), ow.Flatten(), ow.Dense(out=1)]
    _mc_check(layers(), layers(qk_std=1.05), allowance=0.0, x=_padded(X, (5, 3, 4)))


@pytest.mark.slow
@pytest.mark.compute_bound
def test_monte_carlo_tied_attention_positions_relu():
    """NT's linear-scaling attention on hidden features, with positional embeddings and a ReLU after it
    (attention is deterministic in the limit, so the output is Gaussian); O(1/width) finite-width bias
    allowed (4 / width relative); power: w_std 5% off (qk_std 5% off moves the NTK by less than the allowance)."""
    def layers(**kw):
        att = dict(heads=1, logits="tied", causal=False, pos_emb="sum", pos_std=0.8, val_pos_emb=True, b_std=0.2,
                   qk_std=1.2)
        return [ow.Dense(), ow.Relu(), ow.Attention(**{**att, **kw}), ow.Relu(), ow.Flatten(), ow.Dense(out=1)]
    _mc_check(layers(), layers(w_std=1.05), allowance=4.0)
