"""The sweep as KFP components: ``plan -> launch -> report``, the cluster form of ``run_sweep``.

``plan`` expands the spec and opens the sweep's MLflow parent run; its ``trials`` Dataset (JSON:
the run context, the keys still to run, every trial) is what ``launch`` runs and ``report``
summarises, so all three agree on one plan. ``launch`` submits each pending trial as its own KFP
run of the trial pipeline (a workflow of workflows: no giant Argo object at 1,000 trials).

The component bodies delegate to the ``run_*`` functions below (imported inside the body, since
KFP ships only a component's own source to the task).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Output

from sftlab.errors import SftlabError
from sftlab.signals import Terminated, sigterm_interrupts
from sftlab.sources.specs import load_spec_source
from sftlab.spec.grid import Trial
from sftlab.spec.job import RunContext, context_for
from sftlab.sweep.runner import SweepPlan, prepare
from sftlab.tracking.runs import Tracker

if TYPE_CHECKING:  # compile-time half of the SDK: not importable inside a running task
    from kfp.dsl.base_component import BaseComponent


def write_plan(sweep_plan: SweepPlan, path: str) -> None:
    data = {
        "context": sweep_plan.context.model_dump(mode="json"),
        "pending": [t.key for t in sweep_plan.pending],
        "trials": [t.model_dump(mode="json") for t in sweep_plan.trials],
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)


def read_plan(path: str) -> SweepPlan:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    trials = [Trial.model_validate(t) for t in data["trials"]]
    pending = set(data["pending"])
    return SweepPlan(RunContext.model_validate(data["context"]), trials, [t for t in trials if t.key in pending])


def is_local_store(tracking_uri: str) -> bool:
    """Whether an MLflow store lives on one machine's disk (useless across pods)."""
    scheme = urlsplit(tracking_uri).scheme
    return scheme in ("sqlite", "file") or (not scheme and tracking_uri.startswith(("/", ".", "~")))


def run_plan(spec_source: str, trials: Artifact) -> None:
    spec = load_spec_source(spec_source)
    uri = context_for(spec).tracking_uri
    if is_local_store(uri):  # each pod would get its own empty store
        raise SftlabError(
            f"MLflow tracking URI {uri!r} is local to one pod: set tracking.uri in the spec, or "
            "MLFLOW_TRACKING_URI in the tasks' environment (resources.secrets), to a shared MLflow server"
        )
    _, sweep_plan = prepare(spec)
    write_plan(sweep_plan, trials.path)
    ctx = sweep_plan.context
    trials.metadata.update(
        {
            "trials": len(sweep_plan.trials),
            "pending": len(sweep_plan.pending),
            "mlflow_run_id": ctx.sweep_run_id or "",
            "mlflow_tracking_uri": ctx.tracking_uri,
        }
    )


# Kubernetes' default grace period is 30 s; the child needs a few API calls per trial in flight.
CANCEL_GRACE_S = 25.0


def run_launch(spec_source: str, plan_path: str, summary: Metrics) -> int:
    """Launch the plan's pending trials with ``KfpTrialLauncher``; returns how many failed.

    The launching runs in a child interpreter: inside a task KFP loads only the runtime half of
    its SDK, and ``kfp.Client`` or the compiler cannot be imported next to it.
    """
    with tempfile.TemporaryDirectory(prefix="sftlab-launch-") as tmp:
        spec_file, counts_file = Path(tmp) / "spec.yaml", Path(tmp) / "counts.json"
        spec_file.write_text(spec_source, encoding="utf-8")
        command = [sys.executable, "-m", "sftlab.kfp.pipelines.kfp_launch", "--spec-file", str(spec_file)]
        command += ["--plan", plan_path, "--counts", str(counts_file)]
        env = {k: v for k, v in os.environ.items() if k != "_KFP_RUNTIME"}
        with sigterm_interrupts():
            child = subprocess.Popen(command, env=env)
            try:
                code = child.wait()
            except Terminated:
                # The sweep run was cancelled or its pod deleted: the child terminates the trial
                # runs in flight and records them as interrupted before it exits.
                child.send_signal(signal.SIGTERM)
                try:
                    child.wait(timeout=CANCEL_GRACE_S)
                except subprocess.TimeoutExpired:
                    child.kill()
                raise
        if code:
            raise subprocess.CalledProcessError(code, command)
        counts: dict[str, int] = json.loads(counts_file.read_text(encoding="utf-8"))
    for name, value in counts.items():
        summary.log_metric(name, value)
    return counts["failed"]


def run_report(plan_path: str, failed: int, html: Artifact) -> None:
    from sftlab.stages.report import build_for_sweep  # like the stages: imported only where it runs

    sweep_plan = read_plan(plan_path)
    ctx = sweep_plan.context
    assert ctx.sweep_run_id is not None
    tracker = Tracker.for_context(ctx)
    shutil.copyfile(build_for_sweep(tracker, sweep_plan.trials, ctx), html.path)
    html.metadata.update({"mlflow_run_id": ctx.sweep_run_id, "mlflow_tracking_uri": ctx.tracking_uri})
    tracker.finish(ctx.sweep_run_id, ok=failed == 0)


def plan(spec: str, trials: Output[Dataset]):
    """Expand the spec's grid, open (or reopen) the sweep's MLflow run and list the trials to run.

    Args:
        spec: The experiment spec: YAML text or an s3:// URI of a spec file.
        trials: The plan (JSON): run context, keys of the pending trials, every trial's settings.
    """
    from sftlab.kfp.components.sweep import run_plan

    run_plan(spec, trials)


def launch(spec: str, plan: Input[Dataset], summary: Output[Metrics]) -> int:
    """Run each pending trial as its own KFP run of the trial pipeline; returns how many failed.

    At most ``pipeline.max_parallel_trials`` runs are in flight; a failed trial does not stop the
    others, and its cause is recorded on its MLflow run.

    Args:
        spec: The experiment spec (resources, image and parallelism of the trial runs).
        plan: The plan from the plan step.
        summary: Counts of trials: total, skipped (already finished), succeeded, failed.
    """
    from sftlab.kfp.components.sweep import run_launch

    return run_launch(spec, plan.path, summary)


def report(plan: Input[Dataset], failed: int, html: Output[HTML]):
    """Build the sweep report and close the sweep's MLflow run (FAILED if any trial failed).

    Args:
        plan: The plan from the plan step.
        failed: Number of failed trials, from the launch step.
        html: The report page.
    """
    from sftlab.kfp.components.sweep import run_report

    run_report(plan.path, failed, html)


@dataclass(frozen=True)
class SweepComponents:
    plan: "BaseComponent"
    launch: "BaseComponent"
    report: "BaseComponent"


def sweep_components(image: str) -> SweepComponents:
    """The three sweep components, built on ``image`` (which must have sftlab installed)."""
    funcs = (plan, launch, report)
    return SweepComponents(*(dsl.component(func, base_image=image, install_kfp_package=False) for func in funcs))
