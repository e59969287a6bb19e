"""Bad input to the public entry points (predict, train, coord_check, dmft, Embedding, the console script)
raises TypeError/ValueError naming the argument, before anything is compiled; valid inputs that used to be
refused (NumPy scalars in layer fields, unhashable metrics) are accepted."""

import jax
import numpy as np
import pytest

import owidth as ow
from helpers import KERNEL_PROGRAM, raises_before_compiling, traces
from owidth import cli

NAN = float("nan")
K = 2.0 * np.eye(3)  # an NTK / NNGP on 3 training points
KXT = np.ones((2, 3))  # 2 test points
KTT = np.eye(2)
Y = np.array([[1.0], [-1.0], [0.5]])
NET = ow.serial(ow.Dense(), ow.Relu(), ow.Dense(out=1))
X = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, -1.0]])
YT = np.array([1.0, -1.0, 0.0, 1.0])
TRAIN = dict(widths=4, lr=0.1, steps=1, progress_bar=False)
LINEAR = ow.serial(ow.Dense(), ow.Identity(), ow.Dense(out=1))
DMFT = dict(gamma0=1.0, lr=0.1, steps=2, progress_bar=False)
EMBED = ow.serial(ow.Embedding(vocab=5), ow.TakePosition(-1), ow.Dense(out=1))
TOKENS = np.array([[0.0, 0.5, 1.0], [1.0, 2.0, 3.0]])


def with_nan(a, at=(0, 1)):
    a = np.array(a, dtype=float)
    a[at] = NAN
    return a


def kernel_object(nngp, ntk):
    return ow.Kernel(nngp=nngp, ntk=ntk, var1=np.diag(nngp), var2=np.diag(nngp))


class UnhashableMetric:
    """A callable metric whose class defines ``__eq__`` (so Python sets ``__hash__ = None``)."""

    def __init__(self, value):
        self.value = value

    def __eq__(self, other):
        return isinstance(other, UnhashableMetric) and other.value == self.value

    def __call__(self, snap):
        return self.value + 0.0 * snap.alpha


