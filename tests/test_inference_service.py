"""KServe InferenceService manifests for cluster evaluation, and their lifecycle over HTTP.

Manifests are held to the field names of the kserve and kubernetes SDK models. The lifecycle runs
against kmock (tests/test_trainjob.py's harness) with the real ``kubernetes`` client; the test plays
the KServe controller by patching status, and the predictor's pods and events are real objects in
kmock, read back for the diagnostics.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from sftlab.cluster.objects import api_client, cluster_namespace
from sftlab.errors import SftlabError
from sftlab.serving.client import CompletionsClient
from sftlab.serving.inference_service import (
    INFERENCE_SERVICE,
    InferenceServiceRunner,
    inference_service_manifest,
    openai_base_url,
)
from sftlab.spec.schema import KServeConfig, TaskResources
from tests.support.json_http import JsonHandler
from tests.support.kube import NS, Controller, KubeServer, cond, create, delete, exists, kube_api, sigterm
from tests.test_trainjob import GPU_RES

kube = pytest.fixture(scope="module")(kube_api)

NAME = "eval-qwen-sft-run123"
BASE = "s3://models/run123/model"
CPU = TaskResources(cpu="4", memory="16Gi")
GPU = GPU_RES  # 4 GPUs, node selector, toleration, 16Gi /dev/shm
HF = KServeConfig(runtime="huggingface")
OWN = KServeConfig()  # runtime sftlab, the default
VLLM = KServeConfig(runtime="vllm", max_model_len=4096, service_account="kserve-s3")
ADAPTERS = {"lora-ep1": "s3://models/run123/epoch-1", "lora-ep2": "s3://models/run123/epoch-2"}


def isvc(config: KServeConfig = HF, resources: TaskResources = CPU, **kw: Any) -> dict[str, Any]:
    return inference_service_manifest(NAME, BASE, config, resources, served_model_name="qwen-sft", **kw)


def predictor(manifest: dict[str, Any]) -> dict[str, Any]:
    return manifest["spec"]["predictor"]


def unknown_fields(value: Any, type_name: str = "V1beta1InferenceService", path: str = "") -> list[str]:
    """Keys of ``value`` that the kserve/kubernetes SDK model ``type_name`` (recursively) lacks."""
    import kserve.models
    import kubernetes.client.models

    if m := re.fullmatch(r"list\[(.+)\]", type_name):
        return [u for i, item in enumerate(value) for u in unknown_fields(item, m[1], f"{path}[{i}]")]
    if m := re.fullmatch(r"dict\(str, (.+)\)", type_name):
        return [u for k, item in value.items() for u in unknown_fields(item, m[1], f"{path}.{k}")]
    model = getattr(kserve.models, type_name, None) or getattr(kubernetes.client.models, type_name, None)
    if model is None:  # str, int, object, ...
        return []
    attrs = {key: attr for attr, key in model.attribute_map.items()}
    return [
        u
        for key, item in value.items()
        for u in (
            [f"{path}.{key}"]
            if key not in attrs
            else unknown_fields(item, model.openapi_types[attrs[key]], f"{path}.{key}")
        )
    ]


# ---------------------------------------------------------------- manifests


def test_cpu_manifest_uses_the_transformers_backend_in_float32() -> None:
    m = isvc()
    assert m["apiVersion"] == "serving.kserve.io/v1beta1" and m["kind"] == "InferenceService"
    assert m["metadata"]["name"] == NAME and "namespace" not in m["metadata"]  # the runner's namespace
    assert m["metadata"]["annotations"] == {"serving.kserve.io/deploymentMode": "RawDeployment"}
    p = predictor(m)
    assert (p["minReplicas"], p["maxReplicas"]) == (1, 1)
    model = p["model"]
    assert model["modelFormat"] == {"name": "huggingface"} and model["storageUri"] == BASE
    assert model["args"] == ["--model_name=qwen-sft", "--backend=huggingface", "--dtype=float32"]
    # Both limits: KServe keeps a runtime limit the predictor leaves out (its Hugging Face runtime's cpu: 1).
    assert model["resources"] == {"requests": {"cpu": "4", "memory": "16Gi"}, "limits": {"cpu": "4", "memory": "16Gi"}}
    assert "storageUris" not in p and "name" not in model and "runtime" not in model
    assert not {"annotations", "nodeSelector", "tolerations", "volumes", "serviceAccountName"} & set(p)


def test_gpu_manifest_uses_vllm_with_placement_and_shm() -> None:
    p = predictor(isvc(VLLM, GPU))
    model = p["model"]
    assert model["args"] == [
        "--model_name=qwen-sft",
        "--backend=vllm",
        "--tensor-parallel-size=4",
        "--max_model_len=4096",
    ]
    assert model["resources"]["limits"] == {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "4"}
    assert p["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert p["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert p["volumes"] == [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}}]
    assert model["volumeMounts"] == [{"name": "dshm", "mountPath": "/dev/shm"}]
    # S3 credentials come from the service account KServe's storage initializer runs as.
    assert p["serviceAccountName"] == "kserve-s3"


def test_default_runtime_is_the_charts_sftlab_server_selected_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """sftlab's own server answers log-likelihoods, which KServe's Transformers backend does not; its
    ServingRuntime does not auto-select, so the predictor names it."""
    model = predictor(isvc(OWN))["model"]
    assert model["modelFormat"] == {"name": "sftlab-causal-lm"} and model["runtime"] == "sftlab-eval"
    assert model["args"] == ["--name=qwen-sft"]  # after the runtime's own `--name {{.Name}}`: the last wins
    assert model["storageUri"] == BASE
    monkeypatch.setenv("SFTLAB_SERVING_RUNTIME", "team-eval")  # the chart's ConfigMap names its runtime
    assert predictor(isvc(OWN))["model"]["runtime"] == "team-eval"
    assert predictor(isvc(KServeConfig(serving_runtime="mine")))["model"]["runtime"] == "mine"


def test_huggingface_runtime_on_gpu_keeps_the_default_dtype() -> None:
    args = predictor(isvc(resources=TaskResources(gpus=1)))["model"]["args"]
    assert "--backend=huggingface" in args and not any(a.startswith("--dtype") for a in args)


def test_serverless_gets_a_progress_deadline_as_long_as_the_ready_timeout() -> None:
    m = isvc(KServeConfig(deployment_mode="Serverless", ready_timeout_s=2400.5))
    assert m["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
    assert predictor(m)["annotations"] == {"serving.knative.dev/progress-deadline": "2401s"}


def test_lora_adapters_share_one_vllm_server() -> None:
    p = predictor(isvc(VLLM, GPU, adapters=ADAPTERS, max_lora_rank=20))
    assert p["storageUris"] == [
        {"uri": BASE, "mountPath": "/mnt/models/base"},
        {"uri": ADAPTERS["lora-ep1"], "mountPath": "/mnt/models/adapters/lora-ep1"},
        {"uri": ADAPTERS["lora-ep2"], "mountPath": "/mnt/models/adapters/lora-ep2"},
    ]
    assert "storageUri" not in p["model"]  # KServe rejects storageUri together with storageUris
    args = p["model"]["args"]
    assert "--model_dir=/mnt/models/base" in args and "--enable-lora" in args
    assert "--max-lora-rank=32" in args  # r=20 rounds up to a rank vLLM accepts
    # --lora-modules takes every value up to the next flag, so it comes last.
    assert args[-3:] == [
        "--lora-modules",
        "lora-ep1=/mnt/models/adapters/lora-ep1",
        "lora-ep2=/mnt/models/adapters/lora-ep2",
    ]


def test_manifest_fields_exist_in_the_sdk_models() -> None:
    m = isvc(
        VLLM.model_copy(update={"deployment_mode": "Serverless"}),
        GPU,
        adapters=ADAPTERS,
        labels={"sftlab.trial-key": "a/b"},
    )
    assert unknown_fields(m) == []
    assert unknown_fields({"spec": {"predictor": {"storageURIs": []}}}) == [
        ".spec.predictor.storageURIs"
    ]  # the check bites


def test_labels_are_valid_label_values() -> None:
    labels = isvc(labels={"sftlab.trial-key": "Qwen/Qwen2.5-0.5B:lr=1e-5"})["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "sftlab"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", labels["sftlab.trial-key"])


def test_no_credentials_in_the_manifest() -> None:
    text = json.dumps(isvc(VLLM, GPU, adapters=ADAPTERS))
    assert '"env"' not in text and "AWS_" not in text and "HF_TOKEN" not in text


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"adapters": ADAPTERS}, "LoRA adapters are served by vLLM"),
        ({"config": VLLM}, "runtime vllm needs GPUs"),
        ({"config": VLLM, "resources": GPU, "adapters": {"a b": "s3://x"}}, "bad adapter name 'a b'"),
        ({"config": VLLM, "resources": GPU, "adapters": {"qwen-sft": "s3://x"}}, "bad adapter name 'qwen-sft'"),
        ({"config": VLLM, "resources": GPU, "adapters": ADAPTERS, "max_lora_rank": 1024}, "LoRA rank 1024 is above"),
    ],
)
def test_bad_inputs_are_one_line_errors(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(SftlabError, match=re.escape(message)):
        isvc(**kw)


def test_bad_name_is_an_error() -> None:
    with pytest.raises(SftlabError, match="not a DNS-1035 name"):
        inference_service_manifest("Eval_Model", BASE, KServeConfig(), CPU, served_model_name="m")


def test_base_url_prefers_the_cluster_address() -> None:
    both = {"status": {"url": "http://m.ns.example.com", "address": {"url": "http://m-predictor.ns.svc.cluster.local"}}}
    assert openai_base_url(both) == "http://m-predictor.ns.svc.cluster.local/openai/v1"
    assert openai_base_url({"status": {"url": "http://m.ns.example.com/"}}) == "http://m.ns.example.com/openai/v1"


# ---------------------------------------------------------------- cluster connection


def test_namespace_configured_or_from_the_pod(tmp_path: Path) -> None:
    path = tmp_path / "namespace"
    assert cluster_namespace("evals", path=path) == "evals"
    path.write_text("sweeps\n")
    assert cluster_namespace(None, path=path) == "sweeps"
    with pytest.raises(
        SftlabError, match=r"no Kubernetes namespace: not running in a pod .* \(set evaluation.kserve.namespace\)$"
    ):
        cluster_namespace(None, setting="evaluation.kserve.namespace", path=tmp_path / "missing")


def test_api_client_from_kubeconfig_reaches_the_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # not in a pod
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    with pytest.raises(SftlabError, match="no Kubernetes cluster: not in a pod and no usable kubeconfig"):
        api_client()

    with KubeServer() as server:
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kmock", "cluster": {"server": server.url}}],
            "users": [{"name": "me", "user": {}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "me"}}],
            "current-context": "kmock",
        }
        (tmp_path / "config").write_text(json.dumps(kubeconfig))
        monkeypatch.setenv("KUBECONFIG", str(tmp_path / "config"))
        runner = InferenceServiceRunner.for_config(KServeConfig(namespace=NS, ready_timeout_s=0.2), log=lambda _: None)
        assert runner.objects.namespace == NS and runner.objects.timeout_s == 0.2
        with pytest.raises(SftlabError, match="did not become Ready within 0.2 s"), runner.serving(isvc()):
            pass


# ---------------------------------------------------------------- lifecycle over HTTP (kmock)


class Predictor(JsonHandler):
    """Stands in for the predictor: OpenAI completions at the runtime's route only, each naming the
    model it was asked for."""

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        found = self.path == "/openai/v1/completions"
        choices = [
            {"index": i, "text": request["model"], "finish_reason": "length"} for i, _ in enumerate(request["prompt"])
        ]
        self.send_json(
            200 if found else 404, {"choices": choices} if found else {"error": {"message": f"no route {self.path}"}}
        )


@pytest.fixture(scope="module")
def predictor_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Predictor)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def ready(url: str) -> dict[str, Any]:
    return {
        "conditions": [cond("IngressReady"), cond("PredictorReady"), cond("Ready")],
        "url": f"http://{NAME}.{NS}.example.com",  # an ingress host a pipeline pod may not resolve
        "address": {"url": url},
    }


def play_controller(api: Any, status: dict[str, Any]) -> threading.Thread:
    """The KServe controller, in a thread: once the object exists, it becomes Ready a little later."""

    def play() -> None:
        deadline = time.monotonic() + 10
        while not exists(api, NAME, INFERENCE_SERVICE) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        Controller(api, NAME, [], INFERENCE_SERVICE).patch(status)

    thread = threading.Thread(target=play, daemon=True)
    thread.start()
    return thread


def runner(api: Any, logs: list[str] | None = None, **kw: Any) -> InferenceServiceRunner:
    log = logs.append if logs is not None else lambda _: None
    return InferenceServiceRunner(api, NS, ready_timeout_s=kw.pop("ready_timeout_s", 10), poll_s=0.02, log=log, **kw)


def test_serves_at_the_openai_route_until_the_block_ends(kube: Any, predictor_url: str) -> None:
    controller = play_controller(kube, ready(predictor_url))
    logs: list[str] = []
    with runner(kube, logs).serving(isvc()) as base_url:
        assert base_url == f"{predictor_url}/openai/v1"
        with CompletionsClient(base_url, "qwen-sft") as client:  # the evaluation's own client
            assert client.complete(["2+2=", "3+3="], max_tokens=1) == ["qwen-sft", "qwen-sft"]
        assert exists(kube, NAME, INFERENCE_SERVICE)
    controller.join(5)
    assert not exists(kube, NAME, INFERENCE_SERVICE)
    ref = f"InferenceService {NS}/{NAME}"
    assert logs[0] == f"{ref} created" and f"{ref}: Ready=True" in logs
    assert f"{ref} is Ready at {base_url}" in logs and logs[-1] == f"{ref} deleted"


def test_an_error_in_the_block_deletes_and_is_not_masked(kube: Any, predictor_url: str) -> None:
    play_controller(kube, ready(predictor_url))
    error = RuntimeError("scoring failed")
    with pytest.raises(RuntimeError) as info, runner(kube).serving(isvc()):
        raise error
    assert info.value is error
    assert not exists(kube, NAME, INFERENCE_SERVICE)


@pytest.mark.parametrize(
    "cancel", [lambda: sigterm(0), lambda: (_ for _ in ()).throw(KeyboardInterrupt)], ids=["sigterm", "ctrl-c"]
)
def test_cancellation_in_the_block_deletes(kube: Any, predictor_url: str, cancel: Any) -> None:
    play_controller(kube, ready(predictor_url))
    with pytest.raises(KeyboardInterrupt), runner(kube).serving(isvc()):
        cancel()
    assert not exists(kube, NAME, INFERENCE_SERVICE)


def core(api: Any) -> Any:
    from kubernetes import client

    return client.CoreV1Api(api)


@pytest.fixture
def predictor_pods(kube: Any) -> Iterator[None]:
    """What a GPU-starved, crash-looping predictor leaves in the cluster, next to unrelated objects."""
    label = {"serving.kserve.io/inferenceservice": NAME}
    pending = {
        "metadata": {"name": f"{NAME}-predictor-7d9f-abcde", "labels": label},
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/4 nodes are available: 4 Insufficient nvidia.com/gpu.",
                }
            ],
        },
    }
    crashing = {
        "metadata": {"name": f"{NAME}-predictor-7d9f-fghij", "labels": label},
        "status": {
            "phase": "Running",
            "initContainerStatuses": [
                {"name": "storage-initializer", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}
            ],
            "containerStatuses": [
                {
                    "name": "kserve-container",
                    "restartCount": 3,
                    "state": {
                        "waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}
                    },
                    "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
                }
            ],
        },
    }
    other = {
        "metadata": {"name": "other-predictor-1", "labels": {"serving.kserve.io/inferenceservice": "other"}},
        "status": {"phase": "Failed"},
    }

    def event(name: str, kind: str, obj: str, type_: str, reason: str, message: str, at: str) -> dict[str, Any]:
        return {
            "metadata": {"name": name},
            "involvedObject": {"kind": kind, "name": obj},
            "type": type_,
            "reason": reason,
            "message": message,
            "lastTimestamp": at,
            "count": 1,
        }

    events = [
        event(
            "e1",
            "Pod",
            pending["metadata"]["name"],
            "Warning",
            "FailedScheduling",
            "0/4 nodes are available",
            "2026-11-02T10:00:01Z",
        ),
        event(
            "e2",
            "InferenceService",
            NAME,
            "Warning",
            "InternalError",
            "fails to reconcile predictor",
            "2026-11-02T10:00:00Z",
        ),
        event("e3", "Pod", crashing["metadata"]["name"], "Normal", "Pulled", "image pulled", "2026-11-02T10:00:02Z"),
        event("e4", "Pod", "other-predictor-1", "Warning", "BackOff", "not ours", "2026-11-02T10:00:03Z"),
    ]
    for pod in (pending, crashing, other):
        core(kube).create_namespaced_pod(NS, pod, _preload_content=False)  # partial pods: no typed read-back
    for e in events:
        core(kube).create_namespaced_event(NS, e, _preload_content=False)
    yield
    for pod in (pending, crashing, other):
        core(kube).delete_namespaced_pod(pod["metadata"]["name"], NS, _preload_content=False)
    for e in events:
        core(kube).delete_namespaced_event(e["metadata"]["name"], NS, _preload_content=False)


@pytest.mark.usefixtures("predictor_pods")
def test_timeout_explains_itself_and_deletes(kube: Any) -> None:
    not_ready = cond("Ready", "False", "RevisionMissing", "Configuration is waiting for a Revision to become ready.")
    ctl = Controller(kube, NAME, [[cond("PredictorReady", "False"), not_ready]], INFERENCE_SERVICE)

    def slow_sleep(s: float) -> None:
        ctl.sleep(s)
        time.sleep(s)

    with pytest.raises(SftlabError) as info, runner(kube, ready_timeout_s=0.3, sleep=slow_sleep).serving(isvc()):
        pytest.fail("never Ready, never served")
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(
        f"InferenceService {NS}/{NAME} did not become Ready within 0.3 s (last condition: Ready=False "
        "(RevisionMissing: Configuration is waiting for a Revision to become ready.)); pods: "
    )
    assert (
        f"{NAME}-predictor-7d9f-abcde Pending, unschedulable: 0/4 nodes are available: 4 Insufficient nvidia.com/gpu."
        in msg
    )
    assert "kserve-container waiting: CrashLoopBackOff (back-off 40s restarting failed container)" in msg
    assert "kserve-container restarted 3x, last exit 137: OOMKilled" in msg
    assert "storage-initializer" not in msg  # it finished fine
    # Warnings for the service and its pods, oldest first; not the Normal event, not others' pods.
    assert msg.endswith(
        f"warnings: InferenceService/{NAME} InternalError: fails to reconcile predictor; "
        f"Pod/{NAME}-predictor-7d9f-abcde FailedScheduling: 0/4 nodes are available"
    )
    assert "other-predictor" not in msg and "Pulled" not in msg
    assert not exists(kube, NAME, INFERENCE_SERVICE)


@pytest.mark.usefixtures("predictor_pods")
def test_a_predictor_that_fails_to_load_fails_fast(kube: Any) -> None:
    failed = {
        "conditions": [cond("Ready", "False")],
        "modelStatus": {
            "transitionStatus": "BlockedByFailedLoad",
            "lastFailureInfo": {"reason": "ModelLoadFailed", "message": "CUDA out of memory", "exitCode": 1},
        },
    }
    ctl = Controller(kube, NAME, [], INFERENCE_SERVICE)
    started = time.monotonic()
    with pytest.raises(SftlabError) as info, runner(kube, sleep=lambda _: ctl.patch(failed)).serving(isvc()):
        pytest.fail("never Ready, never served")
    assert time.monotonic() - started < 3  # not the 10 s timeout
    assert str(info.value).startswith(
        f"InferenceService {NS}/{NAME} failed: BlockedByFailedLoad "
        "(ModelLoadFailed: CUDA out of memory, exit code 1); pods: "
    )
    assert "OOMKilled" in str(info.value)
    assert not exists(kube, NAME, INFERENCE_SERVICE)


def test_an_existing_service_is_an_error_and_survives(kube: Any) -> None:
    m = isvc()
    create(kube, {**m, "metadata": {**m["metadata"], "namespace": NS}}, INFERENCE_SERVICE)
    try:
        existing = rf"already exists and is not this run's.*kubectl delete inferenceservice -n {NS} {NAME}"
        with pytest.raises(SftlabError, match=existing), runner(kube).serving(m):
            pytest.fail("someone else's service is not served")
        assert exists(kube, NAME, INFERENCE_SERVICE)
    finally:
        delete(kube, NAME, INFERENCE_SERVICE)
