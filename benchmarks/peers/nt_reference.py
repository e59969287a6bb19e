"""Dump neural-tangents 0.6.5 reference kernels for owidth's tests.

Run inside the legacy venv (never imported by owidth or its tests):

    $(bash benchmarks/peers/build_venv.sh) benchmarks/peers/nt_reference.py

writes three files in tests/reference/, each holding the inputs, the
architectures as JSON (a list of [layer, kwargs] in owidth's names, which the
test rebuilds with the owidth API), which inputs each architecture takes
(``inputs``: JSON name -> kind; arrays ``{kind}1``/``{kind}2``) and NT's
NNGP/NTK for (x1, x1) and (x1, x2), all float64:

* nt_kernels.npz (tests/kernels/test_reference_nt.py): many layers on tiny inputs;
  kinds "x" (n, d) vectors, "img" (n, H, W, C) images, "seq" (n, W, C)
  sequences.
* nt_cnn_kernels.npz (tests/kernels/test_reference_nt_cnn.py): the benchmark's
  2-conv + GlobalAvgPool CNTK (also with Erf and Gelu) and a Myrtle-style net
  (Shankar et al. 2020) on small images; kinds "img10x10x3", "img7x9x2",
  "img8x8x3". It pins owidth's conv kernel engine tightly.
* nt_activation_kernels.npz (tests/kernels/test_reference_nt_activations.py): MLPs with NT's
  closed-form activations (Cos, Rbf, Exp, Gaussian, Gabor, Sign, ExpNormalized, Polynomial,
  Monomial, Hermite, RectifiedMonomial); kinds "x" (the same vectors as nt_kernels.npz) and
  "xunit" (those rows scaled to |x|^2 = d, where NT's Hermite rule, which assumes unit
  pre-activation variance, is exact). NT's RectifiedMonomial gives NaN where the angle is 0
  (the diagonal of the (x1, x1) kernels, and its variances, so everywhere after a second such
  layer): recorded as NT gives it.

* nt_combinator_kernels.npz (tests/kernels/test_reference_nt_combinators.py): fan-in concatenation
  (channels and a spatial axis), products, ``repeat``, train-mode ``Dropout`` (NT's rate is the keep
  probability: owidth's ``rate`` is converted) and ``Index`` on vectors and images; kinds "x", "img"
  as in nt_kernels.npz. In the JSON, ``["concat", {"axis": a, "branches": [arch, ...]}]``,
  ``["product", {"branches": [...]}]``, ``["repeat", {"n": n, "block": arch}]``, and ``Index`` items
  are ints, ``"..."`` or ``{"slice": [start, stop, step]}``.

* nt_standard_kernels.npz (tests/kernels/test_reference_nt_standard.py): MLPs and CNNs in NT's
  ``parameterization='standard'`` with hidden width ``SP_WIDTH`` (owidth's
  ``ow.kernel(..., param=ow.SP.with_base_width(SP_WIDTH))``); a zero ``b_std`` is NT's ``b_std=None``
  (no bias parameter, as owidth's), since NT's standard NTK counts a bias of std 0 as trained.

* nt_masked_kernels.npz (tests/kernels/test_reference_nt_masked.py): padded sequences of different
  lengths (NT's ``mask_constant``; owidth reads the stored ``seq1``/``seq2`` with NaN at padding).

``--only base`` / ``cnn`` / ``act`` / ``comb`` / ``sp`` / ``mask`` writes just one of them.
"""

import argparse
import json
import pathlib

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
from neural_tangents import stax  # noqa: E402

REF_DIR = pathlib.Path(__file__).resolve().parents[2] / "tests" / "reference"
OUT = REF_DIR / "nt_kernels.npz"
OUT_CNN = REF_DIR / "nt_cnn_kernels.npz"
OUT_ACT = REF_DIR / "nt_activation_kernels.npz"
OUT_COMB = REF_DIR / "nt_combinator_kernels.npz"
OUT_SP = REF_DIR / "nt_standard_kernels.npz"
OUT_MASK = REF_DIR / "nt_masked_kernels.npz"

R2, B = 2**0.5, 0.1**0.5

