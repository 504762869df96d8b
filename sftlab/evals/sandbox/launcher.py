"""The child side of the sandbox: run as ``python -I -S launcher.py PLAN`` by ``runner``, it isolates
itself, starts the model's program and reports how it ended.

It runs before and around untrusted code, with ``-I -S`` and, for the program, inside a chroot
where nothing of sftlab or site-packages exists: so it imports the standard library only
(``tests/test_sandbox.py`` checks), and it shares nothing with the evaluator but its arguments.

Contract with ``runner``:

- ``PLAN`` (argv[1]) is a JSON object: ``workdir`` (holding ``main.py``), ``python`` (the real
  interpreter path), ``namespaces``/``userns`` (the isolation mode), ``uid``/``gid`` (the ids the
  program runs as), ``binds`` (allow-listed host paths for its root), ``timeout_s``, ``memory_mb``,
  ``max_processes``, ``max_output_kb`` (the limits), and ``report_fd``;
- ``report_fd`` is a pipe to the evaluator, closed before the program starts (so the program
  cannot forge a verdict): one line ``status <wait status>`` for the program, or ``error <why>``
  when the sandbox itself could not be set up;
- the program's stdout and stderr are the launcher's own; the evaluator kills the launcher's
  process group at the wall-clock limit.

Steps, with isolation ``"namespace"``: unshare user/pid/net/mount/ipc/uts namespaces (``_unshare``),
fork pid 1 of the new pid namespace (init), build a tmpfs root of read-only binds and chroot into
it (``_build_root``), fork the program, set its rlimits, drop to its uid, set no_new_privs and
exec it (``_exec_program``), and reap until it exits (``_supervise``). With ``"python-guard"`` the
program runs in the work dir after the ``GUARD`` prelude instead. ``runner``'s docstring has the
threat model and what each step defends against.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import math
import os
import resource
import signal
import sys
from pathlib import Path
from typing import Any, NoReturn

PROGRAM = "main.py"
SANDBOX_CWD = "/sandbox"  # the program's cwd inside the namespace
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}  # the program's whole environment
DEVICES = ("null", "zero", "full", "random", "urandom")

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


def launch(plan: dict[str, Any]) -> None:
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
    launch(json.loads(sys.argv[1]))
