"""Profile and train stages on tiny assets, with real MLflow (sqlite) and real files."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from sftlab.errors import SftlabError
from sftlab.sources import data, models
from sftlab.spec.job import TrialJob, context_for
from sftlab.stages.common import run_stage
from sftlab.stages.profile import profile_key
from sftlab.tracking.runs import TAG_ERROR, Tracker
from sftlab.tracking.tags import TAG_HEARTBEAT
from tests.support.helpers import first_trial, quickstart_spec, start_stage


def make_job(tmp_path: Path, **axes: object) -> tuple[TrialJob, Tracker]:
    spec = quickstart_spec(tmp_path)
    trial = first_trial(spec, **axes)
    ctx = context_for(spec)
    tracker = Tracker.for_context(ctx)
    run_id = tracker.create_trial_run(trial, None)
    return TrialJob(trial=trial, context=ctx.model_copy(update={"trial_run_id": run_id})), tracker


def direct_response_ppl(job: TrialJob) -> float:
    """Token-weighted perplexity of the responses, one unbatched forward pass per example."""
    import torch

    source = models.resolve(job.trial.base_model, job.context)
    tokenizer, model = models.load_tokenizer(source), models.load_causal_lm(source)
    loaded = data.load_examples(job.trial.dataset, job.trial.dataset_template, job.context)
    total_nll, total_tokens = 0.0, 0
    for example in loaded.examples:
        prompt, completion = data.render_text(example, tokenizer)
        n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        ids = torch.tensor([tokenizer(prompt + completion, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, :-1], -1)
        targets = ids[0, 1:]
        picked = logp[torch.arange(len(targets)), targets][n_prompt - 1 :]
        total_nll -= float(picked.sum())
        total_tokens += len(picked)
    return math.exp(total_nll / total_tokens)


def test_profile_matches_direct_computation_and_is_cached(tmp_path: Path) -> None:
    job, tracker = make_job(tmp_path, dataset="math", **{"training.method": "full"})
    result = run_stage("profile", job.to_json(), tmp_path / "profile.json")
    metrics = result.metrics
    assert metrics["profile/rows"] == 64
    assert metrics["profile/ppl"] == pytest.approx(direct_response_ppl(job), rel=1e-4)
    assert metrics["profile/ppl_mean_example"] > 1 and metrics["profile/truncated_share"] == 0.0

    profile_run = tracker.cached("profile", profile_key(job.trial))
    assert profile_run is not None and profile_run.info.run_id == result.outputs["profile_run_id"]
    assert [a.path for a in tracker.client.list_artifacts(profile_run.info.run_id)] == [
        "profile.json",
        "profile_card.html",
    ]
    trial_run = tracker.client.get_run(job.context.trial_run_id)
    assert trial_run.data.metrics["profile/ppl"] == pytest.approx(metrics["profile/ppl"])
    assert trial_run.data.tags["sftlab.profile_run_id"] == profile_run.info.run_id

    # A second trial of the same (base model, dataset) reuses the profile run.
    job2, _ = make_job(tmp_path, dataset="math", **{"training.method": "lora"})
    again = run_stage("profile", job2.to_json(), tmp_path / "profile2.json")
    assert again.outputs["profile_run_id"] == profile_run.info.run_id
    profiles = list(tracker.search("tags.`sftlab.stage` = 'profile'"))
    assert len(profiles) == 1


@pytest.mark.slow  # trains a model or runs servers for tens of seconds
@pytest.mark.parametrize("method", ["full", "lora"])
def test_train_logs_loss_and_stores_model_in_mlflow(tmp_path: Path, method: str) -> None:
    job, tracker = make_job(tmp_path, dataset="math", **{"training.method": method})
    result = run_stage("train", job.to_json(), tmp_path / "model.json")
    run_id = job.context.trial_run_id
    run = tracker.client.get_run(run_id)
    history = tracker.client.get_metric_history(run_id, "train/loss")
    assert len(history) == result.metrics["train/steps"] == 32  # 64 rows / batch 8 x 4 epochs
    assert history[-1].value < history[0].value  # it learns
    assert run.data.metrics["train/tokens_per_s"] > 0
    files = {a.path for a in tracker.client.list_artifacts(run_id, "model")}
    weights = "model/adapter_model.safetensors" if method == "lora" else "model/model.safetensors"
    assert weights in files and "model/tokenizer.json" in files
    assert result.outputs == {
        "run_id": run_id,
        "artifact_path": "model",
        "adapter": method == "lora",
        "uri": f"runs:/{run_id}/model",
    }
    versions = tracker.client.search_model_versions(f"name = 'quickstart.{job.trial.base_model.name}'")
    assert [(v.run_id, v.tags["sftlab.trial_key"], v.tags["sftlab.method"]) for v in versions] == [
        (run_id, job.trial.key, method)
    ]


def test_stage_failure_is_recorded_on_the_trial_run(tmp_path: Path) -> None:
    job, tracker = make_job(tmp_path, dataset="math", **{"training.method": "full"})
    broken = job.model_copy(
        update={
            "trial": job.trial.model_copy(
                update={"training": job.trial.training.model_copy(update={"method": "qlora"})}
            )
        }
    )
    with pytest.raises(SftlabError, match="qlora needs a CUDA GPU"):
        run_stage("train", broken.to_json(), tmp_path / "model.json")
    tags = tracker.client.get_run(job.context.trial_run_id).data.tags
    assert (
        tags[TAG_ERROR]
        == "train: SftlabError: training.method: qlora needs a CUDA GPU (4-bit bitsandbytes); use lora or full on CPU"
    )


@pytest.mark.slow  # trains a model or runs servers for tens of seconds
def test_sigterm_mid_stage_releases_its_claims_and_records_the_cause(tmp_path: Path) -> None:
    """A cancelled KFP run or an evicted pod gets SIGTERM: the stage still closes the profile run
    it claimed (else other trials would wait on it) and says why on the trial run."""
    import signal
    import time

    job, tracker = make_job(tmp_path, dataset="math", **{"training.method": "full"})
    proc = start_stage("profile", job, tmp_path, "out.json")
    query = "tags.`sftlab.stage` = 'profile' AND attributes.status = 'RUNNING'"
    deadline = time.monotonic() + 120
    while not any(run.data.tags.get(TAG_HEARTBEAT) for run in tracker.search(query)) and time.monotonic() < deadline:
        assert proc.poll() is None, "the profile stage ended before it could be stopped"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) != 0
    (claimed,) = tracker.search("tags.`sftlab.stage` = 'profile'")
    assert claimed.info.status == "FAILED" and claimed.data.tags[TAG_ERROR] == "Terminated: SIGTERM"
    trial = tracker.client.get_run(job.context.trial_run_id)
    assert trial.data.tags[TAG_ERROR] == "profile: interrupted (SIGTERM)"


def test_a_stage_stopped_before_it_owns_its_claim_still_releases_it(tmp_path: Path) -> None:
    """An interrupt that lands after ``claim`` returned but before the stage's ``owning`` block
    began: the stage's exit closes the claim, so no other trial waits on it."""
    from sftlab.stages.common import trial_stage

    job, tracker = make_job(tmp_path, dataset="math", **{"training.method": "full"})
    with pytest.raises(KeyboardInterrupt), trial_stage(job, "profile") as (stage_tracker, _):
        _, claimed = stage_tracker.claim("profile", "k", "claimed", {}, settle_s=0)
        _, finished = stage_tracker.claim("profile", "k2", "finished", {}, settle_s=0)
        with stage_tracker.owning([finished]):
            pass
        raise KeyboardInterrupt
    assert tracker.client.get_run(finished).info.status == "FINISHED"
    released = tracker.client.get_run(claimed)
    assert (
        released.info.status == "FAILED" and released.data.tags[TAG_ERROR] == "profile: interrupted (KeyboardInterrupt)"
    )
    cached, run_id = tracker.claim("profile", "k", "next", {}, settle_s=0, wait_s=5)
    assert cached is None and run_id not in (None, claimed)