ARCHS = {
    "relu3": [["Dense", {"w_std": R2, "b_std": B}], ["Relu", {}], ["Dense", {"w_std": R2, "b_std": B}], ["Relu", {}],
              ["Dense", {"out": 1, "w_std": 1.0, "b_std": 0.0}]],
    "relu_deep10": [x for _ in range(9) for x in (["Dense", {"w_std": R2, "b_std": B}], ["Relu", {}])]
    + [["Dense", {"out": 1, "w_std": 1.0, "b_std": 0.05}]],
    "leaky": [["Dense", {"w_std": 1.3, "b_std": 0.2}], ["LeakyRelu", {"a": 0.1}], ["Dense", {"w_std": 1.1, "b_std": 0.3}],
              ["LeakyRelu", {"a": -0.4}], ["Dense", {"out": 2, "w_std": 0.9, "b_std": 0.1}]],
    "abs": [["Dense", {"w_std": 1.2, "b_std": 0.1}], ["Abs", {}], ["Dense", {"w_std": 0.8, "b_std": 0.2}], ["Abs", {}],
            ["Dense", {"out": 1, "w_std": 1.0}]],
    "erf": [["Dense", {"w_std": 1.7, "b_std": 0.3}], ["Erf", {"a": 1.2, "b": 0.7, "shift": 0.1}],
            ["Dense", {"w_std": 1.4, "b_std": 0.2}], ["Erf", {}], ["Dense", {"out": 1, "w_std": 1.0, "b_std": 0.1}]],
    "gelu": [["Dense", {"w_std": 1.5, "b_std": 0.3}], ["Gelu", {}], ["Dense", {"w_std": 1.2, "b_std": 0.1}], ["Gelu", {}],
             ["Dense", {"out": 1, "w_std": 1.0}]],
    "sin": [["Dense", {"w_std": 1.1, "b_std": 0.2}], ["Sin", {"a": 1.0, "b": 0.9, "shift": 0.2}],
            ["Dense", {"w_std": 1.3, "b_std": 0.1}], ["Sin", {}], ["Dense", {"out": 1, "w_std": 1.0}]],
    "identity": [["Dense", {"w_std": 1.3, "b_std": 0.4}], ["Identity", {}], ["Dense", {"w_std": 0.7, "b_std": 0.2}],
                 ["Dense", {"out": 1, "w_std": 1.1, "b_std": 0.1}]],
    # NT refuses a residual sum whose identity branch carries a post-activation
    # (FanInSum needs Gaussian inputs); owidth supports it, checked by Monte Carlo.
    "residual": [["Dense", {"w_std": R2, "b_std": B}],
                 ["Residual", [["Relu", {}], ["Dense", {"w_std": 1.0, "b_std": 0.1}]]], ["Relu", {}],
                 ["Dense", {"out": 1, "w_std": 1.0, "b_std": 0.0}]],
}


