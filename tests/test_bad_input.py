"""Bad input raises ValueError/TypeError naming the argument, before compiling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import owidth as ow
from helpers import compiles_nothing, raises_before_compiling

NET = ow.serial(ow.Dense(w_std=1.0), ow.Relu(), ow.Dense(out=1))
X = np.ones((3, 4))


CASES = [
    # (description, callable, exception type, substring of the message)
    ("x1 rank 1", lambda: ow.kernel(NET, np.ones(4)), ValueError, "x1 must have shape (batch, features)"),
    ("x1 rank 3", lambda: ow.kernel(NET, np.ones((2, 3, 4))), ValueError, "x1 must have shape"),
    ("feature mismatch", lambda: ow.kernel(NET, X, np.ones((2, 5))), ValueError, "same feature shape"),
    ("NaN in x1", lambda: ow.kernel(NET, np.array([[0.0, np.nan, 1.0, 2.0]])), ValueError, "NaN"),
    ("Inf in x2", lambda: ow.kernel(NET, X, np.full((1, 4), np.inf)), ValueError, "x2 contains NaN or Inf"),
    ("empty x1", lambda: ow.kernel(NET, np.ones((0, 4))), ValueError, "x1 is empty"),
    ("string x1", lambda: ow.kernel(NET, np.array([["a", "b"]])), TypeError, "x1 must hold real numbers"),
    ("unknown get", lambda: ow.kernel(NET, X, get="ntk2"), ValueError, "get="),
    ("empty get", lambda: ow.kernel(NET, X, get=()), ValueError, "get="),
    ("net not a layer", lambda: ow.kernel("relu", X), TypeError, "net must be an owidth layer"),
    ("no weight layer", lambda: ow.kernel(ow.serial(ow.Relu()), X), ValueError, "no weight layer"),
    ("layer after readout", lambda: ow.kernel(ow.serial(ow.Dense(out=2), ow.Relu(), ow.Dense()), X), ValueError,
     "leave out=None"),
    ("negative w_std", lambda: ow.Dense(w_std=-1.0), ValueError, "w_std"),
    ("negative b_std", lambda: ow.Dense(b_std=-0.1), ValueError, "b_std"),
    ("NaN w_std", lambda: ow.Dense(w_std=float("nan")), ValueError, "w_std"),
    ("string w_std", lambda: ow.Dense(w_std="2"), TypeError, "w_std"),
    ("out zero", lambda: ow.Dense(out=0), ValueError, "out=0"),
    ("out float", lambda: ow.Dense(out=2.0), TypeError, "out"),
    ("leaky slope inf", lambda: ow.LeakyRelu(float("inf")), ValueError, "a="),
    ("class not instance", lambda: ow.serial(ow.Dense(), ow.Relu), TypeError, "forget the parentheses"),
    ("empty serial", lambda: ow.serial(), ValueError, "at least one layer"),
    ("width zero", lambda: ow.finite(NET, width=0), ValueError, "width must be a positive int"),
    ("width negative", lambda: ow.finite(NET, width=-8), ValueError, "width"),
    ("width float", lambda: ow.finite(NET, width=64.0), TypeError, "width"),
    ("param wrong type", lambda: ow.finite(NET, width=8, param="mup"), TypeError, "param must be an ow.Parametrization"),
    ("bad abc triple", lambda: ow.Parametrization("x", a=(0, 1), b=(0, 0, 0)), ValueError, "Parametrization.a"),
    ("apply with other feature size", lambda: ow.finite(NET, width=8).apply(
        ow.finite(NET, width=8).init(jax.random.key(0), X), np.ones((2, 5))), ValueError, "parameters have shape"),
    ("empirical_ntk outputs", lambda: ow.empirical_ntk(lambda p, x: x, {}, X, outputs="diag"), ValueError, "outputs="),
    ("empirical_ntk impl", lambda: ow.empirical_ntk(lambda p, x: x, {}, X, implementation="fast"), ValueError,
     "implementation="),
    ("empirical_ntk not callable", lambda: ow.empirical_ntk(None, {}, X), TypeError, "apply_fn"),
    ("unknown experiment", lambda: ow.experiments.run("nope"), ValueError, "unknown experiment"),
    ("no features", lambda: ow.kernel(NET, np.ones((6, 0))), ValueError, "x1 has no features"),
    ("x1 norms overflow", lambda: ow.kernel(NET, X * 1e200), ValueError, "overflow float64"),
    ("x2 norms overflow", lambda: ow.kernel(NET, X, X * 1e200), ValueError, "x2 has entries up to"),
    ("LayerNorm over one feature", lambda: ow.kernel(ow.serial(ow.Dense(out=1), ow.LayerNorm()), X), ValueError,
     "LayerNorm follows a weight layer with a fixed out=k"),
]


@pytest.mark.parametrize("what,fn,exc,msg", CASES, ids=[c[0] for c in CASES])
def test_bad_input(what, fn, exc, msg):
    raises_before_compiling(fn, exc, msg)


def test_inputs_under_outer_jit_still_checked_for_shape():
    with pytest.raises(ValueError, match="same feature shape"):
        jax.jit(lambda a, b: ow.kernel(NET, a, b).ntk)(jnp.ones((2, 4)), jnp.ones((2, 3)))


def test_unsupported_composition_says_what_to_do():
    net = ow.serial(ow.Dense(), ow.Relu(), ow.Residual(ow.Dense()), ow.Erf(), ow.Dense(out=1))
    with pytest.raises(NotImplementedError, match="Put a Dense layer before it"):
        compiles_nothing(lambda: ow.kernel(net, X))


def test_concrete_inputs_captured_inside_outer_jit():
    x2 = np.ones((2, 4))
    g = jax.jit(jax.grad(lambda a: ow.kernel(NET, a, x2).ntk.sum()))(jnp.ones((3, 4)))
    assert np.all(np.isfinite(g))


def test_float32_range_checked_after_the_cast():
    with jax.enable_x64(False):
        raises_before_compiling(lambda: ow.kernel(NET, np.full((2, 4), 1e39)), ValueError, "beyond the range of float32")
        raises_before_compiling(lambda: ow.kernel(NET, np.full((2, 4), 1e20, np.float32)), ValueError,
                                "overflow float32")


def test_overflow_inside_the_network_is_an_error_not_a_nan():
    deep = ow.serial(*[layer for _ in range(80) for layer in (ow.Dense(w_std=4.0), ow.Relu())], ow.Dense(out=1))
    with jax.enable_x64(False), pytest.raises(FloatingPointError, match="overflowed float32"):
        ow.kernel(deep, np.ones((2, 4), np.float32))
