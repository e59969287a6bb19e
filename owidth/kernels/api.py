"""``ow.kernel``: analytic infinite-width NNGP and NTK of a width-free spec."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from owidth import _checks
from owidth.kernels.state import Kernel, KState

_GETS = ("nngp", "ntk")


def _normalize_get(get) -> tuple[str, ...]:
    if isinstance(get, str):
        get = (get,)
    try:
        get = tuple(get)
    except TypeError as err:
        raise TypeError(f"ow.kernel: get must be 'nngp', 'ntk' or a tuple of them, got {get!r}") from err
    bad = [g for g in get if g not in _GETS]
    if bad or not get:
        raise ValueError(f"ow.kernel: get={get!r} is not valid; use 'nngp', 'ntk' or ('nngp', 'ntk')")
    return tuple(g for g in _GETS if g in get)


@functools.lru_cache(maxsize=256)
def _check_structure(net, get: tuple[str, ...], same: bool, features: tuple[int, ...]) -> None:
    """Trace the layer rules on tiny abstract inputs (no FLOPs, no compilation)
    so that structural errors (wrong rank for a conv net, a VALID filter larger
    than the image) surface before anything is compiled. Memoised per
    (net, get, same, feature shape): it runs once per architecture."""
    x = jax.ShapeDtypeStruct((2, *features), jnp.result_type(float))
    jax.eval_shape(lambda a, b: _kernel_impl(net, a, b, get), x, None if same else x)


@functools.lru_cache(maxsize=256)
def _spatial_info(net) -> tuple[bool, bool]:
    """(has spatial layers, needs all pixel-pixel covariances), from a static pass over the spec."""
    from owidth.spec_spatial import AvgPool, Conv, Flatten, GlobalAvgPool, needs_full_pixels

    def has(layer):
        return isinstance(layer, (Conv, AvgPool, Flatten, GlobalAvgPool)) or any(has(c) for c in layer._children())

    return has(net), needs_full_pixels(net)


def _kernel_impl(net, x1, x2, get):
    ks = KState(x1=x1, x2=x2, need_ntk="ntk" in get, full=_spatial_info(net)[1])
    ks = net._kernel(ks).materialize()
    var2 = ks.var1 if ks.var2 is None else ks.var2
    return Kernel(
        nngp=ks.nngp if "nngp" in get else None,
        ntk=ks.ntk if "ntk" in get else None,
        var1=ks.var1,
        var2=var2,
    )


_kernel = jax.jit(_kernel_impl, static_argnames=("net", "get"))


def kernel(net, x1, x2=None, *, get=("nngp", "ntk")) -> Kernel:
    """Infinite-width NNGP and NTK of ``net`` between ``x1`` and ``x2``.

    For a network whose hidden layers are infinitely wide, the output at
    initialisation is a Gaussian process with covariance ``nngp`` (Neal 1996;
    Lee et al. 2018; Matthews et al. 2018), and gradient descent in the NTK
    parametrisation evolves it as a linear model with the deterministic kernel
    ``ntk`` (Jacot et al. 2018). Both are computed layer by layer:

        Dense:       nngp' = w^2 nngp + b^2,          ntk' = w^2 ntk + nngp'
        activation:  nngp' = E[phi(u) phi(v)],        ntk' = ntk * E[phi'(u) phi'(v)]

    with ``(u, v)`` Gaussian with the incoming covariance. Closed forms are
    used for Relu, LeakyRelu, Abs, Erf, Gelu, Sin and Identity (see
    :mod:`owidth.kernels.dual`); Tanh, Sigmoid, Silu, Softplus, ``ActivationFn``
    and consecutive smooth nonlinearities use Gauss-Hermite quadrature (see
    :mod:`owidth.kernels.quadrature`).

    Args:
      net: a width-free spec (``ow.serial(...)`` or a single layer).
      x1: (n1, d) inputs, or (n1, *spatial, channels) for networks with
        spatial layers (``Conv``, ``AvgPool``, ``GlobalAvgPool``, ``Flatten``).
      x2: (n2, d) inputs (same feature shape as ``x1``), or ``None`` for ``x1`` against itself (the result is
        then exactly symmetric).
      get: ``"nngp"``, ``"ntk"`` or both (default); what is not asked for is
        ``None`` in the result (the NTK is skipped with ``get="nngp"``; the
        NTK always needs the NNGP).

    Returns:
      A :class:`Kernel` with ``nngp``/``ntk`` of shape (n1, n2), per output
      unit (with trailing pixel axes when the network ends on spatial
      layers). Computed in float64 when ``jax_enable_x64`` is on, else float32.

    The computation is jit-compiled once per (net, get, shapes); it can also
    be called inside ``jax.jit``/``jax.grad`` by the user.
    """
    from owidth.spec import Layer  # local: spec imports the kernel package

    if not isinstance(net, Layer):
        raise TypeError(f"ow.kernel: net must be an owidth layer or ow.serial(...), got {type(net).__name__}")
    get = _normalize_get(get)
    if not net._has_weights():
        raise ValueError("ow.kernel: net has no weight layer (Dense); add one, e.g. ow.serial(..., ow.Dense(out=1))")
    rank = None if _spatial_info(net)[0] else 2
    x1 = _checks.as_float_array("x1", x1, where="ow.kernel", rank=rank)
    if x2 is not None:
        x2 = _checks.as_float_array("x2", x2, where="ow.kernel", rank=rank)
        _checks.same_features(x1, x2, where="ow.kernel")
    _check_structure(net, get, x2 is None, tuple(x1.shape[1:]))
    return _kernel(net, x1, x2, get)
