"""Multi-node training of one trial through a Kubeflow Trainer ``TrainJob``.

``trainjob_manifest`` turns a trial and its train-stage resources into a TrainJob (Kubeflow
Trainer v2 API, ``trainer.kubeflow.org/v1alpha1``, field names checked against the
``kubeflow-trainer-api`` 2.3.0 models: pod-level settings go in ``spec.runtimePatches``, which
replaced the earlier ``podTemplateOverrides``). ``TrainJobRunner`` creates it, polls its
``status.conditions`` until it completes, fails or times out, logs every condition change, and
deletes it afterwards whatever happened (see ``sftlab.cluster.objects``).

``trial_pod`` is what every node gets whichever engine runs the trial; ``engine_for`` picks the
engine ``training.distributed.launcher`` names (this TrainJob, or ``sftlab.cluster.pytorchjob``).

This module is importable without kfp; it needs only the ``kubernetes`` client at run time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sftlab.cluster.objects import (
    CustomResource,
    JobRunner,
)
from sftlab.cluster.pods import JOB_ENV, trial_pod
from sftlab.errors import SftlabError
from sftlab.spec.job import TrialJob
from sftlab.spec.schema import SecretEnv, TaskResources

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
DEFAULT_COMMAND: tuple[str, ...] = ("torchrun", "-m", "sftlab.training.distributed")


SUCCESS_CONDITIONS = ("Complete", "Succeeded")


FAILURE_CONDITIONS = ("Failed",)


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
