"""The whole sweep through the real CLI: kfp.local pipelines, kserve model servers, MLflow.

CI runs a reduced quickstart (one base model) plus a dataset whose rows are all malformed, to
prove a failing trial is recorded as a FAILED child run while the others finish. A second run of
the same spec must skip every finished trial and redo only the failed ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from sftlab.tracking.runs import TAG_ERROR, TAG_PARENT, TAG_TRIAL_KEY, Tracker
from tests.support.helpers import EXAMPLES, run_cli

pytestmark = pytest.mark.slow


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:  # gone meanwhile
        return b""


def write_spec(tmp_path: Path) -> Path:
    spec = yaml.safe_load((EXAMPLES / "quickstart.yaml").read_text())
    for item in spec["datasets"] + spec["benchmarks"]:
        item["uri"] = str(EXAMPLES / item["uri"])
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({"instruction": "no answer here"}) + "\n")
    spec["datasets"].append({"name": "broken", "uri": str(broken)})
    spec["sweep"]["base_model"] = ["tiny-llama-chat"]
    spec["evaluation"]["epochs"] = [2]  # and the final (4th) epoch: one checkpoint run per trial
    spec["tracking"] = {"root": str(tmp_path / "runs")}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# Known secret values in the environment of every command: none may surface anywhere.
SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIAE2ESECRETKEYID0",
    "AWS_SECRET_ACCESS_KEY": "e2e-aws-secret-7f3a9c",
    "HF_TOKEN": "hf_e2eTokenValue91b2",
    "SFTLAB_JUDGE_API_KEY": "sk-e2e-judge-55d1",
    "MLFLOW_TRACKING_PASSWORD": "e2e-db-password-0c4e",
}


def assert_no_secrets(tmp_path: Path, *outputs: str) -> None:
    """No secret value in any file the sweep wrote (MLflow store, artifacts, report) or printed."""
    for text in outputs:
        assert not [k for k, v in SECRETS.items() if v in text]
    for path in tmp_path.rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            assert not [k for k, v in SECRETS.items() if v.encode() in blob], path


def test_sweep_end_to_end_then_resume(tmp_path: Path) -> None:
    spec_path = write_spec(tmp_path)
    first = run_cli("run", str(spec_path), cwd=tmp_path, env=SECRETS)
    out = first.stdout + first.stderr
    assert first.returncode == 1, out  # two trials fail (broken data); the rest finish
    assert "6 trials: 0 already finished, 6 to run" in out
    assert "4 finished now, 2 failed" in out
    assert "FAILED tiny-llama-chat/broken[method=full]" in out
    assert "mlflow ui --backend-store-uri sqlite:///" in out
    # The console says what each trial is doing: its log, each stage's start and end, the headline.
    for stage in ("profile", "baseline", "train", "evaluate", "weights"):
        assert f"{stage} started" in out and f"{stage} finished in " in out, (stage, out)
    assert "] tiny-llama-chat/broken[method=full]: profile FAILED after " in out
    assert "started (log runs/logs/" in out
    assert "best gains (CI above 0): " in out and "got worse (CI below 0): " in out
    report = tmp_path / "runs" / "reports" / "quickstart" / "report.html"
    assert f"report:    {report}" in out and report.exists()

    tracker = Tracker(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}", "quickstart")
    sweeps = list(tracker.search("tags.`sftlab.stage` = 'sweep'"))
    assert len(sweeps) == 1
    sweep_id = sweeps[0].info.run_id
    trials = list(tracker.search("tags.`sftlab.stage` = 'trial'"))
    assert len(trials) == 6 and all(t.data.tags[TAG_PARENT] == sweep_id for t in trials)
    finished = [t for t in trials if t.info.status == "FINISHED"]
    failed = [t for t in trials if t.info.status == "FAILED"]
    assert len(finished) == 4 and len(failed) == 2
    for run in failed:
        assert run.data.tags["sftlab.dataset"] == "broken"
        assert run.data.tags[TAG_ERROR].startswith("profile: SftlabError: dataset broken")
        assert "no usable rows" in run.data.tags[TAG_ERROR]
    for run in finished:
        metrics, tags = run.data.metrics, run.data.tags
        assert {"sftlab.base_model", "sftlab.dataset", "sftlab.method", TAG_TRIAL_KEY} <= set(tags)
        assert run.data.params["training.method"] == tags["sftlab.method"]
        for name in (
            "profile/ppl",
            "train/final_loss",
            "train/tokens_per_s",
            "eval/gsm8k-tiny/exact_match",
            "eval/gsm8k-tiny/loglik",
            "base/gsm8k-tiny/loglik",
            "gain/gsm8k-tiny/loglik",
            "weights/layer_0/rel_change",
            "weights/layer_3/rel_change",
        ):
            assert name in metrics, (name, tags["sftlab.label"])
        assert metrics["gain/gsm8k-tiny/loglik"] == pytest.approx(
            metrics["eval/gsm8k-tiny/loglik"] - metrics["base/gsm8k-tiny/loglik"]
        )
        assert metrics["weights/layer_0/rel_change"] > 0
        assert tags.get("sftlab.kfp_task.train"), "KFP task name recorded on the MLflow run"
        assert any(a.path == "model" for a in tracker.client.list_artifacts(run.info.run_id))
    # Fine-tuning on math moves the likelihood of GSM8K-format answers more than code does.
    gain = {
        (r.data.tags["sftlab.dataset"], r.data.tags["sftlab.method"]): r.data.metrics["gain/gsm8k-tiny/loglik"]
        for r in finished
    }
    assert gain[("math", "full")] > gain[("code", "full")]
    assert len(set(gain.values())) == 4  # real, varying effects
    # One profile per (base model, dataset) and one baseline per (base model, benchmark), even with
    # two trials in parallel; the broken dataset's profile attempts are FAILED runs.
    profiles = list(tracker.search("tags.`sftlab.stage` = 'profile'"))
    assert sorted(p.data.tags["sftlab.dataset"] for p in profiles if p.info.status == "FINISHED") == ["code", "math"]
    assert {p.info.status for p in profiles if p.data.tags["sftlab.dataset"] == "broken"} == {"FAILED"}
    baselines = list(tracker.search("tags.`sftlab.stage` = 'baseline'"))
    assert [b.info.status for b in baselines] == ["FINISHED"]
    assert any(a.path == "report" for a in tracker.client.list_artifacts(sweep_id))
    # Epoch 2 of every finished trial was evaluated as its own child run, with paired gain CIs.
    checkpoints = list(tracker.search("tags.`sftlab.stage` = 'checkpoint'"))
    assert sorted(c.data.tags[TAG_PARENT] for c in checkpoints) == sorted(t.info.run_id for t in finished)
    for run in checkpoints + finished:
        m = run.data.metrics
        assert run.data.tags.get("sftlab.epoch", "2") == "2" and run.info.status == "FINISHED"
        assert m["gain/gsm8k-tiny/score_ci_low"] <= m["gain/gsm8k-tiny/score"] <= m["gain/gsm8k-tiny/score_ci_high"]
    # The cost estimate's training tokens against what training measured (the quickstart's ratio).
    from sftlab.cost import estimate
    from sftlab.spec.grid import expand
    from sftlab.spec.job import context_for
    from sftlab.spec.loading import load_spec

    spec = load_spec(spec_path)
    estimated = {c.key: c.train_tokens for c in estimate(expand(spec), context_for(spec)).trials}
    for run in finished:
        ratio = estimated[run.data.tags[TAG_TRIAL_KEY]] / run.data.metrics["train/tokens"]
        print(f"cost estimate / measured training tokens, {run.data.tags['sftlab.label']}: {ratio:.3f}")
        assert 0.95 < ratio < 1.05

    again = run_cli("run", str(spec_path), cwd=tmp_path, env=SECRETS)
    out = again.stdout + again.stderr
    assert "6 trials: 4 already finished, 2 to run" in out, out
    trials_after = list(tracker.search("tags.`sftlab.stage` = 'trial'"))
    assert len(trials_after) == 8  # only the two failed trials ran again
    assert len(list(tracker.search("tags.`sftlab.stage` = 'sweep'"))) == 1
    assert sum(t.info.status == "FINISHED" for t in trials_after) == 4
    compiled = run_cli(
        "compile", str(spec_path), "--output", str(tmp_path / "compiled.yaml"), cwd=tmp_path, env=SECRETS
    )
    assert compiled.returncode == 0, compiled.stderr
    assert_no_secrets(tmp_path, first.stdout + first.stderr, out, compiled.stdout + compiled.stderr)


@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
def test_interrupted_sweep_redoes_only_the_interrupted_trial(tmp_path: Path, stop: str) -> None:
    """Ctrl-C (SIGINT to the terminal's process group) or `kill` / a stopped container (SIGTERM to
    the sweep process alone) mid-sweep, then run again: the finished trial is kept, the
    interrupted one is redone once, and the report counts each trial once."""
    import csv
    import os
    import signal
    import subprocess
    import sys
    import time

    spec = yaml.safe_load((EXAMPLES / "quickstart.yaml").read_text())
    for item in spec["datasets"] + spec["benchmarks"]:
        item["uri"] = str(EXAMPLES / item["uri"])
    spec["sweep"] = {"base_model": ["tiny-llama-chat"], "dataset": ["math", "code"], "training.method": ["full"]}
    spec["pipeline"] = {"max_parallel_trials": 1}
    spec["tracking"] = {"root": str(tmp_path / "runs")}
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))

    console = tmp_path / "console.log"  # read while it runs; opening the store meanwhile would race its creation
    with console.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sftlab.cli", "run", str(spec_path)],
            cwd=tmp_path,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 600
    while (
        "[1/2] tiny-llama-chat/math[method=full]: finished" not in console.read_text() and time.monotonic() < deadline
    ):
        assert proc.poll() is None, console.read_text()
        time.sleep(1)
    assert proc.poll() is None, "the first trial should finish while the second runs"
    time.sleep(5)  # well into the second trial
    if stop == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground process group
    else:
        proc.send_signal(signal.SIGTERM)  # the sweep alone: it must stop its trial processes itself
    proc.wait(timeout=120)
    out = console.read_text()
    assert proc.returncode == 130, out
    assert "interrupted (" in out and "run the same command again to finish the sweep" in out
    assert "Traceback" not in out
    tracker = Tracker(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}", "quickstart")
    (sweep,) = tracker.search("tags.`sftlab.stage` = 'sweep'")
    assert sweep.info.status == "FAILED" and sweep.data.tags[TAG_ERROR].startswith("interrupted (")
    # The sweep exits only once its trial processes have closed their runs and are gone.
    left = [p for p in Path("/proc").iterdir() if p.name.isdigit() and str(tmp_path).encode() in _cmdline(p)]
    assert not left, f"trial processes outlived the sweep: {[_cmdline(p)[:200] for p in left]}"
    trials = list(tracker.search("tags.`sftlab.stage` = 'trial'"))
    interrupted = [t for t in trials if t.info.status != "FINISHED"]
    assert len(trials) == 2 and len(interrupted) == 1, [(t.data.tags["sftlab.label"], t.info.status) for t in trials]
    assert interrupted[0].info.status == "FAILED" and "interrupted" in interrupted[0].data.tags[TAG_ERROR]
    # Profiles/baselines it had claimed were released, so the re-run never waits on them.
    assert not list(tracker.search("tags.`sftlab.cache_key` != '' AND attributes.status = 'RUNNING'"))

    again = run_cli("run", str(spec_path), cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "2 trials: 1 already finished, 1 to run" in again.stdout + again.stderr
    trials = list(tracker.search("tags.`sftlab.stage` = 'trial'"))
    assert len(trials) == 3 and sum(t.info.status == "FINISHED" for t in trials) == 2
    with open(tmp_path / "runs" / "reports" / "quickstart" / "trials.csv") as handle:
        keys = [row["key"] for row in csv.DictReader(handle)]
    assert sorted(keys) == sorted({t.data.tags[TAG_TRIAL_KEY] for t in trials})  # each trial once
