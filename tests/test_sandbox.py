"""The code sandbox against hostile programs: each runs for real and must stay inside its limits.

Every test runs under the strongest isolation this machine offers ("namespace" where the kernel
allows it) and, where the Python-level guard claims to defend, under "python-guard" too.
"""

from __future__ import annotations

import ast
import errno
import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from sftlab.evals.sandbox import runner as sandbox
from sftlab.evals.sandbox.runner import SandboxResult, run_many, run_program
from sftlab.spec.schema import SandboxConfig

REPO = Path(__file__).resolve().parents[1]
CONFIG = SandboxConfig(timeout_s=2.0, memory_mb=256, max_processes=8, max_output_kb=64, workers=2)
SLACK_S = 1.5  # start-up and kill latency allowed past timeout_s


@pytest.fixture(scope="module")
def guard_mode() -> object:
    """The python-guard mode this machine would fall back to."""
    return sandbox._probe([m for m in sandbox._candidates() if not m.namespaces])


@pytest.fixture(params=["namespace", "python-guard"])
def isolation(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, guard_mode: object) -> str:
    """Run the test under one isolation mode (namespace tests skip where the kernel refuses)."""
    if request.param == "namespace":
        if not sandbox._isolation().namespaces:
            pytest.skip("no namespaces on this machine")
    else:
        monkeypatch.setattr(sandbox, "_isolation", lambda: guard_mode)
    return request.param


@pytest.fixture
def namespace(isolation: str) -> None:
    if isolation != "namespace":
        pytest.skip("namespace isolation only")


def run(source: str, config: SandboxConfig = CONFIG) -> SandboxResult:
    return run_program(textwrap.dedent(source), config)


