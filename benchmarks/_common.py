"""Helpers shared by the benchmark scripts and the runner (numpy-free and JAX-free at import)."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence


def fmt(value, spec: str) -> str:
    """``format(value, spec)``, or ``-`` for a missing value."""
    return "-" if value is None else format(value, spec)


def markdown(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table; cells are ``str()``-ed."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_info(backend: str) -> dict:
    """The machine the numbers were measured on (CPU model from /proc/cpuinfo where there is one)."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "backend": backend}
