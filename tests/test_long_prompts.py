"""Benchmark prompts longer than the model's context window, over real HTTP (issue #10).

The tiny model's window is 512 tokens (``max_position_embeddings``). The server refuses what does
not fit as vLLM does (HTTP 400, OpenAI-style body); the client clamps generation to the room a
prompt leaves or marks the prompt "too_long"; scoring gives such items 0, says so in their rows
and counts them, and the rest of the benchmark is scored exactly as it would be without them.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from transformers import AutoTokenizer

from sftlab.evals.gsm8k import STOP_SEQUENCES
from sftlab.evals.scoring import gain_metrics, score_benchmark
from sftlab.serving.client import CompletionsClient
from sftlab.serving.process import LocalModelServer
from sftlab.sources.data import render_template
from sftlab.spec.schema import BenchmarkSpec, EvaluationConfig, benchmark_spec
from tests.support.helpers import EXAMPLES
from tests.support.json_http import JsonHandler

NAME = "tiny"
LIMIT = 512
TEMPLATE = "###Question: {instruction}\n###Answer: {response}"
EVAL = EvaluationConfig(bootstrap_resamples=200)
UNIT = "Ana has 3 apples and gets 4 more. "
LONG = UNIT * 80 + "How many apples does Ana have?"  # ~880 tokens


@pytest.fixture(scope="module")
def server(tiny_model: Path) -> Iterator[LocalModelServer]:
    with LocalModelServer(tiny_model, name=NAME, ready_timeout=120) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: LocalModelServer) -> Iterator[CompletionsClient]:
    with CompletionsClient(server.base_url, server.model_name, concurrency=2) as c:
        yield c


@pytest.fixture(scope="module")
def n_tokens(tiny_model: Path) -> Any:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    return lambda text: len(tokenizer(text)["input_ids"])


def sized(n_tokens: Any, low: int, high: int, render: Any = lambda q: q) -> str:
    """A question whose rendered prompt has between ``low`` and ``high`` tokens."""
    for k in range(1, 100):
        question = UNIT * k + "How many apples does Ana have?"
        if low <= n_tokens(render(question)) <= high:
            return question
    raise AssertionError(f"no question of {low}-{high} tokens")


def refusal(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "context_length_exceeded"
    return error


# ---------------------------------------------------------------------------------------------
# The server: vLLM's refusal on the wire, and it keeps serving


def test_models_route_reports_the_context_window(http) -> None:
    (card,) = http.get("/models").json()["data"]
    assert card["id"] == NAME and card["max_model_len"] == LIMIT


def test_a_prompt_longer_than_the_window_gets_a_400_in_vllm_words(http, n_tokens) -> None:
    prompt_tokens = n_tokens(LONG)
    assert prompt_tokens > LIMIT
    for body in ({"max_tokens": 8}, {"max_tokens": 0, "echo": True, "logprobs": 1}):  # generation, scoring
        error = refusal(http.post("/completions", json={"model": NAME, "prompt": LONG, **body}))
        g = body["max_tokens"]
        assert error["param"] == "prompt"
        assert error["message"] == (
            f"This model's maximum context length is {LIMIT} tokens. However, you requested {prompt_tokens + g} tokens "
            f"({prompt_tokens} in the prompt, {g} in the completion). "
            "Please reduce the length of the prompt or completion."
        )
    # One long prompt refuses the whole list, as in vLLM; the server keeps answering.
    refusal(http.post("/completions", json={"model": NAME, "prompt": ["Hi", LONG], "max_tokens": 4}))
    ok = http.post("/completions", json={"model": NAME, "prompt": "Hi", "max_tokens": 4, "temperature": 0})
    assert ok.status_code == 200, ok.text


def test_prompt_plus_max_tokens_over_the_window_is_refused_not_clamped(http, n_tokens) -> None:
    """The server does as vLLM does; clamping is the client's (the same code for both backends)."""
    prompt = sized(n_tokens, 400, 500)
    room = LIMIT - n_tokens(prompt)
    ok = http.post("/completions", json={"model": NAME, "prompt": prompt, "max_tokens": room, "temperature": 0})
    assert ok.status_code == 200, ok.text
    assert ok.json()["usage"]["prompt_tokens"] + room == LIMIT
    error = refusal(http.post("/completions", json={"model": NAME, "prompt": prompt, "max_tokens": room + 1}))
    assert f"you requested {LIMIT + 1} tokens" in error["message"]