CONV = {"w_std": R2, "b_std": B}
SPATIAL = {
    "cnn_gap": [["Conv", {"filter_shape": [3, 3], **CONV}], ["Relu", {}],
                ["Conv", {"filter_shape": [3, 3], "strides": [2, 2], "padding": "SAME", **CONV}], ["Relu", {}],
                ["GlobalAvgPool", {}], ["Dense", {"out": 1, "w_std": 1.0, "b_std": 0.0}]],
    "cnn_flatten": [["Conv", {"filter_shape": [3, 2], "padding": "VALID", **CONV}], ["Erf", {}],
                    ["Conv", {"filter_shape": [2, 2], "strides": [2, 1], "padding": "SAME", "w_std": 1.3}],
                    ["Relu", {}], ["Flatten", {}], ["Dense", {"out": 1, "w_std": 1.0, "b_std": 0.1}]],
    "cnn_avgpool": [["Conv", {"filter_shape": [3, 3], **CONV}], ["Relu", {}],
                    ["AvgPool", {"window": [2, 2], "strides": [1, 1], "padding": "SAME"}],
                    ["Conv", {"filter_shape": [2, 2], "padding": "VALID", "w_std": 1.2, "b_std": 0.2}], ["Gelu", {}],
                    ["AvgPool", {"window": [2, 2], "strides": [2, 2], "padding": "VALID"}],
                    ["Flatten", {}], ["Dense", {"out": 1, "w_std": 1.0}]],
    "cnn_residual_gap": [["Conv", {"filter_shape": [3, 3], **CONV}],
                         ["Residual", [["Relu", {}], ["Conv", {"filter_shape": [3, 3], "w_std": 1.0, "b_std": 0.1}]]],
                         ["Relu", {}], ["GlobalAvgPool", {}], ["Dense", {"out": 1, "w_std": 1.0}]],
    "conv1d_gap": [["Conv", {"filter_shape": [3], "strides": [2], **CONV}], ["Relu", {}],
                   ["Conv", {"filter_shape": [2], "padding": "VALID", "w_std": 1.1}], ["Abs", {}],
                   ["GlobalAvgPool", {}], ["Dense", {"out": 1, "w_std": 1.0}]],
}
ARCHS.update(SPATIAL)
# LayerNorm of a Gaussian (pre-activation) layer, then ReLU: NT's rule (no centring needed there)
ARCHS["layernorm_relu"] = [["Dense", {"w_std": 1.5, "b_std": 0.3}], ["LayerNorm", {}], ["Relu", {}],
                           ["Dense", {"w_std": R2, "b_std": B}], ["LayerNorm", {}], ["Gelu", {}],
                           ["Dense", {"out": 1, "w_std": 1.0}]]
INPUTS = {name: ("seq" if name.startswith("conv1d") else "img") if name in SPATIAL else "x" for name in ARCHS}


# The benchmark's CNTK (benchmarks/kernels.py, --net cnn): 2 x [Conv 3x3 SAME, act], GlobalAvgPool, Dense(1).
def _cnn2_gap(act):
    conv = ["Conv", {"filter_shape": [3, 3], "padding": "SAME", **CONV}]
    return [conv, [act, {}], conv, [act, {}], ["GlobalAvgPool", {}], ["Dense", {"out": 1, "w_std": 1.0, "b_std": 0.0}]]


# Myrtle-style (Shankar et al. 2020): 3 x [Conv 3x3 SAME, Relu], AvgPool(2x2, stride 2, VALID) after the
# 2nd and 3rd, GlobalAvgPool, Dense(1). Strides are spelled out: owidth's AvgPool defaults to
# strides = window, NT 0.6.5's to stride 1.
_CR = [["Conv", {"filter_shape": [3, 3], "padding": "SAME", **CONV}], ["Relu", {}]]
_POOL = ["AvgPool", {"window": [2, 2], "strides": [2, 2], "padding": "VALID"}]
CNN_ARCHS = {
    "cnn2_gap_relu_10x10x3": _cnn2_gap("Relu"),
    "cnn2_gap_relu_7x9x2": _cnn2_gap("Relu"),
    "cnn2_gap_erf_7x9x2": _cnn2_gap("Erf"),
    "cnn2_gap_gelu_7x9x2": _cnn2_gap("Gelu"),
    "myrtle_8x8x3": _CR + _CR + [_POOL] + _CR + [_POOL, ["GlobalAvgPool", {}],
                                                 ["Dense", {"out": 1, "w_std": 1.0, "b_std": 0.0}]],
}
CNN_INPUTS = {name: "img" + name.rsplit("_", 1)[1] for name in CNN_ARCHS}


# MLPs with NT's closed-form activations: [Dense, act1, Dense, act2, Dense(1)], or one activation
# layer where NT's rule needs unit pre-activation variance (Hermite) or NT's second layer is NaN
# (RectifiedMonomial).
def _mlp2(act1, act2, d1=(1.3, 0.2), d2=(1.1, 0.1)):
    return [["Dense", {"w_std": d1[0], "b_std": d1[1]}], act1, ["Dense", {"w_std": d2[0], "b_std": d2[1]}], act2,
            ["Dense", {"out": 1, "w_std": 1.0, "b_std": 0.1}]]


