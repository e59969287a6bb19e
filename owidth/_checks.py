"""Argument checks shared by the public entry points (internal).

They run on concrete values before anything is traced or compiled, and raise
``TypeError``/``ValueError`` naming the argument and the fix. Under an outer
``jax.jit`` the inputs are tracers: shape checks still run, value checks
(NaN) are skipped because the values are not known yet.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "as_float_array", "same_features", "positive_int", "field", "convert", "convert_fields", "hyper", "std", "real",
    "nonneg_float", "positive", "integer", "int_tuple", "padding", "boolean", "optional_positive", "function",
    "positive_number", "nonneg_int", "gram_in_range", "finite_values", "nonneg_number", "same_feature_shape",
    "positive_ints", "prng_key",
]


def as_float_array(name: str, x, *, where: str, rank: int | None = 2, cast: bool = True,
                   padding: bool = False) -> jax.Array:
    """Check ``x`` and convert it to an array (of the default float dtype when ``cast``). ``padding``: NaN
    marks padding positions (``owidth.layers.masking``, checked there) and is let through."""
    if isinstance(x, jax.core.Tracer):
        arr = x
    else:
        try:
            arr = np.asarray(x) if not isinstance(x, jax.Array) else x
        except Exception as err:  # noqa: BLE001 - re-raised with context
            raise TypeError(f"{where}: {name} must be an array of numbers, got {type(x).__name__}") from err
    if not (jnp.issubdtype(arr.dtype, jnp.floating) or jnp.issubdtype(arr.dtype, jnp.integer)):
        raise TypeError(f"{where}: {name} must hold real numbers, got dtype {arr.dtype}")
    if rank is not None and arr.ndim != rank:
        hint = " Add a batch axis, e.g. x[None]." if arr.ndim == rank - 1 else ""
        raise ValueError(f"{where}: {name} must have shape (batch, features) (rank {rank}), got shape {tuple(arr.shape)}.{hint}")
    if arr.ndim < 2:
        raise ValueError(f"{where}: {name} must have a batch axis and a feature axis, got shape {tuple(arr.shape)}. "
                         "Add a batch axis, e.g. x[None].")
    if arr.shape[0] == 0:
        raise ValueError(f"{where}: {name} is empty (shape {tuple(arr.shape)}); pass at least one input")
    if math.prod(arr.shape[1:]) == 0:
        raise ValueError(f"{where}: {name} has no features (shape {tuple(arr.shape)}); each input needs at least "
                         "one feature")
    dtype = jnp.result_type(float) if cast else arr.dtype
    if not isinstance(arr, jax.core.Tracer):
        # checked on the host with numpy: works for concrete arrays even inside an outer trace
        host = np.asarray(arr)
        let = np.isnan(host) if padding and np.issubdtype(host.dtype, np.floating) else False
        if not np.all(np.isfinite(host) | let):
            raise ValueError(f"{where}: {name} contains NaN or Inf; clean or impute the data first (NaN in all "
                             "features of a position marks padding of a sequence or set: see mask=)")
        with np.errstate(over="ignore", invalid="ignore"):
            overflows = np.dtype(dtype).kind == "f" and not np.all(np.isfinite(host.astype(dtype)) | let)
        if overflows:
            raise ValueError(
                f"{where}: {name} holds values beyond the range of {np.dtype(dtype).name} (|{name}| up to "
                f"{np.max(np.abs(host)):.3g} > {float(jnp.finfo(dtype).max):.3g}): rescale the data, or enable "
                "float64 with jax.config.update('jax_enable_x64', True)")
    return jnp.asarray(arr, dtype=dtype) if cast else jnp.asarray(arr)


def gram_in_range(name: str, x: jax.Array, *, where: str) -> None:
    """Refuse inputs whose second moments ``|x|^2 / d`` overflow ``x``'s dtype (the first layer's
    covariances, from which every kernel entry is built: they would be Inf and the kernel NaN).
    Concrete inputs only (under an outer trace the values are unknown)."""
    if isinstance(x, jax.core.Tracer) or not jnp.issubdtype(x.dtype, jnp.floating):
        return
    host = np.asarray(x, dtype=np.float64)
    scale = np.nanmax(np.abs(host))  # NaN: padding (owidth.layers.masking)
    if scale == 0:
        return
    # |x|^2 / d <= max|x|^2: in range when max|x| < sqrt(max) (with room for the layers' w_std^2 factors)
    limit = math.sqrt(float(jnp.finfo(x.dtype).max)) * 0.1
    if scale > limit:
        raise ValueError(
            f"{where}: {name} has entries up to {scale:.3g}: its second moments |{name}|^2 / d (the first layer's "
            f"covariances) overflow {np.dtype(x.dtype).name} (max {float(jnp.finfo(x.dtype).max):.3g}). Rescale the "
            f"data (e.g. divide by {scale:.3g}; the kernels of homogeneous nets such as ReLU MLPs scale with it)"
            + (", or enable float64 with jax.config.update('jax_enable_x64', True)" if x.dtype == jnp.float32 else ""))


def positive_number(name: str, value, *, where: str, what: str = "") -> float:
    """A finite number > 0 (``ValueError`` otherwise; ``what`` adds a note on its meaning)."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating)) \
        and math.isfinite(value) and value > 0
    if not ok:
        raise ValueError(f"{where}: {name} must be a finite positive number{what}, got {value!r}")
    return float(value)


