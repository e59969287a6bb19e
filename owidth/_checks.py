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
    "positive_number", "nonneg_int",
]


def as_float_array(name: str, x, *, where: str, rank: int | None = 2, cast: bool = True) -> jax.Array:
    """Check ``x`` and convert it to an array (of the default float dtype when ``cast``)."""
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
    if not isinstance(arr, jax.core.Tracer) and not np.all(np.isfinite(np.asarray(arr))):
        # checked on the host with numpy: works for concrete arrays even inside an outer trace
        raise ValueError(f"{where}: {name} contains NaN or Inf; clean or impute the data first")
    return jnp.asarray(arr, dtype=jnp.result_type(float)) if cast else jnp.asarray(arr)


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


def int_tuple(cls: str, name: str, value, n: int | None = None) -> tuple[int, ...]:
    """A tuple of positive ints (an int is repeated ``n`` times); ``n``: the required length."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,) * (n or 1)
    try:
        value = tuple(value)
    except TypeError as err:
        raise TypeError(f"{cls}({name}=...) must be an int or a tuple of ints, got {value!r}") from err
    if not value or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        raise ValueError(f"{cls}({name}={value!r}) must hold positive ints")
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
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{cls}({name}=...) must be an int or None (hidden), got {value!r}")
    if value <= 0:
        raise ValueError(f"{cls}({name}={value}) must be positive; leave {name}=None for a hidden layer")
    return value


def function(cls: str, name: str, value):
    if not callable(value):
        raise TypeError(f"{cls}({name}=...) must be callable, got {value!r}")
    return value
