"""Faults injected into real services: a model server that dies or hangs mid-benchmark, and an
S3-compatible store that fails requests. Each must end in a retry that succeeds or one clear line
naming what failed — never a hang, a traceback from deep inside a library, or a half-read model."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from sftlab.errors import SftlabError
from sftlab.evals.scoring import score_benchmark
from sftlab.serving.client import CompletionsClient
from sftlab.serving.process import LocalModelServer
from sftlab.sources.uris import download
from sftlab.spec.schema import EvaluationConfig, Gsm8kBenchmark, StorageConfig
from tests.support.helpers import EXAMPLES

BENCH = Gsm8kBenchmark(name="gsm8k", kind="gsm8k", uri=str(EXAMPLES / "data" / "gsm8k_tiny.jsonl"), max_new_tokens=16)
ITEMS = [{"question": f"Ana has {i} apples and gets 2 more. How many?", "answer": f"#### {i + 2}"} for i in range(400)]


# ---------------------------------------------------------------------------------------------
# Model server


def test_server_killed_mid_benchmark_fails_the_benchmark_clearly(tiny_model: Path) -> None:
    with LocalModelServer(tiny_model, name="m", ready_timeout=120) as server:
        client = CompletionsClient(server.base_url, "m", concurrency=2, batch_size=2, retries=2, backoff=0.1)
        threading.Timer(1.5, lambda: os.killpg(server.pid, signal.SIGKILL)).start()
        started = time.monotonic()
        with pytest.raises(SftlabError) as info:
            score_benchmark(client, BENCH, ITEMS, None, EvaluationConfig())
    message = str(info.value)
    assert server.base_url in message and "gave up after 3 attempts" in message and "\n" not in message
    assert time.monotonic() - started < 60


def test_hung_server_hits_the_request_timeout(tiny_model: Path) -> None:
    with LocalModelServer(tiny_model, name="m", ready_timeout=120) as server:
        os.killpg(server.pid, signal.SIGSTOP)  # alive but silent: the worst case for a client
        try:
            client = CompletionsClient(server.base_url, "m", timeout=1.0, retries=1, backoff=0.1)
            with pytest.raises(SftlabError, match=r"ReadTimeout.*gave up after 2 attempts"):
                client.complete(["Hello"], max_tokens=4)
        finally:
            os.killpg(server.pid, signal.SIGCONT)


# ---------------------------------------------------------------------------------------------
# S3-compatible store behind a fault-injecting proxy


class FaultyProxy(ThreadingHTTPServer):
    """Forwards to the S3 server; fails the first ``failures`` GETs of each object with a 503 (or
    every GET when ``failures`` is None)."""

    def __init__(self, upstream: str, failures: int | None):
        self.upstream, self.failures, self.seen = upstream, failures, {}  # type: ignore[var-annotated]
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                count = proxy.seen[self.path] = proxy.seen.get(self.path, 0) + 1
                is_object = self.command == "GET" and "list-type" not in self.path
                if is_object and (proxy.failures is None or count <= proxy.failures):
                    body = b"<Error><Code>SlowDown</Code><Message>injected</Message></Error>"
                    self.send_response(503)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                length = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                upstream = httpx.request(self.command, proxy.upstream + self.path, headers=headers, content=data)
                self.send_response(upstream.status_code)
                for key, value in upstream.headers.items():
                    if key.lower() not in ("transfer-encoding", "content-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(upstream.content)))
                self.end_headers()
                self.wfile.write(upstream.content)

            do_GET = do_PUT = do_HEAD = do_POST = _forward

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)


@pytest.fixture
def model_on_s3(s3_env: str, tiny_model: Path) -> str:
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="faults") if "faults" not in [b["Name"] for b in s3.list_buckets()["Buckets"]] else None
    for path in tiny_model.rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), "faults", f"model/{path.relative_to(tiny_model)}")
    return "s3://faults/model"


def proxy(upstream: str, failures: int | None) -> Iterator[str]:
    server = FaultyProxy(upstream, failures)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


def test_transient_s3_errors_are_retried(model_on_s3: str, s3_env: str, tmp_path: Path, tiny_model: Path) -> None:
    for endpoint in proxy(s3_env, failures=2):
        folder = download(model_on_s3, tmp_path / "cache", StorageConfig(s3_endpoint_url=endpoint))
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in tiny_model.iterdir())
    for name in ("model.safetensors", "config.json"):
        assert (folder / name).read_bytes() == (tiny_model / name).read_bytes()


@pytest.mark.slow  # trains a model or runs servers for tens of seconds
def test_persistent_s3_errors_fail_clearly_and_leave_no_complete_copy(
    model_on_s3: str, s3_env: str, tmp_path: Path
) -> None:
    for endpoint in proxy(s3_env, failures=None):
        with pytest.raises(SftlabError) as info:
            download(model_on_s3, tmp_path / "cache", StorageConfig(s3_endpoint_url=endpoint))
    assert str(info.value) == f"{model_on_s3}: S3 error SlowDown"
    assert not list((tmp_path / "cache").rglob(".complete"))  # a retry must download again, not trust a partial copy
    folder = download(model_on_s3, tmp_path / "cache", StorageConfig(s3_endpoint_url=s3_env))  # the store is back
    assert (folder / "model.safetensors").exists() and list((tmp_path / "cache").rglob(".complete"))
