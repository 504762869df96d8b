"""Weights stage: where did fine-tuning change the model? Per tensor, layer, module type and depth.

Streams tensors from safetensors (two at a time), so it runs on every model of a large sweep.
LoRA trials are measured from the adapter itself (ΔW = B·A·scale), without a merged copy.
Aggregates go to MLflow metrics; per-tensor detail goes to table artifacts (JSON for the MLflow
UI, Parquet for the report), since the UI slows past ~1,000 metrics per run.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from sftlab.sources import models
from sftlab.spec.job import StageResult, TrialJob
from sftlab.stages.common import trial_stage
from sftlab.stages.train import fetch_trained
from sftlab.tracking.runs import Tracker
from sftlab.weight_diff import WeightDiff, compare_checkpoints, compare_lora

ARTIFACT_DIR = "weights"
HEATMAP = "weight_change_heatmap.png"
TABLE_JSON = "tensors.json"
TABLE_PARQUET = "tensors.parquet"


def run(job: TrialJob, inputs: dict[str, Any]) -> StageResult:
    trained = inputs["model"]["outputs"]
    with trial_stage(job, "weights") as (tracker, run_id), tempfile.TemporaryDirectory() as tmp:
        local = fetch_trained(job, trained, Path(tmp) / "model")
        base = Path(models.local_dir(job.trial.base_model, job.context))
        compare = compare_lora if trained["adapter"] else compare_checkpoints
        diff = compare(base, local, job.trial.weights)
        metrics = diff.metrics()
        tracker.log_metrics(run_id, metrics)
        log_artifacts(tracker, run_id, diff, Path(tmp) / ARTIFACT_DIR)
    return StageResult(metrics=metrics)


def log_artifacts(tracker: Tracker, run_id: str, diff: WeightDiff, folder: Path) -> None:
    """The heatmap PNG and the per-tensor table (Parquet, and JSON as an MLflow table) under ``weights/``."""
    folder.mkdir(parents=True, exist_ok=True)
    diff.heatmap_png(folder / HEATMAP)
    table = diff.table()
    table.to_parquet(folder / TABLE_PARQUET, index=False)
    for name in (HEATMAP, TABLE_PARQUET):
        tracker.log_artifact(run_id, folder / name, ARTIFACT_DIR)
    tracker.client.log_table(run_id, data=table, artifact_file=f"{ARTIFACT_DIR}/{TABLE_JSON}")
