"""Analytic infinite-width kernels (NNGP and NTK)."""

from owidth.kernels.api import kernel
from owidth.kernels.state import Kernel

__all__ = ["kernel", "Kernel"]
