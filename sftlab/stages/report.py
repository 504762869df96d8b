"""Report stage: one cross-trial report of a sweep (or a whole experiment), read back from MLflow.

It is built to show the study's findings (arXiv 2506.14681) on any sweep: whether data perplexity
under the base model predicts SFT gains better than length does, whether mid-depth weight change
tracks gains, which dataset × benchmark synergies hold across base models, and how method and
hyper-parameters shift gains. Everything comes from paged run searches (run objects carry their
metrics, params and tags), so a thousand-trial sweep costs a handful of requests. The content is
computed once as sections, then rendered as self-contained HTML and as a terminal Markdown summary.
"""


from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sftlab.errors import SftlabError
from sftlab.reporting.render import REPORT_FILES, write_report
from sftlab.reporting.trials import TrialRef, runs_by_key, trial_row
from sftlab.tracking import TAG_STAGE, Tracker

if TYPE_CHECKING:
    from sftlab.job import RunContext

ARTIFACT_DIR = "report"


def _publish(tracker: Tracker, run_id: str | None, out_dir: Path) -> None:
    if run_id:
        for name in REPORT_FILES:
            tracker.log_artifact(run_id, out_dir / name, ARTIFACT_DIR)


def build_for_sweep(tracker: Tracker, trials: list[TrialRef], ctx: RunContext) -> Path:
    """The report of a sweep's planned trials, written under the root and logged on the sweep run."""
    finished, failed = runs_by_key(tracker)
    planned: dict[str, str] = {}
    for trial in trials:  # a key planned twice counts once
        planned.setdefault(trial.key, trial.label)
    rows = [trial_row(key, label, finished, failed) for key, label in planned.items()]
    out_dir = Path(ctx.root) / "reports" / ctx.experiment
    path = write_report(rows, out_dir, f"sftlab report: {ctx.experiment}")
    _publish(tracker, ctx.sweep_run_id, out_dir)
    return path


def build_for_experiment(tracking_uri: str, experiment: str, out_dir: Path) -> Path:
    """The report of every trial ever run in an experiment (``sftlab report --experiment NAME``)."""
    from mlflow import MlflowClient

    if MlflowClient(tracking_uri).get_experiment_by_name(experiment) is None:
        raise SftlabError(f"MLflow at {tracking_uri}: no experiment named {experiment!r}")
    tracker = Tracker(tracking_uri, experiment)
    finished, failed = runs_by_key(tracker)
    runs = {**failed, **finished}
    labels = {key: run.data.tags.get("sftlab.label") or run.info.run_name or key for key, run in runs.items()}
    rows = sorted((trial_row(key, label, finished, failed) for key, label in labels.items()), key=lambda r: r.label)
    path = write_report(rows, Path(out_dir), f"sftlab report: {experiment}")
    sweep = tracker.latest(f"tags.`{TAG_STAGE}` = 'sweep'")
    _publish(tracker, sweep.info.run_id if sweep else None, Path(out_dir))
    return path
