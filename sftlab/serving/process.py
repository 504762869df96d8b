"""Run the local model server as a child process for the length of a ``with`` block."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import httpx

from sftlab.errors import SftlabError
from sftlab.warm import client as warm_client

HOST = "127.0.0.1"
# Seconds between SIGTERM and SIGKILL: uvicorn finishes in-flight requests in this time.
GRACE_PERIOD = 5.0
_POLL_INTERVAL = 0.25
_TAIL_LINES = 3


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _has_exited(pid: int) -> bool:
    """True once the child has exited, without reaping it: while it is an unreaped zombie its
    process-group id cannot be reused, so signalling the group stays safe."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


class LocalModelServer:
    """``python -m sftlab.serving.server`` on a free loopback port, in its own process group.

    Usage: ``with LocalModelServer(model_dir) as server: CompletionsClient(server.base_url,
    server.model_name)``. Start-up failures raise SftlabError with the tail of the server log;
    leaving the block (normally, by exception or Ctrl-C) stops the whole process group.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        adapter_dir: str | os.PathLike[str] | None = None,
        name: str = "model",
        ready_timeout: float = 180.0,
        log_path: str | os.PathLike[str] | None = None,
    ):
        self.model_dir = Path(model_dir)
        self.adapter_dir = Path(adapter_dir) if adapter_dir is not None else None
        self.model_name = name
        self.ready_timeout = ready_timeout
        self._own_log = log_path is None  # a temporary log is removed on exit
        self.log_path = Path(log_path) if log_path is not None else None
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        """OpenAI-compatible root, as on a cluster InferenceService."""
        return f"http://{HOST}:{self.port}/openai/v1"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise SftlabError("the model server is not running")
        return self._proc.pid

    def __enter__(self) -> LocalModelServer:
        self.port = _free_port()
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="sftlab-server-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        self._proc = self._spawn()
        try:
            self._wait_ready()
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop()

    def _spawn(self) -> subprocess.Popen[bytes]:
        # Through the sweep's warm server where there is one: it has torch and kserve imported.
        python_m = [sys.executable, "-m", *(["sftlab.warm"] if warm_client.available() else [])]
        cmd = [*python_m, "sftlab.serving.server", "--model-dir", str(self.model_dir)]
        if self.adapter_dir is not None:
            cmd += ["--adapter-dir", str(self.adapter_dir)]
        cmd += ["--name", self.model_name, "--port", str(self.port), "--host", HOST]
        assert self.log_path is not None
        with open(self.log_path, "wb") as log:
            return subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: one signal reaches everything it starts
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def _wait_ready(self) -> None:
        assert self._proc is not None
        url = f"http://{HOST}:{self.port}/v2/models/{self.model_name}/ready"
        deadline = time.monotonic() + self.ready_timeout
        with httpx.Client(timeout=2.0) as http:
            while True:
                what = f"model server for {self.model_dir}"
                if _has_exited(self._proc.pid):
                    raise SftlabError(f"{what} exited before it was ready: {self._log_tail()}")
                if time.monotonic() > deadline:
                    raise SftlabError(f"{what} not ready after {self.ready_timeout:g} s: {self._log_tail()}")
                try:
                    if http.get(url).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(_POLL_INTERVAL)

    def _log_tail(self) -> str:
        """The last few log lines as one line."""
        assert self.log_path is not None
        lines = [line.strip() for line in self.log_path.read_text(errors="replace").splitlines() if line.strip()]
        tail = " | ".join(lines[-_TAIL_LINES:]) or "(empty log)"
        return tail if self._own_log else f"{tail} (log: {self.log_path})"

    def _stop(self) -> None:
        """SIGTERM the group, SIGKILL whatever is left after the grace period, then reap."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            _signal_group(proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + GRACE_PERIOD
            while not _has_exited(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            _signal_group(proc.pid, signal.SIGKILL)  # also sweeps anything the server left behind
            proc.wait()
            if self._own_log and self.log_path is not None:
                self.log_path.unlink(missing_ok=True)
                self.log_path = None
