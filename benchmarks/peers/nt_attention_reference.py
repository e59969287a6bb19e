"""Dump neural-tangents 0.6.5 reference kernels of ``GlobalSelfAttention`` for owidth's tests.

Run inside the legacy venv (never imported by owidth or its tests):

    $(bash benchmarks/peers/build_venv.sh) benchmarks/peers/nt_attention_reference.py

writes tests/reference/nt_attention_kernels.npz (tests/kernels/test_reference_nt_attention.py) in the
format of nt_reference.py: sequences ``seq1`` (4, 6, 3) and ``seq2`` (3, 6, 3), the architectures as
JSON in owidth's names and NT's NNGP/NTK for (x1, x1) and (x1, x2), float64.

An ``Attention`` item maps to NT's ``GlobalSelfAttention`` (non-causal: NT has no causal mask):
``logits="tied"`` is ``linear_scaling=True`` (its closed form, any mechanism) and ``"gaussian"``
``linear_scaling=False`` (closed form for ``mechanism="identity"`` only); ``w_std`` and ``qk_std``
are given to both of NT's value/output and query/key stds (its kernels read their products
``w_std^2``, ``qk_std^2``). ``"pos_decay": ["exp", ell]`` is the decay ``exp(-d / ell)`` of the
distance ``d = |s - t|^pos_p_norm`` (the test builds the same function).

It also writes tests/reference/nt_attention_masked_kernels.npz (tests/kernels/test_reference_nt_masked.py):
the architectures of ``MASKED`` on sequences padded to length 6 (NT's ``mask_constant``; the stored
``seq1``/``seq2`` hold NaN at padding, owidth's form). Left out: the ``1/sqrt(d)`` identity rule with
positional embeddings, where NT keeps the positional covariance ``R`` at padding positions although
its finite network zeroes the embedding there (owidth zeroes both).
"""

import pathlib
import sys

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from neural_tangents import stax  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from nt_reference import MASK_CONSTANT, REF_DIR, dump, nt_layer, pad_sequences  # noqa: E402

OUT = REF_DIR / "nt_attention_kernels.npz"
OUT_MASKED = REF_DIR / "nt_attention_masked_kernels.npz"


def decay(spec):
    """``["exp", ell]`` -> ``d -> exp(-d / ell)``; None -> None (NT's default: independent positions)."""
    if spec is None:
        return None
    kind, ell = spec
    assert kind == "exp", spec
    return lambda d: jnp.exp(-d / ell)


def nt_attention_layer(name, kw):
    if name != "Attention":
        return nt_layer(name, kw)
    assert kw.get("causal") is False, "NT's GlobalSelfAttention is not causal"
    w, qk = kw.get("w_std", 1.0), kw.get("qk_std", 1.0)
    return stax.GlobalSelfAttention(
        n_chan_out=256, n_chan_key=256, n_chan_val=256, n_heads=kw.get("heads", 1),
        linear_scaling=kw["logits"] == "tied", W_key_std=qk, W_query_std=qk, W_value_std=w, W_out_std=w,
        b_std=kw.get("b_std", 0.0) or None, attention_mechanism=kw.get("mechanism", "softmax").upper(),
        pos_emb_type=kw.get("pos_emb", "none").upper(), pos_emb_p_norm=kw.get("pos_p_norm", 2.0),
        pos_emb_decay_fn=decay(kw.get("pos_decay")), W_pos_emb_std=kw.get("pos_std", 1.0),
        val_pos_emb=kw.get("val_pos_emb", False))


def att(**kw):
    return ["Attention", {"heads": 2, "causal": False, **kw}]


HID = ["Dense", {"w_std": 1.3, "b_std": 0.2}]
OUT1 = ["Dense", {"out": 1, "w_std": 1.0, "b_std": 0.1}]

