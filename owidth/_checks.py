"""Argument checks shared by the public entry points (internal).

They run on concrete values before anything is traced or compiled, and raise
``TypeError``/``ValueError`` naming the argument and the fix. Under an outer
``jax.jit`` the inputs are tracers: shape checks still run, value checks
(NaN) are skipped because the values are not known yet.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


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
