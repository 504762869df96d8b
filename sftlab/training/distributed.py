"""Entry point of every process of a multi-process trial.

    torchrun --nnodes N --nproc-per-node G -m sftlab.training.distributed      # TrainJob/PyTorchJob pods
    accelerate launch --config_file C --num_processes G -m sftlab.training.distributed   # one pod, G GPUs

The trial arrives as TrialJob JSON in ``$SFTLAB_TRIAL_JOB``; its context names the trial's MLflow
run (``trial_run_id``), which the train stage that started these processes owns. Every rank
trains; rank 0 alone tracks, stores the model, registers it and stores the stage result.
"""

from __future__ import annotations

import logging
import os

from sftlab.cluster.pods import JOB_ENV
from sftlab.errors import SftlabError
from sftlab.spec.job import TrialJob
from sftlab.training.sft import run_trial

log = logging.getLogger(__name__)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    text = os.environ.get(JOB_ENV)
    if not text:
        raise SftlabError(f"${JOB_ENV} is not set: this entry point runs a trial that the train stage hands over")
    job = TrialJob.from_json(text)
    where = f"rank {os.environ.get('RANK', '0')}/{os.environ.get('WORLD_SIZE', '1')}"
    log.info("%s: training trial %s (%s)", where, job.trial.label, job.trial.key)
    run_trial(job)
    log.info("%s: done", where)


if __name__ == "__main__":
    main()