def test_chat_refuses_long_messages_and_without_max_tokens_needs_room_for_one(http) -> None:
    messages = [{"role": "user", "content": LONG}]
    error = refusal(http.post("/chat/completions", json={"model": NAME, "messages": messages, "max_tokens": 4}))
    assert error["param"] == "messages" and "in the messages, 4 in the completion" in error["message"]
    error = refusal(http.post("/chat/completions", json={"model": NAME, "messages": messages}))
    assert error["message"].startswith(
        f"This model's maximum context length is {LIMIT} tokens. However, you requested "
    )
    assert error["message"].endswith("tokens in the messages. Please reduce the length of the messages.")


# ---------------------------------------------------------------------------------------------
# The client: per prompt, never the whole call


def test_client_clamps_or_marks_each_prompt_and_leaves_the_others_alone(client, server, http, n_tokens) -> None:
    clamp = sized(n_tokens, 470, 500)
    room = LIMIT - n_tokens(clamp)
    prompts = ["Ben has 9 coins and gives away 2. How many are left?", LONG, clamp, "Tell me about rain."]
    assert client.context_length == LIMIT
    results = client.complete(prompts, max_tokens=40)
    assert [r.fit for r in results] == ["ok", "too_long", "clamped", "ok"]

    with CompletionsClient(server.base_url, NAME) as fresh:
        alone = fresh.complete([prompts[0], prompts[3]], max_tokens=40)
    assert [results[0], results[3]] == alone and all(r.note == "" for r in alone)
    assert results[1] == "" and f"maximum context length is {LIMIT} tokens" in results[1].note
    direct = http.post(
        "/completions", json={"model": NAME, "prompt": clamp, "max_tokens": room, "temperature": 0}
    ).json()
    assert results[2] == direct["choices"][0]["text"]
    assert results[2].note == (
        f"generation clamped to {room} of 40 tokens: the prompt has {LIMIT - room} tokens "
        f"and the model's maximum context length is {LIMIT}"
    )


def test_client_loglikelihood_marks_pairs_that_do_not_fit(client) -> None:
    pairs = [
        ("Ana has 3 apples and gets 4 more. How many apples does Ana have?", " 7"),
        (LONG, " 7"),
        ("Rain is", " water"),
    ]
    scores = client.loglikelihood(pairs)
    assert [s.fit for s in scores] == ["ok", "too_long", "ok"]
    assert scores[1] == (float("-inf"), 0) and "maximum context length" in scores[1].note
    assert [scores[0], scores[2]] == pytest.approx(client.loglikelihood([pairs[0], pairs[2]]))


