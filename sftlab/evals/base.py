"""What every benchmark task shares: the served-model interface, per-item results, prompts, CIs.

A task (``sftlab.evals.task_for(kind)``, in the module ``sftlab.evals.<kind>``; its settings are
the kind's class in ``sftlab.spec.schema``) is a small object with these methods:

- ``check_item(item)`` raises ``SftlabError`` (one line, no location: the caller adds
  benchmark/uri/item index) when an item lacks what the scorer needs — run on every item before
  any model server starts;
- ``score(model, bench, items, template)`` returns a ``BenchmarkScore`` whose ``rows`` each carry a
  float ``score`` (the item's headline score, in [0, 1] unless the task says otherwise) plus
  whatever helps a reader inspect the item (prompt, output, reference ...), and whose ``metrics``
  hold the task's aggregate measures (``score`` = the mean of the rows' scores is added by
  ``sftlab.evals.scoring``, as are bootstrap CIs);
- ``choices_per_item(item)`` and ``tokens_per_item(bench, prompt_tokens, choices)`` say what an
  item costs the model (``sftlab.cost``): the passes over its prompt, the tokens it generates.

Tasks talk to the model only through ``Generator`` (the OpenAI-compatible client), so a local
``kserve.ModelServer`` and a cluster InferenceService score identically.

Items longer than the model's context window never fail a benchmark. Every row carries ``fit``
and ``note`` (``fit_columns``): "ok"; "clamped" (the prompt left less room than
``max_new_tokens``, so generation was cut to fit; scored on what was generated); "too_long" (the
prompt, or context + continuation for log-likelihood scoring, does not fit: the item scores 0 and
``note`` gives the server's reason). Prompts are not truncated as lm-evaluation-harness does: a
cut prompt is another question, and the same items fail for a base model and its fine-tunes
(same tokenizer, same window), so paired gains stay like for like. ``sftlab.evals.scoring`` counts
them (``items_too_long``, ``items_clamped``).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from sftlab.serving.client import Fit
from sftlab.sources.data import render_template
from sftlab.spec.schema import BenchmarkBase, GeneratingBenchmark

FALLBACK_TEMPLATE = "Question: {instruction}\nAnswer: {response}"  # lm-evaluation-harness style
FEWSHOT_SEED = 1234

Progress = Callable[[int, int], None]


class Generator(Protocol):
    """A served model, as tasks see it (``sftlab.serving.client.CompletionsClient`` is one).

    Results may carry ``fit`` and ``note`` attributes (the client's ``Completion`` and
    ``LogLikelihood`` do); plain strings and tuples count as "ok"."""

    def complete(
        self,
        prompts: list[str],
        *,
        max_tokens: int,
        stop: Sequence[str] | None = None,
        temperature: float = 0.0,
        seed: int | None = None,
        on_progress: Progress | None = None,
    ) -> Sequence[str]: ...

    def loglikelihood(
        self, pairs: list[tuple[str, str]], *, on_progress: Progress | None = None
    ) -> Sequence[tuple[float, int]]: ...


@dataclass
class BenchmarkScore:
    metrics: dict[str, float]
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def item_scores(self) -> list[float]:
        return [float(r["score"]) for r in self.rows]


B = TypeVar("B", bound=BenchmarkBase, contravariant=True)
G = TypeVar("G", bound=GeneratingBenchmark)


class Task(Protocol[B]):
    def check_item(self, item: dict[str, Any]) -> None: ...

    def score(
        self, model: Generator, bench: B, items: list[dict[str, Any]], template: str | None
    ) -> BenchmarkScore: ...

    def choices_per_item(self, item: dict[str, Any]) -> int: ...

    def tokens_per_item(self, bench: B, prompt_tokens: float, choices: float) -> float: ...


class GeneratingTask(Generic[G]):
    """What a task that generates after each prompt costs: per sample, the prompt and up to
    ``max_new_tokens`` generated."""

    def choices_per_item(self, item: dict[str, Any]) -> int:
        return 1

    def samples_per_item(self, bench: G) -> int:
        return 1

    def tokens_per_item(self, bench: G, prompt_tokens: float, choices: float) -> float:
        return self.samples_per_item(bench) * (prompt_tokens + bench.max_new_tokens)

    def question_marker(self, bench: G, template: str | None) -> str:
        """The template's text before ``{instruction}``, where a next question would begin: a stop sequence."""
        return benchmark_template(bench, template).split("{instruction}")[0].strip()


_SEVERITY: dict[Fit, int] = {"ok": 0, "clamped": 1, "too_long": 2}


def fit_of(result: object) -> Fit:
    """How a ``Generator`` result fitted the context window ("ok" for plain values)."""
    return getattr(result, "fit", "ok")


def note_of(result: object) -> str:
    """Why a ``Generator`` result did not fit ("" for plain values)."""
    return getattr(result, "note", "")


def fit_columns(*results: object) -> dict[str, str]:
    """The ``fit`` and ``note`` columns of an item's row from its ``Generator`` results: the worst
    fit among them, with its note ("" when all fitted)."""
    worst = max(results, key=lambda r: _SEVERITY[fit_of(r)], default=None)
    fit = fit_of(worst)
    return {"fit": fit, "note": note_of(worst) if fit != "ok" else ""}


def benchmark_template(bench: BenchmarkBase, template: str | None) -> str:
    return bench.template or template or FALLBACK_TEMPLATE


def fewshot_prompts(
    bench: BenchmarkBase,
    items: list[dict[str, Any]],
    template: str | None,
    question: Callable[[dict[str, Any]], str],
    answer: Callable[[dict[str, Any]], str],
    separator: str = "\n\n",
) -> list[str]:
    """Zero- or few-shot prompts; few-shot examples are other items, drawn with a fixed seed."""
    template = benchmark_template(bench, template)
    rng = random.Random(FEWSHOT_SEED)
    prompts = []
    for i, item in enumerate(items):
        shots = ""
        if bench.num_fewshot:
            others = [j for j in range(len(items)) if j != i]
            for j in rng.sample(others, min(bench.num_fewshot, len(others))):
                shots += render_template(template, question(items[j])) + answer(items[j]) + separator
        prompts.append(shots + render_template(template, question(item)))
    return prompts


def require_str(item: dict[str, Any], *keys: str) -> None:
    from sftlab.errors import SftlabError

    for key in keys:
        if not isinstance(item.get(key), str) or not item[key].strip():
            raise SftlabError(f"missing non-empty string field '{key}'")