_POLY = [0.5, -1.0, 0.3, 0.2]
ACT_ARCHS = {
    "cos": _mlp2(["Cos", {"a": 1.2, "b": 0.8, "shift": 0.3}], ["Cos", {}]),
    "rbf": _mlp2(["Rbf", {"gamma": 0.7}], ["Rbf", {"gamma": 1.3}]),
    # small variances: E exp(2 b u) = exp(2 b^2 q) stays moderate
    "exp": _mlp2(["Exp", {"a": 0.9, "b": 0.5}], ["Exp", {"a": 1.1, "b": 0.4}], d1=(0.8, 0.1), d2=(0.8, 0.1)),
    "gaussian": _mlp2(["Gaussian", {"a": 1.5, "b": -0.7}], ["Gaussian", {"a": 0.8, "b": -1.2}]),
    "gabor": _mlp2(["Gabor", {}], ["Gabor", {}]),
    "sign": _mlp2(["Sign", {}], ["Sign", {}]),
    "exp_normalized": _mlp2(["ExpNormalized", {"gamma": 0.8, "shift": -0.5}], ["ExpNormalized", {}]),
    "polynomial": _mlp2(["Polynomial", {"coef": _POLY}], ["Polynomial", {"coef": _POLY}]),
    "monomial2": _mlp2(["Monomial", {"degree": 2}], ["Monomial", {"degree": 2}]),
    "monomial3": _mlp2(["Monomial", {"degree": 3}], ["Monomial", {"degree": 3}]),
    # NT's RectifiedMonomial computes the variances (cov1/cov2) at angle 0, where its
    # (pi - theta) / sin(theta) gives NaN, so one layer of it is NaN on the diagonal of (x1, x1) only,
    # and a second layer NaN everywhere: kept as a record of NT's defect (owidth is finite there).
    "rectified_monomial2_twice": _mlp2(["RectifiedMonomial", {"degree": 2}], ["RectifiedMonomial", {"degree": 2}]),
}
for _n in (0, 2, 3):
    ACT_ARCHS[f"rectified_monomial{_n}"] = [["Dense", {"w_std": 1.3, "b_std": 0.2}],
                                            ["RectifiedMonomial", {"degree": _n}],
                                            ["Dense", {"out": 1, "w_std": 1.0, "b_std": 0.1}]]
for _n in (2, 3):  # unit pre-activation variance: Dense(w_std=1, b_std=0) on rows with |x|^2 = d
    ACT_ARCHS[f"hermite{_n}"] = [["Dense", {"w_std": 1.0, "b_std": 0.0}], ["Hermite", {"degree": _n}],
                                 ["Dense", {"out": 1, "w_std": 1.0, "b_std": 0.0}]]
ACT_INPUTS = {name: "xunit" if name.startswith("hermite") else "x" for name in ACT_ARCHS}


