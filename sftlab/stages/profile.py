"""Profile stage: what the training data looks like to the base model, before any training.

Per (base model, dataset) — cached in MLflow by key, so every trial sharing the pair reuses one
profile run. One streaming pass over the rows feeds every cheap measure (sizes, token lengths,
tokenizer fit, distinct-n, duplicates, benchmark n-gram overlap and contamination, format
checks) in bounded memory, while two seeded reservoirs collect the samples for the expensive ones:
the perplexity of the responses given their prompts under the base model (the study's best
predictor of SFT gains), formatted exactly as training formats them, and sentence embeddings.
The measures themselves live in ``sftlab.profiling``; this module only wires and logs them.
"""

from __future__ import annotations

import json
import logging
import random
import tempfile
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftlab import metric_names
from sftlab.evals.scoring import benchmark_items
from sftlab.keys import digest
from sftlab.profiling import card, embeddings, perplexity
from sftlab.profiling.diversity import DistinctN, DuplicateFinder
from sftlab.profiling.lengths import LengthStats, histogram, percentiles
from sftlab.profiling.ngrams import HashedChunk
from sftlab.profiling.similarity import BenchmarkOverlap, benchmark_text
from sftlab.profiling.stream import Reservoir, RowProblems, iter_examples
from sftlab.sources import data, models
from sftlab.spec.grid import Trial, expand, identity
from sftlab.spec.job import RunContext, StageResult, TrialJob, context_for
from sftlab.spec.schema import ProfileConfig
from sftlab.stages.common import trial_stage
from sftlab.tracking.runs import Tracker

log = logging.getLogger(__name__)

PROFILE_VERSION = 2  # bump when measures change, so cached profiles of older code are not reused
CHUNK_ROWS = 512  # rows tokenized and hashed together: amortises per-call overhead, bounds memory


def profile_key(trial: Trial) -> str:
    return digest(
        {
            "version": PROFILE_VERSION,
            "base_model": identity(trial.base_model),
            "dataset": identity(trial.dataset),
            "template": trial.dataset_template,
            "max_length": trial.training.max_length,
            "profile": trial.profile.model_dump(),
            "confidence": trial.evaluation.confidence,  # the perplexity CIs' level
            "benchmarks": sorted(json.dumps(identity(b), sort_keys=True) for b in trial.benchmarks),
        }
    )


def content_text(example: data.Example) -> tuple[str, str]:
    """Prompt and response as plain text (chat turns joined), for the word-level measures."""

    def text(part: str | data.Messages) -> str:
        return part if isinstance(part, str) else "\n".join(m["content"] for m in part)

    return text(example.prompt), text(example.completion)


@dataclass
class StreamState:
    """Everything the streaming pass accumulates; per-row state is a few numbers, never the row."""

    cfg: ProfileConfig
    lengths: LengthStats
    benches: list[BenchmarkOverlap]
    distinct: DistinctN = field(default_factory=DistinctN)
    dups: DuplicateFinder = field(init=False)
    ppl_sample: Reservoir[perplexity.Tokenized] = field(init=False)
    embed_sample: Reservoir[str] = field(init=False)
    row_ids: array = field(default_factory=lambda: array("q"))  # source row id of each usable row, 8 bytes each
    turns: int = 0
    rows: int = 0

    def __post_init__(self) -> None:
        cfg = self.cfg
        self.dups = DuplicateFinder(cfg.near_dup_threshold, cfg.minhash_perms, cfg.minhash_shingle, cfg.seed + 1)
        self.ppl_sample = Reservoir(cfg.max_rows, cfg.seed)
        self.embed_sample = Reservoir(cfg.embedding_rows, cfg.seed + 1)


