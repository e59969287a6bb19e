"""ow.clear_caches: every registered cache is emptied, and the next kernel call re-traces."""

import numpy as np

import owidth as ow
from owidth import _caches


def test_every_lru_cache_in_owidth_is_registered():
    """A memoised helper declared with plain functools.lru_cache would escape clear_caches."""
    import pathlib

    root = pathlib.Path(ow.__file__).parent
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if p.name != "_caches.py" and ("lru_cache(" in p.read_text() or "functools.cache\n" in p.read_text())]
    assert offenders == [], f"declare these caches with owidth._caches.cached: {offenders}"


def test_clear_caches_empties_caches_and_retraces():
    traces = [0]

    def fn(z):
        traces[0] += 1  # runs while JAX traces, not per evaluation
        return z * z  # an elementwise square, its dual kernels by quadrature

    net = ow.serial(ow.Dense(), ow.ActivationFn(fn, kink_at_zero=False), ow.Dense(out=1))
    x = np.array([[1.0, 0.0], [0.6, 0.8]])
    k1 = ow.kernel(net, x, get="nngp")
    assert traces[0] > 0
    assert any(c.cache_info().currsize > 0 for c in _caches.registered())

    seen = traces[0]
    ow.kernel(net, x, get="nngp")
    assert traces[0] == seen, "a second identical call should hit the jit cache"

    ow.clear_caches()
    assert len(_caches.registered()) >= 5
    assert [c.cache_info().currsize for c in _caches.registered()] == [0] * len(_caches.registered())

    k2 = ow.kernel(net, x, get="nngp")
    assert traces[0] > seen, "after clear_caches the kernel is traced again"
    np.testing.assert_allclose(k2.nngp, k1.nngp, rtol=1e-12)
