"""Helpers shared by the benchmark scripts and the runner (numpy-free and JAX-free at import)."""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Sequence


def fmt(value, spec: str) -> str:
    """``format(value, spec)``, or ``-`` for a missing value."""
    return "-" if value is None else format(value, spec)


def markdown(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table; cells are ``str()``-ed."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def jax_platforms(backend: str) -> str:
    """The ``JAX_PLATFORMS`` value of a benchmark backend: ``gpu`` is CUDA's plugin (jax 0.11 reads
    ``JAX_PLATFORMS=gpu`` as cuda *and* rocm and fails where rocm is not installed)."""
    return {"gpu": "cuda"}.get(backend, backend)


def machine_info(backend: str) -> dict:
    """The machine the numbers were measured on (CPU model from /proc/cpuinfo where there is one)."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "backend": backend}
    if backend == "gpu":  # the accelerator's name, memory and driver, as nvidia-smi reports them
        try:
            query = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
            info["gpu"] = subprocess.run(query, capture_output=True, text=True, timeout=30).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            info["gpu"] = None
    return info
