"""Evaluate stage: score the fine-tuned model on the trial's benchmarks and log its gains.

Gains are ``fine-tuned - base`` against the cached baseline of the same base model and settings.
A LoRA trial is served as base model + adapter (merged in the server), never as a stored merged copy.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from sftlab import models
from sftlab.evaluation import score_model
from sftlab.job import TrialJob
from sftlab.stages.baseline import SCORES, log_benchmark_rows
from sftlab.stages.common import StageResult, trial_stage
from sftlab.stages.train import fetch_trained


def run(job: TrialJob, inputs: dict[str, Any]) -> StageResult:
    trial = job.trial
    trained = inputs["model"]["outputs"]
    base_scores: dict[str, dict[str, float]] = inputs["baseline"]["outputs"]["scores"]
    with trial_stage(job, "evaluate") as (tracker, run_id), tempfile.TemporaryDirectory() as tmp:
        local = fetch_trained(job, trained, Path(tmp) / "model")
        model_dir, adapter_dir = (models.resolve(trial.base_model, job.context), local) if trained["adapter"] else (local, None)
        results = score_model(
            model_dir, trial.benchmarks, trial.prompt_template, trial.evaluation, job.context,
            adapter_dir=adapter_dir, log_path=Path(tmp) / "server.log",
        )
        metrics: dict[str, float] = {}
        for name, result in results.items():
            metrics[f"eval/{name}/items"] = result.metrics["items"]
            for score in SCORES:
                metrics[f"eval/{name}/{score}"] = result.metrics[score]
                metrics[f"base/{name}/{score}"] = base_scores[name][score]
                metrics[f"gain/{name}/{score}"] = result.metrics[score] - base_scores[name][score]
            log_benchmark_rows(tracker, run_id, name, result.rows)
        tracker.log_metrics(run_id, metrics)
    return StageResult(metrics=metrics)