class _OldKServe(JsonHandler):
    """Answers as KServe's vLLM runtime did before 0.14: no ``max_model_len`` in ``/models``, a
    context overflow as HTTP 500 with vLLM's message. A prompt's tokens are its words; window 64."""

    def do_GET(self) -> None:
        self.send_json(200, {"object": "list", "data": [{"id": "m", "object": "model", "max_model_len": None}]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(body)  # type: ignore[attr-defined]
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        wanted = body["max_tokens"]
        for prompt in prompts:
            n = len(prompt.split())
            if n + wanted > 64:
                message = (
                    f"This model's maximum context length is 64 tokens. However, you requested {n + wanted} tokens "
                    f"({n} in the messages, {wanted} in the completion). "
                    "Please reduce the length of the messages or completion."
                )
                return self.send_json(
                    500, {"error": {"code": "500", "message": message, "param": "", "type": "OpenAIError"}}
                )
        choices = [
            {"index": i, "text": f"{wanted} tokens", "finish_reason": "length", "logprobs": None}
            for i in range(len(prompts))
        ]
        n = sum(len(p.split()) for p in prompts)
        self.send_json(
            200,
            {
                "choices": choices,
                "usage": {"prompt_tokens": n, "completion_tokens": wanted, "total_tokens": n + wanted},
            },
        )


def test_client_reads_the_window_from_the_refusal_and_never_retries_it() -> None:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _OldKServe)
    httpd.requests = []  # type: ignore[attr-defined]
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        with CompletionsClient(f"http://127.0.0.1:{httpd.server_address[1]}/openai/v1", "m", backoff=5.0) as c:
            results = c.complete(["a b c", "w " * 60, "w " * 100], max_tokens=10)
            assert c.context_length is None
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert results == ["10 tokens", "4 tokens", ""]
    assert [r.fit for r in results] == ["ok", "clamped", "too_long"]
    assert (
        results[1].note
        == "generation clamped to 4 of 10 tokens: the prompt has 60 tokens and the model's maximum context length is 64"
    )
    sent = [json.dumps(r, sort_keys=True) for r in httpd.requests]  # type: ignore[attr-defined]
    assert len(set(sent)) == len(sent)  # the 500s were not retried


# ---------------------------------------------------------------------------------------------
# Scoring: the item scores 0 and says why; the rest is scored as without it


def bench(kind: str, file: str, **extra: Any) -> BenchmarkSpec:
    return benchmark_spec(name=kind, kind=kind, uri=str(EXAMPLES / "data" / file), **extra)


def read_items(file: str, n: int) -> list[dict[str, Any]]:
    lines = (EXAMPLES / "data" / file).read_text().splitlines()
    return [json.loads(line) for line in lines[:n]]


def test_gsm8k_scores_long_items_zero_and_the_rest_as_without_them(client, http, n_tokens) -> None:
    spec = bench("gsm8k", "gsm8k_tiny.jsonl", max_new_tokens=32)
    normal = read_items("gsm8k_tiny.jsonl", 3)
    clamp = sized(n_tokens, LIMIT - 30, LIMIT - 5, lambda q: render_template(TEMPLATE, q))  # fits, < 32 tokens left
    long_work = " ".join(f"{i} + 1 = {i + 1}." for i in range(20))  # too long a solution to score after it
    items = [
        normal[0],
        {"question": LONG, "answer": "3 + 4 = 7\n#### 7"},
        normal[1],
        {"question": clamp, "answer": f"{long_work}\n#### 7"},
        normal[2],
    ]

    result = score_benchmark(client, spec, items, TEMPLATE, EVAL)
    alone = score_benchmark(client, spec, normal, TEMPLATE, EVAL)

    m = result.metrics
    assert (m["items"], m["items_too_long"], m["items_clamped"]) == (5, 1, 1)
    assert (alone.metrics["items_too_long"], alone.metrics["items_clamped"]) == (0, 0)
    rows = result.rows
    assert [r["fit"] for r in rows] == ["ok", "too_long", "ok", "clamped", "ok"]
    assert [r["item"] for r in rows] == list(range(5))
    for row, expected in zip([rows[0], rows[2], rows[4]], alone.rows, strict=True):
        assert (row["output"], row["score"], row["note"]) == (expected["output"], expected["score"], "")
        assert row["loglik_per_token"] == pytest.approx(expected["loglik_per_token"], abs=1e-4)

    too_long = rows[1]
    assert (too_long["output"], too_long["score"], too_long["extracted"], too_long["loglik_per_token"]) == (
        "",
        0.0,
        None,
        None,
    )
    assert f"This model's maximum context length is {LIMIT} tokens" in too_long["note"]

    clamped = rows[3]
    room = LIMIT - n_tokens(clamped["prompt"])
    direct = http.post(
        "/completions",
        json={
            "model": NAME,
            "prompt": clamped["prompt"],
            "max_tokens": room,
            "temperature": 0,
            "stop": list(STOP_SEQUENCES),
        },
    ).json()
    assert clamped["output"] == direct["choices"][0]["text"]
    assert clamped["note"].startswith(f"generation clamped to {room} of 32 tokens")
    assert (
        "loglik not scored: This model's maximum context length" in clamped["note"]
        and clamped["loglik_per_token"] is None
    )

    assert m["score"] == pytest.approx(np.mean([r["score"] for r in rows]))
    assert m["loglik"] == pytest.approx(np.mean([r["loglik_per_token"] for r in (rows[0], rows[2], rows[4])]))
    gains = gain_metrics("gsm8k", m, alone.metrics, result.item_scores, result.item_scores, EVAL)
    assert "gain/gsm8k/items_too_long" not in gains and gains["eval/gsm8k/items_too_long"] == 1


def test_the_per_item_table_says_which_items_did_not_fit(client, tmp_path: Path) -> None:
    """The rows as the evaluate stage logs them: an MLflow table with ``fit`` and ``note``."""
    from sftlab.stages.baseline import log_benchmark_rows
    from sftlab.tracking.runs import Tracker

    spec = bench("qa", "nq_tiny.jsonl", max_new_tokens=8)
    items = read_items("nq_tiny.jsonl", 2)
    items.insert(1, {"question": LONG, "answer": "7"})
    result = score_benchmark(client, spec, items, TEMPLATE, EVAL)
    assert result.metrics["items_too_long"] == 1 and result.rows[1]["score"] == 0.0

    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "long-prompts", tmp_path / "artifacts")
    run_id = tracker.client.create_run(tracker.experiment_id).info.run_id
    log_benchmark_rows(tracker, run_id, "qa", result)
    table = json.loads(Path(tracker.client.download_artifacts(run_id, "eval/qa.json", str(tmp_path))).read_text())
    column = {name: [row[i] for row in table["data"]] for i, name in enumerate(table["columns"])}
    assert column["fit"] == ["ok", "too_long", "ok"] and column["item"] == [0, 1, 2]
    assert column["note"][0] == column["note"][2] == "" and "maximum context length" in column["note"][1]


