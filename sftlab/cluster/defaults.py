"""The cluster's defaults (the chart's ``sftlab-defaults`` ConfigMap) for the objects sftlab creates.

Pipeline tasks get the ConfigMap as env (``sftlab.kfp.pipelines.trial.CLUSTER_DEFAULTS``); the
pods a stage creates in turn (multi-node training nodes, evaluation predictors) are not pipeline
pods, so whatever the cluster asks of pods reaches them only through here: image pull secrets,
the GPU node placement and runtime class, the priority classes, and the environment a training
node needs to reach the platform (the store's endpoint, MLflow's proxied multipart uploads). A
spec's own node selector or tolerations win over the cluster's GPU placement.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from sftlab.errors import SftlabError
from sftlab.spec.problems import describe_errors
from sftlab.spec.schema import TaskResources, Toleration

# Env a training node gets from its stage pod when set there (what the chart's ConfigMap gave it).
NODE_ENV = (
    "SFTLAB_STORE_S3_ENDPOINT",
    "SFTLAB_STORE_BUCKET",
    "MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD",
    "MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE",
    "MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE",
)


class ClusterDefaults(BaseModel):
    image_pull_secrets: list[str] = []
    gpu_node_selector: dict[str, str] = {}
    gpu_tolerations: list[Toleration] = []
    gpu_runtime_class: str | None = None
    train_priority_class: str | None = None
    eval_priority_class: str | None = None
    node_env: dict[str, str] = {}

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ClusterDefaults:
        """From the ConfigMap's keys; a malformed value is one line naming the variable."""
        env = os.environ if env is None else env

        def parsed(var: str) -> Any:
            text = env.get(var, "").strip()
            if not text:
                return None
            try:
                return json.loads(text)
            except ValueError:
                expected = "expected JSON (from the sftlab-defaults ConfigMap)"
                raise SftlabError(f"${var}: {expected}, got {text[:80]!r}") from None

        fields: dict[str, Any] = {
            "image_pull_secrets": [s.strip() for s in env.get("SFTLAB_IMAGE_PULL_REFS", "").split(",") if s.strip()],
            "gpu_node_selector": parsed("SFTLAB_GPU_NODE_SELECTOR") or {},
            "gpu_tolerations": parsed("SFTLAB_GPU_TOLERATIONS") or [],
            "gpu_runtime_class": env.get("SFTLAB_GPU_RUNTIME_CLASS") or None,
            "train_priority_class": env.get("SFTLAB_TRAIN_PRIORITY_CLASS") or None,
            "eval_priority_class": env.get("SFTLAB_EVAL_PRIORITY_CLASS") or None,
            "node_env": {var: env[var] for var in NODE_ENV if env.get(var)},
        }
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:
            raise SftlabError(f"cluster defaults (the sftlab-defaults ConfigMap): {describe_errors(exc)[0]}") from None

    def placement(self, resources: TaskResources) -> dict[str, Any]:
        """nodeSelector/tolerations: the spec's where it sets them, else the cluster's for GPU pods."""
        gpu = resources.gpus > 0
        selector = dict(resources.node_selector) or (dict(self.gpu_node_selector) if gpu else {})
        tolerations = resources.tolerations or (self.gpu_tolerations if gpu else [])
        spec: dict[str, Any] = {}
        if selector:
            spec["nodeSelector"] = selector
        if tolerations:
            spec["tolerations"] = [t.model_dump(exclude_none=True) for t in tolerations]
        return spec

    def pod_fields(self, resources: TaskResources, stage: Literal["train", "evaluate"]) -> dict[str, Any]:
        """priorityClassName, runtimeClassName (GPU pods) and imagePullSecrets, where set."""
        fields: dict[str, Any] = {}
        priority = self.train_priority_class if stage == "train" else self.eval_priority_class
        if priority:
            fields["priorityClassName"] = priority
        if resources.gpus and self.gpu_runtime_class:
            fields["runtimeClassName"] = self.gpu_runtime_class
        if self.image_pull_secrets:
            fields["imagePullSecrets"] = [{"name": name} for name in self.image_pull_secrets]
        return fields