# Combinators and shape layers (concat, product, repeat, Dropout, Index)
_D = lambda w=1.0, b=0.0: ["Dense", {"w_std": w, "b_std": b}]  # noqa: E731
_C = lambda w=1.0, b=0.0, fs=(3, 3): ["Conv", {"filter_shape": list(fs), "w_std": w, "b_std": b}]  # noqa: E731
_OUT = ["Dense", {"out": 1, "w_std": 1.0, "b_std": 0.1}]
COMB_ARCHS = {
    "concat_dense": [_D(1.3, 0.2), ["Relu", {}],
                     ["concat", {"axis": -1, "branches": [[_D(1.1, 0.1)], [_D(0.7, 0.3), ["Erf", {}], _D(1.4, 0.2)]]}],
                     _D(1.2, 0.1), ["Relu", {}], _OUT],
    "concat_free_branch": [_D(1.3, 0.2), ["concat", {"axis": -1, "branches": [[["Relu", {}]], [_D(0.9, 0.4)]]}],
                           _D(1.1, 0.1), ["Gelu", {}], _OUT],
    "concat_pixels_gap": [_C(1.3, 0.2), ["Relu", {}],
                          ["concat", {"axis": 1, "branches": [[_C(1.1, 0.1)], [_C(0.8, 0.3, (2, 2))]]}],
                          ["Relu", {}], ["GlobalAvgPool", {}], _OUT],
    "concat_width_flatten": [_C(1.3, 0.2), ["Erf", {}],
                             ["concat", {"axis": 2, "branches": [[_C(1.1, 0.1)], [_C(0.8, 0.3)]]}],
                             ["Relu", {}], ["Flatten", {}], _OUT],
    "concat_channels_conv": [_C(1.3, 0.2), ["Relu", {}],
                             ["concat", {"axis": -1, "branches": [[_C(1.1, 0.1)], [_C(0.8, 0.3, (1, 1))]]}],
                             _C(1.0, 0.1), ["Relu", {}], ["GlobalAvgPool", {}], _OUT],
    # branches of different numbers of units (a flattened |S| n next to n): a weighted average
    "concat_flatten_gap": [_C(1.3, 0.2), ["Relu", {}],
                           ["concat", {"axis": -1, "branches": [[_C(1.1, 0.1), ["Relu", {}], ["Flatten", {}]],
                                                                [_C(0.8, 0.3), ["Erf", {}], ["GlobalAvgPool", {}]]]}],
                           _D(1.2, 0.1), ["Relu", {}], _OUT],
    "product_dense": [_D(1.3, 0.2), ["Relu", {}], ["product", {"branches": [[_D(1.1, 0.1)], [_D(0.8, 0.3)]]}],
                      _D(1.2, 0.1), ["Relu", {}], _OUT],
    "product_free_branch": [_D(1.3, 0.2), ["product", {"branches": [[["Erf", {}]], [_D(0.9, 0.4)]]}],
                            _D(1.1, 0.1), ["Relu", {}], _OUT],
    "product_conv_gap": [_C(1.3, 0.2), ["Relu", {}], ["product", {"branches": [[_C(1.1, 0.1)], [_C(0.8, 0.3)]]}],
                         _C(1.0, 0.1), ["Relu", {}], ["GlobalAvgPool", {}], _OUT],
    "repeat_relu": [_D(1.3, 0.2), ["repeat", {"n": 6, "block": [["Relu", {}], _D(R2, B)]}], ["Relu", {}], _OUT],
    "repeat_erf_conv": [_C(1.3, 0.2), ["repeat", {"n": 4, "block": [["Erf", {}], _C(1.2, 0.1)]}], ["Relu", {}],
                        ["Flatten", {}], _OUT],
    "dropout_mlp": [_D(1.3, 0.2), ["Relu", {}], ["Dropout", {"rate": 0.2}], _D(1.1, 0.1), ["Erf", {}],
                    ["Dropout", {"rate": 0.5}], _OUT],
    "dropout_conv_gap": [_C(1.3, 0.2), ["Relu", {}], ["Dropout", {"rate": 0.3}], _C(1.1, 0.1), ["Relu", {}],
                         ["GlobalAvgPool", {}], _OUT],
    "dropout_conv_flatten": [_C(1.3, 0.2), ["Relu", {}], ["Dropout", {"rate": 0.3}], ["Flatten", {}], _OUT],
    "index_crop_gap": [_C(1.3, 0.2), ["Relu", {}], ["Index", {"idx": [{"slice": [None, None, None]},
                                                                     {"slice": [1, 4, None]}]}],
                       _C(1.1, 0.1), ["Relu", {}], ["GlobalAvgPool", {}], _OUT],
    "index_row_conv1d": [_C(1.3, 0.2), ["Relu", {}], ["Index", {"idx": [{"slice": [None, None, None]}, 0, "..."]}],
                         _C(1.1, 0.1, (2,)), ["Relu", {}], ["Flatten", {}], _OUT],
    "index_stride_flatten": [_C(1.3, 0.2), ["Erf", {}],
                             ["Index", {"idx": ["...", {"slice": [None, None, 2]}, {"slice": [None, None, None]}]}],
                             ["Flatten", {}], _OUT],
}
COMB_INPUTS = {name: "x" if name.endswith(("dense", "branch", "relu", "mlp")) else "img" for name in COMB_ARCHS}


