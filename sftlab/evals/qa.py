"""Short-answer QA (Natural Questions / TriviaQA style) with lenient matching.

Answers are normalised as SQuAD's official script does (lowercase, no punctuation, no articles,
single spaces). ``exact_match``: the normalised first line of the output equals a normalised
reference; the headline ``score`` is lenient: a normalised reference appears in it as whole words,
so "It was Paris, France" counts for "Paris".
"""

from __future__ import annotations

import re
import string
from typing import Any

from sftlab.errors import SftlabError
from sftlab.evals.base import BenchmarkScore, GeneratingTask, Generator, fewshot_prompts, fit_columns, require_str
from sftlab.spec.schema import QABenchmark

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


def references(item: dict[str, Any]) -> list[str]:
    found = item.get("answers", item.get("answer"))
    refs = [found] if isinstance(found, str) else found if isinstance(found, list) else []
    return [r for r in refs if isinstance(r, str) and normalize(r)]


def first_line(output: str) -> str:
    return output.strip().split("\n", 1)[0]


def exact_match(output: str, refs: list[str]) -> bool:
    return normalize(first_line(output)) in {normalize(r) for r in refs}


def lenient_match(output: str, refs: list[str]) -> bool:
    padded = f" {normalize(first_line(output))} "
    return any(f" {normalize(r)} " in padded for r in refs)


class ShortAnswerTask(GeneratingTask[QABenchmark]):
    def check_item(self, item: dict[str, Any]) -> None:
        require_str(item, "question")
        if not references(item):
            raise SftlabError(
                "expected 'answers' (a list of strings) or 'answer' (a string) with a non-empty reference"
            )

    def score(
        self, model: Generator, bench: QABenchmark, items: list[dict[str, Any]], template: str | None
    ) -> BenchmarkScore:
        prompts = fewshot_prompts(bench, items, template, lambda it: it["question"], lambda it: references(it)[0])
        marker = self.question_marker(bench, template)
        outputs = model.complete(prompts, max_tokens=bench.max_new_tokens, stop=[s for s in ("\n", marker) if s])
        rows: list[dict[str, Any]] = []
        for prompt, item, output in zip(prompts, items, outputs, strict=True):
            refs = references(item)
            rows.append(
                {
                    "prompt": prompt,
                    "output": str(output),
                    "reference": " | ".join(refs),
                    "exact_match": float(exact_match(output, refs)),
                    "score": float(lenient_match(output, refs)),
                    **fit_columns(output),
                }
            )
        n = len(rows)
        return BenchmarkScore(
            {
                "exact_match": sum(r["exact_match"] for r in rows) / n,
                "lenient_match": sum(r["score"] for r in rows) / n,
            },
            rows,
        )


SHORT_ANSWER = ShortAnswerTask()
