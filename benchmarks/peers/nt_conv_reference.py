"""Dump neural-tangents 0.6.5 reference kernels of transposed convolutions, locally connected layers and
image resizing for owidth's tests.

Run inside the legacy venv (never imported by owidth or its tests):

    $(bash benchmarks/peers/build_venv.sh) benchmarks/peers/nt_conv_reference.py

writes tests/reference/nt_conv_more_kernels.npz (tests/kernels/test_reference_nt_conv_more.py) with the
conventions of nt_reference.py (whose ``nt_layer`` and ``dump`` it reuses): the architectures as JSON
(a list of [layer, kwargs] in owidth's names), which inputs each one takes (``inputs``: name -> kind),
the inputs ``{kind}1``/``{kind}2`` and NT's NNGP/NTK for (x1, x1) and (x1, x2), all float64.

Kinds: "img" images (4, 5, 4, 2) / (3, 5, 4, 2) and "seq" sequences (4, 9, 2) / (3, 9, 2) (RandomState
1234, as nt_reference.py's main_base). NT mapping of the layers added here:

* ``ConvTranspose`` / ``ConvLocal``: ``stax.ConvTranspose`` / ``stax.ConvLocal`` with NHWC/HWIO (NWC/WIO)
  dimension numbers and the padding always given (owidth's default is SAME, NT's VALID);
* ``ImageResize(shape, method)``: ``stax.ImageResize((-1, *shape, -1), method)`` (owidth's ``shape`` is
  the spatial one; ``-1`` keeps an axis in both).

It also writes tests/reference/nt_conv_masked_kernels.npz (tests/kernels/test_reference_nt_masked.py):
the ``MASKED`` architectures (layers that change the position grid: strided and VALID convolutions,
windowed pooling, transposed and local convolutions, resizing, indexing, spatial concatenation) on
padded sequences (lengths 9, 6, 3, 7 / 5, 9, 4 of 9) and images (valid top-left blocks of 5 x 4),
given to NT with ``mask_constant``; the stored ``{kind}1``/``{kind}2`` hold NaN at padding (owidth's form).
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import nt_reference as base  # noqa: E402  (sets jax_enable_x64)
import numpy as np  # noqa: E402
from neural_tangents import stax  # noqa: E402

OUT = base.REF_DIR / "nt_conv_more_kernels.npz"
OUT_MASKED = base.REF_DIR / "nt_conv_masked_kernels.npz"

_OUT = ["Dense", {"out": 1, "w_std": 1.0, "b_std": 0.1}]
_RELU = ["Relu", {}]


def _layer(name, fs, strides=None, padding="SAME", w=1.3, b=0.2):
    kw = {"filter_shape": list(fs), "padding": padding, "w_std": w, "b_std": b}
    if strides is not None:
        kw["strides"] = list(strides)
    return [name, kw]


def _resize(shape, method):
    return ["ImageResize", {"shape": list(shape), "method": method}]


ARCHS = {
    # transposed convolutions: upsampling by strides, SAME and VALID, k > s, k = s and k < s (gaps)
    "convT_same_s2_flatten": [_layer("ConvTranspose", (3, 3), (2, 2)), _RELU, ["Flatten", {}], _OUT],
    "convT_valid_gap": [_layer("Conv", (2, 2)), _RELU, _layer("ConvTranspose", (3, 2), (2, 1), "VALID", 1.1, 0.1),
                        _RELU, ["GlobalAvgPool", {}], _OUT],
    "convT_1d_valid_s3_flatten": [_layer("ConvTranspose", (2,), (3,), "VALID"), ["Erf", {}],
                                  _layer("ConvTranspose", (3,), (1,), "SAME", 1.1, 0.0), _RELU, ["Flatten", {}], _OUT],
    "convT_1d_same_gap": [_layer("ConvTranspose", (4,), (2,)), _RELU, _layer("ConvTranspose", (3,), (3,), "SAME", 1.2),
                          _RELU, ["GlobalAvgPool", {}], _OUT],
    # locally connected layers: same-pixel rule of Conv, zero across pixels (pooling sees it)
    "convlocal_same_flatten": [_layer("ConvLocal", (3, 3)), _RELU, _layer("ConvLocal", (2, 2), (2, 1), "SAME", 1.1),
                               _RELU, ["Flatten", {}], _OUT],
    "convlocal_valid_gap": [_layer("Conv", (3, 3)), _RELU, _layer("ConvLocal", (2, 2), None, "VALID", 1.2, 0.3),
                            _RELU, ["GlobalAvgPool", {}], _OUT],
    "convlocal_1d_gap": [_layer("ConvLocal", (3,), (2,), "SAME"), _RELU, _layer("Conv", (2,), None, "VALID", 1.1),
                         _RELU, ["GlobalAvgPool", {}], _OUT],
    # resizing: on the data, of Gaussian pre-activations (then an activation), up and down, 1-D and 2-D
    "resize_linear_up_flatten": [_layer("Conv", (3, 3)), _resize((8, 6), "linear"), _RELU, ["Flatten", {}], _OUT],
    "resize_linear_down_gap": [_layer("Conv", (2, 2)), _RELU, _resize((3, -1), "linear"), _layer("Conv", (2, 2)),
                               _RELU, ["GlobalAvgPool", {}], _OUT],
    "resize_nearest_up_flatten": [_layer("Conv", (3, 3)), _resize((7, 9), "nearest"), _RELU, ["Flatten", {}], _OUT],
    "resize_nearest_down_gap": [_layer("Conv", (2, 2)), _RELU, _layer("Conv", (2, 2), None, "SAME", 1.1),
                                _resize((3, 2), "nearest"), _RELU, ["GlobalAvgPool", {}], _OUT],
    # NT 0.6.5 resizes a kernel whose spatial axes its Conv stored reversed (an odd number of full-spatial
    # shared-weight convolutions before it) along the wrong axes: these two-conv versions of the three
    # nets above are free of that (the test checks the three above against owidth with the sizes swapped)
    "resize_linear_up_flatten_2conv": [_layer("Conv", (3, 3)), _RELU, _layer("Conv", (2, 2), None, "SAME", 1.1),
                                       _resize((8, 6), "linear"), _RELU, ["Flatten", {}], _OUT],
    "resize_linear_down_gap_2conv": [_layer("Conv", (2, 2)), _RELU, _layer("Conv", (3, 3), None, "SAME", 1.1), _RELU,
                                     _resize((3, -1), "linear"), _layer("Conv", (2, 2)), _RELU, ["GlobalAvgPool", {}],
                                     _OUT],
    "resize_nearest_up_flatten_2conv": [_layer("Conv", (3, 3)), ["Erf", {}], _layer("Conv", (2, 2), None, "SAME", 1.2),
                                        _resize((7, 9), "nearest"), _RELU, ["Flatten", {}], _OUT],
    "resize_input_linear_flatten": [_resize((7, 5), "linear"), _layer("Conv", (3, 3)), _RELU, ["Flatten", {}], _OUT],
    "resize_1d_linear_gap": [_layer("Conv", (3,)), _resize((13,), "linear"), _RELU, ["GlobalAvgPool", {}], _OUT],
    "resize_1d_nearest_down_flatten": [_layer("Conv", (3,)), _resize((4,), "nearest"), _RELU, ["Flatten", {}], _OUT],
}
INPUTS = {name: "seq" if "_1d_" in name else "img" for name in ARCHS}


def _pool(name, window, strides=None, padding="VALID"):
    kw = {"window": list(window), "padding": padding}
    if strides is not None:
        kw["strides"] = list(strides)
    return [name, kw]


_GAP = ["GlobalAvgPool", {}]
MASKED = {
    # sequences: strided / VALID convolutions (NT's centre rule), pooling, transposed (the mask spreads) and
    # local convolutions, resizing (content wins), indexing, spatial concatenation
    "mask_conv_s2_valid": [_layer("Conv", (3,), (2,)), _RELU, _layer("Conv", (2,), None, "VALID", 1.1, 0.1), _RELU,
                           _GAP, _OUT],
    "mask_conv_valid_flatten": [_layer("Conv", (3,), None, "VALID"), ["Erf", {}],
                                _layer("Conv", (3,), (2,), "VALID", 1.2, 0.3), _RELU, ["Flatten", {}], _OUT],
    "mask_avgpool": [_layer("Conv", (3,)), _RELU, _pool("AvgPool", (2,)), _layer("Conv", (2,), None, "SAME", 1.1),
                     _RELU, _GAP, _OUT],
    "mask_sumpool_same": [["Dense", {"w_std": 1.2, "b_std": 0.2}], _RELU, _pool("SumPool", (3,), (2,), "SAME"),
                          _layer("Conv", (2,), None, "SAME", 0.8), _RELU, ["GlobalSumPool", {}], _OUT],
    "mask_convT_s2": [_layer("Conv", (2,)), _RELU, _layer("ConvTranspose", (3,), (2,), "SAME", 1.1, 0.1), _RELU, _GAP,
                      _OUT],
    "mask_convT_s1_valid": [_layer("ConvTranspose", (3,), (1,), "SAME"), _RELU,
                            _layer("ConvTranspose", (2,), (3,), "VALID", 1.1, 0.0), _RELU, ["Flatten", {}], _OUT],
    "mask_convlocal": [_layer("ConvLocal", (3,), (2,), "SAME"), _RELU, _layer("ConvLocal", (2,), None, "VALID", 1.2),
                       _RELU, _GAP, _OUT],
    "mask_resize_up_linear": [_layer("Conv", (3,)), _resize((13,), "linear"), _RELU, _GAP, _OUT],
    "mask_resize_down_nearest": [_layer("Conv", (3,)), _RELU, _resize((4,), "nearest"),
                                 _layer("Conv", (2,), None, "SAME", 1.1), _RELU, ["Flatten", {}], _OUT],
    "mask_index": [_layer("Conv", (3,)), _RELU, ["Index", {"idx": [{"slice": [None, None]}, {"slice": [1, None, 2]}]}],
                   _layer("Conv", (2,), None, "SAME", 1.1), _RELU, _GAP, _OUT],
    "mask_concat_positions": [["concat", {"axis": 1, "branches": [[_layer("Conv", (3,))],
                                                                 [_layer("Conv", (2,), (2,), "SAME", 1.1, 0.3)]]}],
                              _RELU, _GAP, _OUT],
    # images: a 2-D grid with padding on both axes
    "mask_img_conv_s2_pool": [_layer("Conv", (3, 3), (2, 2)), _RELU, _layer("Conv", (2, 2), None, "SAME", 1.1),
                              _RELU, _pool("AvgPool", (2, 2), (1, 1), "SAME"), _layer("Conv", (2, 2), None, "SAME"),
                              _RELU, _GAP, _OUT],
    "mask_img_index_row": [_layer("Conv", (3, 3)), _RELU, ["Index", {"idx": [{"slice": [None, None]}, 1]}],
                           _layer("Conv", (2,), None, "SAME", 1.1), _RELU, _GAP, _OUT],
    "mask_img_convT": [_layer("Conv", (2, 2)), _RELU, _layer("ConvTranspose", (2, 3), (2, 1), "SAME", 1.2, 0.1),
                       _RELU, ["Flatten", {}], _OUT],
}
MASKED_INPUTS = {name: "img" if "_img_" in name else "seq" for name in MASKED}

_base_layer = base.nt_layer


def nt_layer(name, kw):
    if name in ("ConvTranspose", "ConvLocal"):
        fs = tuple(kw["filter_shape"])
        dn = ("NWC", "WIO", "NWC") if len(fs) == 1 else ("NHWC", "HWIO", "NHWC")
        make = stax.ConvTranspose if name == "ConvTranspose" else stax.ConvLocal
        return make(kw.get("out", 512), fs, strides=tuple(kw["strides"]) if "strides" in kw else None,
                    padding=kw["padding"], W_std=kw.get("w_std", 1.0), b_std=kw.get("b_std", 0.0),
                    dimension_numbers=dn)
    if name == "ImageResize":
        return stax.ImageResize((-1, *kw["shape"], -1), kw["method"])
    return _base_layer(name, kw)


def main():
    base.nt_layer = nt_layer  # dump() (and nested combinators) build layers through the module's nt_layer
    rng = np.random.RandomState(1234)
    img1, img2 = rng.randn(4, 5, 4, 2), rng.randn(3, 5, 4, 2)
    seq1, seq2 = rng.randn(4, 9, 2), rng.randn(3, 9, 2)
    data = {"img": (img1, img2), "seq": (seq1, seq2)}
    base.dump(OUT, ARCHS, INPUTS, data, {"img1": img1, "img2": img2, "seq1": seq1, "seq2": seq2})
    # padded copies
    base.pad_sequences([(seq1, (9, 6, 3, 7)), (seq2, (5, 9, 4))])
    for x, blocks in ((img1, ((5, 4), (3, 4), (5, 2), (2, 3))), (img2, ((4, 4), (5, 4), (2, 2)))):
        for i, (h, w) in enumerate(blocks):
            x[i, h:] = base.MASK_CONSTANT
            x[i, :, w:] = base.MASK_CONSTANT
    nan = {f"{kind}{i + 1}": np.where(x == base.MASK_CONSTANT, np.nan, x)
           for kind, xs in (("img", (img1, img2)), ("seq", (seq1, seq2))) for i, x in enumerate(xs)}
    base.dump(OUT_MASKED, MASKED, MASKED_INPUTS, data, nan, mask_constant=base.MASK_CONSTANT)


if __name__ == "__main__":
    main()
