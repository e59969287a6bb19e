"""Modules that moved, kept importable for one release with a ``DeprecationWarning`` (internal)."""

from __future__ import annotations

import importlib
import warnings

__all__ = ["moved"]


def moved(old: str, new: str, names: tuple[str, ...]):
    """A module ``__getattr__`` for the old module ``old``: each of ``names`` is taken from module ``new``
    with a ``DeprecationWarning``; any other name raises ``AttributeError``."""

    def __getattr__(name: str):  # noqa: N807
        if name not in names:
            raise AttributeError(f"module {old!r} has no attribute {name!r} (it moved to {new!r} in owidth 0.2)")
        warnings.warn(f"{old} is deprecated: import {name} from {new} (or use ow.{name}); {old} will be removed "
                      "in the next release", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(new), name)

    return __getattr__
