"""Run a module or function in a child of the warm server, as if in a process of one's own.

Stdlib only and cheap to import: this is all a warm-started process loads before its child takes
over. While the child runs, the signals a process is stopped with (SIGTERM, SIGINT, SIGHUP) are
forwarded to the child's process group, and the caller's exit status becomes the child's.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import threading
from typing import Any

from sftlab.warm import SOCKET_ENV
from sftlab.warm.protocol import send_request

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def available() -> bool:
    return bool(os.environ.get(SOCKET_ENV))


def _standard_fds() -> tuple[list[int], list[int]]:
    """This process's stdin/stdout/stderr descriptors, with /dev/null for any that is closed;
    the second list holds the descriptors opened here."""
    fds, opened = [], []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            fds.append(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            fds.append(null)
            opened.append(null)
    return fds, opened


def run(target: str, args: list[Any]) -> int | None:
    """Run ``target`` (``module`` with string ``args``, or ``module:function`` called with JSON
    ``args``) in a warm child and wait for it: its exit status (negative: the signal that ended
    it), or None when no warm server takes the request and the caller must run it cold."""
    path = os.environ.get(SOCKET_ENV)
    if not path:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    fds, opened = _standard_fds()
    try:
        try:
            sock.connect(path)
            send_request(sock, {"target": target, "args": args, "env": dict(os.environ), "cwd": os.getcwd()}, fds)
        except OSError:
            return None
        finally:
            for fd in opened:
                os.close(fd)
        replies = sock.makefile("rb")
        first = _reply(replies)
        if first is None or "pid" not in first:
            if first is not None and "refused" in first:
                print(f"warm start refused ({first['refused']}); starting cold", file=sys.stderr, flush=True)
            return None
        with _forwarding_signals(int(first["pid"])):
            last = _reply(replies)
        if last is None:  # the server went away, and its children with it
            return -signal.SIGKILL
        return int(last["exit"])
    finally:
        sock.close()


def _reply(replies: Any) -> dict[str, Any] | None:
    try:
        line = replies.readline()
    except OSError:
        return None
    return json.loads(line) if line else None


@contextlib.contextmanager
def _forwarding_signals(pid: int) -> Any:
    """Pass stop signals on to the child's process group (only the main thread can catch them)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def forward(signum: int, frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def exit_like(code: int) -> None:
    """End this process as the child ended: with its status, or killed by its signal."""
    sys.stdout.flush()
    sys.stderr.flush()
    if code < 0:
        with contextlib.suppress(OSError):  # SIGKILL has no handler to reset
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        raise SystemExit(128 - code)  # the signal is blocked or ignored here
    raise SystemExit(code)
