"""Scoring one model on a trial's benchmarks through a served endpoint.

The model is served by a real model server (locally a ``kserve.ModelServer`` process on
127.0.0.1; on a cluster an InferenceService) and scored over HTTP with the OpenAI-compatible
client, so local and cluster scores come from the same code. Each benchmark's task
(``sftlab.evals``) scores every item; here every benchmark gets its headline ``score`` (the mean of
item scores) with a percentile bootstrap CI, and gains over the base model get a *paired* bootstrap
CI (the same items, resampled together), which is much tighter than two independent CIs.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sftlab import metric_names, progress
from sftlab.errors import SftlabError
from sftlab.evals import task_for
from sftlab.evals.base import BenchmarkScore, Generator
from sftlab.serving.endpoints import Endpoint, ModelToServe
from sftlab.sources.data import read_rows
from sftlab.spec.job import RunContext
from sftlab.spec.schema import BenchmarkSpec, EvaluationConfig, ModelSpec
from sftlab.stats import bootstrap_ci, paired_bootstrap_ci

log = logging.getLogger(__name__)

BOOTSTRAP_SEED = 0
# Per-benchmark metrics that have no gain (the item counts are the same for a model and its base).
ITEM_COUNTS = ("items", "items_too_long", "items_clamped")
NOT_GAINS = (*ITEM_COUNTS, "score_ci_low", "score_ci_high")


def benchmark_items(bench: BenchmarkSpec, ctx: RunContext) -> list[dict[str, Any]]:
    """The benchmark's items (``max_items`` first), each checked before any model server starts."""
    task = task_for(bench.kind)
    items = read_rows(bench.uri, bench.split, ctx, bench.subset)
    if bench.max_items:
        items = items[: bench.max_items]
    if not items:
        raise SftlabError(f"benchmark {bench.name} ({bench.uri}): no items")
    for i, item in enumerate(items):
        try:
            task.check_item(item)
        except SftlabError as exc:
            raise SftlabError(f"benchmark {bench.name} ({bench.uri}) item {i}: {exc}") from None
    return items


def score_benchmark(
    model: Generator,
    bench: BenchmarkSpec,
    items: list[dict[str, Any]],
    template: str | None,
    evaluation: EvaluationConfig,
) -> BenchmarkScore:
    """Score ``items`` with the benchmark's task; add ``score``, its CI, ``items`` and how many items
    did not fit the model's context window (``items_too_long``, scored 0) or had their generation
    cut to fit it (``items_clamped``); see ``sftlab.evals.base``."""
    result = task_for(bench.kind).score(model, bench, items, template)
    for index, row in enumerate(result.rows):
        row["item"] = index
        row.setdefault("fit", "ok")  # every row has the columns: the MLflow table takes row 0's
        row.setdefault("note", "")
    scores = result.item_scores
    low, high = bootstrap_ci(scores, evaluation.bootstrap_resamples, evaluation.confidence, BOOTSTRAP_SEED)
    too_long = sum(r["fit"] == "too_long" for r in result.rows)
    clamped = sum(r["fit"] == "clamped" for r in result.rows)
    if too_long or clamped:
        log.warning(
            "benchmark %s: %d of %d items do not fit the model's context window (scored 0), %d had generation clamped "
            "to fit (see the fit and note columns of the per-item table)",
            bench.name,
            too_long,
            len(items),
            clamped,
        )
    result.metrics.update(
        score=float(np.mean(scores)),
        score_ci_low=low,
        score_ci_high=high,
        items=float(len(scores)),
        items_too_long=float(too_long),
        items_clamped=float(clamped),
    )
    return result


def gain_metrics(
    bench: str,
    scored: dict[str, float],
    base: dict[str, float],
    item_scores: Sequence[float],
    base_item_scores: Sequence[float] | None,
    evaluation: EvaluationConfig,
) -> dict[str, float]:
    """``eval/``, ``base/`` and ``gain/`` metrics of one benchmark, with a paired CI of the score gain.

    ``base_item_scores`` must be the base model's scores of the same items in the same order; when
    they are not available (a baseline from an older version) the gain has no CI.
    """
    metrics = {metric_names.evaluated(bench, k): v for k, v in scored.items()}
    for name, value in scored.items():
        if name in NOT_GAINS or name not in base:
            continue
        metrics[metric_names.base(bench, name)] = base[name]
        metrics[metric_names.gain(bench, name)] = value - base[name]
    if base_item_scores is not None:
        if len(base_item_scores) != len(item_scores):
            raise SftlabError(
                f"benchmark {bench}: the baseline scored {len(base_item_scores)} items, this model {len(item_scores)}; "
                "were the benchmark's items changed in place? Give the changed file a new name or uri"
            )
        low, high = paired_bootstrap_ci(
            item_scores, base_item_scores, evaluation.bootstrap_resamples, evaluation.confidence, BOOTSTRAP_SEED
        )
        low_name, high_name = metric_names.ci_bounds(metric_names.gain(bench, "score"))
        metrics[low_name], metrics[high_name] = low, high
    return metrics


def score_endpoint(
    endpoint: Endpoint,
    benchmarks: list[BenchmarkSpec],
    items: dict[str, list[dict[str, Any]]],
    template: str | None,
    evaluation: EvaluationConfig,
) -> dict[str, BenchmarkScore]:
    from sftlab.serving.client import CompletionsClient

    with CompletionsClient(
        endpoint.base_url, endpoint.model, concurrency=evaluation.concurrency, timeout=evaluation.request_timeout_s
    ) as client:
        scores = {}
        for b in benchmarks:
            client.on_progress = progress.Steps(f"{b.name} items")
            scores[b.name] = score_benchmark(client, b, items[b.name], template, evaluation)
        return scores


def score_models(
    base_model: ModelSpec,
    models: Sequence[ModelToServe],
    benchmarks: list[BenchmarkSpec],
    template: str | None,
    evaluation: EvaluationConfig,
    ctx: RunContext,
    on_scored: Callable[[str, dict[str, BenchmarkScore]], None],
    *,
    name: str,
    max_lora_rank: int | None = None,
) -> None:
    """Serve each model (locally, or as InferenceServices) and score it on every benchmark.

    Benchmarks are read and checked first, so bad data fails before any server starts. Each
    model's scores go to ``on_scored`` as soon as they exist: a later failure loses nothing.
    """
    from sftlab.serving.endpoints import model_storage_uri, serve_locally, serve_on_kserve
    from sftlab.sources import models as model_sources

    items = {b.name: benchmark_items(b, ctx) for b in benchmarks}
    with tempfile.TemporaryDirectory(prefix="sftlab-eval-") as tmp:
        if evaluation.backend == "local":
            served = serve_locally(
                lambda _: Path(model_sources.resolve(base_model, ctx)), models, evaluation, Path(tmp)
            )
        else:
            served = serve_on_kserve(
                name,
                model_storage_uri(base_model),
                models,
                evaluation,
                ctx.resources.for_stage("evaluate"),
                max_lora_rank,
                log=lambda line: log.info("%s", line),
            )
        with contextlib.closing(served):  # leaving early still stops the server / deletes the InferenceService
            for label, endpoint in served:
                on_scored(label, score_endpoint(endpoint, benchmarks, items, template, evaluation))
