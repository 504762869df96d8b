"""The local KServe model server, its process wrapper and the evaluation client, over real HTTP.

Server answers are checked against the same tiny model run in-process with transformers.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from sftlab.errors import SftlabError
from sftlab.serving.client import CompletionsClient
from sftlab.serving.process import LocalModelServer
from sftlab.sources.tiny import build_tiny
from sftlab.spec.tiny_uri import TinySpec
from tests.support.json_http import JsonHandler

NAME = "tiny"
PROMPTS = [
    "Ana has 3 apples and gets 4 more. How many apples does Ana have?",
    "Write a Python function add_2(x)",
    "Tell me about rain.",
]
TOL = 1e-4


# ---------------------------------------------------------------------------------------------
# Fixtures and in-process references


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny(tmp_path_factory.mktemp("tiny") / "model", TinySpec(seed=0))


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path) -> Any:
    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def ref_model(model_dir: Path) -> Any:
    return AutoModelForCausalLM.from_pretrained(model_dir).eval()


@pytest.fixture(scope="module")
def server(model_dir: Path) -> Iterator[LocalModelServer]:
    with LocalModelServer(model_dir, name=NAME, ready_timeout=120) as srv:
        yield srv


def ids_of(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text)["input_ids"]


@torch.no_grad()
def greedy(model: Any, tokenizer: Any, ids: list[int], max_new_tokens: int) -> tuple[list[int], str]:
    """Unbatched greedy generation: (tokens before EOS, their text)."""
    out = model.generate(
        torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    new = out[0, len(ids) :].tolist()
    if tokenizer.eos_token_id in new:
        new = new[: new.index(tokenizer.eos_token_id)]
    return new, tokenizer.decode(new, skip_special_tokens=True)


@torch.no_grad()
def token_logprobs(model: Any, ids: list[int]) -> list[float]:
    """log P(ids[i] | ids[:i]) for i >= 1, from one unpadded forward pass."""
    logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
    return [logp[i - 1, ids[i]].item() for i in range(1, len(ids))]


def complete(http: httpx.Client, **body: Any) -> dict[str, Any]:
    response = http.post("/completions", json={"model": NAME, "temperature": 0, **body})
    assert response.status_code == 200, response.text
    return response.json()


def assert_close(actual: list[float], expected: list[float]) -> None:
    assert len(actual) == len(expected)
    assert max(abs(a - e) for a, e in zip(actual, expected, strict=True)) < TOL


# ---------------------------------------------------------------------------------------------
# Completions


def test_greedy_completion_matches_in_process_generate(http, ref_model, tokenizer) -> None:
    ids = ids_of(tokenizer, PROMPTS[0])
    new, text = greedy(ref_model, tokenizer, ids, 12)
    body = complete(http, prompt=PROMPTS[0], max_tokens=12)
    assert body["object"] == "text_completion" and body["model"] == NAME
    (choice,) = body["choices"]
    assert choice["text"] == text and choice["index"] == 0 and choice["logprobs"] is None
    assert choice["finish_reason"] == ("length" if len(new) == 12 else "stop")
    assert body["usage"]["prompt_tokens"] == len(ids)
    assert body["usage"]["total_tokens"] == len(ids) + body["usage"]["completion_tokens"]


def test_batched_prompts_match_unbatched_generation(http, ref_model, tokenizer) -> None:
    """Left padding in the server's batch must not change any prompt's greedy output."""
    expected = [greedy(ref_model, tokenizer, ids_of(tokenizer, p), 8)[1] for p in PROMPTS]
    body = complete(http, prompt=PROMPTS, max_tokens=8)
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert [c["text"] for c in body["choices"]] == expected
    assert body["usage"]["prompt_tokens"] == sum(len(ids_of(tokenizer, p)) for p in PROMPTS)


def test_echo_prompt_logprobs_are_aligned(http, ref_model, tokenizer) -> None:
    """Entry i is log P(token i | tokens < i); the first is null (llama.cpp shifts these by one)."""
    prompt = PROMPTS[0]
    ids = ids_of(tokenizer, prompt)
    body = complete(http, prompt=prompt, max_tokens=0, echo=True, logprobs=3)
    (choice,) = body["choices"]
    assert choice["text"] == prompt and body["usage"]["completion_tokens"] == 0
    lp = choice["logprobs"]
    assert lp["tokens"] == [tokenizer.decode([i]) for i in ids]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert_close(lp["token_logprobs"][1:], token_logprobs(ref_model, ids))
    offsets = lp["text_offset"]
    assert offsets[0] == 0
    assert [prompt[a:b] for a, b in zip(offsets, offsets[1:] + [len(prompt)], strict=True)] == lp["tokens"]
    with torch.no_grad():
        logp = torch.log_softmax(ref_model(torch.tensor([ids])).logits[0], dim=-1)
    for i in range(1, len(ids)):
        top = lp["top_logprobs"][i]
        assert top[lp["tokens"][i]] == pytest.approx(lp["token_logprobs"][i], abs=TOL)
        best = logp[i - 1].topk(3)
        assert len(top) <= 4
        for token_id, value in zip(best.indices.tolist(), best.values.tolist(), strict=True):
            assert top[tokenizer.decode([token_id])] == pytest.approx(value, abs=TOL)


def test_logprobs_of_generated_tokens_with_and_without_echo(http, ref_model, tokenizer) -> None:
    prompt = PROMPTS[1]
    ids = ids_of(tokenizer, prompt)
    new, text = greedy(ref_model, tokenizer, ids, 6)
    expected = token_logprobs(ref_model, ids + new)

    echoed = complete(http, prompt=prompt, max_tokens=6, echo=True, logprobs=1)["choices"][0]
    assert echoed["text"] == prompt + text
    assert_close(echoed["logprobs"]["token_logprobs"][1:], expected)
    assert echoed["logprobs"]["text_offset"][len(ids)] == len(prompt)

    plain = complete(http, prompt=prompt, max_tokens=6, logprobs=1)["choices"][0]
    assert plain["text"] == text
    assert plain["logprobs"]["tokens"] == [tokenizer.decode([t]) for t in new]
    assert_close(plain["logprobs"]["token_logprobs"], expected[len(ids) - 1 :])
    assert plain["logprobs"]["text_offset"][0] == 0


def test_stop_sequences_cut_the_text(http, ref_model, tokenizer) -> None:
    _, text = greedy(ref_model, tokenizer, ids_of(tokenizer, PROMPTS[0]), 16)
    assert len(text) >= 8, "the reference completion is too short to cut"
    stop = text[4:6]
    body = complete(http, prompt=PROMPTS[0], max_tokens=16, stop=[stop, "never appears"])
    (choice,) = body["choices"]
    assert choice["text"] == text[: text.index(stop)] and choice["finish_reason"] == "stop"
    assert complete(http, prompt=PROMPTS[0], max_tokens=16, stop=stop)["choices"][0]["text"] == choice["text"]


def test_sampling_with_a_seed_is_reproducible(http) -> None:
    def sample() -> list[str]:
        body = complete(http, prompt=PROMPTS, max_tokens=8, temperature=1.0, top_p=0.9, seed=7)
        return [c["text"] for c in body["choices"]]

    assert sample() == sample()


def test_chat_completion_applies_the_chat_template(http, ref_model, tokenizer) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me about tea."}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    _, text = greedy(ref_model, tokenizer, tokenizer(prompt, add_special_tokens=False)["input_ids"], 10)
    payload = {"model": NAME, "messages": messages, "max_tokens": 10, "temperature": 0}
    response = http.post("/chat/completions", json=payload)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion"
    (choice,) = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": text}
    assert choice["finish_reason"] in {"stop", "length"}


@pytest.mark.parametrize(
    ("path", "payload", "fragment"),
    [
        ("/completions", {"model": NAME, "prompt": "hi", "max_tokens": -1}, "max_tokens"),
        ("/completions", {"model": NAME, "prompt": "hi", "n": 2}, "n:"),
        ("/completions", {"model": NAME}, "prompt"),
        ("/completions", {"model": NAME, "prompt": 123}, "prompt"),
        ("/completions", {"model": NAME, "prompt": []}, "prompt"),
        ("/completions", {"model": NAME, "prompt": ""}, "prompt: must not be empty"),
        ("/completions", {"model": NAME, "prompt": "hi", "logprobs": 99}, "logprobs"),
        ("/completions", {"model": NAME, "prompt": "hi", "stream": True}, "stream"),
        ("/completions", {"model": NAME, "prompt": "hi", "max_tokens": 5000}, "maximum context length"),
        ("/completions", [1, 2], "dictionary"),
        ("/chat/completions", {"model": NAME, "messages": []}, "messages"),
        ("/chat/completions", {"model": NAME, "messages": [{"role": "robot", "content": "x"}]}, "role"),
    ],
)
def test_bad_requests_get_openai_style_400(http, path: str, payload: Any, fragment: str) -> None:
    response = http.post(path, json=payload)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and fragment in error["message"]


def test_malformed_json_and_unknown_model(http) -> None:
    response = http.post("/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]
    response = http.post("/completions", json={"model": "other", "prompt": "hi"})
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"


def test_openai_models_route_and_kserve_routes(http, server) -> None:
    body = http.get("/models").json()
    assert body["object"] == "list" and [m["id"] for m in body["data"]] == [NAME]
    root = f"http://127.0.0.1:{server.port}"
    assert httpx.get(f"{root}/v2/health/ready").status_code == 200
    assert httpx.get(f"{root}/v1/models/{NAME}").json() == {"name": NAME, "ready": True}


def test_server_listens_on_loopback_only(server) -> None:
    proc = psutil.Process(server.pid)
    connections = getattr(proc, "net_connections", proc.connections)(kind="inet")
    listening = [c.laddr for c in connections if c.status == psutil.CONN_LISTEN]
    assert server.port in [addr.port for addr in listening]
    assert {addr.ip for addr in listening} == {"127.0.0.1"}  # no 0.0.0.0, no gRPC on [::]


# ---------------------------------------------------------------------------------------------
# Client against the real server


def test_client_complete_preserves_order_and_reports_progress(server, ref_model, tokenizer) -> None:
    prompts = PROMPTS + [p.upper() for p in PROMPTS]
    expected = [greedy(ref_model, tokenizer, ids_of(tokenizer, p), 5)[1] for p in prompts]
    progress: list[tuple[int, int]] = []
    with CompletionsClient(server.base_url, server.model_name, concurrency=2, batch_size=2) as client:
        texts = client.complete(prompts, max_tokens=5, on_progress=lambda d, t: progress.append((d, t)))
    assert texts == expected
    assert progress[-1] == (len(prompts), len(prompts)) and len(progress) == 3


def test_client_loglikelihood_matches_in_process(server, ref_model, tokenizer) -> None:
    pairs = [
        ("Ana has 3 apples and gets 4 more. How many apples does Ana have?", " 7"),
        ("Question: Tell me about tea.\nAnswer:", " To make tea, heat water."),
        ("Ben has 9 coins and gives away 2. Answer: ", "7"),  # trailing space moves to the continuation
    ]
    with CompletionsClient(server.base_url, server.model_name) as client:
        scores = client.loglikelihood(pairs)
    for (context, continuation), (total, count) in zip(pairs, scores, strict=True):
        stripped = context.rstrip()
        context_ids, whole = ids_of(tokenizer, stripped), ids_of(tokenizer, context + continuation)
        assert whole[: len(context_ids)] == context_ids  # the split falls on a token boundary
        expected = token_logprobs(ref_model, whole)[len(context_ids) - 1 :]
        assert count == len(whole) - len(context_ids)
        assert total == pytest.approx(sum(expected), abs=TOL * count)


# ---------------------------------------------------------------------------------------------
# Adapters and process lifecycle


@pytest.fixture(scope="module")
def adapter_dir(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(base, config)
    assert any(p.abs().sum() > 0 for n, p in peft_model.named_parameters() if "lora_B" in n)
    out = tmp_path_factory.mktemp("adapter") / "lora"
    peft_model.save_pretrained(out)
    return out


def test_lora_adapter_is_served_merged_and_ctrl_c_stops_the_server(
    model_dir, adapter_dir, ref_model, tokenizer
) -> None:
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), adapter_dir).merge_and_unload()
    ids = ids_of(tokenizer, PROMPTS[0])
    expected = token_logprobs(merged.eval(), ids)
    assert (
        max(abs(a - b) for a, b in zip(expected, token_logprobs(ref_model, ids), strict=True)) > 1e-3
    )  # the adapter matters

    with pytest.raises(KeyboardInterrupt), LocalModelServer(model_dir, adapter_dir=adapter_dir, name="lora") as srv:
        pid = srv.pid
        body = httpx.post(
            f"{srv.base_url}/completions",
            json={"model": "lora", "prompt": PROMPTS[0], "max_tokens": 0, "echo": True, "logprobs": 0},
            timeout=60,
        ).json()
        assert_close(body["choices"][0]["logprobs"]["token_logprobs"][1:], expected)
        raise KeyboardInterrupt  # Ctrl-C in the body must still stop the server
    assert not psutil.pid_exists(pid)


def test_a_normal_exit_leaves_no_processes(model_dir) -> None:
    children_before = {p.pid for p in psutil.Process().children(recursive=True)}
    with LocalModelServer(model_dir, name="again") as srv:
        pid = srv.pid
        assert psutil.Process(pid).is_running()
    assert not psutil.pid_exists(pid)
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= children_before


def test_model_dir_without_weights_fails_with_the_log_tail(model_dir, tmp_path) -> None:
    broken = tmp_path / "no-weights"
    broken.mkdir()
    for f in model_dir.iterdir():
        if f.suffix != ".safetensors":
            (broken / f.name).write_bytes(f.read_bytes())
    children_before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(SftlabError) as info, LocalModelServer(broken, ready_timeout=120):
        pytest.fail("the server should not become ready")
    message = str(info.value)
    assert "exited before it was ready" in message and "cannot load model" in message
    assert "\n" not in message
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= children_before


# ---------------------------------------------------------------------------------------------
# Client retries, against scripted stdlib HTTP servers

OK_BODY = {"choices": [{"index": 0, "text": "ok", "finish_reason": "length", "logprobs": None}]}


class _Scripted(JsonHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        script = self.server.script  # type: ignore[attr-defined]
        status, body = script.pop(0) if len(script) > 1 else script[0]
        self.server.hits += 1  # type: ignore[attr-defined]
        self.send_json(status, body)


@pytest.fixture
def scripted() -> Iterator[Any]:
    """Start a stdlib HTTP server that answers POSTs from a list of (status, body), last one repeating."""
    servers = []

    def start(script: list[tuple[int, Any]]) -> ThreadingHTTPServer:
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
        httpd.script, httpd.hits = list(script), 0  # type: ignore[attr-defined]
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(httpd)
        return httpd

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def _url(httpd: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{httpd.server_address[1]}/openai/v1"


def test_client_retries_transient_errors(scripted) -> None:
    busy = {"error": {"message": "overloaded", "type": "server_error"}}
    httpd = scripted([(503, busy), (503, busy), (200, OK_BODY)])
    with CompletionsClient(_url(httpd), "m", retries=3, backoff=0.01) as client:
        assert client.complete(["hi"], max_tokens=1) == ["ok"]
    assert httpd.hits == 3


def test_client_does_not_retry_client_errors(scripted) -> None:
    httpd = scripted([(400, {"error": {"message": "max_tokens: bad value", "type": "invalid_request_error"}})])
    with (
        CompletionsClient(_url(httpd), "m", backoff=0.01) as client,
        pytest.raises(SftlabError, match="HTTP 400: max_tokens: bad value"),
    ):
        client.complete(["hi"], max_tokens=1)
    assert httpd.hits == 1


def test_client_gives_up_after_retries(scripted) -> None:
    httpd = scripted([(500, {"error": "boom"})])
    with (
        CompletionsClient(_url(httpd), "m", retries=2, backoff=0.01) as client,
        pytest.raises(SftlabError, match="HTTP 500: boom .gave up after 3 attempts"),
    ):
        client.complete(["hi"], max_tokens=1)
    assert httpd.hits == 3