CASES = [
    # (description, callable, exception type, substring of the message)
    # silent NaN predictions
    ("gradient_descent ridge NaN", lambda: ow.predict.gradient_descent(K, KXT, Y, lr=0.1, steps=1, ridge=NAN),
     ValueError, "ow.predict.gradient_descent: ridge must be a finite number >= 0, got nan"),
    ("gradient_flow ridge Inf", lambda: ow.predict.gradient_flow(K, KXT, Y, times=1.0, ridge=float("inf")),
     ValueError, "ow.predict.gradient_flow: ridge must be a finite number >= 0, got inf"),
    ("nngp_posterior noise NaN", lambda: ow.predict.nngp_posterior(K, KXT, Y, noise=NAN),
     ValueError, "ow.predict.nngp_posterior: noise must be a finite number >= 0 (a variance), got nan"),
    ("gradient_descent NaN in k_train", lambda: ow.predict.gradient_descent(with_nan(K), KXT, Y, lr=0.1, steps=1),
     ValueError, "ow.predict.gradient_descent: k_train contains NaN or Inf"),
    ("gradient_flow Inf in k_test_train", lambda: ow.predict.gradient_flow(
        K, np.full((2, 3), np.inf), Y, times=1.0), ValueError, "ow.predict.gradient_flow: k_test_train contains NaN"),
    ("gradient_descent NaN in a Kernel's nngp", lambda: ow.predict.gradient_descent(
        kernel_object(with_nan(K), K), KXT, Y, lr=0.1, steps=1), ValueError, "k_train.nngp contains NaN or Inf"),
    ("gradient_descent NaN in k_test_test", lambda: ow.predict.gradient_descent(
        kernel_object(K, K), kernel_object(KXT, KXT), Y, lr=0.1, steps=1, k_test_test=with_nan(KTT)),
     ValueError, "k_test_test contains NaN or Inf"),
    ("gradient_descent NaN in y_train", lambda: ow.predict.gradient_descent(K, KXT, with_nan(Y, (0, 0)), lr=0.1,
                                                                           steps=1), ValueError, "y_train contains NaN"),
    ("nngp_posterior NaN in k_train", lambda: ow.predict.nngp_posterior(with_nan(K), KXT, Y),
     ValueError, "ow.predict.nngp_posterior: k_train contains NaN or Inf"),
    ("nngp_posterior NaN in k_test_train", lambda: ow.predict.nngp_posterior(K, with_nan(KXT), Y),
     ValueError, "ow.predict.nngp_posterior: k_test_train contains NaN or Inf"),
    # dot_general errors -> the expected shapes
    ("nngp_posterior y_train rows", lambda: ow.predict.nngp_posterior(K, KXT, np.ones((4, 1))), ValueError,
     "ow.predict.nngp_posterior: y_train must have shape (3,) or (3, k), one row per training point of k_train "
     "(3 x 3), got shape (4, 1)"),
    ("nngp_posterior k_test_train columns", lambda: ow.predict.nngp_posterior(K, np.ones((2, 4)), Y), ValueError,
     "ow.predict.nngp_posterior: k_test_train must have shape (m, 3) (test points x the 3 training points of "
     "k_train), got shape (2, 4)"),
    ("nngp_posterior k_test_test shape", lambda: ow.predict.nngp_posterior(K, KXT, Y, k_test_test=np.eye(3)),
     ValueError, "k_test_test must have shape (2, 2) for the 2 test points of k_test_train, got shape (3, 3)"),
    # ow.train: optimizer settings refused up front, not marked "diverged" (NaN) or run as "ok" (eps < 0)
    ("train momentum NaN", lambda: ow.train(NET, (X, YT), optimizer="momentum", momentum=NAN, **TRAIN),
     ValueError, "ow.train: momentum must be a finite number in [0, 1), got nan"),
    ("train weight_decay NaN", lambda: ow.train(NET, (X, YT), weight_decay=NAN, **TRAIN),
     ValueError, "ow.train: weight_decay must be a finite number >= 0, got nan"),
    ("train adam_eps -1", lambda: ow.train(NET, (X, YT), optimizer="adam", adam_eps=-1.0, **TRAIN),
     ValueError, "ow.train: adam_eps must be a finite number >= 0 (Adam's epsilon), got -1.0"),
    ("train widths empty", lambda: ow.train(NET, (X, YT), **{**TRAIN, "widths": []}),
     ValueError, "ow.train: widths must be a non-empty list without duplicates, got []"),
    ("train widths float", lambda: ow.train(NET, (X, YT), **{**TRAIN, "widths": 16.0}),
     TypeError, "ow.train: widths must be a positive int or a list of positive ints, got float 16.0"),
    ("train optimizer list", lambda: ow.train(NET, (X, YT), optimizer=["adam"], **TRAIN),
     TypeError, "ow.train: optimizer must be a string, one of ['adam', 'adamw', 'momentum', 'sgd'], got list"),
    ("train metrics not a mapping", lambda: ow.train(NET, (X, YT), metrics=[UnhashableMetric(1.0)], **TRAIN),
     TypeError, "ow.train: metrics must be a mapping"),
    ("train x_test features", lambda: ow.train(NET, (X, YT), test=(np.ones((2, 3)), np.ones(2)), **TRAIN),
     ValueError, "ow.train: x_test must have the same feature shape as x_train, (2,), got (3,)"),
    ("coord_check widths empty", lambda: ow.coord_check(NET, (X, YT[:, None]), widths=[], param=ow.MUP, lr=0.1,
                                                         steps=1, seeds=1),
     ValueError, "ow.coord_check: widths must be a non-empty list without duplicates, got []"),
    # ow.dmft: NaN targets refused before compiling (not "diverges; lower lr" after), x_test named
    ("dmft NaN in y_train", lambda: ow.dmft(LINEAR, X, with_nan(YT, 0), **DMFT),
     ValueError, "ow.dmft: y_train contains NaN or Inf"),
    ("dmft Inf in y_test", lambda: ow.dmft(LINEAR, X, YT, x_test=X, y_test=np.full(4, np.inf), **DMFT),
     ValueError, "ow.dmft: y_test contains NaN or Inf"),
    ("dmft NaN in x_train", lambda: ow.dmft(LINEAR, with_nan(X), YT, **DMFT),
     ValueError, "ow.dmft: x_train contains NaN or Inf"),
    ("dmft x_test features", lambda: ow.dmft(LINEAR, X, YT, x_test=np.ones((2, 3)), **DMFT),
     ValueError, "ow.dmft: x_test must have the same feature shape as x_train, (2,), got (3,)"),
    # Embedding reads integer tokens in [0, vocab)
    ("Embedding kernel token 0.5", lambda: ow.kernel(EMBED, TOKENS), ValueError,
     "ow.kernel: tokens in x1 must be integers in [0, 5) (the vocabulary of Embedding(vocab=5)), got 0.5 at x1[0, 1]"),
    ("Embedding kernel token out of range", lambda: ow.kernel(EMBED, TOKENS[1:], np.array([[0.0, 1.0, 5.0]])),
     ValueError, "ow.kernel: tokens in x2 must be integers in [0, 5)"),
    ("Embedding apply token 0.5", lambda: ow.finite(EMBED, width=4).apply(
        ow.finite(EMBED, width=4).init(jax.random.key(0), TOKENS[1:]), TOKENS), ValueError,
     "Embedding: tokens in x must be integers in [0, 5) (the vocabulary of Embedding(vocab=5)), got 0.5 at x[0, 1]"),
    ("train Embedding token 0.5", lambda: ow.train(EMBED, (TOKENS, np.ones(2)), **TRAIN), ValueError,
     "ow.train: tokens in x_train must be integers in [0, 5) (the vocabulary of Embedding(vocab=5)), got 0.5 at "
     "x_train[0, 1]"),
    ("train Embedding x_test token -1", lambda: ow.train(EMBED, (TOKENS[1:], np.ones(1)), **TRAIN,
                                                          test=(np.array([[0.0, -1.0, 2.0]]), np.ones(1))),
     ValueError, "ow.train: tokens in x_test must be integers in [0, 5)"),
    ("coord_check Embedding token 0.5", lambda: ow.coord_check(EMBED, (TOKENS, np.ones((2, 1))), widths=[4, 8],
                                                                param=ow.MUP, lr=0.1, steps=1, seeds=1),
     ValueError, "ow.coord_check: tokens in x must be integers in [0, 5)"),
    # masks (ow.train) and pruning densities (ow.prune): refused before any training program is traced
    ("train masks wrong shape", lambda: ow.train(NET, (X, YT), masks=({"w": np.ones((2, 3))}, (), {"w": True}),
                                                 **TRAIN),
     ValueError, "ow.train: a masks leaf at width 4 has shape (2, 3); expected (2, 4)"),
    ("train masks complex", lambda: ow.train(NET, (X, YT), masks=({"w": np.ones((2, 4), complex)}, (), {"w": True}),
                                             **TRAIN),
     TypeError, "ow.train: masks at width 4, leaf [0]['w'] has dtype complex128; masks are boolean"),
    ("train masks 0.5", lambda: ow.train(NET, (X, YT), masks=({"w": np.full((2, 4), 0.5)}, (), {"w": True}), **TRAIN),
     ValueError, "ow.train: masks at width 4, leaf [0]['w'] holds values other than 0 and 1"),
    ("prune density 0", lambda: ow.prune.magnitude({"w": np.ones((2, 2))}, 0.0), ValueError,
     "ow.prune.magnitude: density=0.0 must lie in (0, 1]"),
    ("prune density 2", lambda: ow.prune.synflow(ow.finite(NET, width=4).apply, ow.finite(NET, width=4).init(
        jax.random.key(0), X), X, 2.0), ValueError, "ow.prune.synflow: density=2.0 must lie in (0, 1]"),
    ("imp density NaN", lambda: ow.prune.imp(NET, (X, YT), width=4, density=NAN, rounds=1, steps=2, lr=0.1),
     ValueError, "ow.prune.imp: density=nan must lie in (0, 1]"),
]

