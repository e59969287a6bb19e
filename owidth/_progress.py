"""Progress bars for long work (internal)."""

from __future__ import annotations

import os
import sys


def progress(*, total: int, desc: str, enabled: bool = True):
    """A tqdm progress bar on stderr (silenced by ``enabled=False`` or OWIDTH_NO_PROGRESS=1)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr,
                disable=not enabled or os.environ.get("OWIDTH_NO_PROGRESS") == "1")
