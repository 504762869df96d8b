"""The one entry point every pipeline task uses to run a stage of a trial.

A KFP component calls ``run_stage(name, job_json, output_path, input_paths, kfp ids)``: the
stage reads its upstream results (small JSON files), does its work, logs to the trial's MLflow
run, and writes its own small JSON result. Big files (models) live in MLflow's artifact store and
travel between stages as URIs inside these results, never as second copies.
"""

from __future__ import annotations

import importlib
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sftlab import metric_names, progress
from sftlab.diagnostics import disk_full_hint, scratch_paths
from sftlab.signals import sigterm_interrupts
from sftlab.spec.job import StageResult, TrialJob, checkpoint_dir
from sftlab.tracking.runs import TAG_ERROR, Tracker
from sftlab.warm import client as warm_client

STAGES = ("profile", "baseline", "train", "evaluate", "weights")
log = logging.getLogger(__name__)


@contextmanager
def trial_stage(job: TrialJob, stage: str) -> Iterator[tuple[Tracker, str]]:
    """Open the trial's run for one stage; on failure record ``stage: cause`` on the run."""
    tracker = Tracker.for_context(job.context)
    run_id = job.context.trial_run_id
    if run_id is None:
        raise ValueError(f"{stage}: the job has no trial_run_id")
    ctx = job.context
    if ctx.kfp_run_id or ctx.kfp_task:
        tracker.set_tags(run_id, {"sftlab.kfp_run_id": ctx.kfp_run_id, f"sftlab.kfp_task.{stage}": ctx.kfp_task})
    started = time.perf_counter()
    try:
        yield tracker, run_id
    except BaseException as exc:
        cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, KeyboardInterrupt):  # Ctrl-C, or SIGTERM from a cancelled run / evicted pod
            error = f"{stage}: interrupted ({cause})"
        else:
            cause += disk_full_hint([checkpoint_dir(job), *scratch_paths(ctx.root)])
            error = f"{stage}: {type(exc).__name__}: {cause}"
        tracker.release_claims(error)
        tracker.set_tags(run_id, {TAG_ERROR: error[:5000]})
        raise
    tracker.log_metrics(run_id, {metric_names.stage_time(stage): time.perf_counter() - started})


def run_stage(
    stage: str,
    job_json: str,
    output_path: str | Path,
    input_paths: dict[str, str] | None = None,
    kfp_run_id: str | None = None,
    kfp_task: str | None = None,
    in_this_process: bool = False,
) -> StageResult:
    """Run one stage of a trial from its KFP inputs and write its result JSON to ``output_path``.

    Inside a local sweep the work runs in a child of the sweep's warm server (``sftlab.warm``),
    which has the heavy libraries imported already; this process then only waits for it and
    ends as it ended. Anywhere else (a cluster pod), or with ``in_this_process``, it runs here.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
    if not in_this_process and warm_client.available():
        args = [stage, job_json, str(output_path), input_paths, kfp_run_id, kfp_task, True]
        code = warm_client.run(f"{__name__}:{run_stage.__name__}", args)
        if code is not None:
            if code != 0:  # the child printed its traceback to this task's log, as this process would have
                warm_client.exit_like(code)
            return StageResult.model_validate_json(Path(output_path).read_text(encoding="utf-8"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    job = TrialJob.from_json(job_json).for_task(kfp_run_id, kfp_task)
    inputs = {name: json.loads(Path(path).read_text()) for name, path in (input_paths or {}).items()}
    module = importlib.import_module(f"sftlab.stages.{stage}")
    log.info("stage %s: trial %s (%s)", stage, job.trial.label, job.trial.key)
    with sigterm_interrupts(), progress.stage(stage):
        result: StageResult = module.run(job, inputs)
    out = Path(output_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(result.model_dump_json(indent=2))
    return result


def kfp_metadata(job_json: str) -> dict[str, str]:
    """What a KFP task's artifacts carry so users can jump to the MLflow run."""
    ctx = TrialJob.from_json(job_json).context
    return {"mlflow_run_id": ctx.trial_run_id or "", "mlflow_tracking_uri": ctx.tracking_uri}
