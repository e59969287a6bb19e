"""Test helpers: independent reference computations (never the library's)."""

import contextlib
import json

import jax
import numpy as np

import owidth as ow


def build(arch):
    """owidth net from the JSON description used by the reference files."""
    layers = []
    for name, kw in arch:
        if name == "Residual":
            layers.append(ow.Residual(*[build([item])  for item in kw]))
        elif name in ("concat", "product"):
            extra = {"axis": kw["axis"]} if name == "concat" else {}
            layers.append(getattr(ow, name)(*[build(b) for b in kw["branches"]], **extra))
        elif name == "repeat":
            layers.append(ow.repeat(build(kw["block"]), kw["n"]))
        elif name == "Index":
            layers.append(ow.Index(tuple(Ellipsis if i == "..." else slice(*i["slice"]) if isinstance(i, dict) else i
                                         for i in kw["idx"])))
        else:
            kw = {k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()}  # JSON lists -> tuples
            layers.append(getattr(ow, name)(**kw))
    return layers[0] if len(layers) == 1 else ow.serial(*layers)


def load_archs(ref):
    return json.loads(str(ref["archs"]))


def load_inputs(ref, name):
    """(x1, x2) of architecture ``name``: vectors, images or sequences (see nt_reference.py)."""
    kinds = json.loads(str(ref["inputs"])) if "inputs" in ref else {}
    kind = kinds.get(name, "x")
    return ref[f"{kind}1"], ref[f"{kind}2"]


def sphere(n, d, seed):
    rng = np.random.RandomState(seed)
    x = rng.randn(n, d)
    return x / np.linalg.norm(x, axis=1, keepdims=True) * np.sqrt(d)


_TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"  # jax.monitoring's event, once per jit trace


@contextlib.contextmanager
def traces():
    """Names of the functions ``jax.jit`` traces inside the block, in order (a list, filled as it runs).

    Read from ``jax.monitoring`` (public): JAX records this event each time it traces a jitted
    function to a jaxpr, and never on a cache hit."""
    names = []

    def listen(event, _duration, **kw):
        if event == _TRACE_EVENT:
            names.append(kw.get("fun_name"))

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield names
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


# The name of the program ow.kernel jits (the inner function of owidth.kernels.hyper.jit_net).
# test_kernel.test_no_retrace_for_new_values checks that a new input shape traces it exactly once,
# so a rename fails there instead of making compiles_nothing pass vacuously.
KERNEL_PROGRAM = "traced"


def compiles_nothing(fn):
    """Run fn and check that ow.kernel's program was not traced (so not compiled) on the way."""
    with traces() as names:
        fn()
    assert KERNEL_PROGRAM not in names, names


def raises_before_compiling(fn, exc, msg):
    """fn raises exc whose message contains msg, and nothing was compiled on the way."""
    import pytest

    def call():
        with pytest.raises(exc) as info:
            fn()
        assert msg in str(info.value), str(info.value)

    compiles_nothing(call)


def kernels_64_32(net, x):
    """``{name: (float64 kernel, float32 kernel, float32 kernel with x2 = x1)}`` for name in nngp, ntk, all
    as float64 numpy arrays (the float32 ones computed with x64 off)."""
    k64 = ow.kernel(net, x)
    with jax.enable_x64(False):
        x32 = np.asarray(x, np.float32)
        k32, k32x = ow.kernel(net, x32), ow.kernel(net, x32, x32)
        assert k32.nngp.dtype == np.float32
    return {name: tuple(np.asarray(getattr(k, name), np.float64) for k in (k64, k32, k32x)) for name in ("nngp", "ntk")}


def check_monte_carlo(net, x, other, *, samples, width, key=1):
    """``ow.monte_carlo_kernel`` of ``net`` within 4 standard errors of ``ow.kernel(net)`` everywhere, and the
    kernels of ``other`` (a 5% change of a hyperparameter) more than 4 standard errors off somewhere."""
    mc = ow.monte_carlo_kernel(net, x, width=width, samples=samples, key=jax.random.key(key), progress_bar=False)
    exact = ow.kernel(net, x)
    for what in ("nngp", "ntk"):
        z = np.abs(np.asarray(getattr(mc, what)) - getattr(exact, what)) / np.asarray(getattr(mc.stderr, what))
        assert np.all(z < 4), (what, z)
    wrong = ow.kernel(other, x)
    z = [np.abs(np.asarray(getattr(mc, w)) - getattr(wrong, w)) / np.asarray(getattr(mc.stderr, w))
         for w in ("nngp", "ntk")]
    assert max(zz.max() for zz in z) > 4, ("a 5% change went undetected", z)


def reference_kernels(net, ref, name, **options):
    """owidth's NNGP/NTK of ``net`` on the inputs of reference architecture ``name``: ``{"nngp11", "ntk11",
    "nngp12", "ntk12"}`` as numpy arrays, for (x1, x1) and (x1, x2) (``options`` go to ``ow.kernel``)."""
    x1, x2 = load_inputs(ref, name)
    k11, k12 = ow.kernel(net, x1, **options), ow.kernel(net, x1, x2, **options)
    return {key: np.asarray(k) for key, k in
            (("nngp11", k11.nngp), ("ntk11", k11.ntk), ("nngp12", k12.nngp), ("ntk12", k12.ntk))}


def check_padded_equals_cut(net, x, lengths, *, cut_params=None, width=8, rtol=1e-12):
    """Sequences ``x`` (batch, L, C) NaN-padded after ``lengths``: the kernel's diagonal entries and a finite
    network's outputs equal those of each sequence cut to its length (``cut_params(params, n)``: the
    parameters for length ``n``, for layers whose parameters have the length). Returns the padded inputs."""
    padded = np.array(x, dtype=float)
    for i, n in enumerate(lengths):
        padded[i, n:] = np.nan
    k = ow.kernel(net, padded)
    model = ow.finite(net, width=width)
    params = model.init(jax.random.key(0), padded)
    y = model.apply(params, padded)
    for i, n in enumerate(lengths):
        alone = ow.kernel(net, x[i:i + 1, :n])
        np.testing.assert_allclose(k.nngp[i, i], alone.nngp[0, 0], rtol=rtol)
        np.testing.assert_allclose(k.ntk[i, i], alone.ntk[0, 0], rtol=rtol)
        cut = params if cut_params is None else cut_params(params, n)
        np.testing.assert_allclose(y[i], model.apply(cut, x[i:i + 1, :n])[0], rtol=rtol)
    return padded, k, model, params, y


def max_reference_error(net, ref, name, **options) -> float:
    """The largest error of owidth's four kernels of reference architecture ``name`` against ``ref``, relative
    to each reference array's largest entry (``options`` go to ``ow.kernel``)."""
    got = reference_kernels(net, ref, name, **options)
    return max(float(np.max(np.abs(got[key] - ref[f"{name}/{key}"])) / np.max(np.abs(ref[f"{name}/{key}"])))
               for key in got)
