"""SIGTERM as an interrupt, so cleanup code runs when a process is stopped from outside.

Kubernetes stops a pod (a cancelled KFP run, an eviction, a deleted pod) with SIGTERM, and so do
``kill`` and the local launcher cancelling a trial; Python's default is to exit at once, skipping
every ``finally``: claimed cache runs would stay RUNNING, trial runs in flight would go on
without their sweep, and no cause would be recorded.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM; handled wherever Ctrl-C is."""


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """While entered, SIGTERM raises ``Terminated("SIGTERM")``. Only the main thread may set
    signal handlers; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise Terminated("SIGTERM")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
