"""What every node of a trial's multi-node training job gets, whichever engine runs it.

The trial travels as its TrialJob JSON in ``$SFTLAB_TRIAL_JOB``; each engine (``trainjob``,
``pytorchjob``) wraps this pod in its own manifest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sftlab.cluster.defaults import ClusterDefaults
from sftlab.cluster.objects import (
    LABEL_MANAGED_BY,
    dns_name,
    env_var,
    label_value,
    pod_resources,
    secret_env,
    shm_volume,
)
from sftlab.errors import SftlabError
from sftlab.spec.job import CACHE_MOUNT, TrialJob, cache_env
from sftlab.spec.schema import SecretEnv, TaskResources

JOB_ENV = "SFTLAB_TRIAL_JOB"


LABEL_TRIAL_KEY = "sftlab.trial-key"
# Training nodes opt out of Istio's sidecar (Kubeflow profile namespaces inject it): a sidecar keeps
# a finished node's pod running, so the job never completes, and it intercepts the nodes'
# rendezvous traffic. KFP stamps the same annotation on its own pipeline pods.
POD_ANNOTATIONS = {"sidecar.istio.io/inject": "false"}


CACHE_VOLUME = "model-cache"


def trainjob_name(trial_key: str, prefix: str = "sftlab-") -> str:
    """The job name of a trial: a DNS-1035 label of at most ``MAX_NAME`` chars (see ``dns_name``)."""
    return dns_name(trial_key, prefix)


@dataclass(frozen=True)
class TrialPod:
    """What every node of a trial's training job gets, whichever engine runs it."""

    name: str
    labels: dict[str, str]
    annotations: dict[str, str]
    env: list[dict[str, Any]]
    volumes: list[dict[str, Any]]
    mounts: list[dict[str, Any]]
    resources: dict[str, Any]  # requests/limits per node
    placement: dict[str, Any]  # nodeSelector, tolerations
    procs_per_node: int
    pod_fields: dict[str, Any]  # priorityClassName, runtimeClassName, imagePullSecrets (cluster defaults)


def trial_pod(
    job: TrialJob,
    resources: TaskResources,
    *,
    engine: str,
    image: str,
    nodes: int,
    secrets: Sequence[SecretEnv] = (),
    cache_pvc: str | None = None,
    defaults: ClusterDefaults | None = None,
) -> TrialPod:
    """The trial travels as its TrialJob JSON in ``$SFTLAB_TRIAL_JOB`` (a few KB; no ConfigMap).

    One process per GPU, or one on a CPU-only node. ``engine`` prefixes the input errors.
    ``defaults`` (else this pod's cluster defaults, from env) add what the cluster asks of pods.
    """
    defaults = defaults if defaults is not None else ClusterDefaults.from_env()
    if nodes < 1:
        raise SftlabError(f"{engine}: nodes must be at least 1, got {nodes}")
    if not image:
        raise SftlabError(f"{engine}: an image is required")
    key = job.trial.key
    env = [env_var(JOB_ENV, job.to_json())]
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    if cache_pvc:
        env.extend(env_var(name, value) for name, value in cache_env().items())
        volumes.append({"name": CACHE_VOLUME, "persistentVolumeClaim": {"claimName": cache_pvc}})
        mounts.append({"name": CACHE_VOLUME, "mountPath": CACHE_MOUNT})
    if resources.shm_size:
        volume, mount = shm_volume(resources.shm_size)
        volumes.append(volume)
        mounts.append(mount)
    env.extend(secret_env(secrets))
    env.extend(env_var(name, value) for name, value in defaults.node_env.items())
    return TrialPod(
        name=trainjob_name(key),
        labels={LABEL_TRIAL_KEY: label_value(key), LABEL_MANAGED_BY: "sftlab"},
        annotations=dict(POD_ANNOTATIONS),
        env=env,
        volumes=volumes,
        mounts=mounts,
        resources=pod_resources(resources),
        placement=defaults.placement(resources),
        procs_per_node=max(resources.gpus, 1),
        pod_fields=defaults.pod_fields(resources, "train"),
    )