def nonneg_int(name: str, value, *, where: str) -> int:
    """An int >= 0 (``ValueError`` otherwise)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{where}: {name} must be a non-negative int, got {value!r}")
    return int(value)


def same_features(x1, x2, *, where: str) -> None:
    if x2 is not None and x1.shape[1:] != x2.shape[1:]:
        raise ValueError(
            f"{where}: x1 and x2 must have the same feature shape, got {tuple(x1.shape[1:])} and {tuple(x2.shape[1:])}"
        )


def positive_int(name: str, value, *, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{where}: {name} must be a positive int, got {type(value).__name__} {value!r}")
    if value <= 0:
        raise ValueError(f"{where}: {name} must be a positive int, got {value}")
    return int(value)


# --------------------------------------------------------------------------- #
# Layer fields: converters ``(cls, name, value) -> value`` run by :func:`convert_fields`
# --------------------------------------------------------------------------- #
def field(default=dataclasses.MISSING, *, converter):
    """A dataclass field checked and normalised by ``converter(cls_name, field_name, value)`` when the
    object is built (:func:`convert`, run by ``Layer.__post_init__``), as equinox's ``field(converter=)``::

        w_std: float = _checks.field(1.0, converter=_checks.std)
    """
    return dataclasses.field(default=default, metadata={"converter": converter})


def convert(obj) -> None:
    """Run the converters of every :func:`field` of the frozen dataclass ``obj``, in field order."""
    convert_fields(obj, **{f.name: f.metadata["converter"] for f in dataclasses.fields(obj) if "converter" in f.metadata})


def convert_fields(obj, **converters) -> None:
    """Check and normalise fields of a frozen dataclass in its ``__post_init__``.

    ``convert_fields(self, w_std=std, heads=positive)`` runs each converter
    ``conv(cls_name, field_name, value)`` on the field of that name and stores
    what it returns (the converters below raise ``TypeError``/``ValueError``
    worded as ``Cls(field=value) must ...``).
    """
    cls = type(obj).__name__
    for name, conv in converters.items():
        object.__setattr__(obj, name, conv(cls, name, getattr(obj, name)))


def hyper(cls: str, name: str, value, *, nonneg: bool):
    """A real hyperparameter of a layer: a number, or a JAX scalar (for ``jax.grad``/``jax.jit`` over it).

    * Python and NumPy numbers become Python floats: the layer stays a
      hashable static value (one compilation per value, as any static).
    * A concrete scalar ``jax.Array`` is checked like a number and kept as an
      array: ``ow.kernel`` then traces it (:mod:`owidth.kernels.hyper`), so
      other values of it reuse one compilation.
    * A tracer (inside ``jax.grad``/``jax.jit``/``jax.vmap``) cannot be
      checked: it must be a real scalar, and its value is used as given (for
      a standard deviation only its square enters the kernels).
    """
    if isinstance(value, jax.Array):
        if value.ndim != 0 or not (jnp.issubdtype(value.dtype, jnp.floating) or jnp.issubdtype(value.dtype, jnp.integer)):
            raise TypeError(f"{cls}({name}=...) must be a real scalar, got a JAX array of shape {tuple(value.shape)} "
                            f"and dtype {value.dtype}; pass one number (e.g. x[0] or jnp.squeeze(x))")
        if jnp.issubdtype(value.dtype, jnp.integer):
            value = value.astype(jnp.result_type(float))
        if not isinstance(value, jax.core.Tracer):
            _finite_number(cls, name, float(value), nonneg)
        return value
    if isinstance(value, (np.ndarray, np.generic)) and value.ndim == 0 and value.dtype.kind in "iuf":
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{cls}({name}=...) must be a real number (or a JAX scalar), got {type(value).__name__} "
                        f"{value!r}")
    return _finite_number(cls, name, float(value), nonneg)


def _finite_number(cls: str, name: str, value: float, nonneg: bool) -> float:
    if nonneg and (not math.isfinite(value) or value < 0):
        raise ValueError(f"{cls}({name}={value!r}): a standard deviation must be finite and >= 0")
    if not math.isfinite(value):
        raise ValueError(f"{cls}({name}={value!r}) must be finite")
    return value


def std(cls: str, name: str, value):
    """A standard deviation: finite and >= 0 (see :func:`hyper` for JAX scalars)."""
    return hyper(cls, name, value, nonneg=True)


def real(cls: str, name: str, value):
    """A finite real parameter (see :func:`hyper` for JAX scalars)."""
    return hyper(cls, name, value, nonneg=False)


def nonneg_float(cls: str, name: str, value) -> float:
    """A finite Python float >= 0 (a static option, e.g. ``LayerNorm(eps=...)``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value) or value < 0:
        raise ValueError(f"{cls}({name}={value!r}) must be a finite float >= 0")
    return float(value)


