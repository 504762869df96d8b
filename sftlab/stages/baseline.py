"""Baseline stage: the base model's scores, computed once per (base model, benchmark, settings).

Every trial's gain is measured against these. They are cached in MLflow as ``stage=baseline``
runs keyed by everything that changes a score, so the many trials of one base model share one
evaluation (the study's evaluation cost ~30x its training; re-scoring base models is pure waste).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from sftlab import metric_names
from sftlab.evals.base import BenchmarkScore
from sftlab.evals.scoring import ITEM_COUNTS, score_models
from sftlab.keys import digest
from sftlab.serving.endpoints import ModelToServe, model_storage_uri
from sftlab.sources import models
from sftlab.spec.grid import Trial, identity
from sftlab.spec.job import StageResult, TrialJob
from sftlab.spec.schema import BenchmarkSpec
from sftlab.stages.common import trial_stage
from sftlab.tracking.runs import Tracker

log = logging.getLogger(__name__)


def baseline_key(trial: Trial, bench: BenchmarkSpec) -> str:
    return digest(
        {
            "base_model": identity(trial.base_model),
            "benchmark": identity(bench),
            "template": bench.template or trial.prompt_template,
        }
    )


def item_scores_path(bench: str) -> str:
    return f"eval/{bench}.scores.json"


def log_benchmark_rows(tracker: Tracker, run_id: str, bench: str, result: BenchmarkScore) -> None:
    """Per-item results as an MLflow table (viewable and comparable in the MLflow UI), and the
    item scores alone, which paired gain CIs read back."""
    if result.rows:
        columns = {key: [row.get(key) for row in result.rows] for key in result.rows[0]}
        tracker.client.log_table(run_id, data=columns, artifact_file=f"eval/{bench}.json")
        # log_dict writes any JSON value; its annotation names only dict
        tracker.client.log_dict(run_id, result.item_scores, item_scores_path(bench))  # type: ignore[arg-type]


def base_item_scores(tracker: Tracker, run_id: str, bench: str) -> list[float] | None:
    """The base model's item scores stored by its baseline run (None for runs that predate them)."""
    wanted = item_scores_path(bench)
    if wanted not in {f.path for f in tracker.client.list_artifacts(run_id, "eval")}:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        return json.loads(tracker.download(run_id, wanted, tmp).read_text())


def _eval_metrics(metrics: dict[str, float], bench: str) -> dict[str, float]:
    parsed = ((metric_names.parse_benchmark_metric(k), v) for k, v in metrics.items())
    return {p.metric: v for p, v in parsed if p and p.kind == "eval" and p.benchmark == bench}


def run(job: TrialJob, inputs: dict[str, Any]) -> StageResult:
    trial = job.trial
    scores: dict[str, dict[str, float]] = {}
    run_ids: dict[str, str] = {}
    with trial_stage(job, "baseline") as (tracker, trial_run_id):
        owned: dict[str, str] = {}  # benchmark -> the baseline run this trial must fill
        with tracker.owning(owned.values()):
            # Claims are taken in key order so two trials can never wait on each other.
            for bench in sorted(trial.benchmarks, key=lambda b: baseline_key(trial, b)):
                tags = {"sftlab.base_model": trial.base_model.name, "sftlab.benchmark": bench.name}
                name = f"baseline {trial.base_model.name}/{bench.name}"
                cached, run_id = tracker.claim("baseline", baseline_key(trial, bench), name, tags)
                if cached is not None:
                    scores[bench.name] = _eval_metrics(cached.data.metrics, bench.name)
                    run_ids[bench.name] = cached.info.run_id
                else:
                    assert run_id is not None
                    owned[bench.name] = run_id
            if owned:
                scores.update(_score_base(job, tracker, owned))
                run_ids.update(owned)
        tracker.set_tags(trial_run_id, {f"sftlab.baseline_run.{b}": r for b, r in run_ids.items()})
    # Item counts are the trial's own eval/ metrics; base/ holds the scores gains compare against.
    metrics = {metric_names.base(b, s): v for b, per in scores.items() for s, v in per.items() if s not in ITEM_COUNTS}
    return StageResult(metrics=metrics, outputs={"scores": scores, "run_ids": run_ids})


def _score_base(job: TrialJob, tracker: Tracker, owned: dict[str, str]) -> dict[str, dict[str, float]]:
    """Score the base model on the claimed benchmarks (one server) and fill their baseline runs."""
    trial = job.trial
    benchmarks = [b for b in trial.benchmarks if b.name in owned]
    log.info("baseline: scoring %s on %s", trial.base_model.name, ", ".join(owned))
    scores: dict[str, dict[str, float]] = {}

    def on_scored(_: str, results: dict[str, BenchmarkScore]) -> None:
        for bench in benchmarks:
            result, run_id = results[bench.name], owned[bench.name]
            tracker.log_metrics(run_id, {metric_names.evaluated(bench.name, k): v for k, v in result.metrics.items()})
            log_benchmark_rows(tracker, run_id, bench.name, result)
            scores[bench.name] = dict(result.metrics)

    base = trial.base_model
    model = ModelToServe(
        "base", fetch=lambda _: Path(models.resolve(base, job.context)), storage_uri=lambda: model_storage_uri(base)
    )
    score_models(
        base,
        [model],
        benchmarks,
        trial.prompt_template,
        trial.evaluation,
        job.context,
        on_scored,
        name=f"base-{digest(identity(base))}",
    )
    return scores
