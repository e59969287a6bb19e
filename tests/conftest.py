"""Strict test configuration: float64, rank promotion raises, warnings are errors
(the latter set in pyproject.toml's ``filterwarnings``)."""

import os
import pathlib
import subprocess
import sys

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

# XLA's CPU compiler for the tests: the loop emitters rather than the fusion emitters, one codegen thread.
# Both suites spend most of their time compiling many small programs; measured on the 2-core machine
# (a one-step Adam program of a 4-layer MLP, 1094 lines of StableHLO, at -O0, five widths): XLA compile
# median 2.6 s with the defaults, 1.1 s with these flags; the default suite 12:04 -> 8:02 wall. The
# arithmetic is IEEE in both (no fast-math). Set once here, before JAX starts a backend, and inherited by
# the xdist workers; a jaxlib that does not know a flag would abort at startup (XLA_FLAGS parsing is
# fatal), so the flags are tried in a subprocess first and dropped if refused. OWIDTH_TEST_XLA_FLAGS=""
# turns them off. Tests marked ``compute_bound`` (see below) compile at LLVM -O1 without its expensive
# passes rather than -O2 (these two flags do not touch the -O0 compiles of the other tests): measured on
# a one-step Adam MLP program, compile 4.9 s -> 2.0 s and run 0.079 s -> 0.058 s; the DMFT and muTransfer
# quick experiments and the NTP-linearization check 90/184/90 s -> 71/138/75 s.
_FAST_COMPILE = ("--xla_cpu_use_fusion_emitters=false --xla_cpu_parallel_codegen_split_count=1 "
                 "--xla_backend_optimization_level=1 --xla_llvm_disable_expensive_passes=true")


def _test_xla_flags() -> None:
    given = os.environ.get("XLA_FLAGS", "")
    flags = os.environ.get("OWIDTH_TEST_XLA_FLAGS")  # set by the controller (xdist workers) or by the user
    if flags is None:
        env = {**os.environ, "XLA_FLAGS": f"{given} {_FAST_COMPILE}", "JAX_PLATFORMS": "cpu"}
        probe = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], env=env, capture_output=True)
        flags = os.environ["OWIDTH_TEST_XLA_FLAGS"] = _FAST_COMPILE if probe.returncode == 0 else ""
    if flags and flags not in given:
        os.environ["XLA_FLAGS"] = f"{given} {flags}".strip()


_test_xla_flags()

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
