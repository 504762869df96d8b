"""Judge-rated chat benchmarks (MT-Bench / AlpacaEval style) through any OpenAI-compatible endpoint.

The model under test answers each ``question``; a judge model, reached at ``judge.url`` with
``chat/completions``, rates the answer 1–10 with MT-Bench's single-answer grading prompt (the
reference-guided variant when the item has a ``reference``). Ratings are parsed as FastChat does
(``[[8]]``, else ``[8]``); an unparseable verdict is recorded and counted in ``judge_failures``,
and scores 0. ``score`` is the rating / 10. An item whose prompt does not fit the model's context
window, or whose judge prompt does not fit the judge's, is not rated and scores 0 (``fit``
"too_long"; not a judge failure).

The judge's API key is read from the environment variable named in the spec and sent only as the
``Authorization`` header.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sftlab.errors import SftlabError
from sftlab.evals.base import BenchmarkScore, GeneratingTask, Generator, fewshot_prompts, fit_columns, fit_of
from sftlab.spec.schema import JudgeBenchmark, JudgeConfig

RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
RATING_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")

_CRITERIA = (
    "Your evaluation should consider factors such as the helpfulness, relevance, accuracy, depth, creativity, "
    "and level of detail of the response."
)
_REFERENCE_CRITERIA = (
    "Your evaluation should consider correctness and helpfulness. You will be given a reference answer and the "
    "assistant's answer. Begin your evaluation by comparing the assistant's answer with the reference answer. "
    "Identify and correct any mistakes."
)
_FORMAT = (
    "Be as objective as possible. After providing your explanation, you must rate the response on a scale of 1 to 10 "
    'by strictly following this format: "[[rating]]", for example: "Rating: [[5]]".'
)


def judge_prompt(question: str, answer: str, reference: str | None) -> str:
    """MT-Bench's single-answer grading prompt (``single-v1`` / ``single-math-v1``)."""
    criteria = (
        _REFERENCE_CRITERIA if reference else _CRITERIA + " Begin your evaluation by providing a short explanation."
    )
    parts = [
        "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response provided by an AI "
        f"assistant to the user question displayed below. {criteria} {_FORMAT}",
        f"[Question]\n{question}",
    ]
    if reference:
        parts.append(f"[The Start of Reference Answer]\n{reference}\n[The End of Reference Answer]")
    parts.append(f"[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]")
    return "\n\n".join(parts)


def parse_rating(verdict: str) -> float | None:
    """The judge's 1–10 rating, or None when the verdict has none in range."""
    found = RATING.search(verdict) or RATING_BACKUP.search(verdict)
    if not found:
        return None
    rating = float(found.group(1))
    return rating if 1 <= rating <= 10 else None


class JudgeClient:
    """Rates answers with an OpenAI-compatible chat endpoint (bounded concurrency, retries)."""

    def __init__(self, config: JudgeConfig, timeout: float = 120.0):
        from sftlab.serving.client import OpenAIHttp

        self.config = config
        api_key = os.environ.get(config.api_key_env) if config.api_key_env else None
        self._api = OpenAIHttp(config.url, timeout=timeout, max_connections=config.concurrency, api_key=api_key)

    def close(self) -> None:
        self._api.close()

    def verdict(self, prompt: str) -> str:
        body = self._api.post(
            "/chat/completions",
            {
                "model": self.config.model,
                "messages": [
                    {"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": prompt},
                ],
                "temperature": 0.0,
                "max_tokens": self.config.max_tokens,
            },
        )
        choices = body.get("choices") or [{}]
        return str((choices[0].get("message") or {}).get("content") or "")

    def verdicts(self, prompts: list[str | None]) -> list[str | None]:
        """A verdict per prompt (None skips one); a judge prompt longer than the judge's context
        window gets a ``Completion("", "too_long", reason)`` verdict rather than failing them all."""
        from sftlab.serving.client import Completion, ContextLengthExceeded

        def one(prompt: str | None) -> str | None:
            if prompt is None:
                return None
            try:
                return self.verdict(prompt)
            except ContextLengthExceeded as exc:
                return Completion("", "too_long", f"judge: {exc}")

        with ThreadPoolExecutor(max_workers=self.config.concurrency) as pool:
            return list(pool.map(one, prompts))


def question(item: dict[str, Any]) -> str:
    """The user turn: ``question``, AlpacaEval's ``instruction``, or the first of MT-Bench's ``prompt`` turns."""
    found = item.get("question") or item.get("instruction") or item.get("prompt")
    return found[0] if isinstance(found, list) and found else found  # type: ignore[return-value]


class JudgeTask(GeneratingTask[JudgeBenchmark]):
    def check_item(self, item: dict[str, Any]) -> None:
        if not isinstance(question(item), str) or not question(item).strip():
            raise SftlabError("missing non-empty string field, one of question, instruction, prompt (a list of turns)")

    def score(
        self, model: Generator, bench: JudgeBenchmark, items: list[dict[str, Any]], template: str | None
    ) -> BenchmarkScore:
        prompts = fewshot_prompts(bench, items, template, question, lambda it: it.get("reference") or "")
        marker = self.question_marker(bench, template)
        answers = model.complete(
            prompts, max_tokens=bench.max_new_tokens, stop=[s for s in (marker, "<|im_end|>") if s]
        )
        judge = JudgeClient(bench.judge)
        try:
            # An answer to a prompt that did not fit is not worth a judge's call: it scores 0.
            verdicts = judge.verdicts(
                [
                    None if fit_of(a) == "too_long" else judge_prompt(question(it), a.strip(), it.get("reference"))
                    for it, a in zip(items, answers, strict=True)
                ]
            )
        finally:
            judge.close()
        rows: list[dict[str, Any]] = []
        for prompt, answer, verdict in zip(prompts, answers, verdicts, strict=True):
            rating = None if verdict is None else parse_rating(verdict)
            rows.append(
                {
                    "prompt": prompt,
                    "output": str(answer),
                    "verdict": str(verdict or ""),
                    "rating": rating,
                    "score": (rating or 0.0) / 10,
                    **fit_columns(answer, verdict),
                }
            )
        rated = [r["rating"] for r in rows if r["rating"] is not None]
        judged = sum(v is not None and fit_of(v) == "ok" for v in verdicts)
        metrics = {"judge_failures": (judged - len(rated)) / len(rows)}
        if rated:
            metrics["rating"] = sum(rated) / len(rated)
        return BenchmarkScore(metrics, rows)


JUDGE = JudgeTask()
