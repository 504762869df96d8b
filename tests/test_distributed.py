"""Multi-process training on CPU for real: torchrun and accelerate launch, 2 gloo processes each.

Every rank trains; rank 0 alone logs, stores and registers. The trial run is created up front, as
the train stage that launches the processes does.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from sftlab.cluster.pods import JOB_ENV
from sftlab.spec.job import TrialJob, context_for
from sftlab.spec.schema import DistributedConfig, TaskResources
from sftlab.stages.common import run_stage
from sftlab.tracking.runs import Tracker
from tests.support.helpers import REPO, first_trial, quickstart_spec

STEPS = 16  # 64 rows / global batch 8 × 2 epochs, whatever the number of processes


def trial_job(
    tmp_path: Path, method: str = "full", train_resources: TaskResources | None = None, **training: Any
) -> tuple[TrialJob, Tracker]:
    """A 2-epoch quickstart trial with 4 rows per device (global batch 8: 2 processes, no accumulation)."""
    spec = quickstart_spec(tmp_path)
    spec.resources.train = train_resources
    trial = first_trial(spec, dataset="math", **{"training.method": method})
    settings = trial.training.model_copy(update={"per_device_batch_size": 4, "epochs": 2, **training})
    trial = trial.model_copy(update={"training": settings})
    ctx = context_for(spec)
    tracker = Tracker.for_context(ctx)
    run_id = tracker.create_trial_run(trial, None)
    return TrialJob(trial=trial, context=ctx.model_copy(update={"trial_run_id": run_id})), tracker


def assert_trained_once(job: TrialJob, tracker: Tracker, world_size: int) -> None:
    run_id = job.context.trial_run_id
    assert run_id is not None
    run = tracker.client.get_run(run_id)
    assert run.data.params["train.world_size"] == str(world_size)
    assert run.data.params["train.precision"] == "fp32" and run.data.params["train.attn_implementation"] == "sdpa"
    # One loss point per step: only rank 0 logged the curve.
    assert [m.step for m in tracker.client.get_metric_history(run_id, "train/loss")] == list(range(1, STEPS + 1))
    assert run.data.metrics["train/steps"] == STEPS
    top = sorted(a.path for a in tracker.client.list_artifacts(run_id))
    assert top == ["model", "train_result.json"]
    files = {a.path for a in tracker.client.list_artifacts(run_id, "model")}
    weights = "model/model.safetensors" if job.trial.training.method == "full" else "model/adapter_model.safetensors"
    assert weights in files and "model/tokenizer.json" in files and "model/training_args.bin" not in files
    versions = tracker.client.search_model_versions(f"name = 'quickstart.{job.trial.base_model.name}'")
    assert [v.run_id for v in versions] == [run_id]  # registered once
    assert not (Path(job.context.root) / "checkpoints" / job.trial.key).exists()


@pytest.mark.slow  # trains a model or runs servers for tens of seconds
def test_torchrun_two_ranks_train_and_rank0_stores_once(tmp_path: Path) -> None:
    job, tracker = trial_job(tmp_path)
    env = {**os.environ, JOB_ENV: job.to_json(), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        ["torchrun", "--nnodes", "1", "--nproc-per-node", "2", "-m", "sftlab.training.distributed"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 0/2: done" in proc.stderr and "rank 1/2: done" in proc.stderr
    assert_trained_once(job, tracker, world_size=2)


@pytest.mark.slow  # trains a model or runs servers for tens of seconds
def test_ddp_strategy_relaunches_the_stage_through_accelerate(tmp_path: Path) -> None:
    """strategy ddp with 2 devices in the train resources: the stage runs 2 processes and returns rank 0's result."""
    job, tracker = trial_job(
        tmp_path, method="lora", train_resources=TaskResources(gpus=2), distributed=DistributedConfig(strategy="ddp")
    )
    result = run_stage("train", job.to_json(), tmp_path / "model.json")
    assert_trained_once(job, tracker, world_size=2)
    run_id = job.context.trial_run_id
    assert result.outputs == {
        "run_id": run_id,
        "artifact_path": "model",
        "adapter": True,
        "uri": f"runs:/{run_id}/model",
    }
    assert result.metrics == {
        k: v for k, v in tracker.client.get_run(run_id).data.metrics.items() if k in result.metrics
    }
    assert "time/train_s" in tracker.client.get_run(run_id).data.metrics  # the launching stage owns the run


@pytest.mark.slow  # trains a model or runs servers for tens of seconds
def test_explicit_attention_and_system_metrics(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    job, tracker = trial_job(tmp_path, attn_implementation="eager", gradient_checkpointing=True)
    run_stage("train", job.to_json(), tmp_path / "model.json")
    run = tracker.client.get_run(job.context.trial_run_id)
    assert run.data.params["train.attn_implementation"] == "eager" and run.data.params["train.world_size"] == "1"
    assert "system/cpu_utilization_percentage" in run.data.metrics
    assert "train/gpu_max_memory_gb" not in run.data.metrics  # CUDA only
