"""Profile stage: what the training data looks like to the base model, before any training.

Per (base model, dataset) — cached in MLflow by key, so every trial sharing the pair reuses one
profile run: rows, token lengths under the base tokenizer, share truncated at the training max
length, and the perplexity of the responses given their prompts under the base model (the study's
best predictor of SFT gains), formatted exactly as training formats them.
"""

from __future__ import annotations

import json
import math
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sftlab import data, models
from sftlab.grid import Trial, digest
from sftlab.job import RunContext, TrialJob
from sftlab.stages.common import StageResult, log, trial_stage
from sftlab.tracking import Tracker


def profile_key(trial: Trial) -> str:
    return digest(
        {
            "base_model": trial.base_model.model_dump(exclude={"name"}),
            "dataset": trial.dataset.model_dump(exclude={"name"}),
            "template": trial.dataset_template,
            "max_length": trial.training.max_length,
            "profile": trial.profile.model_dump(),
        }
    )


@dataclass
class Tokenized:
    ids: list[int]
    prompt_len: int


def tokenize(examples: list[data.Example], tokenizer: Any) -> list[Tokenized]:
    """Prompt+completion token ids, with the prompt length (the loss covers the rest)."""
    out = []
    for example in examples:
        prompt, completion = data.render_text(example, tokenizer)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        full_ids = tokenizer(prompt + completion, add_special_tokens=False)["input_ids"]
        out.append(Tokenized(full_ids, min(len(prompt_ids), len(full_ids) - 1)))
    return out


def response_nll(model: Any, items: list[Tokenized], batch_size: int, max_length: int) -> list[tuple[float, int]]:
    """(summed NLL, token count) of each response given its prompt, batched by length."""
    import torch

    order = sorted(range(len(items)), key=lambda i: len(items[i].ids))  # similar lengths share a batch
    results: list[tuple[float, int]] = [(0.0, 0)] * len(items)
    dev = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        seqs = [items[i].ids[:max_length] for i in chunk]
        width = max(len(s) for s in seqs)
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        for row, seq in enumerate(seqs):
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        with torch.inference_mode():
            logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        target_lp = logp.gather(-1, ids[:, 1:].to(dev).unsqueeze(-1)).squeeze(-1).cpu()
        for row, i in enumerate(chunk):
            first, last = items[i].prompt_len, len(seqs[row])  # predict tokens [prompt_len, last)
            if last <= first:
                continue
            results[i] = (float(-target_lp[row, first - 1 : last - 1].sum()), last - first)
    return results


def compute_profile(trial: Trial, ctx: RunContext) -> tuple[dict[str, float], dict[str, Any]]:
    """All profile measures of a (base model, dataset) pair: metrics and a JSON-able detail record."""
    source = models.resolve(trial.base_model, ctx)
    tokenizer = models.load_tokenizer(source, trial.base_model.revision)
    loaded = data.load_examples(trial.dataset, trial.dataset_template, ctx)
    items = tokenize(loaded.examples, tokenizer)
    prompt_lens = np.array([t.prompt_len for t in items])
    total_lens = np.array([len(t.ids) for t in items])
    response_lens = total_lens - prompt_lens
    cfg = trial.profile
    sample = items
    if len(items) > cfg.max_rows:
        sample = random.Random(cfg.seed).sample(items, cfg.max_rows)
    model = models.load_causal_lm(source, trial.base_model.revision)
    nll = response_nll(model, sample, cfg.batch_size, trial.training.max_length)
    scored = [(s, n) for s, n in nll if n > 0]
    per_example_ppl = np.array([math.exp(s / n) for s, n in scored])
    token_ppl = math.exp(sum(s for s, _ in scored) / max(1, sum(n for _, n in scored)))
    metrics = {
        "profile/rows": float(len(items)),
        "profile/skipped_rows": float(len(loaded.skipped)),
        "profile/tokens_total": float(total_lens.sum()),
        "profile/tokens_mean": float(total_lens.mean()),
        "profile/prompt_tokens_mean": float(prompt_lens.mean()),
        "profile/response_tokens_mean": float(response_lens.mean()),
        "profile/response_tokens_p50": float(np.percentile(response_lens, 50)),
        "profile/response_tokens_p90": float(np.percentile(response_lens, 90)),
        "profile/truncated_share": float((total_lens > trial.training.max_length).mean()),
        "profile/ppl": token_ppl,
        "profile/ppl_mean_example": float(per_example_ppl.mean()),
        "profile/ppl_sampled_rows": float(len(scored)),
    }
    detail = {
        "base_model": trial.base_model.model_dump(),
        "dataset": trial.dataset.model_dump(),
        "metrics": metrics,
        "skipped_rows": [{"row": i, "reason": r} for i, r in loaded.skipped],
        "per_example_ppl": [round(float(p), 4) for p in per_example_ppl],
    }
    return metrics, detail


def cached_or_compute(trial: Trial, ctx: RunContext, tracker: Tracker) -> tuple[dict[str, float], str]:
    """The profile metrics of the trial's (base model, dataset) and the profile run holding them."""
    key = profile_key(trial)
    tags = {"sftlab.base_model": trial.base_model.name, "sftlab.dataset": trial.dataset.name}
    cached, run_id = tracker.claim("profile", key, f"profile {trial.base_model.name}/{trial.dataset.name}", tags)
    if cached is not None:
        log.info("profile: reusing run %s for %s", cached.info.run_id, key)
        return {k: v for k, v in cached.data.metrics.items() if k.startswith("profile/")}, cached.info.run_id
    assert run_id is not None
    try:
        metrics, detail = compute_profile(trial, ctx)
        tracker.log_metrics(run_id, metrics)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "profile.json"
            path.write_text(json.dumps(detail, indent=2))
            tracker.log_artifact(run_id, path)
    except BaseException as exc:
        tracker.finish(run_id, ok=False, error=f"{type(exc).__name__}: {exc}")
        raise
    tracker.finish(run_id)
    return metrics, run_id


def run(job: TrialJob, inputs: dict[str, Any]) -> StageResult:
    with trial_stage(job, "profile") as (tracker, run_id):
        metrics, profile_run = cached_or_compute(job.trial, job.context, tracker)
        tracker.log_metrics(run_id, metrics)
        tracker.set_tags(run_id, {"sftlab.profile_run_id": profile_run})
    return StageResult(metrics=metrics, outputs={"profile_run_id": profile_run})
