"""Markdown tables for the benchmark scripts (numpy-free, JAX-free: imported by every script and the runner)."""

from __future__ import annotations

from collections.abc import Sequence


def fmt(value, spec: str) -> str:
    """``format(value, spec)``, or ``-`` for a missing value."""
    return "-" if value is None else format(value, spec)


def markdown(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table; cells are ``str()``-ed."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