SP_WIDTH = 64
SP_ARCHS = {
    "sp_relu3": [_D(R2, B), ["Relu", {}], _D(1.1, 0.3), ["Relu", {}], _OUT],
    "sp_erf_nobias": [_D(1.3), ["Erf", {}], _D(1.2), ["Erf", {}], ["Dense", {"out": 1, "w_std": 0.9}]],
    "sp_cnn_flatten": [_C(1.3, 0.2), ["Relu", {}], _C(1.1, 0.1, (2, 2)), ["Relu", {}], ["Flatten", {}], _OUT],
    "sp_cnn_gap": [_C(1.3, 0.2), ["Relu", {}], _C(1.1), ["Gelu", {}], ["GlobalAvgPool", {}], _OUT],
    # NT 0.6.5's standard-parametrization ConvTranspose and ConvLocal kernels fail (an AssertionError, or "axis -2
    # is out of bounds", with strides, x2, or a layer after them that needs all pixel pairs): owidth's are checked
    # against Monte Carlo and against its Conv in tests/kernels/test_reference_nt_standard.py
}
SP_INPUTS = {name: "img" if "cnn" in name else "x" for name in SP_ARCHS}


def nt_layer_standard(name, kw):
    """NT layers in the standard parameterization, hidden width SP_WIDTH."""
    b_std = kw.get("b_std", 0.0) or None
    if name == "Dense":
        return stax.Dense(kw.get("out", SP_WIDTH), W_std=kw.get("w_std", 1.0), b_std=b_std,
                          parameterization="standard")
    if name == "Conv":
        fs = tuple(kw["filter_shape"])
        return stax.Conv(kw.get("out", SP_WIDTH), fs, padding=kw.get("padding", "SAME"), W_std=kw.get("w_std", 1.0),
                         b_std=b_std, dimension_numbers=("NHWC", "HWIO", "NHWC"), parameterization="standard")
    return nt_layer(name, kw)


MASK_ARCHS = {
    "mask_conv_gap": [_C(1.3, 0.2, (3,)), ["Relu", {}], _C(1.1, 0.1, (3,)), ["Erf", {}], ["GlobalAvgPool", {}], _OUT],
    "mask_dense_gsp": [_D(1.3, 0.2), ["Relu", {}], _D(1.1, 0.1), ["Gelu", {}], ["GlobalSumPool", {}], _OUT],
    "mask_conv_flatten": [_C(1.3, 0.2, (2,)), ["Relu", {}], _C(0.9, 0.3, (3,)), ["Relu", {}], ["Flatten", {}], _OUT],
}
MASK_INPUTS = {name: "seq" for name in MASK_ARCHS}
MASK_CONSTANT = 1e3  # NT's padding value; owidth's files hold NaN there


def nt_index(items):
    return tuple(Ellipsis if i == "..." else slice(*i["slice"]) if isinstance(i, dict) else i for i in items)


