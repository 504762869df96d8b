"""The warm server: import the heavy libraries once, then fork a child per request.

``python -m sftlab.warm.server --socket PATH``. It listens at once and imports afterwards, so
early callers simply wait in the backlog instead of importing everything themselves. Each
request becomes a forked child that takes over the caller's standard streams, environment and
working directory, leads its own process group and dies with the server; the caller gets the
child's pid, then its exit status. When a caller goes away, its child is killed, as the caller's
own process would have been. SIGTERM stops every child (SIGKILL after a grace) and the server.

The loop is one thread on purpose: a process must not fork while other threads may hold locks,
and the preloaded libraries start none (the server says so in its log if one ever does).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import importlib
import io
import os
import runpy
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftlab.warm import SOCKET_ENV
from sftlab.warm.protocol import import_time_env, recv_request, send_reply

# What a local trial's processes import: the stages, the model server, and what those pull in.
PRELOAD = (
    "torch",
    "transformers",
    "peft",
    "trl",
    "datasets",
    "mlflow",
    "kserve",
    "pandas",
    "scipy.stats",
    "sftlab.stages.common",
    "sftlab.stages.profile",
    "sftlab.stages.baseline",
    "sftlab.stages.train",
    "sftlab.stages.evaluate",
    "sftlab.stages.weights",
    "sftlab.stages.report",
    "sftlab.serving.server",
)
# Attributes whose first access imports a submodule lazily (transformers, trl): touched once here.
PRELOAD_ATTRIBUTES = (
    ("transformers", "AutoModelForCausalLM"),
    ("transformers", "AutoTokenizer"),
    ("trl", "SFTTrainer"),
    ("trl", "SFTConfig"),
)
GRACE_S = 10.0
_PR_SET_PDEATHSIG = 1
_UCRED = struct.Struct("3i")


def _say(message: str) -> None:
    print(f"warm server: {message}", file=sys.stderr, flush=True)


def preload(modules: tuple[str, ...] = PRELOAD) -> None:
    started = time.perf_counter()
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - a child imports it itself and reports the error there
            _say(f"not preloaded: {name} ({type(exc).__name__}: {exc})")
    for module, attribute in PRELOAD_ATTRIBUTES:
        with contextlib.suppress(Exception):
            getattr(sys.modules.get(module), attribute)
    _say(f"preloaded {len(modules)} modules in {time.perf_counter() - started:.1f} s")
    if threading.active_count() > 1:
        _say(f"warning: {threading.active_count()} threads after preloading; forked children keep only one")


@dataclass
class _Child:
    pid: int
    pidfd: int
    conn: socket.socket | None  # None once the caller has gone


class _Stop(Exception):
    """Raised by the signal handler to leave the serve loop."""


class WarmServer:
    def __init__(self, listener: socket.socket, startup_env: dict[str, str]):
        self.listener = listener
        # Imports may set variables (torch sets TORCHINDUCTOR_CACHE_DIR): compare callers with the
        # environment from before them, and hand children what they added, as their imports would.
        self.startup_env = startup_env
        self.added_env = {k: v for k, v in os.environ.items() if k not in startup_env}
        self.selector = selectors.DefaultSelector()
        self.children: dict[int, _Child] = {}
        self.server_pid = os.getpid()

    def serve(self) -> None:
        def stop(signum: int, frame: object) -> None:
            raise _Stop

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, stop)
        self.selector.register(self.listener, selectors.EVENT_READ, None)
        try:
            while True:
                for key, _events in self.selector.select():
                    if key.data is None:
                        self._accept()
                    else:
                        kind, pid = key.data
                        (self._caller_gone if kind == "conn" else self._reap)(pid)
        except _Stop:
            pass
        finally:
            self._stop_children()

    def _accept(self) -> None:
        conn, _ = self.listener.accept()
        try:
            _pid, uid, _gid = _UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
            if uid != os.getuid():
                raise PermissionError(f"caller uid {uid} is not this server's")
            conn.settimeout(10.0)
            request, fds = recv_request(conn)
        except (OSError, ValueError) as exc:
            _say(f"request dropped: {exc}")
            conn.close()
            return
        try:
            mine, theirs = import_time_env(self.startup_env), import_time_env(request.get("env", {}))
            if mine != theirs:
                differ = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
                send_reply(conn, {"refused": f"environment differs from the server's in {', '.join(differ)}"})
                conn.close()
                return
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                self._become_child(request, fds, conn)
            pidfd = os.pidfd_open(pid)
        finally:
            for fd in fds:
                os.close(fd)
        conn.settimeout(None)
        self.children[pid] = _Child(pid, pidfd, conn)
        self.selector.register(conn, selectors.EVENT_READ, ("conn", pid))
        self.selector.register(pidfd, selectors.EVENT_READ, ("exit", pid))
        with contextlib.suppress(OSError):
            send_reply(conn, {"pid": pid})

    def _caller_gone(self, pid: int) -> None:
        child = self.children[pid]
        assert child.conn is not None
        with contextlib.suppress(OSError):
            if child.conn.recv(4096):
                return  # callers send nothing after the request; ignore stray bytes
        self.selector.unregister(child.conn)
        child.conn.close()
        child.conn = None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)

    def _reap(self, pid: int) -> None:
        child = self.children.pop(pid)
        with contextlib.suppress(ProcessLookupError):  # still a zombie: its group id cannot be reused yet
            os.killpg(pid, signal.SIGKILL)  # anything it left in its group
        _, status = os.waitpid(pid, 0)
        self.selector.unregister(child.pidfd)
        os.close(child.pidfd)
        if child.conn is not None:
            self.selector.unregister(child.conn)
            with contextlib.suppress(OSError):
                send_reply(child.conn, {"exit": os.waitstatus_to_exitcode(status)})
            child.conn.close()

    def _stop_children(self) -> None:
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + GRACE_S
        while self.children and time.monotonic() < deadline:
            for key, _events in self.selector.select(timeout=0.1):
                if key.data is not None and key.data[0] == "exit":
                    self._reap(key.data[1])
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            self._reap(pid)

    def _become_child(self, request: dict[str, Any], fds: list[int], conn: socket.socket) -> None:
        """Turn this forked process into the caller's process; never returns."""
        code = 1
        try:
            os.setpgid(0, 0)
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != self.server_pid:  # the server died before the line above took effect
                os._exit(1)
            for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            self.listener.close()
            conn.close()
            self.selector.close()
            for other in self.children.values():
                os.close(other.pidfd)
                if other.conn is not None:
                    other.conn.close()
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
            os.chdir(request["cwd"])
            sys.path[0] = request["cwd"]  # as `python -m` puts its working directory first
            importlib.invalidate_caches()
            os.environ.clear()
            os.environ.update({**self.added_env, **request["env"]})
            _fresh_standard_streams(unbuffered=bool(os.environ.get("PYTHONUNBUFFERED")))
            _apply_thread_limit()
            code = _run(request["target"], request.get("args", []))
        except BaseException:  # noqa: BLE001 - whatever happens, this process must not return into the server
            with contextlib.suppress(BaseException):
                traceback.print_exc()
        finally:
            with contextlib.suppress(BaseException):
                sys.stdout.flush()
                sys.stderr.flush()
            if code < 0:  # die of the signal, as an uncaught KeyboardInterrupt does
                with contextlib.suppress(OSError):  # SIGKILL has no handler to reset
                    signal.signal(-code, signal.SIG_DFL)
                os.kill(os.getpid(), -code)
            os._exit(code & 0xFF)


