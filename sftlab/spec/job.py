"""What a stage receives: one trial plus where to track and store it, as one JSON document.

The same document is a KFP pipeline parameter (a few KB, far under KFP's 10,000-character cap)
and the argument of the stage functions, so local and cluster runs are configured identically.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from sftlab.spec.grid import Trial
from sftlab.spec.schema import ResourcesConfig, Spec, StorageConfig, Strict

CACHE_MOUNT = "/cache"  # where a shared model-cache volume is mounted in cluster pods


def cache_env(mount: str = CACHE_MOUNT) -> dict[str, str]:
    """Env that puts sftlab's and Hugging Face's download caches on a shared volume.

    Every kind of pod (pipeline task, TrainJob node) must lay the volume out the same way, or
    each would download the same models into its own corner of it.
    """
    return {"SFTLAB_CACHE": f"{mount}/sftlab", "HF_HOME": f"{mount}/hf"}


class RunContext(Strict):
    tracking_uri: str
    experiment: str
    root: str
    storage: StorageConfig = StorageConfig()
    register_models: bool = True
    # Cluster placement, for stages that start pods of their own (TrainJobs, InferenceServices).
    image: str | None = None
    resources: ResourcesConfig = ResourcesConfig()
    sweep_run_id: str | None = None
    trial_run_id: str | None = None
    kfp_run_id: str | None = None
    kfp_task: str | None = None

    @property
    def cache_dir(self) -> Path:
        return Path(os.environ.get("SFTLAB_CACHE") or Path(self.root) / "cache")


class TrialJob(Strict):
    trial: Trial
    context: RunContext

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str) -> TrialJob:
        return cls.model_validate_json(text)

    def for_task(self, kfp_run_id: str | None, kfp_task: str | None) -> TrialJob:
        """The same job, annotated with the KFP run and task executing it (for cross-links)."""
        real = {k: v for k, v in {"kfp_run_id": kfp_run_id, "kfp_task": kfp_task}.items() if v and "{{" not in v}
        return self.model_copy(update={"context": self.context.model_copy(update=real)})


def tracking_uri_for(spec: Spec) -> str:
    """The spec's tracking URI, else $MLFLOW_TRACKING_URI, else the embedded sqlite store."""
    if spec.tracking.uri:
        return spec.tracking.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    root = Path(spec.tracking.root).resolve()
    return f"sqlite:///{root / 'mlflow.db'}"


def context_for(spec: Spec) -> RunContext:
    return RunContext(
        tracking_uri=tracking_uri_for(spec),
        experiment=spec.experiment,
        root=str(Path(spec.tracking.root).resolve()),
        storage=spec.storage,
        register_models=spec.tracking.register_models,
        image=spec.pipeline.image,
        resources=spec.resources,
    )


def checkpoint_dir(job: TrialJob) -> Path:
    """Where transformers writes a trial's checkpoints: keyed by trial, so a re-run finds them."""
    return Path(job.context.root) / "checkpoints" / job.trial.key


class StageResult(BaseModel):
    """What a stage hands the next one: small metrics and outputs (URIs, run ids), never big files."""

    metrics: dict[str, float] = {}
    outputs: dict[str, Any] = {}
