"""Weights stage: where did fine-tuning change the model? Per tensor, layer, module type and depth.

Streams tensors from safetensors (two at a time), so it runs on every model of a large sweep.
LoRA trials are measured from the adapter itself (ΔW = B·A·scale), without a merged copy.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from sftlab import models
from sftlab.job import TrialJob
from sftlab.stages.common import StageResult, trial_stage
from sftlab.stages.train import fetch_trained
from sftlab.weight_diff import compare_checkpoints, compare_lora


def run(job: TrialJob, inputs: dict[str, Any]) -> StageResult:
    trained = inputs["model"]["outputs"]
    with trial_stage(job, "weights") as (tracker, run_id), tempfile.TemporaryDirectory() as tmp:
        local = fetch_trained(job, trained, Path(tmp) / "model")
        base = Path(models.local_dir(job.trial.base_model, job.context))
        diff = compare_lora(base, local) if trained["adapter"] else compare_checkpoints(base, local)
        metrics = diff.metrics()
        tracker.log_metrics(run_id, metrics)
        heatmap = Path(tmp) / "weight_change_heatmap.png"
        diff.heatmap_png(heatmap)
        tracker.log_artifact(run_id, heatmap, "weights")
        rows = diff.rows()
        if rows:
            tracker.client.log_table(run_id, data={k: [r[k] for r in rows] for k in rows[0]}, artifact_file="weights/tensors.json")
    return StageResult(metrics=metrics)
