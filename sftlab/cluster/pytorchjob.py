"""Multi-node training of one trial through a Kubeflow Training Operator v1 ``PyTorchJob``.

The alternative to the TrainJob (``training.distributed.launcher: pytorchjob``) for clusters that
run the v1 training operator (``kubeflow.org/v1``; field names checked against the
``kubeflow-training`` 1.9 SDK models). Same inputs and the same pods as ``trainjob_manifest``: one
Master and ``nodes - 1`` Workers, each a ``pytorch`` container running ``torchrun``. The operator
sets MASTER_ADDR/PORT, WORLD_SIZE and RANK, and for torchrun PET_MASTER_ADDR, PET_MASTER_PORT,
PET_NNODES, PET_NPROC_PER_NODE (from ``spec.nprocPerNode``) and PET_NODE_RANK, which torchrun reads
as its ``--master-addr``, ``--nnodes``, ... defaults, so the command needs no flags.

``PyTorchJobRunner`` runs it like the TrainJob: poll ``status.conditions`` until Succeeded or
Failed, then delete it whatever happened.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from sftlab.cluster.objects import CustomResource, JobRunner
from sftlab.cluster.pods import TrialPod, trial_pod
from sftlab.cluster.trainjob import DEFAULT_COMMAND, FAILURE_CONDITIONS
from sftlab.spec.job import TrialJob
from sftlab.spec.schema import SecretEnv, TaskResources

PYTORCHJOB = CustomResource("kubeflow.org", "v1", "pytorchjobs", "PyTorchJob")

# The operator looks for this container (and its port, for MASTER_PORT) by name.
CONTAINER = "pytorch"
PORT_NAME = "pytorchjob-port"
PORT = 23456
SUCCESS_CONDITIONS = ("Succeeded",)


def pytorchjob_manifest(
    job: TrialJob,
    resources: TaskResources,
    *,
    image: str,
    nodes: int,
    namespace: str,
    secrets: Sequence[SecretEnv] = (),
    cache_pvc: str | None = None,
    command: Sequence[str] = DEFAULT_COMMAND,
    args: Sequence[str] = (),
) -> dict[str, Any]:
    """A PyTorchJob running one trial on ``nodes`` nodes (1 Master + ``nodes - 1`` Workers) with
    ``resources`` per node."""
    pod = trial_pod(job, resources, engine="pytorchjob", image=image, nodes=nodes, secrets=secrets, cache_pvc=cache_pvc)
    master = _master(image, command, args, pod)
    replicas = {"Master": master}
    if nodes > 1:
        # A copy, not the same dicts: YAML dumps of shared dicts come out as anchors and aliases.
        replicas["Worker"] = {**copy.deepcopy(master), "replicas": nodes - 1}
    return {
        "apiVersion": PYTORCHJOB.api_version,
        "kind": PYTORCHJOB.kind,
        "metadata": {"name": pod.name, "namespace": namespace, "labels": pod.labels},
        # runPolicy is required by the v1 API; its defaults suit (the runner deletes the job itself).
        "spec": {"nprocPerNode": str(pod.procs_per_node), "runPolicy": {}, "pytorchReplicaSpecs": replicas},
    }


def _master(image: str, command: Sequence[str], args: Sequence[str], pod: TrialPod) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": image,
        "command": list(command),
        "env": pod.env,
        "ports": [{"name": PORT_NAME, "containerPort": PORT}],
    }
    if args:
        container["args"] = list(args)
    if pod.resources:
        container["resources"] = pod.resources
    if pod.mounts:
        container["volumeMounts"] = pod.mounts
    spec: dict[str, Any] = {"containers": [container], **pod.placement}
    if pod.volumes:
        spec["volumes"] = pod.volumes
    return {
        "replicas": 1,
        # Static torchrun rendezvous cannot take one restarted node back into a running group, so a
        # failed pod fails the job (a clear error now); the pipeline's retry reruns the trial.
        "restartPolicy": "Never",
        "template": {"metadata": {"labels": dict(pod.labels)}, "spec": spec},
    }


class PyTorchJobRunner(JobRunner):
    """Create a PyTorchJob, wait for its outcome, and always delete it afterwards."""

    RESOURCE = PYTORCHJOB
    SUCCESS = SUCCESS_CONDITIONS
    FAILURE = FAILURE_CONDITIONS
