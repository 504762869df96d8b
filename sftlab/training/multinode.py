"""Multi-node trials: the train stage runs the trial as a cluster training job and waits for it.

``training.distributed.launcher`` picks the engine (``sftlab.cluster.engines.engine_for``: a Kubeflow
Trainer TrainJob, or a PyTorchJob). The job goes into the namespace of the pipeline pod this stage
runs in, with the pod's image, the train resources, secrets and model cache of the spec; its pods
run ``sftlab.training.distributed`` under torchrun (DDP) and rank 0 stores the result in the trial's
MLflow run. The runner creates the job, watches it and always deletes it.
"""

from __future__ import annotations

import logging
import os

from sftlab.cluster.objects import api_client, cluster_namespace
from sftlab.errors import SftlabError
from sftlab.spec.job import TrialJob
from sftlab.training.sft import gradient_accumulation

log = logging.getLogger(__name__)

POLL_S = 10.0


def run_cluster_job(job: TrialJob) -> None:
    """Build the trial's job for the spec's launcher and run it to completion (create, watch, delete)."""
    from sftlab.cluster.engines import engine_for

    distributed = job.trial.training.distributed
    ctx = job.context
    if distributed.strategy in ("fsdp", "deepspeed_zero3"):
        raise SftlabError(
            f"training.distributed: {distributed.strategy} across nodes is not supported "
            "(cluster jobs run torchrun DDP); use strategy ddp or none with nodes > 1, or nodes: 1"
        )
    resources = ctx.resources.for_stage("train")
    gradient_accumulation(job.trial.training, distributed.nodes * max(resources.gpus, 1))  # fails here, not in the pods
    image = ctx.image or os.environ.get("SFTLAB_IMAGE")  # the chart's defaults ConfigMap names the training image
    if not image:
        raise SftlabError(
            "training.distributed.nodes > 1 needs the image its pods run (pipeline.image, or $SFTLAB_IMAGE)"
        )
    try:
        namespace = cluster_namespace()
    except SftlabError as exc:
        where = f"training.distributed.nodes {distributed.nodes} runs the trial as a cluster job from a pipeline pod"
        raise SftlabError(f"{where}: {exc}") from None
    engine = engine_for(distributed)
    manifest = engine.manifest(
        job,
        resources,
        image=image,
        namespace=namespace,
        secrets=ctx.resources.secrets,
        cache_pvc=ctx.resources.model_cache_pvc,
    )
    engine.runner(api_client(), namespace, poll_s=POLL_S, timeout_s=distributed.timeout_s, log=log.info).run(manifest)
