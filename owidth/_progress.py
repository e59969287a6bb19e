"""Progress bars for long work (internal)."""

from __future__ import annotations

import os
import sys

__all__ = ["progress"]


def progress(*, total: int, desc: str, enabled: bool = True, delay: float = 0.0):
    """A tqdm progress bar on stderr (silenced by ``enabled=False`` or OWIDTH_NO_PROGRESS=1); with
    ``delay`` it appears only once the work has taken that many seconds."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, delay=delay,
                disable=not enabled or os.environ.get("OWIDTH_NO_PROGRESS") == "1")