def consume_chunk(
    state: StreamState, chunk: list[tuple[int, data.Example]], tokenizer: Any, problems: RowProblems
) -> None:
    """Feed one chunk of usable rows to every streaming measure."""
    rendered: list[tuple[int, data.Example, str, str]] = []
    for row, example in chunk:
        try:
            prompt, completion = data.render_text(example, tokenizer)
        except Exception as exc:  # noqa: BLE001 - a row the chat template rejects is a bad row, not a crash
            problems.add(row, f"cannot render with the chat template: {exc}")
            continue
        rendered.append((row, example, prompt, completion))
    if not rendered:
        return
    prompts = [r[2] for r in rendered]
    fulls = [r[2] + r[3] for r in rendered]
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(fulls, add_special_tokens=False)["input_ids"]
    state.lengths.add(fulls, prompt_ids, full_ids)
    contents = [content_text(r[1]) for r in rendered]
    whole = [f"{p}\n{c}" for p, c in contents]
    for (_, example, _, _), p_ids, f_ids, text in zip(rendered, prompt_ids, full_ids, whole, strict=True):
        state.ppl_sample.add(perplexity.Tokenized(f_ids, min(len(p_ids), len(f_ids) - 1)))
        state.embed_sample.add(text)
        state.turns += len(example.prompt) + 1 if isinstance(example.prompt, list) else 2
    state.distinct.add(HashedChunk.of([c for _, c in contents]))
    hashed = HashedChunk.of(whole)
    state.dups.add(whole, hashed)
    for bench in state.benches:
        bench.add(hashed, state.rows)  # rows numbered in stream order of usable rows (see row_ids)
    state.row_ids.extend(r[0] for r in rendered)
    state.rows += len(rendered)


def stream_profile(
    examples: Iterable[tuple[int, data.Example]],
    tokenizer: Any,
    cfg: ProfileConfig,
    benches: list[BenchmarkOverlap],
    problems: RowProblems,
) -> StreamState:
    """One pass over the usable rows, chunk by chunk."""
    state = StreamState(cfg, LengthStats.for_tokenizer(tokenizer), benches)
    chunk: list[tuple[int, data.Example]] = []
    for item in examples:
        chunk.append(item)
        if len(chunk) >= CHUNK_ROWS:
            consume_chunk(state, chunk, tokenizer, problems)
            chunk = []
    if chunk:
        consume_chunk(state, chunk, tokenizer, problems)
    return state


