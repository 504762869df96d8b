"""Report stage: one cross-trial report of a sweep (or a whole experiment), read back from MLflow.

It is built to show the study's findings (arXiv 2506.14681) on any sweep: which data-profile
measures predict SFT gains (perplexity under the base model, in the paper), which layers' weight
change tracks gains, which dataset × benchmark synergies hold for every base model, how LoRA and
full FT, data size and epochs shift gains, and how well gains can be predicted before training.
Everything comes from paged run searches (run objects carry their metrics, params and tags), so a
thousand-trial sweep costs a handful of requests. The content is computed once as sections, then
rendered as a self-contained HTML page, a terminal Markdown summary and CSV/Parquet tables, all
logged under ``report/`` on the sweep's parent run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sftlab import __version__, metric_names
from sftlab.errors import SftlabError
from sftlab.keys import digest
from sftlab.reporting.gain_model import REPORT_TAG, Predictor
from sftlab.reporting.render import report_files, write_report
from sftlab.reporting.sections import Options
from sftlab.reporting.trials import TrialRef, TrialRow, attach_checkpoints, runs_by_key, trial_row
from sftlab.spec.grid import Trial
from sftlab.stats import DEFAULT_CONFIDENCE
from sftlab.tracking.runs import TAG_STAGE, Tracker

if TYPE_CHECKING:
    from sftlab.spec.job import RunContext

ARTIFACT_DIR = "report"
BUILT_FROM = ".built-from"  # in a report's folder: the digest of what it was built from
DIGEST_TAG = "sftlab.report_inputs"  # the same digest, on the run the report is logged on
log = logging.getLogger(__name__)


def _publish(tracker: Tracker, run_id: str, rows: list[TrialRow], out_dir: Path) -> None:
    """Log the report's files under ``report/`` and a few headline metrics on ``run_id``."""
    for rel in report_files(out_dir):
        folder = f"{ARTIFACT_DIR}/{rel.parent.as_posix()}" if rel.parent != Path(".") else ARTIFACT_DIR
        tracker.log_artifact(run_id, out_dir / rel, folder)
    metrics = {
        metric_names.report_trials(s): float(sum(r.status == s for r in rows))
        for s in ("finished", "failed", "missing")
    }
    predictor = out_dir / "predictor.json"
    if predictor.is_file():
        for name, target in Predictor.from_json(predictor.read_text(encoding="utf-8")).targets.items():
            metrics[metric_names.report_predictor(name, "cv_mae")] = target.cv.mae
            metrics[metric_names.report_predictor(name, "baseline_mae")] = target.cv.best_baseline_mae
    tracker.log_metrics(run_id, metrics)
    tracker.set_tags(run_id, {REPORT_TAG: str(int(time.time() * 1000))})


def _rows(tracker: Tracker, planned: dict[str, str] | None) -> list[TrialRow]:
    """Planned trials (a sweep), or every trial key with a run (an experiment), with their checkpoints."""
    finished, failed = runs_by_key(tracker)
    if planned is None:
        runs = {**failed, **finished}
        labels = {key: run.data.tags.get("sftlab.label") or run.info.run_name or key for key, run in runs.items()}
        rows = sorted((trial_row(key, label, finished, failed) for key, label in labels.items()), key=lambda r: r.label)
    else:
        rows = [trial_row(key, label, finished, failed) for key, label in planned.items()]
    attach_checkpoints(tracker, rows)
    return rows


def sweep_confidence(trials: Sequence[TrialRef]) -> float:
    """The spec's ``evaluation.confidence``, which every trial of a sweep carries: the report's one level."""
    return next((t.evaluation.confidence for t in trials if isinstance(t, Trial)), DEFAULT_CONFIDENCE)


def build_for_sweep(
    tracker: Tracker, trials: Sequence[TrialRef], ctx: RunContext, options: Options | None = None
) -> Path:
    """The report of a sweep's planned trials, written under the root and logged on the sweep run."""
    planned: dict[str, str] = {}
    for trial in trials:  # a key planned twice counts once
        planned.setdefault(trial.key, trial.label)
    rows = _rows(tracker, planned)
    out_dir = Path(ctx.root) / "reports" / ctx.experiment
    options = options or Options(experiment=ctx.experiment, confidence=sweep_confidence(trials))
    title = f"sftlab report: {ctx.experiment}"
    inputs = _inputs_digest(title, options, rows)
    stamp = out_dir / BUILT_FROM
    built = (out_dir / "report.html").is_file() and stamp.is_file() and stamp.read_text() == inputs
    if built and (
        ctx.sweep_run_id is None or tracker.client.get_run(ctx.sweep_run_id).data.tags.get(DIGEST_TAG) == inputs
    ):
        log.info("report: no trial changed since %s was built; kept as it is", out_dir / "report.html")
        return out_dir / "report.html"
    stamp.unlink(missing_ok=True)
    path = write_report(rows, out_dir, title, options)
    if ctx.sweep_run_id:
        _publish(tracker, ctx.sweep_run_id, rows, out_dir)
        tracker.set_tags(ctx.sweep_run_id, {DIGEST_TAG: inputs})
    stamp.write_text(inputs)
    return path


def _inputs_digest(title: str, options: Options, rows: list[TrialRow]) -> str:
    """What a report is built from: the same digest means the same report (a re-run that ran
    nothing keeps the one it has instead of spending seconds drawing it again)."""
    return digest(
        {
            "version": __version__,
            "title": title,
            "options": repr(options),
            "rows": [
                [
                    r.key,
                    r.label,
                    r.status,
                    r.note,
                    r.run.info.run_id if r.run else None,
                    r.run.info.end_time if r.run else None,
                    {str(e): m for e, m in sorted(r.epochs.items())},
                ]
                for r in rows
            ],
        }
    )


def build_for_experiment(tracking_uri: str, experiment: str, out_dir: Path, options: Options | None = None) -> Path:
    """The report of every trial ever run in an experiment (``sftlab report --experiment NAME``).

    Logged on the experiment's newest sweep run; an experiment without one gets a run of its own
    (``sftlab.stage = report``), so ``sftlab predict`` finds the fitted predictor either way.
    """
    from mlflow import MlflowClient

    if MlflowClient(tracking_uri).get_experiment_by_name(experiment) is None:
        raise SftlabError(f"MLflow at {tracking_uri}: no experiment named {experiment!r}")
    tracker = Tracker(tracking_uri, experiment)
    rows = _rows(tracker, None)
    path = write_report(rows, Path(out_dir), f"sftlab report: {experiment}", options or Options(experiment=experiment))
    sweep = tracker.latest(f"tags.`{TAG_STAGE}` = 'sweep'")
    run_id = sweep.info.run_id if sweep else tracker.create_run("report", f"report {experiment}")
    _publish(tracker, run_id, rows, Path(out_dir))
    if not sweep:
        tracker.finish(run_id)
    return path
