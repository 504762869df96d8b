"""The warm server: a process started through it behaves as the cold process it stands for.

Each test runs real processes through a real server (one per module: it preloads torch & co.)
and checks what a caller of ``python -m MODULE`` can observe: output, exit status, signals,
working directory and environment, and that nothing outlives its caller.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sftlab.warm import SOCKET_ENV
from sftlab.warm import server as warm_server


@pytest.fixture(scope="module")
def warm_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    log = tmp_path_factory.mktemp("warm") / "server.log"
    with warm_server.started(log) as env:
        assert env, log.read_text()
        yield {**os.environ, **env}


def _module(folder: Path, source: str) -> str:
    (folder / "probe.py").write_text(textwrap.dedent(source))
    return "probe"


def _warm(folder: Path, env: dict[str, str], *args: str, **kwargs: object) -> subprocess.Popen[str]:
    return subprocess.Popen(  # type: ignore[call-overload]
        [sys.executable, "-m", "sftlab.warm", *args],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def _gone(pid: int, within_s: float = 10.0) -> bool:
    """Exited within the time (a zombie whose new parent has not reaped it yet counts as exited)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def test_output_status_argv_cwd_and_env_are_the_callers(tmp_path: Path, warm_env: dict[str, str]) -> None:
    module = _module(
        tmp_path,
        """
        import os, sys
        print("out", sys.argv[1:], os.getcwd(), os.environ["PROBE_VALUE"], os.getppid() != 1)
        print("err", file=sys.stderr)
        sys.exit(3)
        """,
    )
    proc = _warm(tmp_path, {**warm_env, "PROBE_VALUE": "only-the-caller-has-it"}, module, "a", "b c")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    assert out == f"out ['a', 'b c'] {tmp_path} only-the-caller-has-it True\n"
    assert err == "err\n"


def test_an_uncaught_exception_prints_its_traceback_and_exits_1(tmp_path: Path, warm_env: dict[str, str]) -> None:
    proc = _warm(tmp_path, warm_env, _module(tmp_path, "raise ValueError('boom')\n"))
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert err.splitlines()[-1] == "ValueError: boom"


def test_it_runs_warm_and_cold_without_a_server(tmp_path: Path, warm_env: dict[str, str]) -> None:
    """Warm: the process is the server's child, with torch already imported; without the socket
    variable the same command is a plain ``python -m``."""
    module = _module(tmp_path, "import os, sys\nprint(os.getpid(), 'torch' in sys.modules)\n")
    proc = _warm(tmp_path, warm_env, module)
    warm_pid, warm_torch = proc.communicate(timeout=60)[0].split()
    cold_env = {k: v for k, v in warm_env.items() if k != SOCKET_ENV}
    proc = _warm(tmp_path, cold_env, module)
    cold_pid, cold_torch = proc.communicate(timeout=60)[0].split()
    assert (warm_torch, cold_torch) == ("True", "False")
    assert cold_pid == str(proc.pid)  # exec'd in place
    assert warm_pid != str(proc.pid)


def test_an_import_time_setting_that_differs_starts_cold(tmp_path: Path, warm_env: dict[str, str]) -> None:
    module = _module(tmp_path, "import sys\nprint('torch' in sys.modules)\n")
    proc = _warm(tmp_path, {**warm_env, "HF_HOME": str(tmp_path / "elsewhere")}, module)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and out == "False\n"
    assert "warm start refused (environment differs from the server's in HF_HOME); starting cold" in err


def test_sigterm_to_the_caller_reaches_the_child(tmp_path: Path, warm_env: dict[str, str]) -> None:
    module = _module(
        tmp_path,
        """
        import signal, sys, time
        def stop(signum, frame):
            print("stopping on", signal.Signals(signum).name, flush=True)
            sys.exit(7)
        signal.signal(signal.SIGTERM, stop)
        print("ready", flush=True)
        time.sleep(60)
        """,
    )
    proc = _warm(tmp_path, warm_env, module)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    proc.terminate()
    out, _err = proc.communicate(timeout=30)
    assert (proc.returncode, out) == (7, "stopping on SIGTERM\n")


def test_a_child_killed_by_a_signal_kills_its_caller_with_it(tmp_path: Path, warm_env: dict[str, str]) -> None:
    proc = _warm(tmp_path, warm_env, _module(tmp_path, "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n"))
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def test_killing_the_caller_kills_the_child_and_its_group(tmp_path: Path, warm_env: dict[str, str]) -> None:
    module = _module(
        tmp_path,
        """
        import os, subprocess, sys, time
        helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        print(os.getpid(), helper.pid, flush=True)
        time.sleep(60)
        """,
    )
    proc = _warm(tmp_path, warm_env, module)
    assert proc.stdout is not None
    child, helper = map(int, proc.stdout.readline().split())
    proc.kill()
    proc.wait(timeout=10)
    assert _gone(child) and _gone(helper)


def test_stopping_the_server_stops_its_children(tmp_path: Path) -> None:
    module = _module(tmp_path, "import os, time\nprint(os.getpid(), flush=True)\ntime.sleep(60)\n")
    with warm_server.started(tmp_path / "server.log") as env:
        proc = _warm(tmp_path, {**os.environ, **env}, module)
        assert proc.stdout is not None
        child = int(proc.stdout.readline())
    assert _gone(child)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGTERM  # the server stops its children as a cluster stops a pod
    assert not Path(env[SOCKET_ENV]).parent.exists()
