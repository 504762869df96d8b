"""Remote checkpoints (S3 on a real moto server, or a PVC folder), preemption and per-epoch models."""

from __future__ import annotations

import shutil
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from sftlab.errors import SftlabError
from sftlab.spec.job import TrialJob, context_for
from sftlab.spec.schema import EvaluationConfig, StorageConfig
from sftlab.stages.common import run_stage
from sftlab.tracking.runs import Tracker
from sftlab.training.checkpoints import (
    STATE_FILE,
    CheckpointStore,
    FolderStore,
    S3Store,
    epoch_of,
    is_model_file,
    remote_store,
)
from tests.support.helpers import first_trial, quickstart_spec, start_stage


def new_bucket(endpoint: str) -> str:
    import boto3

    name = f"ckpt-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=name)
    return name


def s3_keys(endpoint: str, bucket: str, prefix: str) -> list[str]:
    import boto3

    pages = (
        boto3.client("s3", endpoint_url=endpoint)
        .get_paginator("list_objects_v2")
        .paginate(Bucket=bucket, Prefix=prefix)
    )
    return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


def s3_bytes(endpoint: str, bucket: str, key: str) -> bytes:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint).get_object(Bucket=bucket, Key=key)["Body"].read()


def make_job(tmp_path: Path, evaluation_epochs: Any = "last", **training: Any) -> tuple[TrialJob, Tracker]:
    spec = quickstart_spec(tmp_path)
    trial = first_trial(spec, dataset="math", **{"training.method": "full"})
    trial = trial.model_copy(
        update={
            "training": trial.training.model_copy(update=training),
            "evaluation": EvaluationConfig(epochs=evaluation_epochs),
        }
    )
    ctx = context_for(spec)
    tracker = Tracker.for_context(ctx)
    run_id = tracker.create_trial_run(trial, None)
    return TrialJob(trial=trial, context=ctx.model_copy(update={"trial_run_id": run_id})), tracker


def artifact_bytes(tracker: Tracker, run_id: str, path: str, dst: Path) -> bytes:
    return tracker.download(run_id, path, dst).read_bytes()


# ------------------------------------------------------------------------------ stores