def _embedding_measures(
    cfg: ProfileConfig, train_texts: list[str], benches: dict[str, list[dict[str, Any]]], notes: list[str]
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    source, note = embeddings.resolve_model(cfg.embedding_model)
    if source is None:
        notes.append(note or "embeddings disabled")
        return {}, {}
    embedder = embeddings.Embedder(source)
    train = embedder.encode(train_texts)
    overall = {
        "embed_pairwise_distance": embeddings.mean_pairwise_distance(train),
        "embed_sampled_rows": float(len(train)),
    }
    per_bench = {}
    for name, items in benches.items():
        picked = (
            items if len(items) <= cfg.embedding_rows else random.Random(cfg.seed).sample(items, cfg.embedding_rows)
        )
        per_bench[name] = embeddings.benchmark_similarity(train, embedder.encode([benchmark_text(it) for it in picked]))
    return overall, per_bench


def compute_profile(trial: Trial, ctx: RunContext) -> tuple[dict[str, float], dict[str, Any], dict[str, str]]:
    """All profile measures of a (base model, dataset) pair: metrics, a JSON-able record, card images."""
    cfg, max_length = trial.profile, trial.training.max_length
    source = models.resolve(trial.base_model, ctx)
    tokenizer = models.load_tokenizer(source, trial.base_model.revision)
    bench_items = {b.name: benchmark_items(b, ctx) for b in trial.benchmarks}
    overlaps = [
        BenchmarkOverlap(name, items, tuple(cfg.overlap_ns), cfg.contamination_n) for name, items in bench_items.items()
    ]
    problems = RowProblems()
    state = stream_profile(
        iter_examples(trial.dataset, trial.dataset_template, ctx, problems), tokenizer, cfg, overlaps, problems
    )
    if not state.rows:
        raise data.no_usable_rows(trial.dataset, problems.listed)
    notes: list[str] = []

    model = models.load_causal_lm(source, trial.base_model.revision)
    models.check_pair(model, tokenizer, trial.base_model.name)
    nll = perplexity.response_nll(model, state.ppl_sample.items, cfg.batch_size, max_length)
    ppl = perplexity.summarize(nll, cfg.bootstrap_resamples, cfg.seed, trial.evaluation.confidence)
    del model
    embed_overall, embed_bench = _embedding_measures(cfg, state.embed_sample.items, bench_items, notes)

    prompt_lens, response_lens = state.lengths.arrays()
    total_lens = prompt_lens + response_lens
    exact_rate, near_rate, exact_rows = state.dups.rates()
    raw_rows = state.rows + problems.count
    metrics: dict[str, float] = {
        metric_names.profile("rows"): float(state.rows),
        metric_names.profile("skipped_rows"): float(problems.count),
        metric_names.profile("malformed_share"): problems.count / raw_rows,
        metric_names.profile("empty_response_share"): problems.empty_response / raw_rows,
        metric_names.profile("overlong_response_share"): float((response_lens >= max_length).mean()),
        metric_names.profile("turns_mean"): state.turns / state.rows,
        metric_names.profile("tokens_total"): float(total_lens.sum()),
        metric_names.profile("tokens_mean"): float(total_lens.mean()),
        metric_names.profile("prompt_tokens_mean"): float(prompt_lens.mean()),
        **{metric_names.profile(f"prompt_tokens_{k}"): v for k, v in percentiles(prompt_lens).items()},
        metric_names.profile("response_tokens_mean"): float(response_lens.mean()),
        **{metric_names.profile(f"response_tokens_{k}"): v for k, v in percentiles(response_lens).items()},
        metric_names.profile("truncated_share"): float((total_lens > max_length).mean()),
        **{metric_names.profile(k): v for k, v in state.lengths.fit().items()},
        metric_names.profile("ppl"): ppl.token_weighted,
        metric_names.profile("ppl_ci_low"): ppl.ci_token_weighted[0],
        metric_names.profile("ppl_ci_high"): ppl.ci_token_weighted[1],
        metric_names.profile("ppl_mean_example"): ppl.mean_example,
        metric_names.profile("ppl_mean_example_ci_low"): ppl.ci_mean_example[0],
        metric_names.profile("ppl_mean_example_ci_high"): ppl.ci_mean_example[1],
        **{metric_names.profile(f"ppl_{k}"): v for k, v in percentiles(ppl.per_example, (50, 90)).items()},
        metric_names.profile("ppl_sampled_rows"): float(ppl.rows),
        **{metric_names.profile_distinct(n): v for n, v in state.distinct.values().items()},
        metric_names.profile("exact_dup_rate"): exact_rate,
        metric_names.profile("near_dup_rate"): near_rate,
        **{metric_names.profile(k): v for k, v in embed_overall.items()},
    }
    bench_detail: dict[str, Any] = {}
    for bench in overlaps:
        found = bench.contaminated()
        metrics.update({metric_names.profile_ngram_overlap(bench.name, n): v for n, v in bench.overlaps().items()})
        metrics.update(
            {metric_names.profile_similarity(bench.name, k): v for k, v in embed_bench.get(bench.name, {}).items()}
        )
        metrics[metric_names.profile_contamination(bench.name)] = float(len(found))
        bench_detail[bench.name] = {
            "items": len(bench.items),
            "items_shorter_than_n": bench.short_items,
            "contaminated": [
                {"item": c.item, "train_row": state.row_ids[c.train_row], "ngram": c.ngram} for c in found
            ],
        }
    detail = {
        "base_model": trial.base_model.model_dump(),
        "dataset": trial.dataset.model_dump(),
        "config": cfg.model_dump(),
        "definitions": {
            "distinct_n": "distinct / total lowercased whitespace-word n-grams of the responses",
            "exact_dup_rate": "share of rows whose prompt+response text equals an earlier row's",
            "near_dup_rate": f"share of rows sharing a MinHash LSH bucket (Jaccard >= {cfg.near_dup_threshold} "
            f"on {cfg.minhash_shingle}-word shingles) with an earlier row; includes exact duplicates",
            "contamination": f"benchmark items sharing a lowercased whitespace-word {cfg.contamination_n}-gram "
            "with training text",
            "ppl_ci": f"95% percentile bootstrap over sampled rows ({cfg.bootstrap_resamples} resamples)",
            "byte_fallback_rate": "tokens that are raw bytes: <0xNN> tokens, "
            "or byte-level BPE tokens that are not valid UTF-8 alone",
        },
        "metrics": metrics,
        "benchmarks": bench_detail,
        "bad_rows_total": problems.count,
        "bad_rows": [{"row": i, "reason": r} for i, r in sorted(problems.listed)],
        "exact_duplicate_rows": [state.row_ids[i] for i in exact_rows[:1000]],
        "histograms": {
            "prompt_tokens": histogram(prompt_lens, cfg.hist_bins),
            "response_tokens": histogram(response_lens, cfg.hist_bins),
            "ppl_per_example": histogram(ppl.per_example, cfg.hist_bins),
        },
        "per_example_ppl": [round(float(p), 4) for p in ppl.per_example],
        "notes": notes,
    }
    images = {
        "Token lengths": card.histogram_png(
            {"prompt": prompt_lens, "response": response_lens}, cfg.hist_bins, "tokens"
        ),
        "Per-example perplexity (sample)": card.histogram_png(
            {"responses": ppl.per_example}, cfg.hist_bins, "perplexity", log_x=True
        ),
    }
    return metrics, detail, images


def cached_or_compute(trial: Trial, ctx: RunContext, tracker: Tracker) -> tuple[dict[str, float], str]:
    """The profile metrics of the trial's (base model, dataset) and the profile run holding them."""
    key = profile_key(trial)
    tags = {"sftlab.base_model": trial.base_model.name, "sftlab.dataset": trial.dataset.name}
    title = f"profile {trial.base_model.name}/{trial.dataset.name}"
    cached, run_id = tracker.claim("profile", key, title, tags)
    if cached is not None:
        log.info("profile: reusing run %s for %s", cached.info.run_id, key)
        return {k: v for k, v in cached.data.metrics.items() if metric_names.is_profile(k)}, cached.info.run_id
    assert run_id is not None
    with tracker.owning([run_id]), tempfile.TemporaryDirectory() as tmp:
        metrics, detail, images = compute_profile(trial, ctx)
        tracker.log_metrics(run_id, metrics)
        (Path(tmp) / "profile.json").write_text(json.dumps(detail, indent=2, allow_nan=True))
        (Path(tmp) / "profile_card.html").write_text(card.render(title, metrics, images, detail), encoding="utf-8")
        tracker.log_artifacts(run_id, tmp)
    return metrics, run_id


def run(job: TrialJob, inputs: dict[str, Any]) -> StageResult:
    with trial_stage(job, "profile") as (tracker, run_id):
        metrics, profile_run = cached_or_compute(job.trial, job.context, tracker)
        tracker.log_metrics(run_id, metrics)
        tracker.set_tags(run_id, {"sftlab.profile_run_id": profile_run})
    return StageResult(metrics=metrics, outputs={"profile_run_id": profile_run})


def profile_candidates(
    spec: Any, tracking_uri: str | None = None, echo: Any = print
) -> dict[tuple[str, str], dict[str, float]]:
    """Profile metrics of every (base model, dataset) of the spec: cached profile runs, else profiled now.

    Only the profile stage runs (no training); its results are cached in the spec's experiment like
    a sweep's, so a later ``sftlab run`` of the same spec reuses them.
    """
    ctx = context_for(spec)
    if tracking_uri:
        ctx = ctx.model_copy(update={"tracking_uri": tracking_uri})
    tracker = Tracker.for_context(ctx)
    out: dict[tuple[str, str], dict[str, float]] = {}
    for trial in expand(spec):
        pair = (trial.base_model.name, trial.dataset.name)
        if pair not in out:
            echo(f"profiling {pair[0]} / {pair[1]} ...")
            out[pair], _ = cached_or_compute(trial, ctx, tracker)
    return out
