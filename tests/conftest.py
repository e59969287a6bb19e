"""Strict test configuration: float64, rank promotion raises, warnings are errors
(the latter set in pyproject.toml's ``filterwarnings``)."""

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