def _fresh_standard_streams(unbuffered: bool) -> None:
    """Streams over the caller's descriptors, buffered as a new interpreter would buffer them."""
    raw_out = io.FileIO(1, "wb", closefd=False)
    raw_err = io.FileIO(2, "wb", closefd=False)
    out: Any = raw_out if unbuffered else io.BufferedWriter(raw_out)
    sys.stdout = io.TextIOWrapper(out, line_buffering=raw_out.isatty(), write_through=unbuffered)
    sys.stderr = io.TextIOWrapper(raw_err, errors="backslashreplace", line_buffering=True, write_through=True)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 - lives as long as the process
    sys.__stdout__, sys.__stderr__, sys.__stdin__ = sys.stdout, sys.stderr, sys.stdin  # type: ignore[misc]


def _apply_thread_limit() -> None:
    """The caller's OMP_NUM_THREADS, which torch read once at import (from the server's env)."""
    threads = os.environ.get("OMP_NUM_THREADS", "")
    torch = sys.modules.get("torch")
    if torch is not None and threads.isdigit() and int(threads) > 0:
        torch.set_num_threads(int(threads))


def _run(target: str, args: list[Any]) -> int:
    """Run ``module`` as ``python -m module args`` would, or call ``module:function(*args)``; the
    exit status a fresh interpreter would end with (negative: the signal it dies of)."""
    try:
        if ":" in target:
            module, function = target.split(":", 1)
            sys.argv = [target]
            getattr(importlib.import_module(module), function)(*args)
        else:
            sys.argv = [target, *map(str, args)]
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        code = _system_exit_code(exc)
    except KeyboardInterrupt:
        traceback.print_exc()
        code = -signal.SIGINT
    except BaseException:  # noqa: BLE001 - an uncaught exception: printed, status 1, as in `python -m`
        sys.excepthook(*sys.exc_info())
        code = 1
    threading._shutdown()  # type: ignore[attr-defined]  # join non-daemon threads, as interpreter exit does
    atexit._run_exitfuncs()
    return code


def _system_exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


@contextlib.contextmanager
def started(log_path: Path, env: dict[str, str] | None = None) -> Iterator[dict[str, str]]:
    """Run a warm server for the length of the block; yields the environment entry that sends
    child processes to it. The socket lives in a fresh folder only this user can enter."""
    folder = Path(tempfile.mkdtemp(prefix="sftlab-warm-"))
    path = folder / "socket"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "sftlab.warm.server", "--socket", str(path)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**(env if env is not None else os.environ), "PYTHONUNBUFFERED": "1"},
        )
    try:
        deadline = time.monotonic() + 30.0
        while not path.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        yield {SOCKET_ENV: str(path)} if path.exists() else {}
    finally:
        process.terminate()
        try:
            process.wait(GRACE_S + 5.0)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", type=Path, required=True, help="Unix socket path to listen on")
    args = parser.parse_args(argv)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_mask = os.umask(0o177)  # the socket: this user only
    try:
        listener.bind(str(args.socket))
    finally:
        os.umask(old_mask)
    listener.listen(128)
    _say(f"listening on {args.socket}")
    startup_env = dict(os.environ)
    preload()
    WarmServer(listener, startup_env).serve()
    _say("stopped")


if __name__ == "__main__":
    main()
