"""Multi-node training of one trial through a Kubeflow Trainer ``TrainJob``.

``trainjob_manifest`` turns a trial and its train-stage resources into a TrainJob (Kubeflow
Trainer v2 API, ``trainer.kubeflow.org/v1alpha1``, field names checked against the
``kubeflow-trainer-api`` 2.3.0 models: pod-level settings go in ``spec.runtimePatches``, which
replaced the earlier ``podTemplateOverrides``). ``TrainJobRunner`` creates it, polls its
``status.conditions`` until it completes, fails or times out, logs every condition change, and
deletes it afterwards whatever happened (see ``sftlab.k8s``).

``trial_pod`` is what every node gets whichever engine runs the trial; ``launcher_for`` picks the
engine ``training.distributed.launcher`` names (this TrainJob, or ``sftlab.pytorchjob``).

This module is importable without kfp; it needs only the ``kubernetes`` client at run time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

from sftlab.errors import SftlabError
from sftlab.job import CACHE_MOUNT, TrialJob, cache_env
from sftlab.k8s import (  # noqa: F401 - still this module's constants
    LABEL_MANAGED_BY,
    MAX_NAME,
    SHM_VOLUME,
    CustomResource,
    JobRunner,
    dns_name,
    env_var,
    label_value,
    placement,
    pod_resources,
    secret_env,
    shm_volume,
)
from sftlab.spec import DistributedConfig, SecretEnv, TaskResources

GROUP = "trainer.kubeflow.org"
VERSION = "v1alpha1"
PLURAL = "trainjobs"
KIND = "TrainJob"
API_VERSION = f"{GROUP}/{VERSION}"
TRAINJOB = CustomResource(GROUP, VERSION, PLURAL, KIND)

DEFAULT_RUNTIME = "torch-distributed"
# The torch-distributed runtime's replicated job and container are both called "node".
NODE = "node"
# torchrun reads its rendezvous settings (PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK,
# PET_MASTER_ADDR, PET_MASTER_PORT) from the env the Trainer's torch plugin (and the v1 training
# operator, for PyTorchJobs) injects; each process reads the trial from $SFTLAB_TRIAL_JOB.
DEFAULT_COMMAND: tuple[str, ...] = ("torchrun", "-m", "sftlab.stages.distributed")

JOB_ENV = "SFTLAB_TRIAL_JOB"
LABEL_TRIAL_KEY = "sftlab.trial-key"
CACHE_VOLUME = "model-cache"

SUCCESS_CONDITIONS = ("Complete", "Succeeded")
FAILURE_CONDITIONS = ("Failed",)


def trainjob_name(trial_key: str, prefix: str = "sftlab-") -> str:
    """The job name of a trial: a DNS-1035 label of at most ``MAX_NAME`` chars (see ``dns_name``)."""
    return dns_name(trial_key, prefix)


@dataclass(frozen=True)
class TrialPod:
    """What every node of a trial's training job gets, whichever engine runs it."""

    name: str
    labels: dict[str, str]
    env: list[dict[str, Any]]
    volumes: list[dict[str, Any]]
    mounts: list[dict[str, Any]]
    resources: dict[str, Any]  # requests/limits per node
    placement: dict[str, Any]  # nodeSelector, tolerations
    procs_per_node: int


def trial_pod(
    job: TrialJob,
    resources: TaskResources,
    *,
    engine: str,
    image: str,
    nodes: int,
    secrets: Sequence[SecretEnv] = (),
    cache_pvc: str | None = None,
) -> TrialPod:
    """The trial travels as its TrialJob JSON in ``$SFTLAB_TRIAL_JOB`` (a few KB; no ConfigMap).

    One process per GPU, or one on a CPU-only node. ``engine`` prefixes the input errors.
    """
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
    return TrialPod(
        name=trainjob_name(key),
        labels={LABEL_TRIAL_KEY: label_value(key), LABEL_MANAGED_BY: "sftlab"},
        env=env,
        volumes=volumes,
        mounts=mounts,
        resources=pod_resources(resources),
        placement=placement(resources),
        procs_per_node=max(resources.gpus, 1),
    )


