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
import pytest  # noqa: E402

matplotlib.use("Agg")
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(autouse=True)
def _optimization_effort(request):
    """Tests compile with ``jax_disable_most_optimizations`` (XLA's -O0 CPU backend, no expensive LLVM
    passes) unless marked ``compute_bound``. Both suites are dominated by compiling many programs, not by
    running them. Measured on the 2-core machine: tests/test_train.py + tests/test_param.py 72 s wall
    instead of 108 s; eight compile-heavy slow tests 227 s instead of 519 s (the depth-100 ReLU input
    gradient 22 s instead of 83 s). The arithmetic is the same IEEE arithmetic up to the order of fused
    operations (no fast-math at any level), so equalities between two compiled paths hold to a few ulps.
    Monte Carlo over thousands of finite networks runs 2-5x (up to 10x) slower unoptimised: such tests
    are marked ``compute_bound`` and compile at the default level, as users and the benchmarks do.
    JAX reads the option at each compilation, so it can change from test to test."""
    jax.config.update("jax_disable_most_optimizations", request.node.get_closest_marker("compute_bound") is None)
    yield
