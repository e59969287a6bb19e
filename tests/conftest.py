"""Strict test configuration: float64, rank promotion raises, warnings are errors
(the latter set in pyproject.toml's ``filterwarnings``)."""

import os
import pathlib
import sys

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

# Tests mirror the package (tests/layers/test_conv.py for owidth/layers/conv.py, ...); helpers.py and
# the shared Monte Carlo estimators of sibling test modules are importable from every folder.
_HERE = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(_HERE)] + [str(d) for d in sorted(_HERE.iterdir()) if d.is_dir() and any(d.glob("test_*.py"))]

import jax  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")


def pytest_configure(config):
    """The default suite is dominated by compiling many small programs, not by running them: XLA's -O0
    CPU backend compiles them about 1.5x faster (measured: tests/test_train.py 80 s -> 52 s of CPU) and
    computes the same IEEE arithmetic up to the order of fused operations (no fast-math at any level),
    so equalities between two compiled paths hold to a few ulps. The slow suite (``pytest -m slow``)
    and the benchmarks run at the default level. Set XLA_FLAGS yourself to choose. (Runs before the
    first computation, so before JAX reads XLA_FLAGS.)"""
    if config.option.markexpr == "not slow":
        os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
