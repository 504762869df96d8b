"""Every object sftlab creates on a cluster, checked against the upstream CRDs it must satisfy.

The CRDs are upstream's files, verbatim (``tests/upstream/``), at the oldest and newest supported
release; each manifest must pass both with unknown fields refused (``fieldValidation=Strict``,
which sftlab sends). kmock applies the same checks to every create, so every lifecycle test that
creates an object also holds the contract; the tests here show that the checks bite.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from sftlab.cluster.objects import ObjectRunner
from sftlab.cluster.pytorchjob import PYTORCHJOB
from sftlab.cluster.trainjob import TRAINJOB
from sftlab.errors import SftlabError
from sftlab.serving.inference_service import INFERENCE_SERVICE
from sftlab.spec.job import TrialJob
from sftlab.spec.schema import TaskResources
from tests.support import upstream
from tests.support.kube import NS, KubeServer, custom
from tests.test_inference_service import ADAPTERS, CPU, GPU, VLLM, isvc
from tests.test_pytorchjob import pytorchjob_for
from tests.test_trainjob import manifest_for, quickstart_job

job = pytest.fixture(scope="module")(quickstart_job)
CPU_ONLY = TaskResources(cpu="2", memory="8Gi")


def _variants(job: TrialJob) -> dict[str, tuple[Any, dict[str, Any]]]:
    return {
        "trainjob/gpu": (TRAINJOB, manifest_for(job)),
        "trainjob/cpu": (TRAINJOB, manifest_for(job, CPU_ONLY, secrets=[], cache_pvc=None)),
        "pytorchjob/gpu": (PYTORCHJOB, pytorchjob_for(job)),
        "pytorchjob/cpu": (PYTORCHJOB, pytorchjob_for(job, CPU_ONLY, nodes=1, secrets=[], cache_pvc=None)),
        "isvc/huggingface-cpu": (INFERENCE_SERVICE, isvc()),
        "isvc/vllm-gpu": (INFERENCE_SERVICE, isvc(VLLM, GPU)),
        "isvc/vllm-lora": (INFERENCE_SERVICE, isvc(VLLM, GPU, adapters=ADAPTERS, max_lora_rank=8)),
        "isvc/huggingface-gpu": (INFERENCE_SERVICE, isvc(resources=GPU)),
        "isvc/cpu-labels": (INFERENCE_SERVICE, isvc(resources=CPU, labels={"sftlab.trial_key": "abc"})),
    }


VARIANTS = [
    "trainjob/gpu",
    "trainjob/cpu",
    "pytorchjob/gpu",
    "pytorchjob/cpu",
    "isvc/huggingface-cpu",
    "isvc/vllm-gpu",
    "isvc/vllm-lora",
    "isvc/huggingface-gpu",
    "isvc/cpu-labels",
]


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_manifest_passes_the_oldest_and_newest_crd(job: TrialJob, variant: str) -> None:
    resource, manifest = _variants(job)[variant]
    upstream.assert_valid(manifest, resource.group, resource.plural, resource.version)


def test_an_unknown_field_is_refused_at_any_depth_by_every_release(job: TrialJob) -> None:
    manifest = copy.deepcopy(isvc())
    manifest["spec"]["predictor"]["model"]["storageURI"] = "s3://typo"  # the field is storageUri
    found = upstream.problems(manifest, "serving.kserve.io", "inferenceservices", "v1beta1")
    assert {(p.release, p.field, p.unknown) for p in found} == {
        ("kserve-v0.16.0", "spec.predictor.model.storageURI", True),
        ("kserve-v0.20.0", "spec.predictor.model.storageURI", True),
    }


def test_a_field_only_the_newest_release_has_fails_on_the_oldest() -> None:
    manifest = copy.deepcopy(isvc())
    manifest["spec"]["predictor"]["hostnameOverride"] = "x"  # added after KServe 0.16
    found = upstream.problems(manifest, "serving.kserve.io", "inferenceservices", "v1beta1")
    assert [(p.release, p.field) for p in found] == [("kserve-v0.16.0", "spec.predictor.hostnameOverride")]


def test_a_wrong_type_is_a_schema_violation(job: TrialJob) -> None:
    manifest = copy.deepcopy(manifest_for(job))
    manifest["spec"]["trainer"]["numNodes"] = "two"
    (problem,) = upstream.problems(manifest, TRAINJOB.group, TRAINJOB.plural, TRAINJOB.version)
    assert (problem.field, problem.unknown) == ("spec.trainer.numNodes", False)
    assert "'two' is not of type 'integer'" in problem.message


@pytest.fixture(scope="module")
def kube() -> Any:
    from kubernetes import client

    with KubeServer() as server:
        api = client.ApiClient(client.Configuration(host=server.url))
        yield server, api
        api.close()


def _create(api: Any, manifest: dict[str, Any], **kw: Any) -> dict[str, Any]:
    r = INFERENCE_SERVICE
    return custom(api).create_namespaced_custom_object(r.group, r.version, NS, r.plural, manifest, **kw)


def test_kmock_answers_like_the_api_server(kube: Any) -> None:
    from kubernetes.client.exceptions import ApiException

    server, api = kube
    typo = copy.deepcopy(isvc())
    typo["metadata"]["name"] = "typo"
    typo["spec"]["predictor"]["model"]["storageURI"] = "s3://typo"
    with pytest.raises(ApiException) as strict:
        _create(api, typo, field_validation="Strict")
    assert (strict.value.status, strict.value.reason) == (400, "Bad Request")
    status = json.loads(strict.value.body)
    assert (status["kind"], status["code"], status["reason"]) == ("Status", 400, "BadRequest")
    assert status["message"] == 'strict decoding error: unknown field "spec.predictor.model.storageURI"'

    stored = _create(api, typo)  # the default, Warn: stored without the field, with a warning
    assert "storageURI" not in stored["spec"]["predictor"]["model"]
    assert 'unknown field "spec.predictor.model.storageURI"' in server.warnings

    invalid = copy.deepcopy(isvc())
    invalid["metadata"]["name"] = "invalid"
    invalid["spec"]["predictor"]["minReplicas"] = "one"
    with pytest.raises(ApiException) as refused:
        _create(api, invalid, field_validation="Strict")
    assert refused.value.status == 422
    status = json.loads(refused.value.body)
    assert (status["code"], status["reason"], status["details"]["kind"]) == (422, "Invalid", "InferenceService")
    assert [c["field"] for c in status["details"]["causes"]] == ["spec.predictor.minReplicas"]
    assert status["message"].startswith('InferenceService.serving.kserve.io "invalid" is invalid: ')


def test_sftlab_creates_with_strict_field_validation_and_fails_in_one_line(kube: Any) -> None:
    _server, api = kube
    manifest = copy.deepcopy(isvc())
    manifest["metadata"]["name"] = "strict"
    manifest["spec"]["predictor"]["model"]["storageURI"] = "s3://typo"
    runner = ObjectRunner(api, INFERENCE_SERVICE, NS, poll_s=0.1, timeout_s=5, log=lambda _: None)
    with pytest.raises(SftlabError) as failed, runner.created(manifest):
        pass
    message = str(failed.value)
    assert "\n" not in message
    expected = 'HTTP 400 Bad Request: strict decoding error: unknown field "spec.predictor.model.storageURI"'
    assert f"create failed: {expected}" in message


CLUSTER_ENV = {
    "SFTLAB_IMAGE_PULL_REFS": "registry-a,registry-b",
    "SFTLAB_GPU_NODE_SELECTOR": '{"nvidia.com/gpu.present": "true"}',
    "SFTLAB_GPU_TOLERATIONS": '[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]',
    "SFTLAB_GPU_RUNTIME_CLASS": "nvidia",
    "SFTLAB_TRAIN_PRIORITY_CLASS": "sftlab-training",
    "SFTLAB_EVAL_PRIORITY_CLASS": "sftlab-evaluation",
    "SFTLAB_STORE_S3_ENDPOINT": "http://sftlab-minio.ml.svc:9000",
    "MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD": "true",
}


def test_the_clusters_defaults_reach_every_pod_sftlab_creates(job: TrialJob, monkeypatch: pytest.MonkeyPatch) -> None:
    """The chart's GPU placement, runtime and priority classes, pull secrets and node env used to
    stop at the pipeline pods; they reach training nodes and predictors, and pass the CRDs."""
    for var, value in CLUSTER_ENV.items():
        monkeypatch.setenv(var, value)
    gpu = TaskResources(cpu="8", memory="64Gi", gpus=4)  # no placement of its own
    secrets = [{"name": "registry-a"}, {"name": "registry-b"}]
    toleration = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]

    pytorch = pytorchjob_for(job, gpu)
    for replica in pytorch["spec"]["pytorchReplicaSpecs"].values():
        assert replica["template"]["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}
        pod = replica["template"]["spec"]
        assert pod["priorityClassName"] == "sftlab-training" and pod["runtimeClassName"] == "nvidia"
        assert pod["imagePullSecrets"] == secrets and pod["tolerations"] == toleration
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        assert env["SFTLAB_STORE_S3_ENDPOINT"] == "http://sftlab-minio.ml.svc:9000"
        assert env["MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD"] == "true"
    upstream.assert_valid(pytorch, PYTORCHJOB.group, PYTORCHJOB.plural, PYTORCHJOB.version)

    trainjob = manifest_for(job, gpu, secrets=[], cache_pvc=None)
    (patch,) = trainjob["spec"]["runtimePatches"]
    (node,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = node["template"]["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == secrets and pod["tolerations"] == toleration
    assert "priorityClassName" not in pod  # Trainer 2.2's patches have no field: the runtime's own
    upstream.assert_valid(trainjob, TRAINJOB.group, TRAINJOB.plural, TRAINJOB.version)

    service = isvc(VLLM, gpu)["spec"]["predictor"]
    assert service["priorityClassName"] == "sftlab-evaluation" and service["runtimeClassName"] == "nvidia"
    assert service["imagePullSecrets"] == secrets and service["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    upstream.assert_valid(isvc(VLLM, gpu), INFERENCE_SERVICE.group, INFERENCE_SERVICE.plural, "v1beta1")

    # The spec's own placement wins; CPU pods get no GPU placement or runtime class.
    own = isvc(VLLM, GPU)["spec"]["predictor"]
    assert own["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    cpu = isvc()["spec"]["predictor"]
    assert "nodeSelector" not in cpu and "runtimeClassName" not in cpu and cpu["imagePullSecrets"] == secrets


def test_a_malformed_cluster_default_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from sftlab.cluster.defaults import ClusterDefaults

    monkeypatch.setenv("SFTLAB_GPU_TOLERATIONS", "[{key: nvidia}]")
    with pytest.raises(SftlabError, match=r"^\$SFTLAB_GPU_TOLERATIONS: expected JSON \(from the sftlab-defaults"):
        ClusterDefaults.from_env()
    monkeypatch.setenv("SFTLAB_GPU_TOLERATIONS", '[{"operator": "Exists"}]')
    expected = (
        r"^cluster defaults \(the sftlab-defaults ConfigMap\): gpu_tolerations\[0\].key: required field is missing$"
    )
    with pytest.raises(SftlabError, match=expected):
        ClusterDefaults.from_env()