@pytest.mark.slow  # trains a model or runs servers for tens of seconds
def test_training_killed_mid_run_resumes_from_the_last_checkpoint(tmp_path: Path) -> None:
    """SIGKILL the train stage after its first epoch checkpoint; the re-run continues from it."""
    import signal
    import time

    job, tracker = make_job(tmp_path, dataset="math", **{"training.method": "full"})
    long = job.trial.training.model_copy(update={"epochs": 40})  # 320 steps: time to kill it mid-run
    job = job.model_copy(update={"trial": job.trial.model_copy(update={"training": long})})
    checkpoints = tmp_path / "runs" / "checkpoints" / job.trial.key
    proc = start_stage("train", job, tmp_path, "killed.json")
    deadline = time.monotonic() + 240
    while not any(checkpoints.glob("checkpoint-*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # let the checkpoint finish writing; the kill lands mid-epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "training finished before it could be killed"
    complete = [p for p in checkpoints.glob("checkpoint-*") if (p / "trainer_state.json").exists()]
    saved = sorted(int(p.name.split("-")[1]) for p in complete)
    assert saved and saved[-1] < 320
    half_written = checkpoints / "checkpoint-319"  # as if the kill landed mid-save
    half_written.mkdir(exist_ok=True)
    (half_written / "model.safetensors").write_bytes(b"partial")

    retry_run = tracker.create_trial_run(job.trial, None)
    retry = job.model_copy(update={"context": job.context.model_copy(update={"trial_run_id": retry_run})})
    result = run_stage("train", retry.to_json(), tmp_path / "model.json")
    assert result.metrics["train/resumed_from_step"] == saved[-1]  # the newest complete checkpoint
    assert result.metrics["train/steps"] == 320
    steps_logged = [m.step for m in tracker.client.get_metric_history(retry_run, "train/loss")]
    assert min(steps_logged) == result.metrics["train/resumed_from_step"] + 1 and max(steps_logged) == 320
    assert not checkpoints.exists()  # removed once the model is stored
