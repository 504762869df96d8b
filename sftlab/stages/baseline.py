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
from sftlab.tracking import Tracker

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
        owned: dict[str, str] = {}  # benchmark -> the baseline run this trial must fill
        # Claims are taken in key order so two trials can never wait on each other.
        for bench in sorted(trial.benchmarks, key=lambda b: baseline_key(trial, b)):
            tags = {"sftlab.base_model": trial.base_model.name, "sftlab.benchmark": bench.name}
            name = f"baseline {trial.base_model.name}/{bench.name}"
            cached, run_id = tracker.claim("baseline", baseline_key(trial, bench), name, tags)
            if cached is not None:
                scores[bench.name] = {s: cached.data.metrics[f"eval/{bench.name}/{s}"] for s in SCORES}
                run_ids[bench.name] = cached.info.run_id
            else:
                assert run_id is not None
                owned[bench.name] = run_id
        if owned:
            scores.update(_score_base(job, tracker, owned))
            run_ids.update(owned)
        tracker.set_tags(trial_run_id, {f"sftlab.baseline_run.{b}": r for b, r in run_ids.items()})
    metrics = {f"base/{b}/{s}": v for b, per in scores.items() for s, v in per.items()}
    return StageResult(metrics=metrics, outputs={"scores": scores, "run_ids": run_ids})


def _score_base(job: TrialJob, tracker: Tracker, owned: dict[str, str]) -> dict[str, dict[str, float]]:
    """Score the base model on the claimed benchmarks (one server) and fill their baseline runs."""
    trial = job.trial
    benchmarks = [b for b in trial.benchmarks if b.name in owned]
    log.info("baseline: scoring %s on %s", trial.base_model.name, ", ".join(owned))
    scores = {}
    with tracker.owning(*owned.values()), tempfile.TemporaryDirectory() as tmp:
        results = score_model(
            models.resolve(trial.base_model, job.context),
            benchmarks,
            trial.prompt_template,
            trial.evaluation,
            job.context,
            log_path=Path(tmp) / "server.log",
        )
        for bench in benchmarks:
            result, run_id = results[bench.name], owned[bench.name]
            tracker.log_metrics(run_id, {f"eval/{bench.name}/{k}": v for k, v in result.metrics.items()})
            log_benchmark_rows(tracker, run_id, bench.name, result.rows)
            scores[bench.name] = {s: result.metrics[s] for s in SCORES}
    return scores