def test_multiple_choice_item_with_any_choice_too_long_scores_zero(client) -> None:
    spec = bench("multiple_choice", "mmlu_tiny.jsonl")
    normal = read_items("mmlu_tiny.jsonl", 3)
    long_question = {"question": LONG, "choices": ["6", "7"], "answer": 1}
    long_choice = {"question": "What is 3 + 4?", "choices": ["7", UNIT * 60], "answer": 0}
    items = [normal[0], long_question, normal[1], long_choice, normal[2]]

    result = score_benchmark(client, spec, items, TEMPLATE, EVAL)
    alone = score_benchmark(client, spec, normal, TEMPLATE, EVAL)
    rows = result.rows
    assert [r["fit"] for r in rows] == ["ok", "too_long", "ok", "too_long", "ok"]
    assert result.metrics["items_too_long"] == 2
    for i in (1, 3):
        assert (rows[i]["output"], rows[i]["score"], rows[i]["acc_norm"], rows[i]["gold_prob"]) == ("", 0.0, 0.0, 0.0)
    for row, expected in zip([rows[0], rows[2], rows[4]], alone.rows, strict=True):
        assert (row["output"], row["score"], row["acc_norm"]) == (
            expected["output"],
            expected["score"],
            expected["acc_norm"],
        )
        assert row["gold_prob"] == pytest.approx(expected["gold_prob"], abs=1e-4)
    assert result.metrics["acc"] == pytest.approx(sum(r["score"] for r in rows) / 5)


def test_code_item_too_long_is_not_run_and_fails(client) -> None:
    spec = bench("mbpp", "mbpp_tiny.jsonl", max_new_tokens=16)
    items = read_items("mbpp_tiny.jsonl", 2)
    items.insert(1, {**items[0], "task_id": 99, "text": LONG})
    result = score_benchmark(client, spec, items, TEMPLATE, EVAL)
    rows = result.rows
    assert [r["fit"] for r in rows] == ["ok", "too_long", "ok"]
    assert (rows[1]["status"], rows[1]["passed"], rows[1]["score"], rows[1]["output"]) == ("not run", 0, 0.0, "")
    assert rows[0]["status"] != "not run" and rows[2]["status"] != "not run"
    assert result.metrics["items_too_long"] == 1 and result.metrics["pass_at_1"] == pytest.approx(
        np.mean([r["score"] for r in rows])
    )
