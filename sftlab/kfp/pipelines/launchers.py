"""Launchers (see ``sftlab.sweep.launcher``): run a sweep's trials locally through ``kfp.local``, or as
KFP runs on a cluster.

Both share one scheduling loop: start a trial when one of ``max_parallel`` slots is free, poll
the trials in flight, finish each as it ends (a failure is an outcome, never an exception), and on
Ctrl-C or any error cancel whatever is still in flight. ``start``/``finish`` write to MLflow and
are only ever called from the caller's thread.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

from sftlab import progress
from sftlab.diagnostics import oom_kills
from sftlab.errors import SftlabError
from sftlab.spec.grid import Trial
from sftlab.spec.job import TrialJob
from sftlab.spec.schema import Spec
from sftlab.sweep.launcher import FinishTrial, StartTrial, TrialOutcome
from sftlab.warm import server as warm_server

if TYPE_CHECKING:
    import kfp

log = logging.getLogger(__name__)
Handle = TypeVar("Handle")
Ended = tuple[bool, str | None]  # (ok, error)


@dataclass
class _InFlight(Generic[Handle]):
    job: TrialJob
    handle: Handle
    started: float


class _PollingTrialLauncher(ABC, Generic[Handle]):
    """The scheduling loop; subclasses say how to submit, poll and cancel one trial."""

    max_parallel: int
    poll_s: float
    timeout_s: float | None = None

    @abstractmethod
    def _submit(self, job: TrialJob) -> Handle:
        """Start running ``job``."""

    @abstractmethod
    def _poll(self, handle: Handle) -> Ended | None:
        """``(ok, error)`` once the trial has ended, else None."""

    @abstractmethod
    def _cancel(self, handle: Handle) -> None:
        """Stop a trial in flight (best effort; must not raise)."""

    def log_path(self, trial_key: str) -> Path | None:
        return None

    def progress_path(self, trial_key: str) -> Path | None:
        return None

    def run(self, trials: Sequence[Trial], start: StartTrial, finish: FinishTrial) -> None:
        if self.max_parallel < 1:
            raise ValueError(f"max_parallel must be at least 1, got {self.max_parallel}")
        queue = deque(trials)
        running: list[_InFlight[Handle]] = []

        def end(job: TrialJob, started: float, ok: bool, error: str | None) -> None:
            seconds = time.monotonic() - started
            finish(job, TrialOutcome(job.trial.key, job.context.trial_run_id or "", ok, error, seconds))

        try:
            while queue or running:
                while queue and len(running) < self.max_parallel:
                    job, started = start(queue.popleft()), time.monotonic()
                    try:
                        running.append(_InFlight(job, self._submit(job), started))
                    except Exception as exc:  # noqa: BLE001 - this trial fails, the others go on
                        end(job, started, False, f"could not start the trial: {exc}")
                ended_any = False
                for item in list(running):
                    ended = self._poll(item.handle)
                    overdue = self.timeout_s is not None and time.monotonic() - item.started > self.timeout_s
                    if ended is None and overdue:
                        self._cancel(item.handle)
                        ended = (False, f"timed out after {self.timeout_s:g} s")
                    if ended is not None:
                        running.remove(item)
                        ended_any = True
                        end(item.job, item.started, *ended)
                if running and not ended_any:
                    time.sleep(self.poll_s)
        except BaseException as exc:
            for item in running:
                self._cancel(item.handle)
            for item in running:  # their MLflow runs must not stay RUNNING; a re-run redoes them
                with suppress(Exception):
                    end(item.job, item.started, False, f"interrupted ({type(exc).__name__})")
            raise


# ---------------------------------------------------------------------------------------------
# Local: kfp.local, one child process per trial


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_FAILED_TASK = re.compile(r"Task '([^']+)' finished with status FAILURE")
_EXCEPTION = re.compile(r"^\s*((?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt)\b.*)$")
DIED_SILENTLY = "its process ended without reporting an error (killed by a signal, or crashed)"


def last_error(log_text: str, died_silently: str = DIED_SILENTLY) -> str | None:
    """The cause of a failed local trial, from its log: ``task: ExceptionType: message``.

    kfp.local streams each task's output between ``Executing task 'x'`` and ``Task 'x' finished
    with status FAILURE``, then raises its own generic RuntimeError; the useful line is the failed
    task's last exception. A task with none died from outside (SIGKILL, the OOM killer, a crash):
    ``task: died_silently``.
    """
    lines = _ANSI.sub("", log_text).splitlines()
    task = None
    for i in range(len(lines) - 1, -1, -1):
        match = _FAILED_TASK.search(lines[i])
        if match:
            task, lines = match.group(1), lines[:i]
            break
    if task is not None:
        started = [i for i, line in enumerate(lines) if f"Executing task '{task}'" in line]
        lines = lines[started[-1] + 1 :] if started else lines
    for line in reversed(lines):
        match = _EXCEPTION.match(line)
        if match:
            return f"{task}: {match.group(1).strip()}" if task else match.group(1).strip()
    return f"{task}: {died_silently}" if task else None


@dataclass
class _LocalTrial:
    process: subprocess.Popen[bytes]
    log: Path
    oom_kills: int | None  # the kernel's count when the trial started


class LocalTrialLauncher(_PollingTrialLauncher[_LocalTrial]):
    """Runs each trial's pipeline through ``kfp.local`` in a child process of its own.

    A process per trial isolates kfp.local's global state and lets ``max_parallel`` trials run
    side by side. Each trial's whole output goes to ``log_path(key)`` (``ROOT/logs/<key>.log``),
    never to the console; its job file and kfp.local outputs live under ``ROOT/trials/<key>/``.
    Each child leads its own process group, so cancelling a trial stops its task processes too.
    With ``warm_start`` the sweep runs a warm server (``sftlab.warm``) that its stages fork from,
    so each stage skips the imports a cold process spends most of a tiny trial on.
    """

    def __init__(
        self,
        root: Path,
        max_parallel: int = 1,
        poll_s: float = 0.2,
        cancel_grace_s: float = 20.0,
        warm_start: bool = True,
    ):
        self.root = Path(root)
        self.max_parallel = max_parallel
        self.poll_s = poll_s
        self.cancel_grace_s = cancel_grace_s
        self.warm_start = warm_start
        self._warm_env: dict[str, str] = {}

    def run(self, trials: Sequence[Trial], start: StartTrial, finish: FinishTrial) -> None:
        if not (self.warm_start and trials):
            super().run(trials, start, finish)
            return
        env = {**os.environ, **self._thread_limits()}
        with warm_server.started(self.root / "logs" / "warm-server.log", env) as self._warm_env:
            try:
                super().run(trials, start, finish)
            finally:
                self._warm_env = {}

    def log_path(self, trial_key: str) -> Path:
        return self.root / "logs" / f"{trial_key}.log"

    def progress_path(self, trial_key: str) -> Path:
        return self.root / "trials" / trial_key / "progress.jsonl"

    def _thread_limits(self) -> dict[str, str]:
        """Each concurrent trial gets its share of the cores.

        Without this every trial's torch/OpenMP pool takes all cores; on 2 cores two trials then
        ran no faster than one after the other, and spin-waiting pools stalled for minutes.
        A limit the user set explicitly wins.
        """
        threads = str(max(1, (os.cpu_count() or 1) // self.max_parallel))
        return {var: os.environ.get(var, threads) for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}

    def _submit(self, job: TrialJob) -> _LocalTrial:
        work = self.root / "trials" / job.trial.key
        work.mkdir(parents=True, exist_ok=True)
        job_file = work / "job.json"
        job_file.write_text(job.to_json(), encoding="utf-8")
        log_file = self.log_path(job.trial.key)
        log_file.parent.mkdir(parents=True, exist_ok=True)
        progress_file = self.progress_path(job.trial.key)
        progress_file.unlink(missing_ok=True)  # a re-run's console starts from its own events
        command = [sys.executable, "-m", "sftlab.kfp.pipelines.local_trial", "--job-file", str(job_file)]
        with log_file.open("wb") as out:
            process = subprocess.Popen(
                [*command, "--root", str(work)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={
                    **os.environ,
                    "PYTHONUNBUFFERED": "1",
                    progress.ENV: str(progress_file),
                    **self._thread_limits(),
                    **self._warm_env,
                },
                start_new_session=True,
            )
        return _LocalTrial(process, log_file, oom_kills())

    def _poll(self, handle: _LocalTrial) -> Ended | None:
        code = handle.process.poll()
        if code is None:
            return None
        if code == 0:
            return True, None
        silent = _silent_death(handle.oom_kills)
        error = last_error(handle.log.read_text(encoding="utf-8", errors="replace"), silent)
        if error is None:  # the trial process itself died, before any task could report
            error = f"trial process exited with code {code}" if code > 0 else f"trial process: {silent}"
        return False, f"{error} (log: {handle.log})"

    def _cancel(self, handle: _LocalTrial) -> None:
        """SIGTERM the trial's whole process group, wait for every process in it (its stages close
        their MLflow runs and release their claims), and SIGKILL what is left after the grace."""
        group = handle.process.pid
        with suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        deadline = time.monotonic() + self.cancel_grace_s
        while time.monotonic() < deadline:
            # poll() reaps the leader; the stages it started outlive it while they close their runs.
            if handle.process.poll() is not None and not _group_alive(group):
                return
            time.sleep(0.1)
        with suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        handle.process.wait()


def _silent_death(oom_kills_at_start: int | None) -> str:
    """What ended a process that reported nothing: the OOM killer when the kernel's count rose
    while the trial ran, else an unknown signal or crash."""
    now = oom_kills()
    if oom_kills_at_start is not None and now is not None and now > oom_kills_at_start:
        return (
            f"killed by the kernel's out-of-memory killer ({now - oom_kills_at_start} OOM kill(s) while it ran): "
            "lower the batch size or max_length, or run fewer trials at once"
        )
    return DIED_SILENTLY


def _group_alive(group: int) -> bool:
    """Whether a process of this group still runs (zombies do not count: a container's PID 1 may
    never reap the orphans it inherits)."""
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: any member, zombies included
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return False
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == group:  # state, ppid, pgrp after the command name
            return True
    return False


# ---------------------------------------------------------------------------------------------
# Cluster: one KFP run per trial


class KfpTrialLauncher(_PollingTrialLauncher[str]):
    """Submits each trial as its own KFP run of the trial pipeline (a workflow of workflows).

    One run per trial keeps every Argo workflow small (a 1,000-item ParallelFor exceeds etcd's
    object limit) and lets trials be retried or inspected one by one; the run is named after the
    trial's label. ``spec`` sets the trial pipeline's image and pod resources; ``timeout_s`` bounds
    each trial from its submission (queueing included). Inside the cluster ``kfp.Client()`` needs
    no host.
    """

    TERMINAL_FAILURES = frozenset({"FAILED", "CANCELED", "SKIPPED"})
    MAX_POLL_ERRORS = 30  # consecutive API errors tolerated (an API server restart must not end a sweep)

    def __init__(
        self,
        client: kfp.Client,
        max_parallel: int = 1,
        poll_s: float = 10.0,
        experiment: str = "Default",
        timeout_s: float | None = None,
        spec: Spec | None = None,
        namespace: str | None = None,
    ):
        self.client = client
        self.namespace = namespace  # multi-user KFP: the profile namespace of the runs
        self.max_parallel = max_parallel
        self.poll_s = poll_s
        self.experiment = experiment
        self.timeout_s = timeout_s
        self.spec = spec
        self._package = Path()
        self._experiment_id = ""
        self._poll_errors = 0

    def run(self, trials: Sequence[Trial], start: StartTrial, finish: FinishTrial) -> None:
        if not trials:
            return
        from sftlab.kfp.pipelines.compile import compile_pipeline

        with tempfile.TemporaryDirectory(prefix="sftlab-kfp-") as tmp:
            self._package = compile_pipeline("trial", self.spec, Path(tmp) / "trial_pipeline.yaml")
            experiment = self.client.create_experiment(self.experiment, namespace=self.namespace)
            self._experiment_id = experiment.experiment_id
            super().run(trials, start, finish)

    def _submit(self, job: TrialJob) -> str:
        from sftlab.kfp.pipelines.compile import MAX_PARAMETER_CHARS

        parameter = job.to_json()
        if len(parameter) > MAX_PARAMETER_CHARS:  # KFP would refuse the run; say why, before it does
            raise SftlabError(
                f"its job parameter is {len(parameter):,} characters, over KFP's {MAX_PARAMETER_CHARS:,}: "
                "shorten the spec's templates, descriptions or benchmark list"
            )
        run = self.client.run_pipeline(
            experiment_id=self._experiment_id,
            job_name=job.trial.label,
            pipeline_package_path=str(self._package),
            params={"job": parameter},
        )
        return run.run_id

    def _poll(self, handle: str) -> Ended | None:
        try:
            run = self.client.get_run(handle)
        except Exception as exc:  # noqa: BLE001 - retried until MAX_POLL_ERRORS in a row
            self._poll_errors += 1
            if self._poll_errors > self.MAX_POLL_ERRORS:
                raise
            log.warning("KFP: cannot read run %s (%s); retrying", handle, exc)
            return None
        self._poll_errors = 0
        state = (run.state or "").upper()
        if state == "SUCCEEDED":
            return True, None
        if state in self.TERMINAL_FAILURES:
            message = getattr(run.error, "message", None)
            return False, f"KFP run {handle} {state}" + (f": {message}" if message else "")
        return None

    def _cancel(self, handle: str) -> None:
        with suppress(Exception):
            self.client.terminate_run(handle)