def report(result: SandboxResult) -> dict:
    """The JSON object a probe program printed last."""
    assert result.stdout.strip(), result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def processes_with(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if marker in " ".join(proc.info["cmdline"] or []):
            found.append(proc)
    return found


# ---------------------------------------------------------------------------------------------
# Ordinary programs


@pytest.mark.parametrize(
    ("source", "status", "returncode", "stderr_end"),
    [
        ("print('ok')", "passed", 0, ""),
        ("import sys; sys.exit(0)", "passed", 0, ""),
        ("assert 1 + 1 == 3", "failed", 1, "AssertionError"),
        ("raise ValueError('boom')", "failed", 1, "ValueError: boom"),
        ("def f(:\n    pass", "failed", 1, "SyntaxError: invalid syntax"),
        ("import sys; sys.exit(3)", "failed", 3, ""),
        ("import numpy", "failed", 1, "ModuleNotFoundError: No module named 'numpy'"),  # stdlib only
        ("import faulthandler; faulthandler._sigsegv()", "killed", -11, ""),
    ],
)
def test_ordinary_programs(isolation: str, source: str, status: str, returncode: int, stderr_end: str) -> None:
    result = run(source)
    assert (result.status, result.returncode, result.isolation) == (status, returncode, isolation)
    assert result.stderr.strip().endswith(stderr_end)
    assert result.passed == (status == "passed") and not result.truncated


def test_the_program_sees_its_stdlib_cwd_and_limits(isolation: str) -> None:
    result = run(
        """
        import collections, decimal, json, math, os, re, sys
        open("scratch.txt", "w").write("x")
        print(json.dumps({"cwd_files": sorted(os.listdir(".")), "argv": sys.argv, "isolated": sys.flags.isolated}))
        """
    )
    assert result.passed, result.stderr
    assert report(result) == {"cwd_files": ["main.py", "scratch.txt"], "argv": ["main.py"], "isolated": 1}


def test_rlimits_are_set(namespace: None) -> None:  # the guard hides the resource module
    result = run(
        """
        import json, resource
        print(json.dumps({name: resource.getrlimit(getattr(resource, name))[0]
                          for name in ("RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_NPROC", "RLIMIT_CORE")}))
        """
    )
    limits = report(result)
    assert limits["RLIMIT_AS"] == CONFIG.memory_mb << 20
    assert limits["RLIMIT_CPU"] == 2 and limits["RLIMIT_FSIZE"] == CONFIG.max_output_kb << 10
    assert limits["RLIMIT_CORE"] == 0
    # As root the program runs as nobody; keeping the caller's uid, the launcher and init count too.
    assert limits["RLIMIT_NPROC"] == CONFIG.max_processes + (0 if os.getuid() == 0 else 2)


def test_the_work_dir_is_removed(isolation: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    result = run("open('out.txt', 'w').write('data' * 100)")
    assert result.passed, result.stderr
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Hostile programs: files, secrets, network


def test_project_files_and_secrets_are_invisible(namespace: None, tmp_path: Path) -> None:
    secret = tmp_path / "credentials"
    secret.write_text("aws_secret_access_key = do-not-leak\n")
    secret.chmod(0o644)
    paths = [
        str(REPO / "pyproject.toml"),
        "../" * 12 + str((REPO / "pyproject.toml").relative_to("/")),
        str(REPO / "sftlab" / "spec.py"),
        str(secret),
        str(Path.home() / ".bashrc"),
        "/etc/shadow",
        "/var/run/secrets/kubernetes.io/serviceaccount/token",
        f"/proc/{os.getpid()}/environ",
        "/proc/1/environ",
    ]
    result = run(
        f"""
        import json, os
        outcome = {{}}
        for path in {paths!r}:
            try:
                outcome[path] = open(path).read()[:50]
            except OSError as exc:
                outcome[path] = type(exc).__name__
        outcome["/"] = sorted(os.listdir("/"))
        outcome["/etc"] = sorted(os.listdir("/etc"))
        outcome["uid"] = os.getuid()
        try:
            open("/usr/sftlab-was-here", "w")
            outcome["write /usr"] = "written"
        except OSError as exc:
            outcome["write /usr"] = exc.errno
        print(json.dumps(outcome))
        """
    )
    outcome = report(result)
    for path in paths:
        assert outcome[path] in ("FileNotFoundError", "PermissionError"), (path, outcome[path])
    system = {"bin", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "sandbox", "sbin", "tmp", "usr"}
    interpreter = Path(sys.base_prefix).resolve().parts[1]  # e.g. "root" for ~/.pyenv: only that path in it
    assert set(outcome["/"]) <= system | {interpreter}, outcome["/"]
    assert set(outcome["/etc"]) <= {"ld.so.cache", "localtime", "passwd", "group", "nsswitch.conf"}
    assert outcome["write /usr"] in (errno.EROFS, errno.EACCES)
    if os.getuid() == 0:
        assert outcome["uid"] == sandbox.NOBODY


def test_environment_secrets_are_not_passed_on(isolation: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_SECRET_ACCESS_KEY", "HF_TOKEN", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_URI"):
        monkeypatch.setenv(name, "secret-value-" + name)
    result = run("import json, os; print(json.dumps(dict(os.environ)))")
    assert report(result) == sandbox.ENV
    assert "secret-value" not in result.stdout + result.stderr


@pytest.fixture
def listening_server() -> Iterator[tuple[int, list[str]]]:
    """A real TCP server on 127.0.0.1 that records every connection it accepts."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    accepted: list[str] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, addr = server.accept()
            except TimeoutError:
                continue
            accepted.append(addr[0])
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    stop.set()
    thread.join()
    server.close()


def test_no_network(isolation: str, listening_server: tuple[int, list[str]]) -> None:
    port, accepted = listening_server
    socket.create_connection(("127.0.0.1", port), timeout=2).close()  # control: the server works
    result = run(
        f"""
        import json, socket
        outcome = {{}}
        for host, port in (("127.0.0.1", {port}), ("localhost", {port}), ("1.1.1.1", 53), ("8.8.8.8", 443)):
            try:
                socket.create_connection((host, port), timeout=3).close()
                outcome[host] = "connected"
            except OSError as exc:
                outcome[host] = type(exc).__name__
        try:
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("8.8.8.8", 53))
            outcome["udp"] = "sent"
        except OSError as exc:
            outcome["udp"] = type(exc).__name__
        print(json.dumps(outcome))
        """
    )
    outcome = report(result)
    assert "connected" not in outcome.values() and outcome["udp"] != "sent", outcome
    time.sleep(0.3)
    assert accepted == ["127.0.0.1"]  # only the control connection
    assert result.duration_s < CONFIG.timeout_s  # refused at once, not by waiting for a timeout


# ---------------------------------------------------------------------------------------------
# Hostile programs: resources


def test_forks_stop_at_max_processes(isolation: str) -> None:
    marker = f"sftlab-test-{uuid.uuid4().hex}"
    result = run(
        f"""
        import json, os, sys
        forks = 0
        try:
            while True:
                if os.fork() == 0:
                    os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(60)", "{marker}"])
                forks += 1
        except OSError as exc:
            print(json.dumps({{"forks": forks, "error": type(exc).__name__}}))
        """
    )
    outcome = report(result)
    assert result.passed
    if isolation == "namespace":
        assert outcome == {"forks": CONFIG.max_processes - 1, "error": "BlockingIOError"}
    else:
        assert outcome == {"forks": 0, "error": "PermissionError"}
    assert processes_with(marker) == []  # the sleepers died with the program


def test_fork_bomb_is_killed_at_the_timeout(isolation: str) -> None:
    marker = f"sftlab-test-{uuid.uuid4().hex}"
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    # Re-exec under a marker argv (the fork bomb's copies inherit it) so leftovers can be found.
    result = run(f"import os, sys\nos.execv(sys.executable, [sys.executable, '-c', {bomb!r}, '{marker}'])")
    if isolation == "namespace":
        assert result.status == "timeout" and CONFIG.timeout_s <= result.duration_s < CONFIG.timeout_s + SLACK_S
    else:
        assert result.status == "failed" and "PermissionError" in result.stderr  # exec is blocked
    assert processes_with(marker) == []
    assert subprocess.run(["true"], check=False, timeout=10).returncode == 0  # the evaluator can still start processes


def test_a_fork_bomb_does_not_starve_its_neighbour(isolation: str) -> None:
    if not sandbox._isolation().userns:
        pytest.skip("without a user namespace, programs share nobody's process count")
    bomb = "import os, time\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        time.sleep(0.01)\n"
    neighbour = textwrap.dedent(
        """
        import threading, time
        time.sleep(0.5)  # the bomb has used up its processes by now
        threads = [threading.Thread(target=time.sleep, args=(0.1,)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        """
    )
    bombed, fine = run_many([bomb, neighbour], CONFIG)
    assert bombed.status == "timeout"
    assert fine.passed, fine.stderr


@pytest.mark.parametrize(
    "source",
    [
        "x = bytearray({limit} * 2)",
        "chunks = []\nwhile True:\n    chunks.append(bytearray(1 << 24))",
    ],
    ids=["one-allocation", "gradual"],
)
def test_memory_limit(isolation: str, source: str) -> None:
    result = run(source.format(limit=CONFIG.memory_mb << 20))
    assert result.status == "memory", result.stderr
    assert result.stderr.strip().endswith("MemoryError")
    assert result.duration_s < CONFIG.timeout_s


@pytest.mark.parametrize("source", ["while True:\n    pass", "import time\ntime.sleep(60)"], ids=["busy", "sleeping"])
def test_wall_clock_timeout(isolation: str, source: str) -> None:
    config = CONFIG.model_copy(update={"timeout_s": 1.0})
    result = run(source, config)
    assert (result.status, result.returncode) == ("timeout", None)
    assert 1.0 <= result.duration_s < 1.0 + SLACK_S


def test_ignoring_signals_does_not_help(isolation: str) -> None:
    config = CONFIG.model_copy(update={"timeout_s": 1.0})
    result = run(
        "import signal\nfor s in (signal.SIGTERM, signal.SIGXCPU, signal.SIGINT):\n"
        "    signal.signal(s, signal.SIG_IGN)\nwhile True:\n    pass",
        config,
    )
    assert result.status == "timeout" and result.duration_s < 1.0 + SLACK_S


def test_file_size_limit(isolation: str) -> None:
    result = run(
        """
        import json, os
        try:
            with open("big.bin", "wb") as fh:
                fh.write(b"x" * (10 << 20))
            outcome = "written"
        except OSError as exc:
            outcome = exc.errno
        print(json.dumps({"error": outcome, "size": os.path.getsize("big.bin")}))
        """
    )
    assert report(result) == {"error": errno.EFBIG, "size": CONFIG.max_output_kb << 10}


def test_many_files_cannot_fill_the_disk(namespace: None) -> None:
    result = run(
        """
        import json, os
        written = 0
        try:
            for i in range(1000):
                with open(f"f{i}", "wb") as fh:
                    fh.write(b"x" * 16384)
                written += 16384
        except OSError as exc:
            print(json.dumps({"error": exc.errno, "written": written}))
        """
    )
    outcome = report(result)
    assert outcome["error"] == errno.ENOSPC and outcome["written"] <= (CONFIG.max_output_kb + 16) << 10


def test_huge_output_is_capped(isolation: str) -> None:
    result = run(
        """
        import sys
        for _ in range(500):
            sys.stdout.write("o" * 10000 + "\\n")
            sys.stderr.write("e" * 10000 + "\\n")
        print("END-OUT")
        print("END-ERR", file=sys.stderr)
        """
    )
    cap = CONFIG.max_output_kb << 10
    assert result.passed and result.truncated
    assert len(result.stdout) == cap and result.stdout.endswith("END-OUT\n")
    assert len(result.stderr) == cap and result.stderr.endswith("END-ERR\n")


# ---------------------------------------------------------------------------------------------
# Hostile programs: the evaluator and leftovers


def test_the_program_cannot_kill_the_evaluator(isolation: str) -> None:
    me, my_group = os.getpid(), os.getpgid(0)
    result = run(
        f"""
        import json, os, signal
        outcome = {{}}
        attempts = {{
            "parent": lambda: os.kill(os.getppid(), signal.SIGKILL),
            "evaluator": lambda: os.kill({me}, signal.SIGKILL),
            "evaluator group": lambda: os.killpg({my_group}, signal.SIGKILL),
            "init": lambda: os.kill(1, signal.SIGKILL),
        }}
        if os.getpid() < 10:  # only inside a pid namespace is "everything" just the sandbox
            attempts["everything"] = lambda: os.kill(-1, signal.SIGKILL)
        for name, attempt in attempts.items():
            try:
                attempt()
                outcome[name] = "sent"
            except (OSError, TypeError) as exc:
                outcome[name] = type(exc).__name__
        print(json.dumps(outcome))
        """
    )
    outcome = report(result)
    for name in ("parent", "evaluator", "evaluator group", "init"):
        assert outcome[name] in ("PermissionError", "ProcessLookupError"), (name, outcome)
    assert result.passed  # the launcher lived to report the verdict
    if isolation == "namespace":
        assert outcome["everything"] in ("ProcessLookupError", "sent")


def test_children_do_not_outlive_the_program(isolation: str) -> None:
    marker = f"sftlab-test-{uuid.uuid4().hex}"
    result = run(
        f"""
        import os, subprocess, sys
        sleeper = [sys.executable, "-c", "import time; time.sleep(60)", "{marker}"]
        subprocess.Popen(sleeper, start_new_session=True)
        if os.fork() == 0:  # a classic daemon: new session, second fork, parent exits
            os.setsid()
            if os.fork() == 0:
                os.execv(sys.executable, sleeper)
            os._exit(0)
        print("spawned")
        """
    )
    if isolation == "namespace":
        assert result.passed and result.stdout == "spawned\n"
    else:
        assert result.status == "failed" and "PermissionError" in result.stderr
    assert processes_with(marker) == []


# ---------------------------------------------------------------------------------------------
# Running many


def test_run_many_keeps_order_reports_progress_and_runs_workers_at_once(isolation: str) -> None:
    sources = [f"import time\ntime.sleep(1.0)\nprint({i})" for i in range(4)]
    progress: list[tuple[int, int]] = []
    start = time.monotonic()
    results = run_many(sources, CONFIG, on_progress=lambda done, total: progress.append((done, total)))
    elapsed = time.monotonic() - start
    assert [r.stdout for r in results] == ["0\n", "1\n", "2\n", "3\n"]
    assert progress == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert 2.0 <= elapsed < 3.9  # two at a time: two rounds of 1 s, not one round, not four


# ---------------------------------------------------------------------------------------------
# The launcher: the code that runs on the child's side


def test_the_launcher_imports_the_standard_library_only() -> None:
    """``launcher.py`` runs as ``python -I -S`` and sets up the chroot the program runs in: neither
    sftlab nor site-packages is importable there, so one such import would break every program."""
    imported: set[str] = set()
    for node in ast.walk(ast.parse(sandbox.LAUNCHER.read_text(encoding="utf-8"))):  # also imports inside functions
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"relative import from {node.module!r}: the launcher is not run as a package"
            imported.add(node.module or "")
        elif isinstance(node, ast.Name):
            assert node.id != "__import__", "dynamic imports escape this check"
    assert {"ctypes", "os", "resource"} <= imported  # the walk saw the launcher's imports
    assert sorted(name for name in imported if name.split(".")[0] not in sys.stdlib_module_names) == []
