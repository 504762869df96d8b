"""Benchmark tasks: answer extraction held to the reference algorithms, and every family scored
end to end over HTTP against a real local model server (and a real fake-judge HTTP server)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from sftlab.errors import SftlabError
from sftlab.evals import judge, multiple_choice, qa, task_for
from sftlab.evals import math as math_task
from sftlab.evals.scoring import benchmark_items, gain_metrics, score_benchmark
from sftlab.serving.client import CompletionsClient
from sftlab.serving.process import LocalModelServer
from sftlab.spec.job import RunContext
from sftlab.spec.schema import (
    BENCHMARK_KINDS,
    BenchmarkSpec,
    EvaluationConfig,
    JudgeBenchmark,
    JudgeConfig,
    MultipleChoiceBenchmark,
    benchmark_spec,
)
from sftlab.stats import bootstrap_ci
from tests.support.helpers import EXAMPLES
from tests.support.json_http import JsonHandler

DATA = EXAMPLES / "data"
TEMPLATE = "###Question: {instruction}\n###Answer: {response}"
EVAL = EvaluationConfig(bootstrap_resamples=500)


def ctx(tmp_path: Path) -> RunContext:
    return RunContext(tracking_uri=f"sqlite:///{tmp_path}/m.db", experiment="e", root=str(tmp_path))


# ---------------------------------------------------------------------------------------------
# MATH: hendrycks/math conventions


@pytest.mark.parametrize(
    ("text", "boxed"),
    [
        (r"so the answer is $\boxed{\frac{3}{4}}$.", r"\frac{3}{4}"),
        (r"$\boxed{\frac{1}{\sqrt{2}}}$", r"\frac{1}{\sqrt{2}}"),  # nested braces
        (r"first \boxed{1}, then \boxed{2}", "2"),  # the last one counts
        (r"\fbox{7}", "7"),
        (r"the answer is \boxed 5$ ok", "5"),
        (r"\boxed{12", None),  # cut off mid-answer: no answer
        ("no box here", None),
    ],
)
def test_last_boxed(text: str, boxed: str | None) -> None:
    assert math_task.last_boxed(text) == boxed


@pytest.mark.parametrize(
    ("answer", "reference", "equal"),
    [
        (r"\dfrac{3}{4}", r"\frac{3}{4}", True),
        (r"\frac34", r"\frac{3}{4}", True),
        ("3/4", r"\frac{3}{4}", True),
        ("0.5", r"\frac{1}{2}", True),
        (r"60^\circ", "60", True),
        ("x = 4", "4", True),
        (r"\left( 1, 2 \right)", "(1,2)", True),
        (r"5\text{ cm}", "5", True),
        (r"\sqrt2", r"\sqrt{2}", True),
        (".5", "0.5", True),
        (r"50\%", "50", True),
        ("0.75", r"\frac{3}{4}", False),  # the reference compares strings, not values
        ("4", "5", False),
    ],
)
def test_math_equivalence_follows_the_reference(answer: str, reference: str, equal: bool) -> None:
    assert math_task.is_equiv(answer, reference) is equal


def test_math_falls_back_to_the_final_answer_phrase() -> None:
    assert math_task.extract_answer("Final Answer: The final answer is $12$. I hope it is correct.") == "12"
    assert math_task.extract_answer("no answer") is None


def test_math_items_need_a_boxed_solution_or_an_answer() -> None:
    math_task.MATH.check_item({"problem": "p", "answer": "3"})
    with pytest.raises(SftlabError, match="no \\\\boxed"):
        math_task.MATH.check_item({"problem": "p", "solution": "it is 3"})


# ---------------------------------------------------------------------------------------------
# Multiple choice, short-answer QA, judge parsing


@pytest.mark.parametrize(
    ("item", "gold"),
    [
        ({"question": "q", "choices": ["a", "b", "c"], "answer": 2}, 2),
        ({"question": "q", "choices": ["a", "b", "c"], "answer": "B"}, 1),
        ({"question": "q", "choices": ["a", "b", "c"], "answer": "c"}, 2),
        ({"question": "q", "choices": ["a", "b", "c"], "answer": "0"}, 0),
        ({"ctx": "q", "endings": ["x", "y"], "label": 1}, 1),  # HellaSwag fields
        ({"question": "q", "passage": "p", "answer": True}, 1),  # BoolQ: no/yes
        ({"question": "q", "choices": ["1", "0"], "answer": 0}, 0),  # an int is an index, whatever the choices
        ({"question": "q", "choices": ["1", "0"], "answer_index": 1}, 1),
        ({"question": "q", "choices": ["1", "0"], "answer_text": "1"}, 0),
        ({"question": "q", "choices": ["1", "0"], "answer": "0", "answer_text": "0"}, 1),  # explicit wins
    ],
)
def test_multiple_choice_gold_formats(item: dict[str, Any], gold: int) -> None:
    multiple_choice.MULTIPLE_CHOICE.check_item(item)
    assert multiple_choice.gold(item) == gold


@pytest.mark.parametrize(
    ("item", "problem"),
    [
        ({"choices": ["a", "b"], "answer": 0}, "missing string field"),
        ({"question": "q", "choices": ["a"], "answer": 0}, "at least 2"),
        ({"question": "q", "choices": ["a", "b"], "answer": 5}, "not a choice"),
        ({"question": "q", "choices": ["a", "b"], "answer": True}, "boolean answer"),
        ({"question": "q", "choices": ["1", "0"], "answer": "0"}, "'0' is ambiguous: the choices are numbers too"),
        ({"question": "q", "choices": ["1", "0"], "answer_index": 2}, r"answer_index 2 is not a choice index \(0 to 1"),
        ({"question": "q", "choices": ["a", "b"], "answer_index": "1"}, "answer_index '1' is not a choice index"),
        ({"question": "q", "choices": ["a", "b"], "answer_text": "c"}, "answer_text 'c' is not one of the 2 choices"),
        (
            {"question": "q", "choices": ["a", "b"], "answer_index": 0, "answer_text": "b"},
            "answer_index and answer_text name different choices",
        ),
    ],
)
def test_multiple_choice_bad_items(item: dict[str, Any], problem: str) -> None:
    with pytest.raises(SftlabError, match=problem):
        multiple_choice.MULTIPLE_CHOICE.check_item(item)


def test_an_ambiguous_multiple_choice_item_is_one_line_naming_file_and_item(tmp_path: Path) -> None:
    path = tmp_path / "digits.jsonl"
    items = [{"question": "2 + 2?", "choices": ["4", "5"], "answer": 0}, {"question": "1 - 1?", "choices": ["1", "0"]}]
    items[1]["answer"] = "0"
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    with pytest.raises(SftlabError) as info:
        benchmark_items(MultipleChoiceBenchmark(name="digits", uri=str(path)), ctx(tmp_path))
    assert str(info.value) == (
        f"benchmark digits ({path}) item 1: answer '0' is ambiguous: the choices are numbers too "
        "(give answer_index, 0-based, or answer_text, the choice's text)"
    )


class ScriptedModel:
    """A Generator whose log-likelihoods are a function of the continuation (for known answers)."""

    def __init__(self, prefer: str):
        self.prefer = prefer

    def complete(self, prompts: list[str], **_: Any) -> list[str]:
        return ["" for _ in prompts]

    def loglikelihood(self, pairs: list[tuple[str, str]], **_: Any) -> list[tuple[float, int]]:
        return [(0.0 if self.prefer in cont else -5.0, 1) for _, cont in pairs]


def test_multiple_choice_picks_the_most_likely_choice(tmp_path: Path) -> None:
    bench = MultipleChoiceBenchmark(name="mc", kind="multiple_choice", uri=str(DATA / "mmlu_tiny.jsonl"))
    items = [
        {"question": "q", "choices": ["right", "wrong"], "answer": 0},
        {"question": "q", "choices": ["wrong", "right"], "answer": 1},
    ]
    assert score_benchmark(ScriptedModel("right"), bench, items, TEMPLATE, EVAL).metrics["acc"] == 1.0
    assert score_benchmark(ScriptedModel("wrong"), bench, items, TEMPLATE, EVAL).metrics["acc"] == 0.0


@pytest.mark.parametrize(
    ("output", "refs", "exact", "lenient"),
    [
        ("Paris", ["Paris"], True, True),
        ("The Paris.", ["paris"], True, True),
        ("It was Paris, France", ["Paris"], False, True),
        ("Parisian food", ["Paris"], False, False),  # whole words only
        ("eight\nand more text", ["8", "eight"], True, True),  # first line only
        ("London", ["Paris"], False, False),
    ],
)
def test_short_answer_matching(output: str, refs: list[str], exact: bool, lenient: bool) -> None:
    assert qa.exact_match(output, refs) is exact
    assert qa.lenient_match(output, refs) is lenient


@pytest.mark.parametrize(
    ("verdict", "rating"),
    [
        ("Good answer. Rating: [[8]]", 8.0),
        ("Rating: [[7.5]]", 7.5),
        ("Rating: [6]", 6.0),
        ("no rating", None),
        ("Rating: [[11]]", None),
    ],
)
def test_judge_rating_parsing_follows_fastchat(verdict: str, rating: float | None) -> None:
    assert judge.parse_rating(verdict) == rating


# ---------------------------------------------------------------------------------------------
# Confidence intervals


def test_bootstrap_ci_is_reproducible_and_shrinks_with_more_items() -> None:
    rng = np.random.default_rng(1)
    small, large = rng.random(20).tolist(), rng.random(2000).tolist()
    low, high = bootstrap_ci(small, 1000, 0.95)
    assert low < np.mean(small) < high and (low, high) == bootstrap_ci(small, 1000, 0.95)
    low_l, high_l = bootstrap_ci(large, 1000, 0.95)
    assert high_l - low_l < (high - low) / 5


def test_paired_gain_ci_is_tighter_than_independent_cis() -> None:
    """Items vary much more than the model change does: pairing removes the item variance."""
    rng = np.random.default_rng(2)
    base = rng.random(200)
    tuned = np.clip(base + 0.05 + rng.normal(0, 0.01, 200), 0, 1)
    scored = {"score": float(tuned.mean()), "items": 200.0}
    metrics = gain_metrics("b", scored, {"score": float(base.mean())}, tuned.tolist(), base.tolist(), EVAL)
    width = metrics["gain/b/score_ci_high"] - metrics["gain/b/score_ci_low"]
    independent = np.subtract(*bootstrap_ci(tuned.tolist(), 500, 0.95)[::-1]) + np.subtract(
        *bootstrap_ci(base.tolist(), 500, 0.95)[::-1]
    )
    assert metrics["gain/b/score_ci_low"] > 0 and width < independent / 5
    assert "gain/b/items" not in metrics and metrics["eval/b/items"] == 200
    with pytest.raises(SftlabError, match="baseline scored 199 items"):
        gain_metrics("b", scored, {"score": 0.5}, tuned.tolist(), base[:199].tolist(), EVAL)


# ---------------------------------------------------------------------------------------------
# End to end over HTTP: tiny model behind the local kserve server


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CompletionsClient, Path]]:
    from sftlab.sources.tiny import build_tiny
    from sftlab.spec.tiny_uri import TinySpec

    model_dir = build_tiny(tmp_path_factory.mktemp("evals") / "model", TinySpec(seed=3))
    with (
        LocalModelServer(model_dir, name="m", ready_timeout=120) as server,
        CompletionsClient(server.base_url, server.model_name, concurrency=2) as client,
    ):
        yield client, model_dir


class FakeJudge(ThreadingHTTPServer):
    """An OpenAI-compatible chat endpoint on 127.0.0.1 that rates by a rule and checks the API key."""

    def __init__(self, key: str):
        self.key, self.requests = key, []  # type: ignore[var-annotated]

        class Handler(JsonHandler):
            def do_POST(handler) -> None:  # noqa: N805 - the handler, not the server
                body = json.loads(handler.rfile.read(int(handler.headers["Content-Length"])))
                ok = (
                    handler.path == "/v1/chat/completions"
                    and handler.headers.get("Authorization") == f"Bearer {self.key}"
                )
                self.requests.append(body)
                prompt = body["messages"][-1]["content"]
                verdict = (
                    "I cannot rate this."
                    if "[The Start of Reference Answer]" in prompt
                    else f"Fine. Rating: [[{len(self.requests) % 10 + 1}]]"
                )
                payload = {"choices": [{"index": 0, "message": {"role": "assistant", "content": verdict}}]}
                handler.send_json(200 if ok else 401, payload if ok else {"error": {"message": "bad key"}})

        super().__init__(("127.0.0.1", 0), Handler)


@contextmanager
def running_judge(key: str) -> Iterator[FakeJudge]:
    server = FakeJudge(key=key)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()


def bench_for(kind: str, file: str, **extra: Any) -> BenchmarkSpec:
    generates = {} if kind == "multiple_choice" else {"max_new_tokens": 8}  # choices are scored, not generated
    return benchmark_spec(name=kind, kind=kind, uri=str(DATA / file), **generates, **extra)


def judge_bench(server: FakeJudge, key: str, monkeypatch: pytest.MonkeyPatch) -> BenchmarkSpec:
    """The tiny judge benchmark, judged by ``server``, with ``key`` as the API key it sends."""
    monkeypatch.setenv("JUDGE_KEY", key)
    config = JudgeConfig(url=f"http://127.0.0.1:{server.server_port}/v1", model="judge", api_key_env="JUDGE_KEY")
    return bench_for("judge", "chat_judge_tiny.jsonl", judge=config)


@pytest.mark.parametrize(
    ("kind", "file", "metric"),
    [
        ("gsm8k", "gsm8k_tiny.jsonl", "exact_match"),
        ("math", "math_tiny.jsonl", "exact_match"),
        ("multiple_choice", "mmlu_tiny.jsonl", "acc"),
        ("qa", "nq_tiny.jsonl", "lenient_match"),
        ("mbpp", "mbpp_tiny.jsonl", "pass_at_1"),
    ],
)
def test_each_family_scores_a_served_model(served, tmp_path: Path, kind: str, file: str, metric: str) -> None:
    client, _ = served
    shots = 0 if kind == "mbpp" else 1  # a one-shot MBPP prompt outgrows the tiny model's 512-token context
    bench = bench_for(kind, file, num_fewshot=shots)
    items = benchmark_items(bench, ctx(tmp_path))
    result = score_benchmark(client, bench, items, TEMPLATE, EVAL)
    m = result.metrics
    assert m["items"] == len(items) == len(result.rows)
    assert m["score_ci_low"] <= m["score"] <= m["score_ci_high"] and 0 <= m[metric] <= 1
    assert m["score"] == pytest.approx(np.mean([r["score"] for r in result.rows]))
    assert all({"prompt", "output", "score", "item"} <= set(r) for r in result.rows)
    marker = "[BEGIN]" if kind == "mbpp" else "###Question:"  # MBPP keeps the harness's own format
    assert all(r["prompt"].count(marker) == shots + 1 for r in result.rows)  # the shots + the item


@torch.no_grad()
def test_multiple_choice_over_http_matches_in_process_loglikelihood(served, tmp_path: Path) -> None:
    """Each prediction equals the argmax of log P(choice | prompt) computed directly with transformers."""
    client, model_dir = served
    model, tok = AutoModelForCausalLM.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir)
    bench = bench_for("multiple_choice", "mmlu_tiny.jsonl")
    items = benchmark_items(bench, ctx(tmp_path))
    result = score_benchmark(client, bench, items, TEMPLATE, EVAL)
    for item, row in zip(items, result.rows, strict=True):
        context = row["prompt"].rstrip()
        scores = []
        for option in multiple_choice.choices(item):
            full = tok(context + " " + option)["input_ids"]
            n_context = len(tok(context)["input_ids"])
            logp = torch.log_softmax(model(torch.tensor([full])).logits[0].float(), dim=-1)
            scores.append(sum(logp[i - 1, full[i]].item() for i in range(n_context, len(full))))
        assert row["output"] == multiple_choice.choices(item)[int(np.argmax(scores))]


def test_judge_benchmark_over_http(served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client, _ = served
    with running_judge("judge-secret-123") as server:
        bench = judge_bench(server, "judge-secret-123", monkeypatch)
        items = benchmark_items(bench, ctx(tmp_path))
        result = score_benchmark(client, bench, items, TEMPLATE, EVAL)
    assert len(server.requests) == len(items) and all(r["model"] == "judge" for r in server.requests)
    with_reference = sum("reference" in it for it in items)
    assert result.metrics["judge_failures"] == pytest.approx(with_reference / len(items))  # the fake refuses those
    rated = [r for r in result.rows if r["rating"] is not None]
    assert result.metrics["rating"] == pytest.approx(np.mean([r["rating"] for r in rated]))
    assert all(r["score"] == r["rating"] / 10 for r in rated)
    assert "judge-secret-123" not in json.dumps(result.rows) + json.dumps(result.metrics)

    with running_judge("judge-secret-123") as server:
        bench = judge_bench(server, "wrong", monkeypatch)
        with pytest.raises(SftlabError, match="HTTP 401: bad key") as info:
            score_benchmark(client, bench, items, TEMPLATE, EVAL)
        assert "wrong" not in str(info.value)


def test_judge_skips_answers_to_prompts_longer_than_the_context(
    served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An item whose prompt does not fit the 512-token window scores 0 unjudged; the rest are judged."""
    client, _ = served
    with running_judge("k") as server:
        bench = judge_bench(server, "k", monkeypatch)
        items = [it for it in benchmark_items(bench, ctx(tmp_path)) if "reference" not in it][:2]
        items.insert(1, {"question": "Ana has 3 apples and gets 4 more. " * 80})
        result = score_benchmark(client, bench, items, TEMPLATE, EVAL)
    assert len(server.requests) == 2
    row = result.rows[1]
    assert (row["fit"], row["rating"], row["score"], row["verdict"], row["output"]) == ("too_long", None, 0.0, "", "")
    assert "maximum context length is 512 tokens" in row["note"]
    assert [r["fit"] for r in result.rows] == ["ok", "too_long", "ok"] and result.metrics["items_too_long"] == 1
    assert result.metrics["judge_failures"] == 0  # too long is not a judge failure


def test_every_kind_has_its_task_in_the_module_named_after_it() -> None:
    for kind in BENCHMARK_KINDS:
        task = task_for(kind)
        assert type(task).__module__ == f"sftlab.evals.{kind}"
        assert callable(task.check_item) and callable(task.score) and callable(task.tokens_per_item)


def test_judge_kind_needs_an_endpoint() -> None:
    with pytest.raises(ValueError, match="needs a judge endpoint"):
        JudgeBenchmark(name="j", kind="judge", uri="x.jsonl")
