"""KServe InferenceServices for cluster evaluation (``evaluation.backend: kserve``).

``inference_service_manifest`` serves one model with the runtime ``evaluation.kserve.runtime``
names: ``sftlab``, the chart's ServingRuntime running sftlab's own server (the one the local
backend runs, so it answers log-likelihoods too), selected by name; or KServe's Hugging Face
runtime on its Transformers backend (generation only: it answers ``logprobs: null``) or its vLLM
backend on GPUs, optionally with LoRA adapters on the same server.
``InferenceServiceRunner.serving`` creates it, waits for ``Ready`` (``ready_timeout_s``), yields the
OpenAI-compatible base URL, and deletes it when the block ends, however it ends (see
``sftlab.cluster.objects``). A failed or late start is one error line with the predictor pods'
states and the latest Warning events.

LoRA adapters are served by ONE base-model server through vLLM (``--enable-lora --lora-modules
name=path ...``, loaded at start-up). The base and each adapter are separate ``predictor.storageUris``
entries (KServe ≥ 0.16, kserve/kserve#4702): the storage initializer downloads each, from S3 or
anywhere it reads, to its own ``mountPath`` under /mnt/models; all paths must share a parent below
``/``, and ``storageUris`` excludes ``model.storageUri``. On Serverless, Knative's init-container
feature flag must be on. Without adapters the plain ``model.storageUri`` is used, which every KServe
release reads.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from sftlab.cluster.defaults import ClusterDefaults
from sftlab.cluster.objects import (
    LABEL_MANAGED_BY,
    MAX_DETAIL,
    MAX_NAME,
    CustomResource,
    Failed,
    ObjectRunner,
    active_conditions,
    api_client,
    cluster_namespace,
    is_dns_name,
    label_value,
    one_line,
    pod_resources,
    shm_volume,
)
from sftlab.errors import SftlabError
from sftlab.spec.schema import KServeConfig, TaskResources

INFERENCE_SERVICE = CustomResource("serving.kserve.io", "v1beta1", "inferenceservices", "InferenceService")

# KServe labels every predictor pod with its InferenceService's name.
POD_LABEL = "serving.kserve.io/inferenceservice"
DEPLOYMENT_MODE = "serving.kserve.io/deploymentMode"
# Knative gives up on a revision that is not ready within 10 minutes by default; LLMs can take longer.
PROGRESS_DEADLINE = "serving.knative.dev/progress-deadline"
MODEL_FORMAT = "huggingface"
SFTLAB_MODEL_FORMAT = "sftlab-causal-lm"  # the chart's ServingRuntime's format (autoSelect: false)
SERVING_RUNTIME_ENV = "SFTLAB_SERVING_RUNTIME"
DEFAULT_SERVING_RUNTIME = "sftlab-eval"
BASE_DIR = "/mnt/models/base"
ADAPTERS_DIR = "/mnt/models/adapters"
# The Hugging Face runtime serves the OpenAI API under this prefix.
OPENAI_PATH = "/openai/v1"
# The --max-lora-rank values recent vLLM accepts (vLLM's LoRAConfig; older releases stop at 64 or 256).
LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
# modelStatus.transitionStatus of a predictor that crashed while loading or cannot be deployed.
FAILED_TRANSITIONS = ("BlockedByFailedLoad", "InvalidSpec")

_ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def inference_service_manifest(
    name: str,
    storage_uri: str,
    config: KServeConfig,
    resources: TaskResources,
    *,
    served_model_name: str,
    adapters: Mapping[str, str] | None = None,
    max_lora_rank: int | None = None,
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """An InferenceService serving the model at ``storage_uri`` as ``served_model_name``.

    ``adapters`` maps served adapter names to their URIs (vLLM runtime only); ``max_lora_rank`` is
    their largest LoRA ``r`` (vLLM's default is 16). The namespace is the runner's, so the manifest
    names none. One replica, never scaled: evaluation wants one warm server, not autoscaling.
    """
    from kserve.models import (
        V1beta1InferenceService,
        V1beta1InferenceServiceSpec,
        V1beta1ModelFormat,
        V1beta1ModelSpec,
        V1beta1PredictorSpec,
        V1beta1StorageUri,
    )
    from kubernetes.client import ApiClient, V1ObjectMeta

    adapters = dict(adapters or {})
    _check(name, config, resources, served_model_name, adapters)
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    if resources.shm_size:  # vLLM's tensor-parallel workers talk through /dev/shm
        volume, mount = shm_volume(resources.shm_size)
        volumes.append(volume)
        mounts.append(mount)
    own = config.runtime == "sftlab"
    model = V1beta1ModelSpec(
        name=None,  # the SDK's default is "", which would show up in the manifest
        model_format=V1beta1ModelFormat(name=SFTLAB_MODEL_FORMAT if own else MODEL_FORMAT),
        runtime=serving_runtime_name(config) if own else None,
        storage_uri=None if adapters else storage_uri,
        args=_server_args(config, resources, served_model_name, adapters, max_lora_rank),
        resources=predictor_resources(resources) or None,
        volume_mounts=mounts or None,
    )
    storage_uris = None
    if adapters:
        storage_uris = [V1beta1StorageUri(uri=storage_uri, mount_path=BASE_DIR)]
        storage_uris += [V1beta1StorageUri(uri=uri, mount_path=f"{ADAPTERS_DIR}/{a}") for a, uri in adapters.items()]
    defaults = ClusterDefaults.from_env()
    pod = defaults.placement(resources)
    fields = defaults.pod_fields(resources, "evaluate")
    predictor = V1beta1PredictorSpec(
        model=model,
        min_replicas=1,
        max_replicas=1,
        storage_uris=storage_uris,
        service_account_name=config.service_account,
        node_selector=pod.get("nodeSelector"),
        tolerations=pod.get("tolerations"),
        volumes=volumes or None,
        priority_class_name=fields.get("priorityClassName"),
        runtime_class_name=fields.get("runtimeClassName"),
        image_pull_secrets=fields.get("imagePullSecrets"),
        annotations=(
            {PROGRESS_DEADLINE: f"{math.ceil(config.ready_timeout_s)}s"}
            if config.deployment_mode == "Serverless"
            else None
        ),
    )
    isvc = V1beta1InferenceService(
        api_version=INFERENCE_SERVICE.api_version,
        kind=INFERENCE_SERVICE.kind,
        metadata=V1ObjectMeta(
            name=name,
            labels={LABEL_MANAGED_BY: "sftlab"} | {k: label_value(v) for k, v in (labels or {}).items()},
            annotations={DEPLOYMENT_MODE: config.deployment_mode},
        ),
        spec=V1beta1InferenceServiceSpec(predictor=predictor),
    )
    return ApiClient().sanitize_for_serialization(isvc)


def _check(name: str, config: KServeConfig, resources: TaskResources, served: str, adapters: dict[str, str]) -> None:
    if not is_dns_name(name):
        raise SftlabError(
            f"inference service: {name!r} is not a DNS-1035 name of at most {MAX_NAME} chars "
            "(see sftlab.cluster.objects.dns_name)"
        )
    if config.runtime == "vllm" and not resources.gpus:
        raise SftlabError(
            "inference service: runtime vllm needs GPUs (resources.evaluate.gpus), or use runtime huggingface"
        )
    if adapters and config.runtime != "vllm":
        raise SftlabError(
            "inference service: LoRA adapters are served by vLLM: set evaluation.kserve.runtime to vllm (GPU)"
        )
    for adapter in adapters:
        if not _ADAPTER_NAME.match(adapter) or adapter == served:
            raise SftlabError(
                f"inference service: bad adapter name {adapter!r} (letters, digits, . _ -; not the base model's name)"
            )


def serving_runtime_name(config: KServeConfig) -> str:
    return config.serving_runtime or os.environ.get(SERVING_RUNTIME_ENV) or DEFAULT_SERVING_RUNTIME


def predictor_resources(resources: TaskResources) -> dict[str, Any]:
    """Requests and limits for the predictor's container, cpu and memory both set where given.

    KServe merges this container into the runtime's, key by key: a limit the predictor leaves out
    stays the runtime's (KServe's Hugging Face runtime: cpu "1", memory 2Gi), which would cap the
    server below what the spec asks, or fall below its request and be refused.
    """
    merged = pod_resources(resources)
    requests, limits = merged.setdefault("requests", {}), merged.setdefault("limits", {})
    for key in ("cpu", "memory"):
        if key in requests:
            limits[key] = requests[key]
    return {k: v for k, v in merged.items() if v}


def _server_args(
    config: KServeConfig, resources: TaskResources, served: str, adapters: dict[str, str], max_lora_rank: int | None
) -> list[str]:
    """Arguments of the runtime's server; they come after the ServingRuntime's own, so they win."""
    if config.runtime == "sftlab":  # python -m sftlab.serving.server (the image's entrypoint)
        return [f"--name={served}"]
    args = [f"--model_name={served}"]
    if config.runtime == "vllm":
        args.append("--backend=vllm")
        if resources.gpus > 1:
            args.append(f"--tensor-parallel-size={resources.gpus}")
    else:
        args.append("--backend=huggingface")
        if not resources.gpus:
            args.append("--dtype=float32")  # CPUs lack fast half-precision kernels
    if config.max_model_len:
        args.append(f"--max_model_len={config.max_model_len}")
    if adapters:
        args += [f"--model_dir={BASE_DIR}", "--enable-lora"]
        if max_lora_rank:
            args.append(f"--max-lora-rank={_lora_rank(max_lora_rank)}")
        # Last: --lora-modules takes every value up to the next flag.
        args += ["--lora-modules", *(f"{adapter}={ADAPTERS_DIR}/{adapter}" for adapter in adapters)]
    return args


def _lora_rank(rank: int) -> int:
    fits = [r for r in LORA_RANKS if r >= rank]
    if not fits:
        raise SftlabError(
            f"inference service: LoRA rank {rank} is above vLLM's largest --max-lora-rank ({LORA_RANKS[-1]})"
        )
    return fits[0]


def openai_base_url(obj: Mapping[str, Any]) -> str:
    """The OpenAI API base of a Ready InferenceService.

    The cluster-internal ``status.address.url`` comes first: ``status.url`` names the ingress host,
    which a pipeline pod may not resolve.
    """
    url = _url(obj)
    if not url:
        raise SftlabError(
            f"{INFERENCE_SERVICE.kind} {(obj.get('metadata') or {}).get('name')} has no URL in its status"
        )
    return url.rstrip("/") + OPENAI_PATH


def _ready(obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    model = status.get("modelStatus") or {}
    if model.get("transitionStatus") in FAILED_TRANSITIONS:
        info = model.get("lastFailureInfo") or {}
        detail = ": ".join(p for p in (one_line(info.get("reason")), one_line(info.get("message"), MAX_DETAIL)) if p)
        exit_code = f", exit code {info['exitCode']}" if info.get("exitCode") else ""
        raise Failed(f"{model['transitionStatus']}" + (f" ({detail}{exit_code})" if detail or exit_code else ""))
    return "Ready" in active_conditions(obj) and bool(_url(obj))


def _url(obj: Mapping[str, Any]) -> str | None:
    status = obj.get("status") or {}
    return (status.get("address") or {}).get("url") or status.get("url")


class InferenceServiceRunner:
    """Create an InferenceService, wait until it is Ready, and always delete it afterwards."""

    def __init__(
        self,
        api_client: Any,
        namespace: str,
        ready_timeout_s: float = 1800.0,
        poll_s: float = 5.0,
        log: Callable[[str], None] = print,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.objects = ObjectRunner(
            api_client,
            INFERENCE_SERVICE,
            namespace,
            poll_s=poll_s,
            timeout_s=ready_timeout_s,
            log=log,
            clock=clock,
            sleep=sleep,
        )

    @classmethod
    def for_config(cls, config: KServeConfig, log: Callable[[str], None] = print) -> InferenceServiceRunner:
        """A runner on this pod's cluster (else the kubeconfig's), in ``config.namespace`` or the pod's own."""
        namespace = cluster_namespace(config.namespace, setting="evaluation.kserve.namespace")
        return cls(api_client(), namespace, config.ready_timeout_s, log=log)

    @contextmanager
    def serving(self, manifest: dict[str, Any]) -> Iterator[str]:
        """Serve ``manifest`` and yield its OpenAI base URL (``http://…/openai/v1``) while the block runs."""
        objects = self.objects
        with objects.created(manifest) as name:
            obj = objects.wait(
                name, _ready, goal="become Ready", diagnose=lambda: objects.diagnostics(name, {POD_LABEL: name})
            )
            url = openai_base_url(obj)
            objects.log(f"{objects.ref(name)} is Ready at {url}")
            yield url
