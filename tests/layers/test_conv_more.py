"""``ow.ConvTranspose``, ``ow.ConvLocal`` and ``ow.ImageResize`` beyond the neural-tangents references
(tests/kernels/test_reference_nt_conv_more.py): Monte Carlo over finite networks within 4 standard errors
with a power check (one hidden layer before the readout, where the expected empirical kernels equal the
analytic ones at any width; also the resize methods NT has no kernel for), finite networks under every
parametrization with their muP roles, and bad input."""

import jax
import numpy as np
import pytest

import owidth as ow
from helpers import check_monte_carlo, raises_before_compiling

D = ow.Dense


def _check_mc(net, x, other, *, samples=1500, width=32):
    check_monte_carlo(net, x, other, samples=samples, width=width)


def _x(shape=(3, 4, 3, 2), seed=0):
    return np.random.default_rng(seed).normal(size=shape)


def _conv_transpose(w=1.2):
    return ow.serial(ow.ConvTranspose(filter_shape=(3, 2), strides=(2, 2), w_std=w, b_std=0.3), ow.Relu(),
                     ow.Flatten(), D(out=1, w_std=1.0, b_std=0.1))


def _conv_transpose_1d(w=1.2):  # k < stride: output pixels between taps see only the bias
    return ow.serial(ow.ConvTranspose(filter_shape=(2,), strides=(3,), padding="VALID", w_std=w, b_std=0.3),
                     ow.Relu(), ow.GlobalAvgPool(), D(out=1, w_std=1.0, b_std=0.1))


def _conv_local(w=1.2):  # global pooling after it: relu's means make the cross-pixel terms
    return ow.serial(ow.ConvLocal(filter_shape=(2, 2), strides=(1, 2), w_std=w, b_std=0.3), ow.Relu(),
                     ow.GlobalAvgPool(), D(out=1, w_std=1.0, b_std=0.1))


def _resize(method, shape=(7, 2), w=1.2):
    return ow.serial(ow.Conv(filter_shape=(2, 2), w_std=w, b_std=0.3), ow.ImageResize(shape, method), ow.Relu(),
                     ow.GlobalAvgPool(), D(out=1, w_std=1.0, b_std=0.1))


MC_CASES = {
    "conv_transpose": (_conv_transpose, (3, 4, 3, 2)),
    "conv_transpose_1d": (_conv_transpose_1d, (3, 5, 2)),
    "conv_local": (_conv_local, (3, 4, 3, 2)),
    "resize_linear": (lambda w=1.2: _resize("linear", w=w), (3, 4, 3, 2)),
    "resize_nearest": (lambda w=1.2: _resize("nearest", w=w), (3, 4, 3, 2)),
    # methods whose kernel NT does not compute, and downsampling with antialiasing
    "resize_cubic": (lambda w=1.2: _resize("cubic", (6, 5), w=w), (3, 4, 3, 2)),
    "resize_lanczos3_down": (lambda w=1.2: _resize("lanczos3", (2, -1), w=w), (3, 5, 3, 2)),
}


@pytest.mark.slow
@pytest.mark.compute_bound
@pytest.mark.parametrize("name", sorted(MC_CASES))
def test_monte_carlo_and_power(name):
    make, shape = MC_CASES[name]
    _check_mc(make(), _x(shape), make(1.26))


@pytest.mark.parametrize("param", ["NTP", "SP", "MUP", "MF"])
def test_finite_networks_under_every_parametrization(param):
    """The three layers build and run under each parametrization, with the shapes of their kernels; muP's
    roles: first layer and biases input tensors, width-to-width weights hidden (ConvLocal's weights carry
    the output pixels in front and its per-pixel biases are input tensors), the readout output."""
    param = getattr(ow, param)
    x = _x((2, 3, 3, 2), 1)
    net = ow.serial(ow.ConvTranspose(filter_shape=(2, 2), strides=(2, 2), b_std=0.1), ow.Relu(),
                    ow.ConvLocal(filter_shape=(3, 3), strides=(2, 1), b_std=0.1), ow.Relu(),
                    ow.ImageResize((4, -1), "linear"), ow.Conv(filter_shape=(2, 2)), ow.Relu(), ow.GlobalAvgPool(),
                    D(out=2))
    model = ow.finite(net, width=6, param=param)
    params = model.init(jax.random.key(0), x)
    assert params[0]["w"].shape == (2, 2, 2, 6) and params[2]["w"].shape == (3, 6, 9 * 6, 6)
    assert params[2]["b"].shape == (3, 6, 6)
    y = model.apply(params, x)
    assert y.shape == (2, 2) and np.all(np.isfinite(y))
    roles = model.roles(x)
    r = ow.Role
    assert roles[0] == {"w": r.INPUT, "b": r.INPUT} and roles[2] == {"w": r.HIDDEN, "b": r.INPUT}
    assert roles[5] == {"w": r.HIDDEN} and roles[-1] == {"w": r.OUTPUT}