@pytest.fixture(params=["s3", "folder"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> CheckpointStore:
    if request.param == "s3":
        endpoint = request.getfixturevalue("s3_env")
        return S3Store(f"s3://{new_bucket(endpoint)}/ckpt/trial-key", StorageConfig())
    return FolderStore(tmp_path / "pvc" / "trial-key")


def test_store_lists_only_marked_checkpoints_and_filters_model_files(store: CheckpointStore, tmp_path: Path) -> None:
    local = tmp_path / "checkpoint-8"
    (local / "global_step8").mkdir(parents=True)
    for name in (
        "model.safetensors",
        "config.json",
        "optimizer.pt",
        "scheduler.pt",
        "rng_state_1.pth",
        "training_args.bin",
    ):
        (local / name).write_bytes(name.encode())
    (local / STATE_FILE).write_text('{"epoch": 1.0, "global_step": 8}')
    (local / "global_step8" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"shard")

    store.upload(local, 8)
    assert store.complete_steps() == []  # all files up, marker not yet: still reads as cut short
    store.mark_complete(8)
    assert store.complete_steps() == [8]
    assert epoch_of(store.read_text(8, STATE_FILE)) == 1

    store.download(8, tmp_path / "full")
    full = sorted(p.relative_to(tmp_path / "full").as_posix() for p in (tmp_path / "full").rglob("*") if p.is_file())
    assert full == sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())  # no marker
    store.download(8, tmp_path / "model", keep=is_model_file)
    assert sorted(p.name for p in (tmp_path / "model").rglob("*") if p.is_file()) == [
        "config.json",
        "model.safetensors",
    ]

    store.delete()
    assert store.complete_steps() == []


def test_checkpoint_uri_kinds(tmp_path: Path) -> None:
    job, _ = make_job(tmp_path)

    def store_for(uri: str) -> CheckpointStore | None:
        training = job.trial.training.model_copy(update={"checkpoint_uri": uri})
        return remote_store(job.model_copy(update={"trial": job.trial.model_copy(update={"training": training})}))

    pvc = store_for(str(tmp_path / "pvc"))
    assert isinstance(pvc, FolderStore) and pvc.uri == str(tmp_path / "pvc" / job.trial.key)
    s3 = store_for("s3://b/p/")
    assert isinstance(s3, S3Store) and s3.uri == f"s3://b/p/{job.trial.key}"
    assert remote_store(job) is None  # default: checkpoints stay under tracking.root
    with pytest.raises(
        SftlabError, match="training.checkpoint_uri: expected s3://bucket/prefix or a path, got 'gs://b/p'"
    ):
        store_for("gs://b/p")


# ------------------------------------------------------------------------------ preemption


@pytest.mark.slow  # trains a model or runs servers for tens of seconds
def test_preempted_trial_resumes_from_s3_in_a_new_pod(tmp_path: Path, s3_env: str) -> None:
    """SIGKILL after two epochs are on S3, wipe the local disk (a new pod), re-run: it resumes from S3."""
    bucket = new_bucket(s3_env)
    job, tracker = make_job(
        tmp_path, evaluation_epochs=[1], epochs=12, checkpoint_uri=f"s3://{bucket}/ckpt"
    )  # 8 steps/epoch
    prefix = f"ckpt/{job.trial.key}/"
    proc = start_stage("train", job, tmp_path, "killed.json")

    def marked() -> list[int]:
        return sorted(
            int(k.split("/")[-2].split("-")[1]) for k in s3_keys(s3_env, bucket, prefix) if k.endswith("/.complete")
        )

    deadline = time.monotonic() + 240
    while len(marked()) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "training finished before it could be killed"
    complete = marked()
    assert len(complete) >= 2 and complete[-1] < 96
    newest = {k.rsplit("/", 1)[1] for k in s3_keys(s3_env, bucket, f"{prefix}checkpoint-{complete[-1]}/")}
    assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", STATE_FILE, ".complete"} <= newest
    epoch1_weights = s3_bytes(s3_env, bucket, f"{prefix}checkpoint-8/model.safetensors")

    shutil.rmtree(Path(job.context.root) / "checkpoints")  # a new pod: nothing local survives
    s3 = S3Store(f"s3://{bucket}/{prefix}", StorageConfig())
    s3.client.put_object(
        Bucket=bucket, Key=f"{prefix}checkpoint-95/model.safetensors", Body=b"partial"
    )  # cut short: no marker

    retry_run = tracker.create_trial_run(job.trial, None)
    retry = job.model_copy(update={"context": job.context.model_copy(update={"trial_run_id": retry_run})})
    result = run_stage("train", retry.to_json(), tmp_path / "model.json")
    assert result.metrics["train/resumed_from_step"] == complete[-1]  # the newest complete remote checkpoint
    assert result.metrics["train/steps"] == 96
    steps_logged = [m.step for m in tracker.client.get_metric_history(retry_run, "train/loss")]
    assert min(steps_logged) == complete[-1] + 1 and max(steps_logged) == 96

    # Epoch 1 was on S3 only (the new pod resumed from a later one): its model was fetched from there.
    assert result.outputs["checkpoints"] == {"1": "checkpoints/epoch-1"}
    files = {a.path.rsplit("/", 1)[1] for a in tracker.client.list_artifacts(retry_run, "checkpoints/epoch-1")}
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= files and all(map(is_model_file, files))
    assert (
        artifact_bytes(tracker, retry_run, "checkpoints/epoch-1/model.safetensors", tmp_path / "dl") == epoch1_weights
    )

    assert s3_keys(s3_env, bucket, prefix) == []  # the stored model supersedes the checkpoints
    assert not (Path(job.context.root) / "checkpoints" / job.trial.key).exists()


@pytest.mark.slow  # trains a model or runs servers for tens of seconds
def test_unreachable_store_fails_at_start_but_a_failed_upload_does_not_stop_training(
    tmp_path: Path, s3_env: str, caplog: pytest.LogCaptureFixture
) -> None:
    import boto3
    from botocore.exceptions import ClientError

    missing, _ = make_job(tmp_path, checkpoint_uri="s3://no-such-bucket/ckpt")
    with pytest.raises(SftlabError, match=r"^s3://no-such-bucket/ckpt/\w+: not found \(NoSuchBucket\)$"):
        run_stage("train", missing.to_json(), tmp_path / "missing.json")

    bucket = new_bucket(s3_env)
    job, _ = make_job(tmp_path, epochs=4, checkpoint_uri=f"s3://{bucket}/ckpt")
    client = boto3.client("s3", endpoint_url=s3_env)

    def drop_bucket_after_first_checkpoint() -> None:
        while not any(k.endswith("/.complete") for k in s3_keys(s3_env, bucket, "ckpt/")):
            time.sleep(0.05)
        while True:  # an upload may land between emptying and deleting: empty again
            for key in s3_keys(s3_env, bucket, ""):
                client.delete_object(Bucket=bucket, Key=key)
            try:
                client.delete_bucket(Bucket=bucket)
                return
            except ClientError:
                continue

    dropper = threading.Thread(target=drop_bucket_after_first_checkpoint, daemon=True)
    dropper.start()
    result = run_stage("train", job.to_json(), tmp_path / "model.json")
    dropper.join(10)
    assert result.metrics["train/steps"] == 32  # all 4 epochs
    failed = [r.getMessage() for r in caplog.records if f"upload to s3://{bucket}" in r.getMessage()]
    assert failed[-1].startswith("checkpoint-32: ") and all("NoSuchBucket" in m for m in failed)


# ------------------------------------------------------------------------------ epoch models


@pytest.mark.slow  # trains a model or runs servers for tens of seconds
def test_every_epochs_model_is_stored_for_evaluation(tmp_path: Path) -> None:
    """evaluation.epochs all: epoch 1's model is exactly what a 1-epoch run of the same trial ends with."""
    pvc = tmp_path / "pvc"
    job, tracker = make_job(tmp_path, evaluation_epochs="all", epochs=2, checkpoint_uri=str(pvc))
    result = run_stage("train", job.to_json(), tmp_path / "two.json")
    run_id = job.context.trial_run_id
    assert result.outputs["checkpoints"] == {
        "1": "checkpoints/epoch-1",
        "2": "model",
    }  # the last epoch is the final model
    epoch1 = artifact_bytes(tracker, run_id, "checkpoints/epoch-1/model.safetensors", tmp_path / "a")
    assert epoch1 != artifact_bytes(tracker, run_id, "model/model.safetensors", tmp_path / "b")
    assert not (pvc / job.trial.key).exists()  # removed with the local checkpoints once the model is stored

    one, _ = make_job(tmp_path, epochs=1)
    single = run_stage("train", one.to_json(), tmp_path / "one.json")
    assert "checkpoints" not in single.outputs  # evaluation.epochs last: nothing extra is kept
    assert artifact_bytes(tracker, one.context.trial_run_id, "model/model.safetensors", tmp_path / "c") == epoch1


def test_an_upload_leaves_out_files_another_process_is_still_writing(tmp_path: Path) -> None:
    """Two nodes sharing one checkpoint folder: the first to finish must not copy the other's
    temporary files (they vanish mid-copy); the other uploads its finished files itself."""
    from sftlab.training.checkpoints import FolderStore

    local = tmp_path / "local" / "checkpoint-8"
    local.mkdir(parents=True)
    (local / "rng_state_1.pth").write_bytes(b"rank 1")
    (local / ".tmpvn8C11").write_bytes(b"rank 0, half written")
    store = FolderStore(tmp_path / "pvc")
    store.upload(local, 8)
    assert sorted(p.name for p in (tmp_path / "pvc" / "checkpoint-8").iterdir()) == ["rng_state_1.pth"]
