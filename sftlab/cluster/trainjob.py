"""Multi-node training of one trial through a Kubeflow Trainer ``TrainJob``.

``trainjob_manifest`` turns a trial and its train-stage resources into a TrainJob (Kubeflow
Trainer v2 API, ``trainer.kubeflow.org/v1alpha1``, built from the ``kubeflow-trainer-api`` 2.3.0
models: pod-level settings go in ``spec.runtimePatches``, which replaced the earlier
``podTemplateOverrides``). ``TrainJobRunner`` creates it, polls its
``status.conditions`` until it completes, fails or times out, logs every condition change, and
deletes it afterwards whatever happened (see ``sftlab.cluster.objects``).

``trial_pod`` is what every node gets whichever engine runs the trial; ``engine_for`` picks the
engine ``training.distributed.launcher`` names (this TrainJob, or ``sftlab.cluster.pytorchjob``).

This module is importable without kfp; the Trainer's models load when a manifest is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sftlab.cluster.objects import (
    CustomResource,
    JobRunner,
)
from sftlab.cluster.pods import JOB_ENV, TrialPod, trial_pod
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
    """A TrainJob running one trial on ``nodes`` nodes with ``resources`` per node.

    Built from the ``kubeflow-trainer-api`` models and serialised with their camelCase aliases;
    the pod pieces (env, volumes, resources) are the API JSON ``sftlab.cluster.pods`` makes, read
    into the models' own types. The models load here, not at import (they take seconds).
    """
    from kubeflow_trainer_api import models as m

    pod = trial_pod(job, resources, engine="trainjob", image=image, nodes=nodes, secrets=secrets, cache_pvc=cache_pvc)
    trainer = m.TrainerV1alpha1Trainer(
        image=image,
        command=list(command),
        args=list(args) or None,
        env=[m.IoK8sApiCoreV1EnvVar.from_dict(var) for var in pod.env],
        num_nodes=nodes,
        num_proc_per_node=pod.procs_per_node,
        resources_per_node=m.IoK8sApiCoreV1ResourceRequirements.from_dict(pod.resources) if pod.resources else None,
    )
    spec = m.TrainerV1alpha1TrainJobSpec(
        runtime_ref=m.TrainerV1alpha1RuntimeRef(name=runtime), trainer=trainer, runtime_patches=_runtime_patches(pod)
    )
    train_job = m.TrainerV1alpha1TrainJob(
        api_version=API_VERSION,
        kind=KIND,
        metadata=m.IoK8sApimachineryPkgApisMetaV1ObjectMeta(name=pod.name, namespace=namespace, labels=pod.labels),
        spec=spec,
    )
    return train_job.to_dict()


def _runtime_patches(pod: TrialPod) -> list[Any]:
    """The pod settings the trainer has no field for (annotations, placement, volumes, image pull
    secrets), as a runtime patch of the ``node`` replicated job. Trainer 2.2's patches have no
    priority or runtime class: those come from the ClusterTrainingRuntime."""
    from kubeflow_trainer_api import models as m

    pull_secrets = pod.pod_fields.get("imagePullSecrets")
    containers = None
    if pod.volumes:
        mounts = [m.IoK8sApiCoreV1VolumeMount.from_dict(mount) for mount in pod.mounts]
        containers = [m.TrainerV1alpha1ContainerPatch(name=NODE, volume_mounts=mounts)]
    tolerations = pod.placement.get("tolerations")
    pod_spec = m.TrainerV1alpha1PodSpecPatch(
        node_selector=pod.placement.get("nodeSelector"),
        tolerations=[m.IoK8sApiCoreV1Toleration.from_dict(t) for t in tolerations] if tolerations else None,
        volumes=[m.IoK8sApiCoreV1Volume.from_dict(volume) for volume in pod.volumes] or None,
        containers=containers,
        image_pull_secrets=(
            [m.IoK8sApiCoreV1LocalObjectReference.from_dict(ref) for ref in pull_secrets] if pull_secrets else None
        ),
    )
    template = m.TrainerV1alpha1PodTemplatePatch(
        metadata=m.IoK8sApimachineryPkgApisMetaV1ObjectMeta(labels=pod.labels, annotations=pod.annotations),
        spec=pod_spec,
    )
    replicated = m.TrainerV1alpha1ReplicatedJobPatch(
        name=NODE, template=m.TrainerV1alpha1JobTemplatePatch(spec=m.TrainerV1alpha1JobSpecPatch(template=template))
    )
    jobset = m.TrainerV1alpha1JobSetTemplatePatch(spec=m.TrainerV1alpha1JobSetSpecPatch(replicated_jobs=[replicated]))
    return [
        m.TrainerV1alpha1RuntimePatch(
            manager="sftlab", training_runtime_spec=m.TrainerV1alpha1TrainingRuntimeSpecPatch(template=jobset)
        )
    ]


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
