"""Evaluation through KServe InferenceServices, end to end without a cluster.

kmock serves the Kubernetes API and ``tests.support.kserve.FakeKServe`` plays KServe's controller
with KServe's rules: runtime selection and container merging against the chart's ServingRuntime
and upstream's ClusterServingRuntime, S3 credentials only from the predictor's ServiceAccount, the
runtime's own server (sftlab's entrypoint parsed by its real parser; KServe's Transformers backend
answering ``logprobs: null``). Scores through sftlab's runtime must equal the local backend's.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from sftlab.evals.scoring import score_models
from sftlab.serving.endpoints import ModelToServe, artifact_storage_uri, model_storage_uri
from sftlab.serving.inference_service import INFERENCE_SERVICE
from sftlab.spec.job import RunContext
from sftlab.spec.schema import EvaluationConfig, Gsm8kBenchmark, KServeConfig, ModelSpec, StorageConfig
from tests.support.helpers import EXAMPLES
from tests.support.kserve import FakeKServe
from tests.support.kube import NS, SERVING_RUNTIME, KubeServer, custom, kubeconfig, service_account
from tests.test_chart import find, manifests

BUCKET = "models"
BENCH = Gsm8kBenchmark(
    name="gsm8k", kind="gsm8k", uri=str(EXAMPLES / "data" / "gsm8k_tiny.jsonl"), max_items=6, max_new_tokens=8
)
TEMPLATE = "###Question: {instruction}\n###Answer: {response}"


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3_env: str) -> Iterator[FakeKServe]:
    """kmock with the chart's ServingRuntime, and KServe-format S3 credentials for moto on the
    predictors' ServiceAccount ``kserve-s3`` (the stand-in downloads with those alone)."""
    from kubernetes import client

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with KubeServer() as server:
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig(server.url, tmp_path)))
        api = client.ApiClient(client.Configuration(host=server.url))
        runtime = find(manifests({}), "ServingRuntime")
        runtime["metadata"]["namespace"] = NS
        s = SERVING_RUNTIME
        custom(api).create_namespaced_custom_object(
            s.group, s.version, NS, s.plural, runtime, field_validation="Strict"
        )
        secret = {
            "metadata": {
                "name": "moto-s3",
                "annotations": {
                    "serving.kserve.io/s3-endpoint": s3_env.removeprefix("http://"),
                    "serving.kserve.io/s3-usehttps": "0",
                },
            },
            "stringData": {"awsAccessKeyID": "predictor-key", "awsSecretAccessKey": "predictor-secret"},
        }
        client.CoreV1Api(api).create_namespaced_secret(NS, _as_data(secret))
        service_account(api, "kserve-s3", ["moto-s3"])
        service_account(api, "no-credentials")
        fake = FakeKServe(api, tmp_path / "served")
        fake.start()
        yield fake
        fake.close()
        api.close()


def _as_data(secret: dict[str, Any]) -> dict[str, Any]:
    """kmock stores what it is sent: encode stringData as the API server would."""
    import base64

    data = {k: base64.b64encode(v.encode()).decode() for k, v in secret.pop("stringData").items()}
    return {**secret, "data": data}


def upload(folder: Path, prefix: str) -> str:
    s3 = boto3.client("s3")
    if BUCKET not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket=BUCKET)
    for path in folder.rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(folder)}")
    return f"s3://{BUCKET}/{prefix}"


def evaluation(backend: str, **kserve: Any) -> EvaluationConfig:
    settings = {"namespace": NS, "ready_timeout_s": 120, "service_account": "kserve-s3", **kserve}
    return EvaluationConfig(backend=backend, bootstrap_resamples=100, kserve=KServeConfig(**settings))


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
    # sftlab's ServingRuntime, selected by name; its `--name {{.Name}}` and then the predictor's name.
    assert cluster.containers["sftlab-base-tiny-base"]["args"] == ["--name", "sftlab-base-tiny-base", "--name=base"]
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