# the programs that do the work: none of them may be traced before the error
_WORK = {KERNEL_PROGRAM, "init_members", "run_chunk", "record_members", "run", "eigh", "eigh_jacobi"}


@pytest.mark.parametrize("what,fn,exc,msg", CASES, ids=[c[0] for c in CASES])
def test_bad_input_api(what, fn, exc, msg):
    with traces() as names:
        raises_before_compiling(fn, exc, msg)
    assert not _WORK & set(names), names


def test_embedding_kernel_of_traced_non_tokens_is_nan():
    """Under jax.jit the tokens are unknown before compiling: the kernel of non-tokens is NaN, not a value."""
    k = jax.jit(lambda t: ow.kernel(EMBED, t, get="nngp").nngp)(TOKENS)
    assert np.all(np.isnan(np.asarray(k)))
    good = jax.jit(lambda t: ow.kernel(EMBED, t, get="nngp").nngp)(TOKENS.round())
    np.testing.assert_allclose(good, ow.kernel(EMBED, TOKENS.round(), get="nngp").nngp)


def test_unhashable_metric_is_keyed_by_identity():
    """A metric with ``__eq__`` and no ``__hash__`` trains (it used to hit JAX's static-argument error);
    the same object reuses the compiled program, another one compiles its own."""
    metric = UnhashableMetric(2.0)
    with traces() as names:
        ds = ow.train(NET, (X, YT), metrics={"m": metric}, **TRAIN)
    np.testing.assert_array_equal(ds.m.values, 2.0)
    assert names.count("run_chunk") == 1
    with traces() as names:
        again = ow.train(NET, (X, YT), metrics={"m": metric}, **TRAIN)
    np.testing.assert_array_equal(again.m.values, 2.0)
    assert "run_chunk" not in names
    other = ow.train(NET, (X, YT), metrics={"m": UnhashableMetric(3.0)}, **TRAIN)
    np.testing.assert_array_equal(other.m.values, 3.0)


