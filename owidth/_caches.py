"""One registry of the module-level caches keyed on nets and user functions, and one switch to empty them.

Every memoised helper in owidth is declared with :func:`cached` (``functools.lru_cache`` plus
registration), so :func:`clear_caches` cannot forget one. The compiled programs that ``jax.jit`` keeps
(keyed on static nets, models and ``apply_fn``\\ s) are dropped by ``jax.clear_caches()``.
"""

from __future__ import annotations

import functools

import jax

__all__ = ["cached", "clear_caches", "registered"]

_REGISTRY: list = []


def cached(maxsize: int = 256):
    """``functools.lru_cache(maxsize)`` that also registers the cache with :func:`clear_caches`.

    Args:
      maxsize: the most entries kept (least recently used dropped first).

    Returns:
      A decorator; the decorated function has ``cache_info()`` and ``cache_clear()``.
    """

    def decorate(fn):
        wrapped = functools.lru_cache(maxsize=maxsize)(fn)
        _REGISTRY.append(wrapped)
        return wrapped

    return decorate


def registered() -> tuple:
    """The registered caches (functions with ``cache_info()``/``cache_clear()``), in registration order."""
    return tuple(_REGISTRY)


def clear_caches() -> None:
    """Empty every owidth cache keyed on nets and user functions, and JAX's compilation caches.

    owidth memoises per architecture (the structure check and spatial analysis of
    :func:`owidth.kernel`, the tile planner, output sizes in :func:`owidth.empirical_ntk`,
    the abstract state of :func:`owidth.from_flax` models), and ``jax.jit`` keeps one
    compiled program per static net or function. These caches hold references to
    the nets and to user functions (``Activation(fn)``, ``apply_fn``, flax
    ``make``); call this to release them, e.g. in a long session that builds many
    nets, or after redefining a function in a notebook under the same identity.
    The next call re-traces and re-compiles.

    Examples:
      >>> import numpy as np
      >>> import owidth as ow
      >>> net = ow.serial(ow.Dense(), ow.Relu(), ow.Dense(out=1))
      >>> k1 = ow.kernel(net, np.ones((2, 3)))
      >>> ow.clear_caches()
      >>> k2 = ow.kernel(net, np.ones((2, 3)))   # traced and compiled again, same values
      >>> bool(np.allclose(k1.ntk, k2.ntk))
      True
    """
    for fn in _REGISTRY:
        fn.cache_clear()
    jax.clear_caches()
