"""Evaluation through KServe InferenceServices, end to end without a cluster.

kmock serves the Kubernetes API; the test plays KServe: for each InferenceService created it
downloads the ``storageUri`` from the S3-compatible server (moto), starts a real local model
server on it under the requested model name, reports the address as Ready, and stops the server
when the object is deleted. The scores must equal the local backend's for the same model.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from sftlab.evals.scoring import score_models
from sftlab.serving.endpoints import ModelToServe, artifact_storage_uri, model_storage_uri
from sftlab.serving.inference_service import INFERENCE_SERVICE
from sftlab.serving.process import LocalModelServer
from sftlab.spec.job import RunContext
from sftlab.spec.schema import EvaluationConfig, Gsm8kBenchmark, KServeConfig, ModelSpec, StorageConfig
from tests.support.helpers import EXAMPLES
from tests.support.kube import NS, KubeServer, custom, kubeconfig

BUCKET = "models"
BENCH = Gsm8kBenchmark(
    name="gsm8k", kind="gsm8k", uri=str(EXAMPLES / "data" / "gsm8k_tiny.jsonl"), max_items=6, max_new_tokens=8
)
TEMPLATE = "###Question: {instruction}\n###Answer: {response}"


class FakeKServe(threading.Thread):
    """Serves every InferenceService in the namespace with a real local model server."""

    def __init__(self, api: Any, cache: Path):
        super().__init__(daemon=True)
        self.api, self.cache = api, cache
        self.servers: dict[str, LocalModelServer] = {}
        self.created: list[str] = []
        self.deleted: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        r = INFERENCE_SERVICE
        while not self.stop.is_set():
            items = custom(self.api).list_namespaced_custom_object(r.group, r.version, NS, r.plural)["items"]
            names = {obj["metadata"]["name"] for obj in items}
            for obj in items:
                if obj["metadata"]["name"] not in self.servers:
                    self._serve(obj)
            for name in list(self.servers):
                if name not in names:
                    self.servers.pop(name).__exit__(None, None, None)
                    self.deleted.append(name)
            time.sleep(0.2)

    def _serve(self, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        model = obj["spec"]["predictor"]["model"]
        served = next(a.split("=", 1)[1] for a in model["args"] if a.startswith("--model_name="))
        folder = download(model["storageUri"], self.cache / name)
        server = LocalModelServer(folder, name=served, ready_timeout=120).__enter__()
        self.servers[name] = server
        self.created.append(name)
        r = INFERENCE_SERVICE
        status = {
            "address": {"url": server.base_url.removesuffix("/openai/v1")},
            "conditions": [{"type": "Ready", "status": "True"}],
        }
        custom(self.api).patch_namespaced_custom_object_status(
            r.group, r.version, NS, r.plural, name, {"status": status}
        )

    def close(self) -> None:
        self.stop.set()
        self.join(10)
        for server in self.servers.values():
            server.__exit__(None, None, None)


def download(uri: str, dst: Path) -> Path:
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    s3 = boto3.client("s3")
    for obj in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]:
        target = dst / obj["Key"][len(prefix) :].lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(bucket, obj["Key"], str(target))
    return dst


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3_env: str) -> Iterator[FakeKServe]:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with KubeServer() as server:
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig(server.url, tmp_path)))
        from kubernetes import client

        api = client.ApiClient(client.Configuration(host=server.url))
        fake = FakeKServe(api, tmp_path / "served")
        fake.start()
        yield fake
        fake.close()
        api.close()


def upload(folder: Path, prefix: str) -> str:
    s3 = boto3.client("s3")
    if BUCKET not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket=BUCKET)
    for path in folder.rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(folder)}")
    return f"s3://{BUCKET}/{prefix}"


def evaluation(backend: str) -> EvaluationConfig:
    return EvaluationConfig(
        backend=backend, bootstrap_resamples=100, kserve=KServeConfig(namespace=NS, ready_timeout_s=120)
    )


@pytest.mark.slow  # trains a model or runs servers for tens of seconds
def test_kserve_backend_scores_equal_the_local_backend_and_services_are_deleted(
    cluster: FakeKServe, tiny_model: Path, tmp_path: Path, s3_env: str
) -> None:
    ctx = RunContext(
        tracking_uri=f"sqlite:///{tmp_path}/m.db",
        experiment="e",
        root=str(tmp_path),
        storage=StorageConfig(s3_endpoint_url=s3_env),
    )
    base = ModelSpec(name="tiny", uri=upload(tiny_model, "tiny"))
    model = ModelToServe("base", fetch=lambda _: tiny_model, storage_uri=lambda: model_storage_uri(base))
    scores: dict[str, dict[str, Any]] = {}
    for backend in ("local", "kserve"):
        score_models(
            base,
            [model],
            [BENCH],
            TEMPLATE,
            evaluation(backend),
            ctx,
            lambda label, results, backend=backend: scores.setdefault(backend, results),
            name="base-tiny",
        )
    local, served = scores["local"]["gsm8k"], scores["kserve"]["gsm8k"]
    assert [r["output"] for r in served.rows] == [r["output"] for r in local.rows]
    assert served.metrics == pytest.approx(local.metrics)
    assert cluster.created == ["sftlab-base-tiny-base"]
    deadline = time.monotonic() + 10
    while cluster.deleted != cluster.created and time.monotonic() < deadline:
        time.sleep(0.2)
    assert cluster.deleted == cluster.created  # the runner deleted it; the fake saw it go


def test_a_failure_while_scoring_still_deletes_the_service(
    cluster: FakeKServe, tiny_model: Path, tmp_path: Path, s3_env: str
) -> None:
    ctx = RunContext(tracking_uri=f"sqlite:///{tmp_path}/m.db", experiment="e", root=str(tmp_path))
    base = ModelSpec(name="tiny", uri=upload(tiny_model, "tiny2"))
    model = ModelToServe("base", fetch=lambda _: tiny_model, storage_uri=lambda: model_storage_uri(base))

    def explode(label: str, results: Any) -> None:
        raise RuntimeError("logging failed")

    with pytest.raises(RuntimeError, match="logging failed"):
        score_models(base, [model], [BENCH], TEMPLATE, evaluation("kserve"), ctx, explode, name="fails")
    r = INFERENCE_SERVICE
    assert custom(cluster.api).list_namespaced_custom_object(r.group, r.version, NS, r.plural)["items"] == []


@pytest.mark.parametrize(
    ("artifact_uri", "destination", "expected"),
    [
        ("s3://b/mlflow/1/abc/artifacts", None, "s3://b/mlflow/1/abc/artifacts/model"),
        ("mlflow-artifacts:/1/abc/artifacts", "s3://mlflow/mlflow", "s3://mlflow/mlflow/1/abc/artifacts/model"),
        (
            "mlflow-artifacts://mlflow.sftlab:5000/1/abc/artifacts",
            "s3://mlflow/mlflow/",
            "s3://mlflow/mlflow/1/abc/artifacts/model",
        ),
    ],
)
def test_artifact_storage_uris(artifact_uri: str, destination: str | None, expected: str) -> None:
    assert artifact_storage_uri(artifact_uri, "model", KServeConfig(artifacts_destination=destination)) == expected


def test_models_a_cluster_cannot_read_are_one_line_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    from sftlab.errors import SftlabError

    monkeypatch.delenv("SFTLAB_ARTIFACTS_DESTINATION", raising=False)
    with pytest.raises(SftlabError, match="artifacts_destination: required"):
        artifact_storage_uri("mlflow-artifacts:/1/abc/artifacts", "model", KServeConfig())
    with pytest.raises(SftlabError, match="not on S3"):
        artifact_storage_uri("/tmp/mlruns/1/abc/artifacts", "model", KServeConfig())
    with pytest.raises(SftlabError, match="needs the model on s3:// or the hub"):
        model_storage_uri(ModelSpec(name="t", uri="tiny:llama"))
    assert model_storage_uri(ModelSpec(name="h", uri="org/model")) == "hf://org/model"
