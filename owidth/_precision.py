"""Full float32 precision for owidth's exact computations on accelerators.

JAX computes float32 matrix products and convolutions at reduced precision by default on
accelerators: TensorFloat-32 (10 mantissa bits) on NVIDIA GPUs from Ampere on, bfloat16 passes on
TPU (https://docs.jax.dev/en/latest/201/precision.html). That is the right default for training a
network, and the wrong one for a quantity sold as exact: measured on an H200 (tests/test_gpu.py), a
float32 NNGP of a ReLU MLP under the default precision is ~1e-3 off its float64 value, under
``"highest"`` ~1e-7. The analytic kernels, the empirical NTK/NNGP and the infinite-width predictions
therefore trace their matrix products and convolutions at ``"highest"`` (true float32 arithmetic).
Finite networks (``ow.finite``, ``ow.train``) keep JAX's default, which the user controls with
``jax.default_matmul_precision``. On CPU every level is full float32: nothing changes there.

The option is read when a product is traced (it is part of ``jax.jit``'s cache key), so the context
also reaches the programs these functions compile, and works inside a user's ``jax.jit``.
"""

from __future__ import annotations

import functools

import jax

__all__ = ["LEVEL", "exact"]

LEVEL = "highest"


def exact(fn):
    """``fn`` run with float32 matrix products and convolutions at full float32 precision."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with jax.default_matmul_precision(LEVEL):
            return fn(*args, **kwargs)

    return wrapper