def nt_layer(name, kw):
    if name == "Dense":
        return stax.Dense(kw.get("out", 512), W_std=kw.get("w_std", 1.0), b_std=kw.get("b_std", 0.0))
    if name == "Relu":
        return stax.Relu()
    if name == "LeakyRelu":
        return stax.LeakyRelu(alpha=kw["a"])
    if name == "Abs":
        return stax.Abs()
    if name == "Erf":
        return stax.Erf(a=kw.get("a", 1.0), b=kw.get("b", 1.0), c=kw.get("shift", 0.0))
    if name == "Gelu":
        return stax.Gelu(approximate=False)
    if name == "Sin":
        return stax.Sin(a=kw.get("a", 1.0), b=kw.get("b", 1.0), c=kw.get("shift", 0.0))
    if name == "Identity":
        return stax.Identity()
    if name == "Cos":
        return stax.Cos(a=kw.get("a", 1.0), b=kw.get("b", 1.0), c=kw.get("shift", 0.0))
    if name == "Rbf":
        return stax.Rbf(gamma=kw.get("gamma", 1.0))
    if name == "Exp":
        return stax.Exp(a=kw.get("a", 1.0), b=kw.get("b", 1.0))
    if name == "Gaussian":
        return stax.Gaussian(a=kw.get("a", 1.0), b=kw.get("b", -1.0))
    if name == "Gabor":
        return stax.Gabor()
    if name == "Sign":
        return stax.Sign()
    if name == "ExpNormalized":
        return stax.ExpNormalized(gamma=kw.get("gamma", 1.0), shift=kw.get("shift", -1.0), do_clip=True)
    if name == "Polynomial":
        return stax.Polynomial(list(kw["coef"]))
    if name == "Monomial":
        return stax.Monomial(kw["degree"])  # NT: degree <= 5
    if name == "Hermite":
        return stax.Hermite(kw["degree"])  # NT's rule assumes unit pre-activation variance
    if name == "RectifiedMonomial":
        return stax.RectifiedMonomial(kw["degree"])
    if name == "Conv":
        fs = tuple(kw["filter_shape"])
        dn = ("NWC", "WIO", "NWC") if len(fs) == 1 else ("NHWC", "HWIO", "NHWC")
        return stax.Conv(kw.get("out", 512), fs, strides=tuple(kw["strides"]) if "strides" in kw else None,
                         padding=kw.get("padding", "SAME"), W_std=kw.get("w_std", 1.0), b_std=kw.get("b_std", 0.0),
                         dimension_numbers=dn)
    if name == "AvgPool":
        # owidth's default strides are the window; NT's (strides=None) would be 1, so never pass None
        window = tuple(kw["window"])
        return stax.AvgPool(window, strides=tuple(kw.get("strides", window)), padding=kw.get("padding", "VALID"))
    if name == "SumPool":
        window = tuple(kw["window"])
        return stax.SumPool(window, strides=tuple(kw.get("strides", window)), padding=kw.get("padding", "VALID"))
    if name == "GlobalAvgPool":
        return stax.GlobalAvgPool()
    if name == "GlobalSumPool":
        return stax.GlobalSumPool()
    if name == "Flatten":
        return stax.Flatten()
    if name == "LayerNorm":
        return stax.LayerNorm(axis=-1)
    if name == "concat":
        branches = [stax.serial(*[nt_layer(n, k) for n, k in arch]) for arch in kw["branches"]]
        return stax.serial(stax.FanOut(len(branches)), stax.parallel(*branches), stax.FanInConcat(axis=kw["axis"]))
    if name == "product":
        branches = [stax.serial(*[nt_layer(n, k) for n, k in arch]) for arch in kw["branches"]]
        return stax.serial(stax.FanOut(len(branches)), stax.parallel(*branches), stax.FanInProd())
    if name == "repeat":
        return stax.repeat(stax.serial(*[nt_layer(n, k) for n, k in kw["block"]]), kw["n"])
    if name == "Dropout":
        return stax.Dropout(1.0 - kw["rate"], mode="train")  # NT's rate is the keep probability
    if name == "Index":
        return stax.Index(nt_index(kw["idx"]))
    if name == "Residual":
        block = stax.serial(*[nt_layer(n, k) for n, k in kw])
        return stax.serial(stax.FanOut(2), stax.parallel(stax.Identity(), block), stax.FanInSum())
    raise ValueError(name)


def dump(path, archs, inputs, data, extra, layer=None, **kernel_kwargs):
    """NT's NNGP/NTK of every architecture on its inputs, saved with ``extra`` (the inputs) to ``path``;
    ``layer`` maps one JSON layer to NT (default :func:`nt_layer`); ``kernel_kwargs`` go to NT's kernel_fn."""
    layer = layer or nt_layer
    out = {**extra, "archs": np.array(json.dumps(archs)), "inputs": np.array(json.dumps(inputs))}
    for name, arch in archs.items():
        x1, x2 = data[inputs[name]]
        print(name, flush=True)
        _, _, kfn = stax.serial(*[layer(n, k) for n, k in arch])
        k11 = kfn(x1, None, ("nngp", "ntk"), **kernel_kwargs)
        k12 = kfn(x1, x2, ("nngp", "ntk"), **kernel_kwargs)
        out[f"{name}/nngp11"], out[f"{name}/ntk11"] = np.asarray(k11.nngp), np.asarray(k11.ntk)
        out[f"{name}/nngp12"], out[f"{name}/ntk12"] = np.asarray(k12.nngp), np.asarray(k12.ntk)
    out["versions"] = np.array(json.dumps({"jax": jax.__version__, "neural_tangents": "0.6.5"}))
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **out)
    print(f"wrote {path} ({path.stat().st_size} bytes, {len(archs)} architectures)")


