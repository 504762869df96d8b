"""The report on a synthetic MLflow experiment with planted effects (sqlite store, no training)."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from sftlab.errors import SftlabError
from sftlab.job import RunContext
from sftlab.stages import report
from sftlab.reporting.render import REPORT_FILES
from sftlab.tracking import TAG_TRIAL_KEY, Tracker

EXPERIMENT = "synthetic-study"
MODELS = ("llama-tiny", "qwen-tiny")
DATASETS = ("alpaca", "codealpaca", "gsm-train", "flan")
SEEDS = (0, 1, 2)
LAYERS = 6  # bottom 0-1, middle 2-3, top 4-5
FAIL_ONLY = {5, 17}
RETRIED = 3  # failed once, then finished: must count once, as finished
NEVER_RUN = 9


@dataclass(frozen=True)
class Planned:
    key: str
    label: str


def _metrics(rng: np.random.Generator, ppl: float) -> dict[str, float]:
    """Planted: gain falls with data perplexity and rises with layer 2's change; other layers are noise."""
    layer = {i: float(rng.uniform(0.01, 0.03)) for i in range(LAYERS)}
    layer[2] = float(rng.uniform(0.0, 0.1))
    # both drivers standardised (ppl ~ U(2, 9), layer 2 ~ U(0, 0.1)), so gains take both signs
    drive = -1.2 * (ppl - 5.5) / 2.0 + (layer[2] - 0.05) / 0.029 + rng.normal(0, 0.3)
    out = {
        "profile/ppl": ppl,
        "profile/ppl_mean_example": ppl * 1.1,
        "profile/tokens_mean": float(rng.uniform(80, 200)),
        "profile/response_tokens_mean": float(rng.uniform(40, 120)),
        "profile/truncated_share": 0.0,
        "train/final_loss": float(np.log(ppl)),
        "time/train_s": 10.0,
        "time/evaluate_s": 300.0,
        "weights/total/rel_change": float(np.mean(list(layer.values()))),
    }
    for bench, base_em, base_ll in (("gsm8k", 0.2, -2.0), ("boolq", 0.5, -1.0)):
        gains = {"exact_match": 0.02 * drive, "loglik": 0.1 * drive}
        for metric, base in (("exact_match", base_em), ("loglik", base_ll)):
            out[f"base/{bench}/{metric}"] = base
            out[f"eval/{bench}/{metric}"] = base + gains[metric]
            out[f"gain/{bench}/{metric}"] = gains[metric]
    out.update({f"weights/layer_{i}/rel_change": v for i, v in layer.items()})
    for depth, members in (("bottom", (0, 1)), ("middle", (2, 3)), ("top", (4, 5))):
        out[f"weights/depth_{depth}/rel_change"] = float(np.mean([layer[i] for i in members]))
    return out


def _trial_run(tracker: Tracker, sweep: str, trial: Planned, model: str, dataset: str, seed: int) -> str:
    tags = {
        TAG_TRIAL_KEY: trial.key,
        "sftlab.base_model": model,
        "sftlab.dataset": dataset,
        "sftlab.method": "lora" if seed == 2 else "full",
        "sftlab.label": trial.label,
    }
    params = {"training.learning_rate": 1e-5, "training.epochs": 3, "training.seed": seed}
    return tracker.create_run("trial", trial.label, tags, params, parent_run_id=sweep)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[Tracker, list[Planned], RunContext]:
    root = tmp_path_factory.mktemp("study")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    tracker = Tracker(uri, EXPERIMENT, root / "artifacts")
    sweep = tracker.create_run("sweep", "sweep", {"sftlab.sweep_key": "k"})
    rng = np.random.default_rng(7)
    ppl = {(m, d): float(rng.uniform(2, 9)) for m in MODELS for d in DATASETS}
    planned: list[Planned] = []
    for index, (model, dataset, seed) in enumerate((m, d, s) for m in MODELS for d in DATASETS for s in SEEDS):
        trial = Planned(f"key{index:02d}", f"{model}/{dataset}[seed={seed}]")
        planned.append(trial)
        if index == NEVER_RUN:
            continue
        if index in FAIL_ONLY | {RETRIED}:
            tracker.finish(
                _trial_run(tracker, sweep, trial, model, dataset, seed),
                ok=False,
                error="train: OutOfMemoryError: CUDA out of memory",
            )
        if index not in FAIL_ONLY:
            run_id = _trial_run(tracker, sweep, trial, model, dataset, seed)
            tracker.log_metrics(run_id, _metrics(rng, ppl[model, dataset]))
            tracker.finish(run_id)
    stray = Planned("not-planned", "other-sweep/trial")  # in the experiment, not in this sweep
    run_id = _trial_run(tracker, sweep, stray, MODELS[0], DATASETS[0], 0)
    tracker.log_metrics(run_id, _metrics(rng, 3.0))
    tracker.finish(run_id)
    ctx = RunContext(tracking_uri=uri, experiment=EXPERIMENT, root=str(root), sweep_run_id=sweep)
    return tracker, planned, ctx


