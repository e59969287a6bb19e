"""``ow.concat``, ``ow.product``, ``ow.Dropout`` and ``ow.Index`` beyond the neural-tangents references
(tests/kernels/test_reference_nt_combinators.py): Monte Carlo over 2000 finite networks within 4 standard
errors with a power check (one hidden layer before the fan-in, where the expected empirical kernels equal
the analytic ones at any width), the finite networks under every parametrization, and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import owidth as ow
from helpers import check_monte_carlo, raises_before_compiling, sphere

D = ow.Dense


def _check_mc(net, x, other, *, samples=2000, width=128):
    check_monte_carlo(net, x, other, samples=samples, width=width)


def _x():
    x = sphere(4, 3, 0)
    x[3] *= 0.5
    return x


def _concat(w=1.2):
    return ow.serial(ow.concat(ow.serial(D(w_std=w, b_std=0.3), ow.Relu()), ow.serial(D(w_std=0.8, b_std=0.2),
                                                                                     ow.Erf()), D(w_std=1.1)),
                     D(out=1, w_std=1.0, b_std=0.1))


def _product(w=1.2):
    return ow.serial(ow.product(D(w_std=w, b_std=0.3), ow.serial(D(w_std=0.8, b_std=0.2), ow.Erf())),
                     D(out=1, w_std=1.0, b_std=0.1))


def test_concat_monte_carlo_and_power():
    """Three branches, two ending in activations (channel concatenation needs no independence)."""
    _check_mc(_concat(), _x(), _concat(1.26))


@pytest.mark.slow  # ~5 s; the product's kernel is checked against NT by default (test_reference_nt_combinators)
def test_product_monte_carlo_and_power():
    _check_mc(_product(), _x(), _product(1.26))


def _dropout(rate=0.3, w=1.2):
    return ow.serial(D(w_std=w, b_std=0.3), ow.Relu(), ow.Dropout(rate), D(out=1, w_std=1.0, b_std=0.1))


def _dropout_monte_carlo(net, x, *, samples, width, key):
    """Mean and standard error of the empirical NNGP and NTK over networks and train-mode masks, one
    forward pass of the batch per network (so each input has its own mask): written out here, not
    ow.monte_carlo_kernel."""
    model = ow.finite(net, width=width)

    def one(k):
        kp, km = jax.random.split(k)
        params = model.init(kp, x)
        f = lambda p: model.apply(p, x, key=km)[:, 0]  # noqa: E731
        jac = jax.jacobian(f)(params)
        flat = jnp.concatenate([j.reshape(len(x), -1) for j in jax.tree.leaves(jac)], axis=1)
        out = f(params)
        return jnp.outer(out, out), flat @ flat.T

    nngp, ntk = jax.jit(jax.vmap(one))(jax.random.split(key, samples))
    stats = {}
    for name, v in (("nngp", nngp), ("ntk", ntk)):
        stats[name] = (np.mean(v, axis=0), np.std(v, axis=0, ddof=1) / np.sqrt(samples))
    return stats


@pytest.mark.slow  # ~6 s; by default test_dropout_monte_carlo_kernel_draws_train_mode_masks checks the kernel
@pytest.mark.compute_bound
def test_dropout_monte_carlo_and_power():
    """Train-mode masks: the diagonal grows by 1/keep, the rest is unchanged; a 5% change of the rate's
    keep probability (0.7 -> 0.735) is detected."""
    x = _x()
    stats = _dropout_monte_carlo(_dropout(), x, samples=4000, width=64, key=jax.random.key(2))
    exact, wrong = ow.kernel(_dropout(), x), ow.kernel(_dropout(rate=0.265), x)
    for what, (mean, se) in stats.items():
        assert np.all(np.abs(mean - getattr(exact, what)) < 4 * se), what
    z = np.abs(stats["ntk"][0] - wrong.ntk) / stats["ntk"][1]  # the empirical NTK fluctuates less: the sharper test
    assert z.max() > 4, z
    # without a key the finite layer is the identity (evaluation mode)
    model = ow.finite(_dropout(), width=16)
    params = model.init(jax.random.key(0), x)
    plain = ow.finite(ow.serial(D(w_std=1.2, b_std=0.3), ow.Relu(), D(out=1, w_std=1.0, b_std=0.1)), width=16)
    np.testing.assert_array_equal(model.apply(params, x), plain.apply((params[0], params[1], params[3]), x))


def test_dropout_monte_carlo_kernel_draws_train_mode_masks():
    """ow.monte_carlo_kernel runs Dropout nets in train mode, with independent masks for x1 and x2 (whose
    kernel block is then unchanged by dropout even where rows coincide)."""
    x = _x()
    mc = ow.monte_carlo_kernel(_dropout(), x, x[:3], width=64, samples=2000, key=jax.random.key(3), progress_bar=False)
    exact = ow.kernel(_dropout(), x, x[:3])
    for what in ("nngp", "ntk"):
        z = np.abs(np.asarray(getattr(mc, what)) - getattr(exact, what)) / np.asarray(getattr(mc.stderr, what))
        assert np.all(z < 4), (what, z)


def _index(w=1.3):
    return ow.serial(ow.Conv(filter_shape=(2, 2), w_std=w, b_std=0.2), ow.Relu(), ow.Index(ow.Slice[:, 1:3, ::2]),
                     ow.Flatten(), D(out=1, w_std=1.0, b_std=0.1))


@pytest.mark.slow
@pytest.mark.compute_bound
def test_index_monte_carlo_and_power():
    x = np.random.default_rng(0).normal(size=(3, 4, 3, 2))
    _check_mc(_index(), x, _index(1.365), width=64)


@pytest.mark.parametrize("param", ["NTP", *[pytest.param(p, marks=pytest.mark.slow) for p in ("SP", "MUP", "MF")]])
def test_finite_networks_under_every_parametrization(param):
    """The fan-ins and shape layers build, run and keep their widths under each parametrization; muP's
    roles read the concatenated width as hidden."""
    param = getattr(ow, param)
    x = np.random.default_rng(1).normal(size=(2, 5, 4, 3))
    net = ow.serial(ow.Conv(filter_shape=(3, 3)), ow.Relu(),
                    ow.concat(ow.Conv(filter_shape=(1, 1)), ow.serial(ow.Conv(filter_shape=(3, 3)), ow.Erf())),
                    ow.Dropout(0.2), ow.Index(ow.Slice[:, ::2]), ow.concat(ow.Conv(filter_shape=(2, 2)), ow.Conv(
                        filter_shape=(2, 2)), axis=1),
                    ow.product(ow.Conv(filter_shape=(1, 1)), ow.Identity()), ow.GlobalAvgPool(), D(out=2))
    model = ow.finite(net, width=6, param=param)
    params = model.init(jax.random.key(0), x)
    y = model.apply(params, x, key=jax.random.key(1))
    assert y.shape == (2, 2) and np.all(np.isfinite(y))
    roles = jax.tree.leaves(model.roles(x), is_leaf=lambda r: isinstance(r, ow.Role))
    assert roles.count(ow.Role.OUTPUT) == 1 and ow.Role.HIDDEN in roles


@pytest.mark.parametrize("make,exc,msg", [
    (lambda: ow.Dropout(1.0), ValueError, "drops every unit"),
    (lambda: ow.Dropout(-0.1), ValueError, "rate"),
    (lambda: ow.concat(), ValueError, "at least one"),
    (lambda: ow.concat(ow.Dense(), axis=1.0), TypeError, "axis must be an int"),
    (lambda: ow.product(ow.Relu), TypeError, "parentheses"),
    (lambda: ow.Index((slice(0, 2, 0),)), ValueError, "step 0"),
    (lambda: ow.Index((1.5,)), TypeError, "ints, slices"),
    (lambda: ow.Index((Ellipsis, 0, Ellipsis)), ValueError, r"only one \.\.\."),
])
def test_bad_arguments(make, exc, msg):
    with pytest.raises(exc, match=msg):
        make()


X = np.ones((2, 3))
IMG = np.ones((2, 4, 4, 1))
_CONV = ow.Conv(filter_shape=(2, 2))


@pytest.mark.parametrize("net,x,exc,msg", [
    # an activation right after a channel concatenation: a mixture, not one Gaussian process
    (ow.serial(D(), ow.concat(D(), D()), ow.Relu(), D(out=1)), X, NotImplementedError, "non-Gaussian"),
    # products of correlated branches
    (ow.serial(D(), ow.product(ow.Relu(), ow.Erf()), D(out=1)), X, NotImplementedError, "correlated"),
    # raw features next to hidden ones
    (ow.serial(ow.concat(ow.Identity(), D()), D(out=1)), X, NotImplementedError, "do not match in number"),
    (ow.serial(D(), ow.concat(D(), D(out=2))), X, NotImplementedError, "fixed-width"),
    (ow.serial(D(), ow.concat(D(), D(), axis=0), D(out=1)), X, ValueError, "batch axis"),
    (ow.serial(D(), ow.concat(D(), D(), axis=3), D(out=1)), X, ValueError, "out of range"),
    (ow.serial(_CONV, ow.concat(_CONV, ow.Relu(), axis=1), ow.Flatten(), D(out=1)), IMG, NotImplementedError,
     "end in a weight layer"),
    (ow.serial(_CONV, ow.concat(_CONV, ow.Conv(filter_shape=(2, 2), strides=(2, 2))), ow.Flatten(), D(out=1)), IMG,
     ValueError, "pixel shapes"),
    (ow.serial(_CONV, ow.Index(ow.Slice[1:, :]), ow.Flatten(), D(out=1)), IMG, ValueError, "batch axis"),
    (ow.serial(_CONV, ow.Index(ow.Slice[..., 0]), ow.Flatten(), D(out=1)), IMG, ValueError, "channels of a hidden"),
    (ow.serial(_CONV, ow.Index(ow.Slice[:, 9]), ow.Flatten(), D(out=1)), IMG, ValueError, "does not fit"),
    (ow.serial(_CONV, ow.Index(ow.Slice[:, 0, 0, 0, 0]), ow.Flatten(), D(out=1)), IMG, ValueError, "has 5 items"),
])
def test_bad_networks_fail_before_compiling(net, x, exc, msg):
    raises_before_compiling(lambda: ow.kernel(net, x), exc, msg)


def test_bad_finite_networks():
    with pytest.raises(ValueError, match="channels of a hidden"):
        ow.finite(ow.serial(_CONV, ow.Index(ow.Slice[..., 0])), width=4).init(jax.random.key(0), IMG)
    with pytest.raises(ValueError, match="equal shapes"):
        ow.finite(ow.product(D(), D(out=2)), width=4).init(jax.random.key(0), X)
    with pytest.raises(TypeError, match="PRNG key"):
        model = ow.finite(ow.serial(D(), ow.Dropout(0.5)), width=4)
        model.apply(model.init(jax.random.key(0), X), X, key=0)
