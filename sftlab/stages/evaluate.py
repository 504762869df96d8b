"""Evaluate stage: score the fine-tuned model (and any requested epoch checkpoints) and log gains.

Gains are ``fine-tuned - base`` against the cached baseline of the same base model and settings,
with paired bootstrap CIs over the same items. A LoRA trial is served as base model + adapter
(merged in the server), never as a stored merged copy. Each checkpoint the train stage kept
(``evaluation.epochs``) becomes its own child run (``sftlab.stage = checkpoint``, ``sftlab.epoch``)
with the same metric names, as the study evaluated every epoch.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from sftlab import models
from sftlab.evaluation import gain_metrics, score_model
from sftlab.job import TrialJob
from sftlab.stages.baseline import base_item_scores, log_benchmark_rows
from sftlab.stages.common import StageResult, log, trial_stage
from sftlab.tracking import TAG_PARENT, TAG_STAGE, Tracker, trial_tags

TAG_EPOCH = "sftlab.epoch"


def _score(job: TrialJob, tracker: Tracker, run_id: str, artifact_path: str, trained: dict[str, Any], baseline: dict[str, Any],
           base_items: dict[str, list[float] | None]) -> dict[str, float]:
    """Download one stored model (or adapter), score it, log per-item rows; its eval/base/gain metrics."""
    trial = job.trial
    with tempfile.TemporaryDirectory() as tmp:
        local = tracker.download(trained["run_id"], artifact_path, Path(tmp) / "model")
        model_dir, adapter_dir = (models.resolve(trial.base_model, job.context), local) if trained["adapter"] else (local, None)
        results = score_model(
            model_dir, trial.benchmarks, trial.prompt_template, trial.evaluation, job.context,
            adapter_dir=adapter_dir, log_path=Path(tmp) / "server.log",
        )
    metrics: dict[str, float] = {}
    for name, result in results.items():
        metrics.update(
            gain_metrics(name, result.metrics, baseline["scores"][name], result.item_scores, base_items.get(name), trial.evaluation)
        )
        log_benchmark_rows(tracker, run_id, name, result)
    return metrics


def _finished_epochs(tracker: Tracker, trial_run_id: str) -> set[int]:
    """Epochs already evaluated under this trial run (a re-run must not create duplicates)."""
    query = f"tags.`{TAG_STAGE}` = 'checkpoint' AND tags.`{TAG_PARENT}` = '{trial_run_id}' AND attributes.status = 'FINISHED'"
    return {int(run.data.tags[TAG_EPOCH]) for run in tracker.search(query)}


def evaluate_checkpoints(job: TrialJob, tracker: Tracker, trial_run_id: str, trained: dict[str, Any], baseline: dict[str, Any],
                         base_items: dict[str, list[float] | None]) -> None:
    trial = job.trial
    done = _finished_epochs(tracker, trial_run_id)
    for epoch, artifact_path in sorted(trained.get("checkpoints", {}).items(), key=lambda kv: int(kv[0])):
        if int(epoch) in done:
            continue
        log.info("evaluate: epoch %s checkpoint", epoch)
        tags = {**{k: v for k, v in trial_tags(trial).items() if k != TAG_STAGE}, TAG_EPOCH: str(epoch)}
        run_id = tracker.create_run("checkpoint", f"{trial.label} epoch {epoch}", tags, {"epoch": epoch}, trial_run_id)
        with tracker.owning(run_id):
            tracker.log_metrics(run_id, _score(job, tracker, run_id, artifact_path, trained, baseline, base_items))


def run(job: TrialJob, inputs: dict[str, Any]) -> StageResult:
    trained = inputs["model"]["outputs"]
    baseline = inputs["baseline"]["outputs"]
    with trial_stage(job, "evaluate") as (tracker, run_id):
        base_items = {b: base_item_scores(tracker, r, b) for b, r in baseline.get("run_ids", {}).items()}
        metrics = _score(job, tracker, run_id, trained["artifact_path"], trained, baseline, base_items)
        tracker.log_metrics(run_id, metrics)
        evaluate_checkpoints(job, tracker, run_id, trained, baseline, base_items)
    return StageResult(metrics=metrics)
