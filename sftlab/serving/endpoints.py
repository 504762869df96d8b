"""Where evaluation finds a served model: a local server process, or KServe InferenceServices.

``serve_models`` takes the models to score — one base model, each either whole or with a LoRA
adapter, each with a label — and yields an OpenAI-compatible endpoint per label. Locally each
model gets its own ``kserve.ModelServer`` process in turn (adapters merged at load). On a cluster
(``evaluation.backend: kserve``) full models get one InferenceService each, while all adapters of
one base model share ONE InferenceService (vLLM ``--enable-lora``), each adapter addressed by its
own model name: the base model is downloaded and started once for all of them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from sftlab.errors import SftlabError
from sftlab.spec.schema import EvaluationConfig, KServeConfig, ModelSpec, TaskResources
from sftlab.spec.uris import classify_uri

ARTIFACTS_DESTINATION_ENV = "SFTLAB_ARTIFACTS_DESTINATION"
SERVICE_ACCOUNT_ENV = "SFTLAB_SERVICE_ACCOUNT"


@dataclass(frozen=True)
class Endpoint:
    base_url: str  # OpenAI-compatible, e.g. http://127.0.0.1:8080/openai/v1
    model: str  # the name requests use


@dataclass(frozen=True)
class ModelToServe:
    """One model to score. ``fetch`` gives a local folder (local backend); ``storage_uri`` is where a
    cluster server reads the same files. Adapters are served on top of the base model."""

    label: str
    fetch: Callable[[Path], Path]
    storage_uri: Callable[[], str]
    adapter: bool = False


def model_storage_uri(model: ModelSpec) -> str:
    """The URI a KServe storage initializer downloads a base model from."""
    kind = classify_uri(model.uri)
    if kind == "s3":
        return model.uri
    if kind == "hub":  # the storage initializer's hf://owner/model[:revision] (kserve_storage's hf tests)
        return f"hf://{model.uri}:{model.revision}" if model.revision else f"hf://{model.uri}"
    raise SftlabError(
        f"base model {model.name}: evaluation.backend kserve needs the model on s3:// or the hub, got {model.uri!r}"
    )


def artifact_storage_uri(artifact_uri: str, path: str, config: KServeConfig) -> str:
    """The s3:// URI of a run artifact, from the run's ``artifact_uri``.

    Behind an MLflow server with ``--serve-artifacts`` runs have ``mlflow-artifacts:/…`` URIs that
    only the server resolves; they map onto its ``--artifacts-destination`` prefix.
    """
    if artifact_uri.startswith("s3://"):
        return f"{artifact_uri.rstrip('/')}/{path}"
    if artifact_uri.startswith("mlflow-artifacts:"):
        destination = config.artifacts_destination or os.environ.get(ARTIFACTS_DESTINATION_ENV)
        if not destination:
            raise SftlabError(
                f"evaluation.kserve.artifacts_destination: required to serve {artifact_uri} from S3 "
                f"(the MLflow server's --artifacts-destination; the Helm chart sets ${ARTIFACTS_DESTINATION_ENV})"
            )
        return f"{destination.rstrip('/')}/{urlsplit(artifact_uri).path.strip('/')}/{path}"
    raise SftlabError(f"evaluation.backend kserve: artifacts at {artifact_uri} are not on S3; use an S3 artifact store")


@contextmanager
def _local(
    base: Callable[[Path], Path], model: ModelToServe, evaluation: EvaluationConfig, tmp: Path
) -> Iterator[Endpoint]:
    from sftlab.serving.process import LocalModelServer

    weights = model.fetch(tmp / model.label)
    model_dir, adapter_dir = (base(tmp / "base"), weights) if model.adapter else (weights, None)
    with LocalModelServer(
        model_dir,
        adapter_dir=adapter_dir,
        name="sftlab-model",
        ready_timeout=evaluation.ready_timeout_s,
        log_path=tmp / f"{model.label}.server.log",
    ) as server:
        yield Endpoint(server.base_url, server.model_name)


def serve_locally(
    base: Callable[[Path], Path], models: Sequence[ModelToServe], evaluation: EvaluationConfig, tmp: Path
) -> Generator[tuple[str, Endpoint], None, None]:
    """(label, endpoint) for each model, one local server at a time."""
    for model in models:
        with _local(base, model, evaluation, tmp) as endpoint:
            yield model.label, endpoint


def serve_on_kserve(
    name: str,
    base_uri: str,
    models: Sequence[ModelToServe],
    evaluation: EvaluationConfig,
    resources: TaskResources,
    max_lora_rank: int | None = None,
    log: Callable[[str], None] = print,
) -> Generator[tuple[str, Endpoint], None, None]:
    """(label, endpoint) per model: one InferenceService per full model, one shared by all adapters."""
    from sftlab.cluster.objects import dns_name
    from sftlab.serving.inference_service import InferenceServiceRunner, inference_service_manifest

    config = evaluation.kserve
    if not config.service_account and os.environ.get(SERVICE_ACCOUNT_ENV):
        config = config.model_copy(update={"service_account": os.environ[SERVICE_ACCOUNT_ENV]})
    runner = InferenceServiceRunner.for_config(config, log=log)
    adapters = [m for m in models if m.adapter]
    if adapters:
        manifest = inference_service_manifest(
            dns_name(f"{name}-lora"),
            base_uri,
            config,
            resources,
            served_model_name="base",
            adapters={m.label: m.storage_uri() for m in adapters},
            max_lora_rank=max_lora_rank,
        )
        with runner.serving(manifest) as url:
            for model in adapters:
                yield model.label, Endpoint(url, model.label)
    for model in (m for m in models if not m.adapter):
        manifest = inference_service_manifest(
            dns_name(f"{name}-{model.label}"), model.storage_uri(), config, resources, served_model_name=model.label
        )
        with runner.serving(manifest) as url:
            yield model.label, Endpoint(url, model.label)
