"""Tasks on any executor with ``submit(fn, *args) -> future`` (``concurrent.futures``, ``dask.distributed``,
submitit): the retry loop shared by :func:`ow.run_sweep` and :func:`ow.kernel_to_zarr`. No scheduler here: the
executor places and runs the tasks; this module only submits, collects, resubmits failed ones a bounded number
of times and returns what still failed."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterable
from typing import Any

__all__ = ["check", "run", "failure_message"]


def check(executor, *, where: str) -> None:
    """``TypeError`` unless ``executor`` is None or has a callable ``submit``."""
    if executor is not None and not callable(getattr(executor, "submit", None)):
        raise TypeError(f"{where}: executor must have a submit(fn, *args) method returning a future (e.g. "
                        "concurrent.futures.ProcessPoolExecutor, dask.distributed.Client), got "
                        f"{type(executor).__name__}")


def run(executor, fn: Callable, tasks: Iterable[tuple[Hashable, tuple]], *, retries: int,
        on_result: Callable[[Hashable, Any], None]) -> dict[Hashable, BaseException]:
    """Submit ``fn(*args)`` for every ``(key, args)``, call ``on_result(key, result)`` as each finishes (in the
    driver), resubmit a task that raised anything but ``ValueError``/``TypeError`` (bad arguments fail again) up
    to ``retries`` times, and return ``{key: exception}`` of the tasks that still failed (an exception from
    ``submit`` itself, e.g. a broken process pool, counts as a failure). Returns when no task is running."""
    pending, failed = {}, {}

    def submit(key, args, attempt):
        try:
            pending[executor.submit(fn, *args)] = (key, args, attempt)
        except Exception as err:  # noqa: BLE001 - reported with its task
            failed[key] = err

    for key, args in tasks:
        submit(key, args, 0)
    while pending:
        finished = [f for f in pending if f.done()]
        if not finished:
            time.sleep(0.02)
            continue
        for f in finished:
            key, args, attempt = pending.pop(f)
            err = f.exception()
            if err is None:
                on_result(key, f.result())
            elif attempt < retries and not isinstance(err, (ValueError, TypeError)):
                submit(key, args, attempt + 1)  # a worker that died, a lost connection, ...
            else:
                failed[key] = err
    return failed


def failure_message(failed: dict, *, what: str, total: int, retries: int) -> str:
    """``"k of n <what> failed after up to r retries (Reason: key, key; ...)"``, one entry per distinct reason."""
    by_reason: dict[str, list[str]] = {}
    for key, err in sorted(failed.items(), key=lambda kv: str(kv[0])):
        by_reason.setdefault(f"{type(err).__name__}: {err}", []).append(str(key))
    reasons = "; ".join(f"{reason}: {', '.join(keys)}" for reason, keys in by_reason.items())
    return f"{len(failed)} of {total} {what} failed after up to {retries} retries ({reasons})"
