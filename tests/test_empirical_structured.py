"""The structured empirical NTK of any pure function (read from its jaxpr) against the Jacobian contraction."""

import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

import owidth as ow
from owidth import _jaxpr_ntk
from helpers import sphere

RNG = np.random.default_rng(0)
X1, X2 = sphere(5, 4, 0), sphere(3, 4, 1)
D, H1, H2, K = 4, 6, 7, 3  # distinct fan-ins and fan-outs, to spot a (N, k, fan_in, fan_out) array


def _normal(*shape):
    return jnp.asarray(RNG.normal(size=shape) / np.sqrt(shape[0] if shape else 1.0))


MLP_PARAMS = {"w1": _normal(D, H1), "b1": _normal(1, H1), "w2": _normal(H2, H1), "b2": _normal(1, H2),
              "w3": _normal(H2, K)}


def mlp(p, x):
    """Hand-written MLP: ``jnp.dot``, ``@`` with a transposed weight, an einsum, biases, a scale."""
    h = jnp.tanh(jnp.dot(x, p["w1"]) + p["b1"])
    h = jax.nn.relu(1.3 * (h @ p["w2"].T) + p["b2"])
    return jnp.einsum("ni,io->no", h, p["w3"])


SHARED_PARAMS = {"w0": _normal(D, H1), "w": _normal(H1, H1), "out": _normal(H1, K)}


def shared(p, x):
    """One weight used twice (the same layout both times), and once more transposed in ``shared_t``."""
    h = jnp.tanh(x @ p["w0"])
    h = jnp.sin(h @ p["w"])
    h = jnp.tanh(h @ p["w"])
    return h @ p["out"]


def shared_t(p, x):
    return shared(p, x) + jnp.tanh(x @ p["w0"]) @ p["w"].T @ p["out"]


ODD_PARAMS = {"w": _normal(1, D), "v": _normal(D, H1), "out": _normal(H1, K)}


def odd(p, x):
    """``w`` used elementwise (not recognised), ``v`` by a product, then again through ``sin``."""
    h = jnp.sin(p["w"]) * x
    return jnp.tanh(h @ p["v"] + jnp.sum(jnp.sin(p["v"]))) @ p["out"]


class _Flax(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.tanh(nn.Dense(H1)(x))
        x = nn.relu(nn.Dense(H2)(x))
        return nn.Dense(K)(x)


FLAX = _Flax()
FLAX_PARAMS = jax.tree.map(lambda a: a.astype(jnp.float64), FLAX.init(jax.random.key(0), X1))  # flax: f32 by default
FLAX_APPLY = FLAX.apply
MODEL = ow.finite(ow.serial(ow.Dense(w_std=1.5, b_std=0.1), ow.Erf(), ow.Dense(out=K)), width=H1)
MODEL_PARAMS = MODEL.init(jax.random.key(1), X1)
CASES = {
    "mlp": (mlp, MLP_PARAMS),
    "flax": (FLAX_APPLY, FLAX_PARAMS),
    "shared": (shared, SHARED_PARAMS),
    "shared_transposed": (shared_t, SHARED_PARAMS),
    "unrecognised": (odd, ODD_PARAMS),
    "ow.finite via jaxpr": (lambda p, x: MODEL.apply(p, x), MODEL_PARAMS),
    "ow.finite": (MODEL.apply, MODEL_PARAMS),
}


def _structured_leaves(fn, params, x):
    """Names of the leaves the jaxpr analysis treats as structured (per example, as ow.empirical_ntk does)."""
    leaves, treedef = jax.tree.flatten(params)
    structs = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in leaves]
    unit = jax.ShapeDtypeStruct((1, *x.shape[1:]), x.dtype)
    plan = _jaxpr_ntk.analyse(jax.make_jaxpr(_jaxpr_ntk.leaf_fn(fn, treedef))(structs, unit), structs, unit)
    names = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    return {names[i] for i in plan.structured}


def _check_against_jacobian(case, x2):
    fn, params = CASES[case]
    full = np.asarray(ow.empirical_ntk(fn, params, X1, x2, outputs="full", implementation="jacobian"))
    trace = np.einsum("ijaa->ij", full) / K
    for outputs, want in (("full", full), ("trace", trace)):
        got = ow.empirical_ntk(fn, params, X1, x2, outputs=outputs, implementation="structured")
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10 * np.abs(want).max())