def positive(cls: str, name: str, value) -> int:
    """A positive int field."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{cls}({name}={value!r}) must be a positive int")
    return int(value)


def integer(cls: str, name: str, value) -> int:
    """An int field (any sign)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{cls}({name}={value!r}) must be an int")
    return int(value)


def kernel_get(get, *, where: str) -> tuple[str, ...]:
    """Which kernels to compute: ``"nngp"``, ``"ntk"`` or a tuple of them, as ``("nngp", "ntk")``-ordered
    tuple without repeats."""
    kinds = ("nngp", "ntk")
    if isinstance(get, str):
        get = (get,)
    try:
        get = tuple(get)
    except TypeError as err:
        raise TypeError(f"{where}: get must be 'nngp', 'ntk' or a tuple of them, got {get!r}") from err
    bad = [g for g in get if g not in kinds]
    if bad or not get:
        raise ValueError(f"{where}: get={get!r} is not valid; use 'nngp', 'ntk' or ('nngp', 'ntk')")
    return tuple(g for g in kinds if g in get)


def degree(cls: str, name: str, value) -> int:
    """A polynomial degree: an int in [0, 40] (the Hermite expansion's coefficients grow like degree!)."""
    value = integer(cls, name, value)
    if not 0 <= value <= 40:
        raise ValueError(f"{cls}({name}={value!r}) must be an int in [0, 40]")
    return value


def polynomial_coefficients(cls: str, name: str, value) -> tuple[float, ...]:
    """Polynomial coefficients, lowest power first: 1 to 41 finite real numbers."""
    try:
        coef = tuple(value)
    except TypeError as err:
        raise TypeError(f"{cls}({name}=...) must be a sequence of numbers (lowest power first), got {value!r}") from err
    if not coef or not all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
                           and math.isfinite(v) for v in coef):
        raise ValueError(f"{cls}({name}={value!r}) must be a non-empty sequence of finite numbers, lowest power first")
    if len(coef) > 41:
        raise ValueError(f"{cls}({name}=...) has degree {len(coef) - 1}: at most 40 (the Hermite expansion's "
                         "coefficients grow like degree! and lose float64 precision beyond)")
    return tuple(float(v) for v in coef)