def main_base():
    rng = np.random.RandomState(1234)
    x1 = rng.randn(6, 5)
    x2 = rng.randn(4, 5)
    data = {"x": (x1, x2), "img": (rng.randn(4, 5, 4, 2), rng.randn(3, 5, 4, 2)),
            "seq": (rng.randn(4, 9, 2), rng.randn(3, 9, 2))}
    extra = {"x1": x1, "x2": x2, "img1": data["img"][0], "img2": data["img"][1], "seq1": data["seq"][0],
             "seq2": data["seq"][1]}
    dump(OUT, ARCHS, INPUTS, data, extra)


def main_cnn():
    rng = np.random.RandomState(2020)
    shapes = {"img10x10x3": ((4, 10, 10, 3), (2, 10, 10, 3)), "img7x9x2": ((3, 7, 9, 2), (2, 7, 9, 2)),
              "img8x8x3": ((4, 8, 8, 3), (3, 8, 8, 3))}
    data = {kind: (rng.randn(*s1), rng.randn(*s2)) for kind, (s1, s2) in shapes.items()}
    extra = {f"{kind}{i + 1}": xs[i] for kind, xs in data.items() for i in range(2)}
    dump(OUT_CNN, CNN_ARCHS, CNN_INPUTS, data, extra)


def main_act():
    rng = np.random.RandomState(1234)  # the vectors "x" of main_base
    x1, x2 = rng.randn(6, 5), rng.randn(4, 5)
    u1, u2 = (x * np.sqrt(x.shape[1]) / np.linalg.norm(x, axis=1, keepdims=True) for x in (x1, x2))
    data = {"x": (x1, x2), "xunit": (u1, u2)}
    dump(OUT_ACT, ACT_ARCHS, ACT_INPUTS, data, {"x1": x1, "x2": x2, "xunit1": u1, "xunit2": u2})


def _vectors_and_images():
    """The vectors "x" and images "img" of main_base (same seed): ``(data, extra)`` for :func:`dump`."""
    rng = np.random.RandomState(1234)
    x1, x2 = rng.randn(6, 5), rng.randn(4, 5)
    img1, img2 = rng.randn(4, 5, 4, 2), rng.randn(3, 5, 4, 2)
    return {"x": (x1, x2), "img": (img1, img2)}, {"x1": x1, "x2": x2, "img1": img1, "img2": img2}


def main_comb():
    dump(OUT_COMB, COMB_ARCHS, COMB_INPUTS, *_vectors_and_images())


def main_sp():
    data, extra = _vectors_and_images()
    dump(OUT_SP, SP_ARCHS, SP_INPUTS, data, {**extra, "sp_width": np.array(SP_WIDTH)}, layer=nt_layer_standard)


def pad_sequences(pairs):
    """``(x, lengths)`` pairs: each sequence ``x[i]`` set to MASK_CONSTANT after ``lengths[i]`` (in place, NT's
    form), and the same inputs with NaN there instead (owidth's form)."""
    for x, lengths in pairs:
        for i, length in enumerate(lengths):
            x[i, length:] = MASK_CONSTANT
    return [np.where(x == MASK_CONSTANT, np.nan, x) for x, _ in pairs]


def main_mask():
    rng = np.random.RandomState(77)
    x1, x2 = rng.randn(4, 7, 2), rng.randn(3, 7, 2)
    nan1, nan2 = pad_sequences([(x1, (7, 5, 2, 4)), (x2, (3, 7, 6))])
    # NT's convolutions take SAME padding from the layer; owidth's Conv default is SAME too
    dump(OUT_MASK, MASK_ARCHS, MASK_INPUTS, {"seq": (x1, x2)}, {"seq1": nan1, "seq2": nan2},
         mask_constant=MASK_CONSTANT)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=("base", "cnn", "act", "comb", "sp", "mask"), help="write only this file (default: all)")
    only = p.parse_args().only
    if only in (None, "base"):
        main_base()
    if only in (None, "cnn"):
        main_cnn()
    if only in (None, "act"):
        main_act()
    if only in (None, "comb"):
        main_comb()
    if only in (None, "sp"):
        main_sp()
    if only in (None, "mask"):
        main_mask()


if __name__ == "__main__":
    main()
