"""Scoring one model on a trial's benchmarks through a served endpoint.

The model is served by a real model server (locally a ``kserve.ModelServer`` process on
127.0.0.1; on a cluster an InferenceService) and scored over HTTP with the OpenAI-compatible
client, so local and cluster scores come from the same code. Besides exact match, each benchmark
logs the mean log-likelihood per token of the reference answers: it moves long before exact match
does, which is what small models and short runs need.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftlab.data import read_rows, render_template
from sftlab.errors import SftlabError
from sftlab.evals import gsm8k
from sftlab.job import RunContext
from sftlab.spec import BenchmarkSpec, EvaluationConfig

FALLBACK_TEMPLATE = "Question: {instruction}\nAnswer: {response}"  # lm-evaluation-harness style


@dataclass
class BenchmarkScore:
    metrics: dict[str, float]
    rows: list[dict[str, Any]] = field(default_factory=list)


def benchmark_items(bench: BenchmarkSpec, ctx: RunContext) -> list[dict[str, Any]]:
    """All items of a benchmark, each checked before any model server starts (one-line errors)."""
    items = read_rows(bench.uri, bench.split, ctx)
    for i, item in enumerate(items):
        where = f"benchmark {bench.name} ({bench.uri}) item {i}"
        for key in ("question", "answer"):
            if not isinstance(item.get(key), str):
                raise SftlabError(f"{where}: missing string field '{key}'")
        try:
            gsm8k.reference_answer(item["answer"])
        except SftlabError as exc:
            raise SftlabError(f"{where}: {exc}") from None
    return items


def build_prompts(bench: BenchmarkSpec, items: list[dict[str, Any]], template: str | None) -> list[str]:
    """Zero- or few-shot prompts; few-shot examples are other items, drawn with a fixed seed."""
    template = bench.template or template or FALLBACK_TEMPLATE
    prompts = []
    rng = random.Random(1234)
    for i, item in enumerate(items):
        shots = ""
        if bench.num_fewshot:
            others = [j for j in range(len(items)) if j != i]
            for j in rng.sample(others, min(bench.num_fewshot, len(others))):
                shots += render_template(template, items[j]["question"]) + items[j]["answer"] + "\n\n"
        prompts.append(shots + render_template(template, item["question"]))
    return prompts


def score_benchmark(client: Any, bench: BenchmarkSpec, items: list[dict[str, Any]], template: str | None) -> BenchmarkScore:
    """Exact match of generated final answers and log-likelihood of the references, per item."""
    if bench.max_items:
        items = items[: bench.max_items]
    prompts = build_prompts(bench, items, template)
    outputs = client.complete(prompts, max_tokens=bench.max_new_tokens, stop=list(gsm8k.STOP_SEQUENCES))
    likelihoods = client.loglikelihood([(p, item["answer"]) for p, item in zip(prompts, items)])
    rows = []
    for prompt, item, output, (logprob, n_tokens) in zip(prompts, items, outputs, likelihoods):
        reference = gsm8k.reference_answer(item["answer"])
        rows.append(
            {
                "prompt": prompt,
                "output": output,
                "reference": reference,
                "extracted": gsm8k.extract_answer(output),
                "correct": gsm8k.is_correct(output, reference),
                "loglik_per_token": logprob / max(1, n_tokens),
            }
        )
    n = len(rows)
    metrics = {
        "exact_match": sum(r["correct"] for r in rows) / n,
        "loglik": sum(r["loglik_per_token"] for r in rows) / n,
        "items": float(n),
    }
    return BenchmarkScore(metrics, rows)


def score_model(
    model_dir: str | Path,
    benchmarks: list[BenchmarkSpec],
    template: str | None,
    evaluation: EvaluationConfig,
    ctx: RunContext,
    adapter_dir: str | Path | None = None,
    log_path: Path | None = None,
) -> dict[str, BenchmarkScore]:
    """Serve a model (plus optional LoRA adapter) locally and score it on every benchmark."""
    from sftlab.serving.client import CompletionsClient
    from sftlab.serving.process import LocalModelServer

    items = {b.name: benchmark_items(b, ctx) for b in benchmarks}  # fail on bad data before serving
    with LocalModelServer(
        str(model_dir),
        adapter_dir=str(adapter_dir) if adapter_dir else None,
        name="sftlab-model",
        ready_timeout=evaluation.ready_timeout_s,
        log_path=log_path,
    ) as server:
        client = CompletionsClient(
            server.base_url, server.model_name, concurrency=evaluation.concurrency, timeout=evaluation.request_timeout_s
        )
        return {b.name: score_benchmark(client, b, items[b.name], template) for b in benchmarks}
