"""Full float32 precision for owidth's exact computations on accelerators.

JAX computes float32 matrix products and convolutions at reduced precision by default on
accelerators: TensorFloat-32 (10 mantissa bits) on NVIDIA GPUs from Ampere on, bfloat16 passes on
TPU (https://docs.jax.dev/en/latest/201/precision.html). That is the right default for training a
network, and the wrong one for a quantity sold as exact: measured on an H200 (tests/test_gpu.py), a
float32 ``x @ x.T`` (d = 512) under the default precision is 9.5e-5 off its float64 value, under
``"highest"`` 1.7e-7; with this module ``ow.kernel``'s float32 NNGP/NTK there are within 2.2e-7 of
float64 (the kernel without it was not measured on the GPU). The analytic kernels, the empirical NTK/NNGP and the infinite-width predictions
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