@pytest.fixture(scope="module")
def built(study) -> Path:
    tracker, planned, ctx = study
    path = report.build_for_sweep(tracker, planned, ctx)
    return path


def _rho(text: str, pattern: str) -> float:
    found = re.search(pattern + r" \(?ρ = ([+-]\d\.\d\d)", text)
    assert found, pattern
    return float(found.group(1))


def test_files_and_sweep_artifacts(study, built):
    tracker, _, ctx = study
    assert built == Path(ctx.root) / "reports" / EXPERIMENT / "report.html"
    assert {p.name for p in built.parent.iterdir()} == set(REPORT_FILES)
    listed = tracker.client.list_artifacts(ctx.sweep_run_id, "report")
    assert {f.path for f in listed} == {f"report/{name}" for name in REPORT_FILES}


def test_html_is_self_contained_with_trial_table(study, built):
    _, planned, _ = study
    page = built.read_text()
    assert page.count("src='data:image/png;base64,") >= 3
    page = re.sub(r"base64,[A-Za-z0-9+/=]+", "base64,", page)
    assert "<script" not in page and "<link" not in page and "http" not in page
    finished = [t for i, t in enumerate(planned) if i not in FAIL_ONLY | {NEVER_RUN}]
    for trial in finished:
        assert f"<td>{trial.label}</td>" in page
    assert "other-sweep/trial" not in page
    assert "nan" not in page.lower()


def test_summary_counts_each_trial_once_and_lists_failures(study, built):
    _, planned, _ = study
    text = built.with_name("report.md").read_text()
    assert "24 trials: 21 finished, 2 failed, 1 missing." in text
    for index in FAIL_ONLY:
        assert re.search(rf"\| {re.escape(planned[index].label)} \| failed \| train: OutOfMemoryError", text)
    assert f"| {planned[NEVER_RUN].label} | missing | no finished or failed run |" in text
    assert planned[RETRIED].label not in text.split("## Trials")[0]


def test_perplexity_correlates_negatively_with_gain(built):
    text = built.with_name("report.md").read_text()
    for measure in ("gsm8k/exact_match", "gsm8k/loglik", "boolq/loglik"):
        assert _rho(text, f"{measure}: perplexity") < -0.6


def test_middle_depth_and_planted_layer_correlate_most(built):
    text = built.with_name("report.md").read_text()
    for measure in ("gsm8k/exact_match", "boolq/loglik"):
        found = rf"{measure}: the middle third correlates most \(ρ = \+0\.\d\d .*strongest single layer: layer 2 "
        assert re.search(found, text)


def test_synergy_and_csv(study, built):
    text = built.with_name("report.md").read_text()
    assert "| dataset (llama-tiny) |" in text and "| dataset (qwen-tiny) |" in text
    consistency = text.split("| dataset (all base models) |")[1].split("\n\n")[0]
    assert re.search(r"\| (universal [+−]|model-specific) \|", consistency)
    with built.with_name("trials.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 24
    assert sum(r["status"] == "finished" for r in rows) == 21
    assert {"gain/gsm8k/loglik", "weights/layer_2/rel_change", "training.learning_rate"} <= set(rows[0])


def test_experiment_report_and_too_few_trials(study, tmp_path):
    _, _, ctx = study
    path = report.build_for_experiment(ctx.tracking_uri, EXPERIMENT, tmp_path / "all")
    # every trial key with a run, the unplanned one included; a never-run trial is unknown here
    assert "24 trials: 22 finished, 2 failed, 0 missing." in path.with_name("report.md").read_text()
    small = Tracker(ctx.tracking_uri, "two-trials")
    for index in range(2):
        trial = Planned(f"k{index}", f"m/d[seed={index}]")
        run_id = _trial_run(small, None, trial, "m", "d", index)  # type: ignore[arg-type]
        small.log_metrics(run_id, {"profile/ppl": 2.0 + index, "gain/gsm8k/exact_match": 0.1 * index})
        small.finish(run_id)
    path = report.build_for_experiment(ctx.tracking_uri, "two-trials", tmp_path / "two")
    text = path.with_name("report.md").read_text()
    assert "gsm8k/exact_match: perplexity n/a (too few trials)" in text
    assert "nan" not in text.lower()
    with pytest.raises(SftlabError, match="no experiment named 'absent'"):
        report.build_for_experiment(ctx.tracking_uri, "absent", tmp_path / "absent")