def trainjob_manifest(
    job: TrialJob,
    resources: TaskResources,
    *,
    image: str,
    nodes: int,
    namespace: str,
    secrets: Sequence[SecretEnv] = (),
    cache_pvc: str | None = None,
    runtime: str = DEFAULT_RUNTIME,
    command: Sequence[str] = DEFAULT_COMMAND,
    args: Sequence[str] = (),
) -> dict[str, Any]:
    """A TrainJob running one trial on ``nodes`` nodes with ``resources`` per node."""
    pod = trial_pod(job, resources, engine="trainjob", image=image, nodes=nodes, secrets=secrets, cache_pvc=cache_pvc)
    trainer: dict[str, Any] = {
        "image": image,
        "command": list(command),
        "env": pod.env,
        "numNodes": nodes,
        "numProcPerNode": pod.procs_per_node,
    }
    if args:
        trainer["args"] = list(args)
    if pod.resources:
        trainer["resourcesPerNode"] = pod.resources

    pod_spec = dict(pod.placement)
    if pod.volumes:
        pod_spec["volumes"] = pod.volumes
        pod_spec["containers"] = [{"name": NODE, "volumeMounts": pod.mounts}]

    spec: dict[str, Any] = {"runtimeRef": {"name": runtime}, "trainer": trainer}
    if pod_spec:
        template = {"metadata": {"labels": pod.labels}, "spec": pod_spec}
        replicated = {"name": NODE, "template": {"spec": {"template": template}}}
        spec["runtimePatches"] = [
            {"manager": "sftlab", "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [replicated]}}}}
        ]
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": pod.name, "namespace": namespace, "labels": pod.labels},
        "spec": spec,
    }


def trial_job_from_manifest(manifest: dict[str, Any]) -> TrialJob:
    """The TrialJob a TrainJob or PyTorchJob manifest carries (what its pods read from $SFTLAB_TRIAL_JOB)."""
    spec = manifest["spec"]
    if "pytorchReplicaSpecs" in spec:
        env = spec["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0].get("env", [])
    else:
        env = spec["trainer"].get("env", [])
    for var in env:
        if var.get("name") == JOB_ENV:
            return TrialJob.from_json(var["value"])
    raise SftlabError(f"{manifest.get('kind', 'job')}: the manifest has no {JOB_ENV} env")


class TrainJobRunner(JobRunner):
    """Create a TrainJob, wait for its outcome, and always delete it afterwards."""

    RESOURCE = TRAINJOB
    SUCCESS = SUCCESS_CONDITIONS
    FAILURE = FAILURE_CONDITIONS


class Launcher(NamedTuple):
    """A multi-node engine: its manifest builder (bound to the node count) and its runner class.

    ``manifest(job, resources, *, image, namespace, secrets=(), cache_pvc=None)`` builds the job;
    ``runner(api_client, namespace, timeout_s=...)`` runs it.
    """

    kind: str
    manifest: Callable[..., dict[str, Any]]
    runner: type[JobRunner]


def launcher_for(distributed: DistributedConfig) -> Launcher:
    """The engine ``distributed.launcher`` names: a Kubeflow Trainer TrainJob or a training-operator PyTorchJob."""
    if distributed.launcher == "pytorchjob":
        from sftlab import (
            pytorchjob,  # builds on this module, so it is imported only here
        )

        return Launcher(
            "pytorchjob", partial(pytorchjob.pytorchjob_manifest, nodes=distributed.nodes), pytorchjob.PyTorchJobRunner
        )
    return Launcher(
        "trainjob", partial(trainjob_manifest, nodes=distributed.nodes, runtime=distributed.runtime), TrainJobRunner
    )