def _score_once(tmp_path: Path, tiny_model: Path, prefix: str, **kserve: Any) -> None:
    ctx = RunContext(tracking_uri=f"sqlite:///{tmp_path}/m.db", experiment="e", root=str(tmp_path))
    base = ModelSpec(name="tiny", uri=upload(tiny_model, prefix))
    model = ModelToServe("base", fetch=lambda _: tiny_model, storage_uri=lambda: model_storage_uri(base))
    score_models(base, [model], [BENCH], TEMPLATE, evaluation("kserve", **kserve), ctx, lambda *_: None, name=prefix)


def test_without_credentials_on_its_service_account_the_model_never_downloads(
    cluster: FakeKServe, tiny_model: Path, tmp_path: Path, s3_env: str
) -> None:
    from sftlab.errors import SftlabError

    started = time.monotonic()
    with pytest.raises(SftlabError) as failed:
        _score_once(tmp_path, tiny_model, "nocreds", service_account="no-credentials")
    assert time.monotonic() - started < 60  # fails fast, not at the 120 s ready timeout
    message = str(failed.value)
    assert "BlockedByFailedLoad (ModelLoadFailed: storage-initializer: NoCredentialsError" in message
    assert "\n" not in message and cluster.created == []


def test_kserves_transformers_backend_cannot_score_log_likelihoods(
    cluster: FakeKServe, tiny_model: Path, tmp_path: Path, s3_env: str
) -> None:
    """Why a spec with runtime huggingface and a log-likelihood benchmark is refused at load: the
    server answers ``logprobs: null`` and the benchmark cannot be scored."""
    from sftlab.errors import SftlabError

    with pytest.raises(SftlabError) as failed:
        _score_once(tmp_path, tiny_model, "hf", runtime="huggingface")
    assert "the server answered logprobs: null, so it cannot score log-likelihoods" in str(failed.value)
    (name,) = cluster.created
    assert cluster.containers[name]["args"][:2] == [f"--model_name={name}", "--model_name=base"]


def test_runtime_selection_and_merging_follow_kserve() -> None:
    """Against upstream's Hugging Face ClusterServingRuntime and the chart's ServingRuntime."""
    from sftlab.cluster.objects import pod_resources
    from sftlab.spec.schema import TaskResources
    from tests.support.kserve import CLUSTER_RUNTIMES, Refused, merge_container, select_runtime
    from tests.test_inference_service import isvc

    ours = find(manifests({}), "ServingRuntime")
    assert select_runtime(isvc(KServeConfig()), [ours]) is ours  # by name (it does not auto-select)
    huggingface = isvc(KServeConfig(runtime="huggingface"))
    assert select_runtime(huggingface, [ours]) is CLUSTER_RUNTIMES[0]  # autoSelect on format huggingface
    with pytest.raises(Refused, match="NoSupportingRuntime"):
        select_runtime(isvc(KServeConfig(serving_runtime="kserve-huggingfaceserver")), [ours])
    # The runtime's cpu limit of 1 stays unless the predictor sets its own: a request above it is refused.
    cpu_only = TaskResources(cpu="4", memory="16Gi")
    huggingface["spec"]["predictor"]["model"]["resources"] = pod_resources(cpu_only)  # requests.cpu alone
    with pytest.raises(Refused, match="must be less than or equal to cpu limit of 1"):
        merge_container(CLUSTER_RUNTIMES[0], huggingface)
    merged = merge_container(CLUSTER_RUNTIMES[0], isvc(KServeConfig(runtime="huggingface"), cpu_only))
    assert merged["resources"] == {"requests": {"cpu": "4", "memory": "16Gi"}, "limits": {"cpu": "4", "memory": "16Gi"}}


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
    pinned = ModelSpec(name="h", uri="org/model", revision="0123abc")
    assert model_storage_uri(pinned) == "hf://org/model:0123abc"  # the storage initializer's pin syntax
