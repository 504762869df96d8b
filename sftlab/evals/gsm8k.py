"""GSM8K-format scoring, following lm-evaluation-harness so scores are comparable.

The harness reports two extractions: "strict-match" (the number after ``#### ``) and
"flexible-extract" (the last number-like string). ``extract_answer`` tries strict first and falls
back to flexible. Answers compare as numbers ("7.0" == "7", "1,000" == "1000"), which is a little
more lenient than the harness's string comparison.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

from sftlab.errors import SftlabError
from sftlab.evals.base import (
    BenchmarkScore,
    GeneratingTask,
    Generator,
    fewshot_prompts,
    fit_columns,
    fit_of,
    note_of,
    require_str,
)
from sftlab.spec.schema import Gsm8kBenchmark

STRICT_RE = re.compile(r"#### (\-?[0-9\.\,]+)")
FLEXIBLE_RE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")

# Generation stops at the next few-shot question, a blank line or a ChatML end of turn.
STOP_SEQUENCES: tuple[str, ...] = ("Question:", "###Question:", "\n\n", "<|im_end|>")


def _clean(raw: str) -> str:
    """Drop ``,`` and ``$`` and trailing periods, as the harness's ignore-regexes do."""
    return raw.replace(",", "").replace("$", "").rstrip(".")


def _has_digit(s: str) -> bool:
    return any(ch.isdigit() for ch in s)


def extract_answer(text: str) -> str | None:
    """The model's final answer in ``text``, or None when it contains no number.

    Matches without a digit (an ellipsis, a lone ``$``) are skipped, where the harness would
    take them and score the item wrong.
    """
    strict = STRICT_RE.search(text)
    if strict and _has_digit(strict.group(1)):
        return _clean(strict.group(1))
    candidates = [a or b for a, b in FLEXIBLE_RE.findall(text)]
    numbers = [_clean(c) for c in candidates if _has_digit(c)]
    return numbers[-1] if numbers else None


def normalize_number(s: str) -> str:
    """Canonical text of a number: "1,000.00" -> "1000", "7.0" -> "7", "-3." -> "-3".

    Strings that are not numbers after cleaning (e.g. "1.2.3") come back cleaned but otherwise as is.
    """
    cleaned = _clean(s.strip())
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return cleaned
    if value == 0:
        return "0"
    return format(value.normalize(), "f")


def reference_answer(answer_field: str) -> str:
    """The normalised number after ``####`` in a GSM8K ``answer`` field."""
    _, sep, tail = answer_field.rpartition("####")
    if not sep or not _has_digit(tail):
        raise SftlabError(f"GSM8K answer has no '#### <number>' line: {answer_field[-80:]!r}")
    return normalize_number(tail.strip())


def is_correct(generation: str, reference: str) -> bool:
    """Whether the answer extracted from ``generation`` equals ``reference`` as a number."""
    answer = extract_answer(generation)
    return answer is not None and normalize_number(answer) == normalize_number(reference)


class GSM8KTask(GeneratingTask[Gsm8kBenchmark]):
    """Generated final-number exact match, plus the log-likelihood per token of the reference solution.

    The log-likelihood moves long before exact match does, which is what small models and short
    runs need.
    """

    def check_item(self, item: dict[str, Any]) -> None:
        require_str(item, "question", "answer")
        reference_answer(item["answer"])

    def score(
        self, model: Generator, bench: Gsm8kBenchmark, items: list[dict[str, Any]], template: str | None
    ) -> BenchmarkScore:
        prompts = fewshot_prompts(bench, items, template, lambda it: it["question"], lambda it: it["answer"])
        outputs = model.complete(prompts, max_tokens=bench.max_new_tokens, stop=list(STOP_SEQUENCES))
        likelihoods = model.loglikelihood([(p, item["answer"]) for p, item in zip(prompts, items, strict=True)])
        rows: list[dict[str, Any]] = []
        for prompt, item, output, likelihood in zip(prompts, items, outputs, likelihoods, strict=True):
            reference = reference_answer(item["answer"])
            # A prompt that fits may still leave no room for the reference solution: then the
            # item is scored on its generation and left out of ``loglik`` (its note says so).
            fits = fit_of(likelihood) != "too_long"
            logprob, n_tokens = likelihood
            columns = fit_columns(output)
            if not fits and columns["fit"] != "too_long":
                columns["note"] = "; ".join(
                    filter(None, [columns["note"], f"loglik not scored: {note_of(likelihood)}"])
                )
            rows.append(
                {
                    "prompt": prompt,
                    "output": str(output),
                    "reference": reference,
                    "extracted": extract_answer(output),
                    "score": float(is_correct(output, reference)),
                    "loglik_per_token": logprob / max(1, n_tokens) if fits else None,
                    **columns,
                }
            )
        metrics = {"exact_match": sum(r["score"] for r in rows) / len(rows)}
        logliks = [r["loglik_per_token"] for r in rows if r["loglik_per_token"] is not None]
        if logliks:  # no value at all rather than a NaN when no item fits
            metrics["loglik"] = sum(logliks) / len(logliks)
        return BenchmarkScore(metrics, rows)

    def tokens_per_item(self, bench: Gsm8kBenchmark, prompt_tokens: float, choices: float) -> float:
        return super().tokens_per_item(bench, prompt_tokens, choices) + prompt_tokens  # + the reference's pass


GSM8K = GSM8KTask()
