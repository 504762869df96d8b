"""Baseline stage: the base model's scores, computed once per (base model, benchmark, settings).

Every trial's gain is measured against these. They are cached in MLflow as ``stage=baseline``
runs keyed by everything that changes a score, so the many trials of one base model share one
evaluation (the study's evaluation cost ~30x its training; re-scoring base models is pure waste).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from sftlab import models
from sftlab.evaluation import score_model
from sftlab.grid import Trial, digest
from sftlab.job import TrialJob
from sftlab.spec import BenchmarkSpec
from sftlab.stages.common import StageResult, log, trial_stage
from sftlab.tracking import TAG_CACHE_KEY, Tracker

SCORES = ("exact_match", "loglik")


def baseline_key(trial: Trial, bench: BenchmarkSpec) -> str:
    return digest(
        {
            "base_model": trial.base_model.model_dump(exclude={"name"}),
            "benchmark": bench.model_dump(exclude={"name"}),
            "template": bench.template or trial.prompt_template,
        }
    )


def log_benchmark_rows(tracker: Tracker, run_id: str, bench: str, rows: list[dict[str, Any]]) -> None:
    """Per-item results as an MLflow table (viewable and comparable in the MLflow UI)."""
    if rows:
        columns = {key: [row[key] for row in rows] for key in rows[0]}
        tracker.client.log_table(run_id, data=columns, artifact_file=f"eval/{bench}.json")


def run(job: TrialJob, inputs: dict[str, Any]) -> StageResult:
    trial = job.trial
    scores: dict[str, dict[str, float]] = {}
    run_ids: dict[str, str] = {}
    with trial_stage(job, "baseline") as (tracker, trial_run_id):
        missing = []
        for bench in trial.benchmarks:
            cached = tracker.cached("baseline", baseline_key(trial, bench))
            if cached is None:
                missing.append(bench)
                continue
            scores[bench.name] = {s: cached.data.metrics[f"eval/{bench.name}/{s}"] for s in SCORES}
            run_ids[bench.name] = cached.info.run_id
        if missing:
            log.info("baseline: scoring %s on %s", trial.base_model.name, ", ".join(b.name for b in missing))
            with tempfile.TemporaryDirectory() as tmp:
                results = score_model(
                    models.resolve(trial.base_model, job.context),
                    missing,
                    trial.prompt_template,
                    trial.evaluation,
                    job.context,
                    log_path=Path(tmp) / "server.log",
                )
            for bench in missing:
                result = results[bench.name]
                run_id = tracker.create_run(
                    "baseline",
                    f"baseline {trial.base_model.name}/{bench.name}",
                    {TAG_CACHE_KEY: baseline_key(trial, bench), "sftlab.base_model": trial.base_model.name,
                     "sftlab.benchmark": bench.name},
                )
                tracker.log_metrics(run_id, {f"eval/{bench.name}/{k}": v for k, v in result.metrics.items()})
                log_benchmark_rows(tracker, run_id, bench.name, result.rows)
                tracker.finish(run_id)
                scores[bench.name] = {s: result.metrics[s] for s in SCORES}
                run_ids[bench.name] = run_id
        tracker.set_tags(trial_run_id, {f"sftlab.baseline_run.{b}": r for b, r in run_ids.items()})
    metrics = {f"base/{b}/{s}": v for b, per in scores.items() for s, v in per.items()}
    return StageResult(metrics=metrics, outputs={"scores": scores, "run_ids": run_ids})