ARCHS = {
    # NT's linear scaling (tied queries and keys, 1/d logits): every mechanism
    "tied_softmax": [att(logits="tied", w_std=1.2, qk_std=0.9), ["Flatten", {}], OUT1],
    "tied_identity": [att(logits="tied", mechanism="identity", w_std=0.8, qk_std=0.7), ["Flatten", {}], OUT1],
    "tied_relu": [HID, ["Relu", {}], att(logits="tied", mechanism="relu", qk_std=1.1, b_std=0.3), ["Flatten", {}],
                  OUT1],
    "tied_abs": [HID, ["Relu", {}], att(logits="tied", mechanism="abs", w_std=0.9, qk_std=0.8), ["GlobalAvgPool", {}],
                 OUT1],
    "tied_deep": [HID, ["Relu", {}], att(logits="tied", qk_std=1.4, b_std=0.2), ["Relu", {}],
                  att(logits="tied", w_std=1.1, qk_std=1.2), ["Relu", {}], ["GlobalAvgPool", {}], OUT1],
    # positional embeddings
    "tied_sum": [att(logits="tied", pos_emb="sum", pos_std=0.8, qk_std=1.2), ["Flatten", {}], OUT1],
    "tied_sum_val": [HID, ["Relu", {}], att(logits="tied", pos_emb="sum", pos_std=1.1, val_pos_emb=True, b_std=0.2),
                     ["Relu", {}], ["Flatten", {}], OUT1],
    "tied_concat": [att(logits="tied", pos_emb="concat", pos_std=1.3, qk_std=1.1), ["Flatten", {}], OUT1],
    "tied_concat_val": [HID, ["Relu", {}], att(logits="tied", mechanism="relu", pos_emb="concat", pos_std=0.7,
                                               val_pos_emb=True), ["GlobalAvgPool", {}], OUT1],
    "tied_decay": [att(logits="tied", pos_emb="sum", pos_decay=["exp", 2.0], pos_p_norm=1.0, val_pos_emb=True,
                       qk_std=1.2), ["Flatten", {}], OUT1],
    # NT's 1/sqrt(d) scaling: closed form for the identity mechanism only
    "gauss_identity": [att(logits="gaussian", mechanism="identity", w_std=0.9, qk_std=0.8), ["Flatten", {}], OUT1],
    "gauss_identity_deep": [HID, ["Relu", {}], att(logits="gaussian", mechanism="identity", qk_std=0.9, b_std=0.2),
                            ["Relu", {}], ["Flatten", {}], OUT1],
    "gauss_identity_sum": [HID, ["Relu", {}], att(logits="gaussian", mechanism="identity", pos_emb="sum",
                                                  pos_std=0.9), ["Flatten", {}], OUT1],
    "gauss_identity_concat_val": [HID, ["Relu", {}], att(logits="gaussian", mechanism="identity", pos_emb="concat",
                                                         pos_std=1.2, val_pos_emb=True), ["GlobalAvgPool", {}], OUT1],
}
INPUTS = {name: "seq" for name in ARCHS}
# NT's positional embeddings on masked inputs need a mask reduced over channels: a Dense first
MASKED = {f"mask_{name}": ([HID, ["Relu", {}]] if name in ("tied_sum", "tied_concat", "tied_decay") else []) + ARCHS[name]
          for name in ("tied_softmax", "tied_identity", "tied_relu", "tied_abs", "tied_deep", "tied_sum", "tied_sum_val",
                       "tied_concat", "tied_concat_val", "tied_decay", "gauss_identity", "gauss_identity_deep")}


def main():
    rng = np.random.RandomState(2006)
    seq1, seq2 = rng.randn(4, 6, 3), rng.randn(3, 6, 3)
    dump(OUT, ARCHS, INPUTS, {"seq": (seq1, seq2)}, {"seq1": seq1, "seq2": seq2}, layer=nt_attention_layer)
    rng = np.random.RandomState(2020)
    x1, x2 = rng.randn(4, 6, 3), rng.randn(3, 6, 3)
    nan1, nan2 = pad_sequences([(x1, (6, 4, 2, 5)), (x2, (3, 6, 1))])
    dump(OUT_MASKED, MASKED, {name: "seq" for name in MASKED}, {"seq": (x1, x2)}, {"seq1": nan1, "seq2": nan2},
         layer=nt_attention_layer, mask_constant=MASK_CONSTANT)


if __name__ == "__main__":
    main()