def int_tuple(cls: str, name: str, value, n: int | None = None) -> tuple[int, ...]:
    """A tuple of positive ints (an int is repeated ``n`` times); ``n``: the required length."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value,) * (n or 1)
    try:
        value = tuple(value)
    except TypeError as err:
        raise TypeError(f"{cls}({name}=...) must be an int or a tuple of ints, got {value!r}") from err
    if not value or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in value):
        raise ValueError(f"{cls}({name}={value!r}) must hold positive ints")
    value = tuple(int(v) for v in value)
    if n is not None and len(value) != n:
        raise ValueError(f"{cls}({name}={value!r}) must have {n} entries, one per spatial axis")
    return value


def padding(cls: str, name: str, value) -> str:
    if value not in ("SAME", "VALID"):
        raise ValueError(f"{cls}({name}={value!r}) must be 'SAME' or 'VALID'")
    return value


def boolean(cls: str, name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{cls}({name}=...) must be a bool, got {value!r}")
    return value


def optional_positive(cls: str, name: str, value):
    """``None`` or a positive int."""
    return None if value is None else _positive_out(cls, name, value)


def _positive_out(cls: str, name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{cls}({name}=...) must be an int or None (hidden), got {value!r}")
    if value <= 0:
        raise ValueError(f"{cls}({name}={value}) must be positive; leave {name}=None for a hidden layer")
    return int(value)


def function(cls: str, name: str, value):
    if not callable(value):
        raise TypeError(f"{cls}({name}=...) must be callable, got {value!r}")
    return value


def finite_values(name: str, x, *, where: str):
    """``x`` (array or number) must hold finite real numbers: ``ValueError`` on NaN/Inf, ``TypeError`` on
    non-numbers. Checked on the host for concrete values; a tracer passes unchecked. Returns ``x``."""
    if isinstance(x, jax.core.Tracer):
        return x
    try:
        arr = np.asarray(x)
    except Exception as err:  # noqa: BLE001 - re-raised with context
        raise TypeError(f"{where}: {name} must be an array of numbers, got {type(x).__name__}") from err
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{where}: {name} must hold real numbers, got dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{where}: {name} contains NaN or Inf; remove or replace them first (for a kernel: check "
                         "the inputs and hyperparameters it was computed from)")
    return x


def nonneg_number(name: str, value, *, where: str, below: float | None = None, what: str = ""):
    """A finite real number ``>= 0`` (and ``< below`` when given): a Python or NumPy number or a concrete
    0-d array, returned as a Python float; a JAX tracer (e.g. under ``jax.grad``) passes unchecked.
    ``TypeError`` for a non-number, ``ValueError`` for NaN, Inf or a value out of range."""
    if isinstance(value, jax.core.Tracer):
        return value
    if isinstance(value, (np.ndarray, np.generic, jax.Array)) and np.ndim(value) == 0 \
            and np.asarray(value).dtype.kind in "iuf":
        value = np.asarray(value).item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{where}: {name} must be a real number, got {type(value).__name__} {value!r}")
    rng = ">= 0" if below is None else f"in [0, {below:g})"
    if not (math.isfinite(value) and value >= 0 and (below is None or value < below)):
        raise ValueError(f"{where}: {name} must be a finite number {rng}{what}, got {value!r}")
    return float(value)


def same_feature_shape(name1: str, x1, name2: str, x2, *, where: str) -> None:
    """``x2`` (may be None) must have the feature shape (all axes but the first) of ``x1``; the message
    names both arguments, e.g. ``x_train`` and ``x_test``."""
    if x2 is not None and tuple(x1.shape[1:]) != tuple(x2.shape[1:]):
        raise ValueError(
            f"{where}: {name2} must have the same feature shape as {name1}, {tuple(x1.shape[1:])}, got "
            f"{tuple(x2.shape[1:])} ({name1} has shape {tuple(x1.shape)}, {name2} {tuple(x2.shape)})")


def positive_ints(name: str, value, *, where: str) -> tuple[int, ...]:
    """One positive int or a non-empty sequence of distinct positive ints (NumPy ints too), as a tuple:
    ``TypeError`` for other types, ``ValueError`` for an empty list, duplicates or values <= 0."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value,)
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple, range, np.ndarray)) \
            or (isinstance(value, np.ndarray) and value.ndim != 1):
        raise TypeError(f"{where}: {name} must be a positive int or a list of positive ints, got "
                        f"{type(value).__name__} {value!r}")
    values = tuple(positive_int(name, v, where=where) for v in value)
    if not values or len(set(values)) != len(values):
        raise ValueError(f"{where}: {name} must be a non-empty list without duplicates, got {list(values)}")
    return values


def prng_key(name: str, key, *, where: str) -> jax.Array:
    """A typed scalar PRNG key (``jax.random.key(seed)``), traced or not; anything else is refused."""
    if not (isinstance(key, jax.Array) and key.shape == () and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)):
        raise TypeError(f"{where}: {name} must be a typed PRNG key from jax.random.key(seed), got {key!r}")
    return key
