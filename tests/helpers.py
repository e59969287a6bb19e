"""Test helpers: independent reference computations (never the library's)."""

import json

import numpy as np

import owidth as ow


def build(arch):
    """owidth net from the JSON description used by the reference files."""
    layers = []
    for name, kw in arch:
        if name == "Residual":
            layers.append(ow.Residual(*[build([item])  for item in kw]))
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


def compiles_nothing(fn):
    """Run fn and check that no new ow.kernel compilation happened."""
    from owidth import _kernel as api

    before = api._kernel._cache_size()
    fn()
    assert api._kernel._cache_size() == before


def raises_before_compiling(fn, exc, msg):
    """fn raises exc whose message contains msg, and nothing was compiled on the way."""
    import pytest

    def call():
        with pytest.raises(exc) as info:
            fn()
        assert msg in str(info.value), str(info.value)

    compiles_nothing(call)