def test_finite_shapes_follow_the_kernel_geometry():
    """Output pixel shapes of the finite layers: n st (SAME) and n st + max(f - st, 0) (VALID) for
    ConvTranspose, as jax.lax.conv_transpose; ConvLocal as Conv; ImageResize keeps -1 axes."""
    x = _x((1, 4, 3, 2))
    cases = [(ow.ConvTranspose(filter_shape=(3, 2), strides=(2, 3)), (8, 9)),
             (ow.ConvTranspose(filter_shape=(3, 2), strides=(2, 3), padding="VALID"), (9, 9)),
             (ow.ConvLocal(filter_shape=(2, 2), strides=(2, 1), padding="VALID"), (2, 2)),
             (ow.ImageResize((-1, 5), "cubic"), (4, 5))]
    for layer, spatial in cases:
        model = ow.finite(layer, width=3)
        assert model.apply(model.init(jax.random.key(0), x), x).shape[1:3] == spatial, layer


@pytest.mark.parametrize("make,exc,msg", [
    (lambda: ow.ConvTranspose(filter_shape=(2, 2), strides=(2, 2, 2)), ValueError, "one per spatial axis"),
    (lambda: ow.ConvTranspose(filter_shape=(0, 2)), ValueError, "positive ints"),
    (lambda: ow.ConvLocal(filter_shape=(2, 2), padding="FULL"), ValueError, "'SAME' or 'VALID'"),
    (lambda: ow.ImageResize((0, 3), "linear"), ValueError, "-1 keeps"),
    (lambda: ow.ImageResize((2.5, 3), "linear"), ValueError, "positive int"),
    (lambda: ow.ImageResize(None, "linear"), TypeError, "tuple of ints"),
    (lambda: ow.ImageResize((4, 4), "bogus"), ValueError, "'nearest'"),
    (lambda: ow.ImageResize((4, 4), 3), TypeError, "ResizeMethod"),
    (lambda: ow.ImageResize((4, 4), antialias=1), TypeError, "bool"),
])
def test_bad_arguments(make, exc, msg):
    with pytest.raises(exc, match=msg):
        make()


X = np.ones((2, 3))
IMG = np.ones((2, 4, 4, 1))
SEQ = np.ones((2, 5, 1))
_CONV = ow.Conv(filter_shape=(2, 2))
_HEAD = (ow.Flatten(), D(out=1))


@pytest.mark.parametrize("net,x,msg", [
    (ow.serial(ow.ConvTranspose(filter_shape=(2, 2)), *_HEAD), X, "no spatial axes"),
    (ow.serial(ow.ConvTranspose(filter_shape=(2,)), *_HEAD), IMG, "1 spatial axes"),
    (ow.serial(_CONV, ow.Flatten(), ow.ConvTranspose(filter_shape=(2, 2)), *_HEAD), IMG, "no spatial axes"),
    (ow.serial(_CONV, D(out=2), ow.ConvTranspose(filter_shape=(2, 2)), *_HEAD), IMG, "fixed out=k"),
    (ow.serial(ow.ConvLocal(filter_shape=(2, 2)), *_HEAD), SEQ, "2 spatial axes"),
    (ow.serial(ow.ConvLocal(filter_shape=(5, 2), padding="VALID"), *_HEAD), IMG, "does not fit"),
    (ow.serial(_CONV, ow.ConvLocal(filter_shape=(2, 6), padding="VALID"), ow.GlobalAvgPool(), D(out=1)), IMG,
     "does not fit"),
    (ow.serial(_CONV, D(out=2), ow.ConvLocal(filter_shape=(2, 2)), *_HEAD), IMG, "fixed out=k"),
    (ow.serial(ow.ImageResize((8,), "linear"), _CONV, *_HEAD), IMG, "1 spatial axes"),
    (ow.serial(_CONV, ow.ImageResize((8, 8, 8), "nearest"), *_HEAD), IMG, "3 spatial axes"),
    (ow.serial(D(), ow.ImageResize((8,), "linear"), D(out=1)), X, "no spatial axes"),
])
def test_bad_networks_fail_before_compiling(net, x, msg):
    raises_before_compiling(lambda: ow.kernel(net, x), ValueError, msg)


def test_bad_finite_networks():
    key = jax.random.key(0)
    for layer, x, msg in [(ow.ImageResize((8,), "linear"), IMG, "1 spatial axes"),
                          (ow.ConvTranspose(filter_shape=(2, 2)), SEQ, "2 spatial axes"),
                          (ow.ConvLocal(filter_shape=(3,), padding="VALID"), np.ones((2, 2, 1)), "does not fit")]:
        with pytest.raises(ValueError, match=msg):
            ow.finite(layer, width=4).init(key, x)
    model = ow.finite(ow.serial(ow.ConvLocal(filter_shape=(2, 2)), *_HEAD), width=4)
    params = model.init(key, IMG)
    with pytest.raises(ValueError, match="were the params made by init"):
        model.apply(params, np.ones((2, 5, 4, 1)))
