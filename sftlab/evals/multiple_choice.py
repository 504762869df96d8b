"""Multiple choice (MMLU, HellaSwag, ARC, BoolQ style) scored by the log-likelihood of each choice.

As in lm-evaluation-harness: the prediction is the choice with the highest summed log-probability
as a continuation of the prompt (``acc``), and, normalised by the choice's length in characters,
``acc_norm`` (HellaSwag's headline). The server must return prompt log-probabilities (OpenAI
``echo`` + ``logprobs``); the local server and vLLM do. An item with any choice that does not fit
the context window after its prompt scores 0 on all three (``fit`` "too_long").

Accepted item formats (first match wins): ``question``/``query``/``ctx`` for the stem, an optional
``passage`` (BoolQ), ``choices``/``endings`` (list of strings) — or none for a boolean ``answer``,
which means choices ``no``/``yes`` — and the gold as ``answer_index`` (0-based) or ``answer_text``
(the choice's text), else as ``answer``/``label``/``gold``: an index, a letter (``"B"``), the choice
text or a boolean. A digit string there is refused when a choice is a number too ("0" of choices
"1", "0": the first choice or the second?); such items say which with ``answer_index`` or
``answer_text``.
"""

from __future__ import annotations

import math
from typing import Any

from sftlab.errors import SftlabError
from sftlab.evals.base import BenchmarkScore, Generator, fewshot_prompts, fit_columns
from sftlab.spec.schema import MultipleChoiceBenchmark

STEM_FIELDS = ("question", "query", "ctx")
CHOICE_FIELDS = ("choices", "endings")
GOLD_FIELDS = ("answer", "label", "gold")
EXPLICIT_GOLD_FIELDS = ("answer_index", "answer_text")
BOOL_CHOICES = ["no", "yes"]


def _first(item: dict[str, Any], fields: tuple[str, ...]) -> Any:
    return next((item[f] for f in fields if f in item), None)


def stem(item: dict[str, Any]) -> str:
    text = str(_first(item, STEM_FIELDS))
    passage = item.get("passage")
    return f"{passage}\n{text}" if isinstance(passage, str) and passage else text


def choices(item: dict[str, Any]) -> list[str]:
    found = _first(item, CHOICE_FIELDS)
    return list(found) if found is not None else BOOL_CHOICES


def gold(item: dict[str, Any]) -> int:
    """The index of the correct choice; a one-line error when it cannot be told."""
    options = choices(item)
    if any(f in item for f in EXPLICIT_GOLD_FIELDS):
        return _explicit_gold(item, options)
    value = _first(item, GOLD_FIELDS)
    if isinstance(value, bool):
        if options != BOOL_CHOICES:
            raise SftlabError("a boolean answer needs no choices field (it means no/yes)")
        return int(value)
    if isinstance(value, int) and 0 <= value < len(options):
        return value
    if isinstance(value, str):
        if value.isdecimal() and any(isinstance(o, str) and o.isdecimal() for o in options):
            raise SftlabError(
                f"answer {value!r} is ambiguous: the choices are numbers too "
                "(give answer_index, 0-based, or answer_text, the choice's text)"
            )
        if value.isdecimal() and int(value) < len(options):
            return int(value)
        if len(value) == 1 and value.isalpha() and ord(value.upper()) - ord("A") < len(options):
            return ord(value.upper()) - ord("A")
        if value in options:
            return options.index(value)
    raise SftlabError(f"answer {value!r} is not a choice index, letter or choice text of {len(options)} choices")


def _explicit_gold(item: dict[str, Any], options: list[str]) -> int:
    """The gold from ``answer_index`` and/or ``answer_text``, which must agree when both are given."""
    found = set()
    if "answer_index" in item:
        index = item["answer_index"]
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(options):
            raise SftlabError(f"answer_index {index!r} is not a choice index (0 to {len(options) - 1})")
        found.add(index)
    if "answer_text" in item:
        text = item["answer_text"]
        if text not in options:
            raise SftlabError(f"answer_text {text!r} is not one of the {len(options)} choices")
        found.add(options.index(text))
    if len(found) > 1:
        raise SftlabError(f"answer_index and answer_text name different choices ({item['answer_index']} and {text!r})")
    return found.pop()


class MultipleChoiceTask:
    def check_item(self, item: dict[str, Any]) -> None:
        if not isinstance(_first(item, STEM_FIELDS), str):
            raise SftlabError(f"missing string field, one of {', '.join(STEM_FIELDS)}")
        options = choices(item)
        if len(options) < 2 or not all(isinstance(c, str) and c for c in options):
            raise SftlabError("expected at least 2 non-empty string choices")
        gold(item)

    def score(
        self, model: Generator, bench: MultipleChoiceBenchmark, items: list[dict[str, Any]], template: str | None
    ) -> BenchmarkScore:
        prompts = fewshot_prompts(bench, items, template, stem, lambda it: choices(it)[gold(it)])
        pairs = [
            (prompt, _continuation(prompt, option))
            for prompt, item in zip(prompts, items, strict=True)
            for option in choices(item)
        ]
        scored = iter(model.loglikelihood(pairs))
        rows: list[dict[str, Any]] = []
        for prompt, item in zip(prompts, items, strict=True):
            options, answer = choices(item), gold(item)
            results = [next(scored) for _ in options]
            columns = fit_columns(*results)
            if columns["fit"] == "too_long":  # choices are compared all together or not at all
                rows.append(
                    {
                        "prompt": prompt,
                        "output": "",
                        "reference": options[answer],
                        "score": 0.0,
                        "acc_norm": 0.0,
                        "gold_prob": 0.0,
                        **columns,
                    }
                )
                continue
            logprobs = [lp for lp, _ in results]
            normed = [lp / max(1, len(option)) for lp, option in zip(logprobs, options, strict=True)]
            pick, pick_norm = _argmax(logprobs), _argmax(normed)
            rows.append(
                {
                    "prompt": prompt,
                    "output": options[pick],
                    "reference": options[answer],
                    "score": float(pick == answer),
                    "acc_norm": float(pick_norm == answer),
                    "gold_prob": math.exp(logprobs[answer] - _logsumexp(logprobs)),
                    **columns,
                }
            )
        n = len(rows)
        metrics = {
            "acc": sum(r["score"] for r in rows) / n,
            "acc_norm": sum(r["acc_norm"] for r in rows) / n,
            "gold_prob": sum(r["gold_prob"] for r in rows) / n,
        }
        return BenchmarkScore(metrics, rows)

    def choices_per_item(self, item: dict[str, Any]) -> int:
        return len(choices(item))

    def tokens_per_item(self, bench: MultipleChoiceBenchmark, prompt_tokens: float, choices: float) -> float:
        return choices * prompt_tokens  # one log-likelihood pass per choice, nothing generated


def _continuation(prompt: str, option: str) -> str:
    """The choice as the prompt's continuation: space-separated, as in lm-evaluation-harness."""
    return option if not prompt or prompt[-1].isspace() else " " + option


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


def _logsumexp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


MULTIPLE_CHOICE = MultipleChoiceTask()
