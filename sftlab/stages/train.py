"""Train stage: supervised fine-tuning of one trial (``sftlab.training.sft``), here or on more devices.

Where it runs follows ``training.distributed``:

- ``nodes > 1``: a cluster training job (``sftlab.training.multinode``) whose pods run
  ``sftlab.training.distributed`` under torchrun; this stage waits for it.
- ``strategy`` ddp/fsdp/deepspeed_zero3: this pod re-launches the trial with ``accelerate launch``,
  one process per GPU of the train resources (``sftlab.training.accelerate_config``).
- otherwise: in this process.

In every case rank 0 stores the result — full weights as safetensors, or the LoRA adapter alone —
once, in the trial run's MLflow artifacts (S3 in production), with the stage result next to it;
downstream stages receive its URI, not a copy.

Preemption: every epoch a resumable checkpoint (weights, optimizer, scheduler, RNG state) is saved
under the trial key, locally and, with ``training.checkpoint_uri``, on S3 or a PVC
(``sftlab.training.checkpoints``); a re-run of a killed trial resumes from the newest complete one.
They are removed once the model is stored.
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from sftlab.cluster.pods import JOB_ENV
from sftlab.errors import SftlabError
from sftlab.sources import models
from sftlab.spec.job import StageResult, TrialJob
from sftlab.stages.common import trial_stage
from sftlab.tracking.runs import Tracker
from sftlab.training.accelerate_config import launch_command, layer_classes, write_accelerate_config
from sftlab.training.multinode import run_cluster_job
from sftlab.training.sft import RESULT_ARTIFACT, check_method, gradient_accumulation, run_trial

log = logging.getLogger(__name__)


def run(job: TrialJob, inputs: dict[str, Any]) -> StageResult:
    distributed = job.trial.training.distributed
    with trial_stage(job, "train") as (tracker, run_id):
        if distributed.nodes > 1:
            run_cluster_job(job)  # its pods check the training settings where they run
        elif distributed.strategy != "none":
            check_method(job.trial.training)
            launch_accelerate(job)
        else:
            result = run_trial(job)
            assert result is not None  # a single process is rank 0
            return result
        return read_result(tracker, run_id)


def launch_accelerate(job: TrialJob) -> None:
    """Run the trial under ``accelerate launch`` in this pod: one process per GPU of the train resources."""
    training, model = job.trial.training, job.trial.base_model
    processes = max(job.context.resources.for_stage("train").gpus, 1)
    gradient_accumulation(training, processes)  # a batch that does not divide fails here, in one line
    fsdp = training.distributed.strategy == "fsdp"
    layers = layer_classes(models.resolve(model, job.context), model.revision) if fsdp else None
    with tempfile.TemporaryDirectory() as tmp:
        config = write_accelerate_config(training, processes, Path(tmp) / "accelerate.yaml", layers)
        log.info("train: accelerate launch, %s, %d processes", training.distributed.strategy, processes)
        env = {**os.environ, JOB_ENV: job.to_json()}
        code = subprocess.run(launch_command(config, processes), env=env, check=False).returncode
    if code:
        what = f"accelerate launch ({training.distributed.strategy}, {processes} processes)"
        raise SftlabError(f"{what} exited with code {code}; see the log above")


def read_result(tracker: Tracker, run_id: str) -> StageResult:
    """The stage result rank 0 stored on the trial run (for training that ran in other processes)."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = tracker.download(run_id, RESULT_ARTIFACT, tmp)
        except Exception as exc:  # noqa: BLE001 - MLflow's errors vary by store
            raise SftlabError(
                f"train: the training processes finished but run {run_id} has no {RESULT_ARTIFACT} "
                f"({type(exc).__name__})"
            ) from None
        return StageResult.model_validate_json(path.read_text())


def fetch_trained(job: TrialJob, model_output: dict[str, Any], dst: Path) -> Path:
    """Download a trained model/adapter (a train stage's outputs) from MLflow into ``dst``."""
    tracker = Tracker.for_context(job.context)
    return tracker.download(model_output["run_id"], model_output["artifact_path"], dst)