# the default suite keeps one case per kind of use (plain, flax, shared, owidth model); the rest run with the slow tests
_FAST = {"mlp", "flax", "shared", "ow.finite"}


@pytest.mark.parametrize("case", [c if c in _FAST else pytest.param(c, marks=pytest.mark.slow) for c in CASES])
def test_structured_equals_the_jacobian_contraction(case):
    _check_against_jacobian(case, X2)


@pytest.mark.slow  # ~2 s each; the x2=None path is also checked by default on the hand-written MLP
@pytest.mark.parametrize("case", [c for c in CASES if c != "mlp"])
def test_structured_equals_the_jacobian_contraction_on_one_input_set(case):
    _check_against_jacobian(case, None)


def test_structured_equals_the_jacobian_contraction_on_one_input_set_mlp():
    _check_against_jacobian("mlp", None)


def test_the_analysis_recognises_dense_weights_only():
    """Weights of products are structured (the readout too: k = 3 outputs make its Jacobian the larger);
    biases, elementwise uses and a weight used with two layouts are differentiated directly."""
    assert _structured_leaves(mlp, MLP_PARAMS, X1) == {"['w1']", "['w2']", "['w3']"}
    assert _structured_leaves(FLAX_APPLY, FLAX_PARAMS, X1) == {f"['params']['Dense_{i}']['kernel']" for i in range(3)}
    assert _structured_leaves(shared, SHARED_PARAMS, X1) == {"['w0']", "['w']", "['out']"}
    assert _structured_leaves(shared_t, SHARED_PARAMS, X1) == {"['w0']", "['out']"}
    assert _structured_leaves(odd, ODD_PARAMS, X1) == {"['out']"}
    assert _structured_leaves(lambda p, x: MODEL.apply(p, x), MODEL_PARAMS, X1) == {"[0]['w']", "[2]['w']"}


def _avals(jaxpr):
    """Every intermediate's abstract value, sub-jaxprs (jit, custom_jvp, ...) included."""
    for eqn in jaxpr.eqns:
        yield from (v.aval for v in eqn.outvars)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            yield from _avals(sub)


@pytest.mark.parametrize("implementation", ["structured", "auto"])
def test_no_per_parameter_jacobian_is_materialised(implementation):
    """The whole computation holds no array as large as one weight's per-example Jacobians (N k fan_in
    fan_out entries); the Jacobian method does (power check)."""
    def largest(impl):
        fn = lambda p, x: ow.empirical_ntk(mlp, p, x, outputs="full", implementation=impl)  # noqa: E731
        return max(a.size for a in _avals(jax.make_jaxpr(fn)(MLP_PARAMS, X1).jaxpr) if hasattr(a, "size"))

    jacobian_entries = X1.shape[0] * K * H1 * H2
    assert largest("jacobian") >= jacobian_entries
    assert largest(implementation) < jacobian_entries / 2


def test_structured_is_jit_compatible_and_blocks():
    fn = jax.jit(lambda p, x1, x2: ow.empirical_ntk(mlp, p, x1, x2, implementation="structured"))
    want = ow.empirical_ntk(mlp, MLP_PARAMS, X1, X2, implementation="jacobian")
    np.testing.assert_allclose(fn(MLP_PARAMS, X1, X2), want, rtol=1e-10)
    blocked = ow.empirical_ntk(mlp, MLP_PARAMS, X1, X2, implementation="structured", batch_size=3)
    np.testing.assert_allclose(blocked, want, rtol=1e-10)


@pytest.mark.slow  # ~2 s; independent_examples=False is the plain batch path
def test_structured_for_functions_that_mix_examples():
    """``independent_examples=False``: the whole batch is one unit (here the hidden layer is centred)."""
    def centred(p, x):
        h = jnp.tanh(x @ p["w1"])
        return (h - h.mean(axis=0, keepdims=True)) @ p["w3"]

    params = {"w1": MLP_PARAMS["w1"], "w3": _normal(H1, K)}
    for x2 in (None, X2):
        for outputs in ("trace", "full"):
            want = ow.empirical_ntk(centred, params, X1, x2, outputs=outputs, implementation="jacobian",
                                    independent_examples=False)
            got = ow.empirical_ntk(centred, params, X1, x2, outputs=outputs, implementation="structured",
                                   independent_examples=False)
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
