"""``ow.repeat``: the kernel against an exact recursion in numpy, the finite network against the unrolled
net with the same parameters (every parametrization), and "compiled once" read off the traced programs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import owidth as ow
from helpers import raises_before_compiling, sphere

R2 = 2**0.5


def _arccos_recursion(x, depth, w_std, b_std):
    """NNGP and NTK of [Dense(w, b), Relu] * depth + Dense(out=1) by the arc-cosine formulas (Cho & Saul
    2009; Jacot et al. 2018) in numpy: an independent reference."""
    q = x @ x.T / x.shape[1]
    nngp = w_std**2 * q + b_std**2
    ntk = nngp.copy()
    for layer in range(depth):
        d = np.sqrt(np.diag(nngp))
        c = np.clip(nngp / np.outer(d, d), -1.0, 1.0)
        np.fill_diagonal(c, 1.0)
        theta = np.arccos(c)
        relu = np.outer(d, d) * (np.sin(theta) + (np.pi - theta) * np.cos(theta)) / (2 * np.pi)
        drelu = (np.pi - theta) / (2 * np.pi)
        ws, bs = (w_std, b_std) if layer < depth - 1 else (1.0, 0.1)
        nngp = ws**2 * relu + bs**2
        ntk = ws**2 * ntk * drelu + nngp
    return nngp, ntk


def _deep(n, w_std=R2, b_std=0.2):
    block = ow.serial(ow.Dense(w_std=w_std, b_std=b_std), ow.Relu())
    return ow.serial(ow.repeat(block, n), ow.Dense(out=1, w_std=1.0, b_std=0.1))


@pytest.mark.parametrize("depth", [20, pytest.param(100, marks=pytest.mark.slow)])
def test_kernel_matches_exact_recursion(depth):
    x = sphere(5, 4, 0)
    x[2] *= 0.3
    k = ow.kernel(_deep(depth), x)
    nngp, ntk = _arccos_recursion(x, depth, R2, 0.2)
    np.testing.assert_allclose(k.nngp, nngp, rtol=1e-12)
    np.testing.assert_allclose(k.ntk, ntk, rtol=1e-12)
    k12 = ow.kernel(_deep(depth), x[:2], x[2:])
    np.testing.assert_allclose(k12.ntk, ntk[:2, 2:], rtol=1e-12)


def _unrolled(model_params, n, steady):
    """The parameters of serial(*[block] * n) from those of repeat(block, n)."""
    rep = model_params[0]
    first, stacked = (None, rep) if steady else rep
    count = n if steady else n - 1
    copies = [jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(count)]
    return tuple(([] if steady else [first]) + copies) + (model_params[1],)


@pytest.mark.parametrize("param", ["NTP", pytest.param("MUP", marks=pytest.mark.slow), pytest.param("SP", marks=pytest.mark.slow),
                                   pytest.param("MF", marks=pytest.mark.slow)])
def test_finite_equals_unrolled_net_at_depth_20(param):
    param = getattr(ow, param)
    x = sphere(3, 5, 1)
    block = ow.serial(ow.Dense(w_std=1.3, b_std=0.2), ow.Tanh())
    rep = ow.finite(ow.serial(ow.repeat(block, 20), ow.Dense(out=2)), width=8, param=param)
    flat = ow.finite(ow.serial(*[block] * 20, ow.Dense(out=2)), width=8, param=param)
    params = rep.init(jax.random.key(0), x)
    first, stacked = params[0]  # the first copy reads 5 features: its own parameters
    assert stacked["w"].shape == (19, 8, 8) if "w" in stacked else stacked[0]["w"].shape == (19, 8, 8)
    unrolled = tuple([p for p in (first,)] + [jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(19)]) \
        + (params[1],)
    np.testing.assert_allclose(rep.apply(params, x), flat.apply(unrolled, x), rtol=1e-12, atol=1e-14)
    # gradients (the training path) agree too, copy by copy
    loss = lambda m: lambda p: jnp.sum(m.apply(p, x) ** 2)  # noqa: E731
    g_rep, g_flat = jax.grad(loss(rep))(params), jax.grad(loss(flat))(unrolled)
    np.testing.assert_allclose(g_rep[0][1][0]["w"][7], g_flat[8][0]["w"], rtol=1e-10, atol=1e-14)
    # muP/SP/MF per-tensor roles: stacked hidden weights are hidden, the first copy reads the input
    roles = rep.roles(x)
    assert roles[0][0][0]["w"] == ow.Role.INPUT and roles[0][1][0]["w"] == ow.Role.HIDDEN
    assert roles[1]["w"] == ow.Role.OUTPUT


def test_shape_keeping_block_stacks_every_copy_and_structured_ntk():
    """A block that keeps its input's shape has all n copies stacked; the structured empirical NTK
    (a recording run, unrolled) equals the Jacobian contraction."""
    x = sphere(4, 6, 2)
    net = ow.serial(ow.Dense(), ow.repeat(ow.serial(ow.Relu(), ow.Dense(b_std=0.1)), 5), ow.Relu(), ow.Dense(out=1))
    model = ow.finite(net, width=6)
    params = model.init(jax.random.key(3), x)
    assert jax.tree.map(np.shape, params[1]) == ((), {"b": (5, 6), "w": (5, 6, 6)})
    structured = ow.empirical_ntk(model.apply, params, x, implementation="structured")
    jac = ow.empirical_ntk(model.apply, params, x, implementation="jacobian")
    np.testing.assert_allclose(structured, jac, rtol=1e-10)


def _program(fn, *args) -> str:
    return str(jax.make_jaxpr(fn)(*args))


def test_compiled_once():
    """The traced programs of repeat(block, 10) and repeat(block, 1000) are the same but for the loop
    length: one copy of the block (kernel: two unrolled + the loop body), whatever n."""
    x = sphere(3, 4, 0)
    small, large = _deep(10), _deep(1000)
    kernel = [_program(lambda x, net=net: ow.kernel(net, x).ntk, x) for net in (small, large)]
    assert kernel[0].count("\n") == kernel[1].count("\n")
    assert abs(len(kernel[0]) - len(kernel[1])) < 10
    models = [ow.finite(net, width=8) for net in (small, large)]
    params = [m.init(jax.random.key(0), x) for m in models]
    apply = [_program(m.apply, p, x) for m, p in zip(models, params)]
    assert apply[0].count("\n") == apply[1].count("\n") and "scan" in apply[0]
    assert jax.tree.map(np.shape, params[1])[0][1][0]["w"] == (999, 8, 8)


def test_dropout_inside_repeat_draws_a_mask_per_copy():
    x = np.ones((4, 5000))
    model = ow.finite(ow.repeat(ow.Dropout(0.5), 2), width=8)
    y = model.apply(model.init(jax.random.key(0), x), x, key=jax.random.key(1))
    kept = np.asarray(y) != 0  # kept by both copies: probability 1/4, value 1 / 0.5^2
    assert abs(kept.mean() - 0.25) < 0.01
    np.testing.assert_array_equal(np.asarray(y)[kept], 4.0)
    np.testing.assert_array_equal(model.apply(model.init(jax.random.key(0), x), x), x)  # no key: identity


@pytest.mark.parametrize("make,exc,msg", [
    (lambda: ow.repeat(ow.Dense(), 0), ValueError, "n must be"),
    (lambda: ow.repeat(ow.Dense(), 2.5), TypeError, "n must be"),
    (lambda: ow.repeat(ow.Dense, 3), TypeError, "parentheses"),
    (lambda: ow.repeat("relu", 3), TypeError, "owidth layer"),
])
def test_bad_arguments(make, exc, msg):
    with pytest.raises(exc, match=msg):
        make()


def test_block_that_keeps_changing_shape_is_refused():
    net = ow.serial(ow.repeat(ow.serial(ow.Conv(filter_shape=(2, 2), padding="VALID"), ow.Relu()), 3), ow.Flatten(),
                    ow.Dense(out=1))
    x = np.ones((2, 6, 6, 1))
    raises_before_compiling(lambda: ow.finite(net, width=4).init(jax.random.key(0), x), ValueError,
                            "give its output the shape of its input")
