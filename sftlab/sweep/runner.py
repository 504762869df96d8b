"""A sweep end to end, independent of where trials run: plan -> launch -> report.

Resume comes from MLflow: a trial whose key already has a FINISHED run is skipped; failed or
missing ones run again, each in a new child run (old failures stay visible).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sftlab.keys import digest
from sftlab.spec.grid import Trial, expand
from sftlab.spec.job import RunContext, TrialJob, context_for
from sftlab.spec.schema import Spec
from sftlab.sweep.console import SweepConsole
from sftlab.sweep.launcher import TrialLauncher, TrialOutcome
from sftlab.sweep.summary import headline, score_gains
from sftlab.tracking.runs import TAG_ERROR, Tracker

Echo = Callable[[str], None]


@dataclass
class SweepPlan:
    context: RunContext
    trials: list[Trial]
    pending: list[Trial]

    @property
    def skipped(self) -> int:
        return len(self.trials) - len(self.pending)


@dataclass
class SweepResult:
    sweep_run_id: str
    tracking_uri: str
    total: int
    skipped: int
    succeeded: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    report_path: Path | None = None
    headline: list[str] = field(default_factory=list)


def sweep_key(trials: list[Trial]) -> str:
    return digest(sorted(t.key for t in trials))


def prepare(spec: Spec) -> tuple[Tracker, SweepPlan]:
    """Expand the grid, open (or reopen) the sweep's parent run and find what is left to do."""
    ctx = context_for(spec)
    tracker = Tracker.for_context(ctx)
    trials = expand(spec)
    sweep_run_id = tracker.get_or_create_sweep_run(
        spec.name, sweep_key(trials), {"spec.name": spec.name, "trials": len(trials)}
    )
    done = tracker.finished_trials()
    pending = [t for t in trials if t.key not in done]
    return tracker, SweepPlan(ctx.model_copy(update={"sweep_run_id": sweep_run_id}), trials, pending)


def launch(
    tracker: Tracker, plan: SweepPlan, launcher: TrialLauncher, echo: Echo = print, console: SweepConsole | None = None
) -> SweepResult:
    """Run the pending trials through ``launcher``, recording each outcome on its MLflow run.

    With ``console`` (a local sweep), each trial's stages and counters are shown as they happen.
    """
    ctx = plan.context
    assert ctx.sweep_run_id is not None
    result = SweepResult(ctx.sweep_run_id, ctx.tracking_uri, len(plan.trials), plan.skipped)
    say = console.line if console is not None else echo
    say(f"{len(plan.trials)} trials: {plan.skipped} already finished, {len(plan.pending)} to run")
    position = {t.key: i + 1 for i, t in enumerate(plan.pending)}

    def name(trial: Trial) -> str:
        return f"[{position[trial.key]}/{len(plan.pending)}] {short_label(trial.label)}"

    def start(trial: Trial) -> TrialJob:
        run_id = tracker.create_trial_run(trial, ctx.sweep_run_id)
        log_file = launcher.log_path(trial.key)
        where = f"log {_shown(log_file)}, " if log_file else ""
        say(f"{name(trial)}: started ({where}MLflow run {run_id})")
        progress_file = launcher.progress_path(trial.key)
        if console is not None and progress_file is not None:
            console.watch(trial.key, name(trial), progress_file)
        return TrialJob(trial=trial, context=ctx.model_copy(update={"trial_run_id": run_id}))

    def finish(job: TrialJob, outcome: TrialOutcome) -> None:
        error = None
        if not outcome.ok:  # a stage records the precise cause; the launcher's message is the fallback
            recorded = tracker.client.get_run(outcome.run_id).data.tags.get(TAG_ERROR)
            error = recorded or outcome.error or "trial failed"
        tracker.finish(outcome.run_id, outcome.ok, error)
        if console is not None:
            console.forget(job.trial.key)
        if outcome.ok:
            result.succeeded += 1
            say(f"{name(job.trial)}: finished in {outcome.seconds:.1f}s")
        else:
            result.failed.append((job.trial.label, error or ""))
            say(f"{name(job.trial)}: FAILED after {outcome.seconds:.1f}s: {(error or '').splitlines()[0][:300]}")

    launcher.run(plan.pending, start, finish)
    return result


def short_label(label: str, width: int = 48) -> str:
    """A trial's label cut to ``width`` in the middle: the model/dataset head and the last settings stay."""
    if len(label) <= width:
        return label
    keep = width - 1
    return label[: keep - keep // 3] + "…" + label[-(keep // 3) :]


def _shown(path: Path) -> str:
    """A path relative to the working directory when it lies under it (shorter lines)."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def run_sweep(spec: Spec, launcher: TrialLauncher, echo: Echo = print, live: bool | None = None) -> SweepResult:
    """Plan, launch and report; ``live`` forces or forbids live bars (default: when stdout is a terminal)."""
    from sftlab.stages import report

    tracker, plan = prepare(spec)
    console = SweepConsole(echo=echo, live=sys.stdout.isatty() if live is None else live)
    try:
        with console:
            result = launch(tracker, plan, launcher, echo, console)
    except BaseException as exc:  # interrupted: the parent run must not stay RUNNING
        assert plan.context.sweep_run_id is not None
        tracker.finish(plan.context.sweep_run_id, ok=False, error=f"interrupted ({type(exc).__name__}: {exc})")
        raise
    result.report_path = report.build_for_sweep(tracker, plan.trials, plan.context)
    result.headline = headline(score_gains(tracker, plan.trials))
    tracker.finish(result.sweep_run_id, ok=not result.failed)
    return result
