"""Perplexity of responses given their prompts under the base model, with bootstrap CIs (``sftlab.stats``).

The study's best predictor of SFT gains. Rows are sorted by length so each batch pads little;
only response positions are scored (cross-entropy on the selected logits, not a full-vocabulary
log-softmax over every position). ``make_batches`` is public so the speed benchmark can run a
bare ``model(**batch)`` loop over exactly the batches this code scores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from sftlab.stats import percentile_ci


@dataclass
class Tokenized:
    ids: list[int]
    prompt_len: int  # the loss covers ids[prompt_len:]


@dataclass
class Batch:
    rows: list[int]  # indices into the scored items
    input_ids: Any  # torch.LongTensor (batch, width), right-padded with 0
    attention_mask: Any
    lengths: list[int]  # unpadded (truncated) length per row
    prompt_lens: list[int]

    def model_inputs(self, device: Any) -> dict[str, Any]:
        return {"input_ids": self.input_ids.to(device), "attention_mask": self.attention_mask.to(device)}


def make_batches(items: list[Tokenized], batch_size: int, max_length: int) -> list[Batch]:
    """Length-sorted, right-padded batches of at most ``batch_size`` rows, truncated to ``max_length``."""
    import torch

    order = sorted(range(len(items)), key=lambda i: len(items[i].ids))
    batches = []
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        seqs = [items[i].ids[:max_length] for i in chunk]
        width = max(len(s) for s in seqs)
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        for row, seq in enumerate(seqs):
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        batches.append(Batch(chunk, ids, mask, [len(s) for s in seqs], [items[i].prompt_len for i in chunk]))
    return batches


def score_batch(model: Any, batch: Batch, device: Any) -> list[tuple[float, int]]:
    """(summed NLL, scored tokens) per row: tokens [prompt_len, length) predicted from their prefix."""
    import torch

    with torch.inference_mode():
        logits = model(**batch.model_inputs(device)).logits
        rows: list[int] = []
        positions: list[int] = []
        for r, (first, last) in enumerate(zip(batch.prompt_lens, batch.lengths, strict=True)):
            if last > first:
                rows.extend([r] * (last - first))
                positions.extend(range(first - 1, last - 1))
        if not rows:
            return [(0.0, 0)] * len(batch.rows)
        row_t = torch.tensor(rows, device=logits.device)
        pos_t = torch.tensor(positions, device=logits.device)
        targets = batch.input_ids.to(logits.device)[row_t, pos_t + 1]
        nll = torch.nn.functional.cross_entropy(logits[row_t, pos_t].float(), targets, reduction="none")
        sums = torch.zeros(len(batch.rows), dtype=torch.float64, device=logits.device)
        sums.index_add_(0, row_t, nll.double())
    counts = [max(0, last - first) for first, last in zip(batch.prompt_lens, batch.lengths, strict=True)]
    return list(zip(sums.cpu().tolist(), counts, strict=True))


def response_nll(model: Any, items: list[Tokenized], batch_size: int, max_length: int) -> list[tuple[float, int]]:
    """(summed NLL, token count) of each item's response given its prompt, batched by length."""
    device = next(model.parameters()).device
    results: list[tuple[float, int]] = [(0.0, 0)] * len(items)
    for batch in make_batches(items, batch_size, max_length):
        for i, scored in zip(batch.rows, score_batch(model, batch, device), strict=True):
            results[i] = scored
    return results


@dataclass
class PerplexitySummary:
    token_weighted: float
    mean_example: float
    ci_token_weighted: tuple[float, float]
    ci_mean_example: tuple[float, float]
    per_example: np.ndarray
    rows: int


def summarize(nll: list[tuple[float, int]], resamples: int, seed: int, confidence: float) -> PerplexitySummary:
    """Point estimates and percentile-bootstrap CIs at ``confidence`` (rows resampled with replacement).

    The CI describes how much the estimate would move with another sample of rows of the same
    data — the uncertainty the seeded subsample adds when the dataset is larger than the sample.
    Both CIs draw the same resamples (one seed); the token-weighted one resamples each row's NLL sum
    and token count together.
    """
    scored = [(s, n) for s, n in nll if n > 0]
    if not scored:
        nan = float("nan")
        return PerplexitySummary(nan, nan, (nan, nan), (nan, nan), np.zeros(0), 0)
    sums = np.array([s for s, _ in scored])
    counts = np.array([n for _, n in scored], dtype=np.float64)
    per_example = np.exp(sums / counts)
    return PerplexitySummary(
        token_weighted=math.exp(sums.sum() / counts.sum()),
        mean_example=float(per_example.mean()),
        ci_token_weighted=percentile_ci([sums, counts], _token_weighted, resamples, confidence, seed, paired=True),
        ci_mean_example=percentile_ci([per_example], _mean_example, resamples, confidence, seed),
        per_example=per_example,
        rows=len(scored),
    )


def _token_weighted(sums: np.ndarray, counts: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.exp(sums.sum(axis=axis) / counts.sum(axis=axis))


def _mean_example(per_example: np.ndarray, axis: int = -1) -> np.ndarray:
    return per_example.mean(axis=axis)
