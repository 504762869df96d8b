"""Multi-node training of one trial through a Kubeflow Training Operator v1 ``PyTorchJob``.

The alternative to the TrainJob (``training.distributed.launcher: pytorchjob``) for clusters that
run the v1 training operator (``kubeflow.org/v1``; built from the ``kubeflow-training`` 1.9 SDK
models and the ``kubernetes`` client's V1 pod models). Same inputs and the same pods as
``trainjob_manifest``: one Master and ``nodes - 1`` Workers, each a ``pytorch`` container running
``torchrun``. The operator sets MASTER_ADDR/PORT, WORLD_SIZE and RANK, and for torchrun
PET_MASTER_ADDR, PET_MASTER_PORT, PET_NNODES, PET_NPROC_PER_NODE (from ``spec.nprocPerNode``) and
PET_NODE_RANK, which torchrun reads as its ``--master-addr``, ``--nnodes``, ... defaults, so the
command needs no flags.

``PyTorchJobRunner`` runs it like the TrainJob: poll ``status.conditions`` until Succeeded or
Failed, then delete it whatever happened.
"""

from __future__ import annotations

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
    from kubeflow.training import models as m
    from kubernetes.client import ApiClient, V1ObjectMeta

    pod = trial_pod(job, resources, engine="pytorchjob", image=image, nodes=nodes, secrets=secrets, cache_pvc=cache_pvc)
    replicas = {"Master": _replica(1, image, command, args, pod)}
    if nodes > 1:
        replicas["Worker"] = _replica(nodes - 1, image, command, args, pod)
    pytorch_job = m.KubeflowOrgV1PyTorchJob(
        api_version=PYTORCHJOB.api_version,
        kind=PYTORCHJOB.kind,
        metadata=V1ObjectMeta(name=pod.name, namespace=namespace, labels=pod.labels),
        spec=m.KubeflowOrgV1PyTorchJobSpec(
            nproc_per_node=str(pod.procs_per_node),
            # runPolicy is required by the v1 API; its defaults suit (the runner deletes the job itself).
            run_policy=m.KubeflowOrgV1RunPolicy(),
            pytorch_replica_specs=replicas,
        ),
    )
    # Serialised as the API server receives it: camelCase keys, unset fields left out, every
    # dict and list a fresh copy (YAML dumps of shared ones come out as anchors and aliases).
    manifest: dict[str, Any] = ApiClient().sanitize_for_serialization(pytorch_job)
    return manifest


def _replica(count: int, image: str, command: Sequence[str], args: Sequence[str], pod: TrialPod) -> Any:
    """``count`` replicas of the one ``pytorch`` container; env, volumes and resources are the API
    JSON ``sftlab.cluster.pods`` makes, serialised as they are."""
    from kubeflow.training import models as m
    from kubernetes.client import V1Container, V1ContainerPort, V1ObjectMeta, V1PodSpec, V1PodTemplateSpec

    container = V1Container(
        name=CONTAINER,
        image=image,
        command=list(command),
        args=list(args) or None,
        env=pod.env,
        ports=[V1ContainerPort(name=PORT_NAME, container_port=PORT)],
        resources=pod.resources or None,
        volume_mounts=pod.mounts or None,
    )
    spec = V1PodSpec(
        containers=[container],
        node_selector=pod.placement.get("nodeSelector"),
        tolerations=pod.placement.get("tolerations"),
        volumes=pod.volumes or None,
        priority_class_name=pod.pod_fields.get("priorityClassName"),
        runtime_class_name=pod.pod_fields.get("runtimeClassName"),
        image_pull_secrets=pod.pod_fields.get("imagePullSecrets"),
    )
    return m.KubeflowOrgV1ReplicaSpec(
        replicas=count,
        # Static torchrun rendezvous cannot take one restarted node back into a running group, so a
        # failed pod fails the job (a clear error now); the pipeline's retry reruns the trial.
        restart_policy="Never",
        template=V1PodTemplateSpec(metadata=V1ObjectMeta(labels=pod.labels, annotations=pod.annotations), spec=spec),
    )


class PyTorchJobRunner(JobRunner):
    """Create a PyTorchJob, wait for its outcome, and always delete it afterwards."""

    RESOURCE = PYTORCHJOB
    SUCCESS = SUCCESS_CONDITIONS
    FAILURE = FAILURE_CONDITIONS
