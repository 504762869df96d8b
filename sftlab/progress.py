"""Progress events from a stage to whoever runs it: one JSON line each, appended to a file.

A local sweep's stages run as kfp.local task processes whose output goes to the trial's log, not
to the console, so the sweep could say nothing for minutes. Each stage now appends small events
(stage started/ended, training steps and evaluation items done) to the file named by
``SFTLAB_PROGRESS_FILE``, which the sweep's console tails. Unset (a cluster pod, a test calling a
stage directly), nothing is written. Lines are short and appended with one ``write`` on an
``O_APPEND`` descriptor, so the processes of one trial never interleave partial lines.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

ENV = "SFTLAB_PROGRESS_FILE"
STEP_EVERY_S = 0.5  # at most this often per counter: a fast loop must not write a line per item

_stage: ContextVar[str | None] = ContextVar("sftlab_progress_stage", default=None)


def emit(event: str, **fields: Any) -> None:
    """Append one event; never raises (progress must not fail the work it describes)."""
    path = os.environ.get(ENV)
    if not path:
        return
    line = json.dumps({"t": round(time.time(), 3), "event": event, **fields}, default=str) + "\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode("utf-8"))
        finally:
            os.close(fd)
    except OSError:
        pass


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Report the stage's start and end (with its seconds and, on failure, the first line of the cause)."""
    token = _stage.set(name)
    started = time.monotonic()
    emit("stage_start", stage=name)
    try:
        yield
    except BaseException as exc:
        cause = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        emit("stage_end", stage=name, ok=False, seconds=round(time.monotonic() - started, 2), error=cause)
        raise
    finally:
        _stage.reset(token)
    emit("stage_end", stage=name, ok=True, seconds=round(time.monotonic() - started, 2))


class Steps:
    """A counter of one piece of work (``what``: "step", "gsm8k items"): ``update(done, total)``
    reports at most every ``STEP_EVERY_S``, and always the last one."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self._last < STEP_EVERY_S:
            return
        self._last = now
        emit("steps", stage=_stage.get(), what=self.what, done=done, total=total)