def test_run_sweep_with_an_unhashable_metric(tmp_path):
    sweep = ow.Sweep(net=NET, data=(X, YT), widths=4, lr=0.1, steps=1, metrics={"m": UnhashableMetric(2.0)})
    ds = ow.run_sweep(sweep, tmp_path / "sweep", progress=False)
    np.testing.assert_array_equal(ds.m.values, 2.0)


def test_cli_out_is_an_existing_file(tmp_path, capsys):
    out = tmp_path / "results.txt"
    out.write_text("not a folder")
    assert cli.main(["run", "ntk-convergence", "--quick", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"owidth: --out {out} is an existing file, not a folder; give a folder path\n"
    assert out.read_text() == "not a folder"


def test_cli_out_under_a_file(tmp_path, capsys):
    parent = tmp_path / "file"
    parent.write_text("")
    assert cli.main(["run", "ntk-convergence", "--quick", "--out", str(parent / "sub")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"owidth: --out {parent / 'sub'} cannot be made a folder") and err.count("\n") == 1


NUMPY_FIELDS = [
    # (description, layer built with NumPy scalars, the same layer with Python numbers)
    ("Dense w_std float32", lambda: ow.Dense(w_std=np.float32(1)), lambda: ow.Dense(w_std=1.0)),
    ("Dense out int64", lambda: ow.Dense(out=np.int64(2)), lambda: ow.Dense(out=2)),
    ("Conv out, filter_shape, strides", lambda: ow.Conv(out=np.int64(2), filter_shape=(np.int64(3), np.int64(3)),
                                                       strides=np.int64(1)),
     lambda: ow.Conv(out=2, filter_shape=(3, 3), strides=1)),
    ("Conv filter_shape array", lambda: ow.Conv(filter_shape=np.array([3, 3])), lambda: ow.Conv(filter_shape=(3, 3))),
    ("AvgPool window int64", lambda: ow.AvgPool(window=np.int64(2)), lambda: ow.AvgPool(window=2)),
    ("Attention heads int64", lambda: ow.Attention(heads=np.int64(2)), lambda: ow.Attention(heads=2)),
    ("Embedding vocab int64", lambda: ow.Embedding(vocab=np.int64(5), w_std=np.float64(2)),
     lambda: ow.Embedding(vocab=5, w_std=2.0)),
    ("TakePosition int64", lambda: ow.TakePosition(np.int64(0)), lambda: ow.TakePosition(0)),
    ("LayerNorm eps float32", lambda: ow.LayerNorm(eps=np.float32(0.5)), lambda: ow.LayerNorm(eps=0.5)),
    ("transformer int64", lambda: ow.transformer(depth=np.int64(1), heads=np.int64(2), vocab=np.int64(5),
                                                 out=np.int64(3)),
     lambda: ow.transformer(depth=1, heads=2, vocab=5, out=3)),
    ("Tanh nodes int64", lambda: ow.Tanh(nodes=np.int64(64)), lambda: ow.Tanh(nodes=64)),
]


@pytest.mark.parametrize("what,numpy_layer,python_layer", NUMPY_FIELDS, ids=[c[0] for c in NUMPY_FIELDS])
def test_numpy_scalars_in_layer_fields(what, numpy_layer, python_layer):
    """NumPy scalars are numbers: the layer equals (and hashes as) the one built with Python numbers."""
    layer, ref = numpy_layer(), python_layer()
    assert layer == ref and hash(layer) == hash(ref)
