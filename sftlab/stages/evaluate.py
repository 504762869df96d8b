"""Evaluate stage: score the fine-tuned model (and any requested epoch checkpoints) and log gains.

Gains are ``fine-tuned - base`` against the cached baseline of the same base model and settings,
with paired bootstrap CIs over the same items. A LoRA trial is served as base model + adapter
(merged by the local server; one shared vLLM server for all of a trial's adapters on KServe),
never as a stored merged copy. Each checkpoint the train stage kept (``evaluation.epochs``)
becomes its own child run (``sftlab.stage = checkpoint``, ``sftlab.epoch``) with the same metric
names, as the study evaluated every epoch.
"""

from __future__ import annotations

from typing import Any

from sftlab.evals.base import BenchmarkScore
from sftlab.evals.scoring import gain_metrics, score_models
from sftlab.serving.endpoints import ModelToServe, artifact_storage_uri
from sftlab.spec.job import StageResult, TrialJob
from sftlab.spec.schema import KServeConfig
from sftlab.stages.baseline import base_item_scores, log_benchmark_rows
from sftlab.stages.common import trial_stage
from sftlab.tracking.runs import TAG_PARENT, TAG_STAGE, Tracker, trial_tags

TAG_EPOCH = "sftlab.epoch"
FINAL = "final"


def stored_model(
    tracker: Tracker, trained: dict[str, Any], label: str, artifact_path: str, config: KServeConfig
) -> ModelToServe:
    """A model (or adapter) the train stage stored in its run's artifacts."""
    run_id = trained["run_id"]
    return ModelToServe(
        label=label,
        fetch=lambda dst: tracker.download(run_id, artifact_path, dst),
        storage_uri=lambda: artifact_storage_uri(
            tracker.client.get_run(run_id).info.artifact_uri, artifact_path, config
        ),
        adapter=bool(trained["adapter"]),
    )


def _finished_epochs(tracker: Tracker, trial_run_id: str) -> set[int]:
    """Epochs already evaluated under this trial run (a re-run must not create duplicates)."""
    query = (
        f"tags.`{TAG_STAGE}` = 'checkpoint' AND tags.`{TAG_PARENT}` = '{trial_run_id}' "
        "AND attributes.status = 'FINISHED'"
    )
    return {int(run.data.tags[TAG_EPOCH]) for run in tracker.search(query)}


def run(job: TrialJob, inputs: dict[str, Any]) -> StageResult:
    trial = job.trial
    trained = inputs["model"]["outputs"]
    baseline = inputs["baseline"]["outputs"]
    final: dict[str, float] = {}
    with trial_stage(job, "evaluate") as (tracker, trial_run_id):
        base_items = {b: base_item_scores(tracker, r, b) for b, r in baseline.get("run_ids", {}).items()}
        config = trial.evaluation.kserve
        done = _finished_epochs(tracker, trial_run_id)
        models = [stored_model(tracker, trained, FINAL, trained["artifact_path"], config)]
        checkpoints = {
            e: path for e, path in trained.get("checkpoints", {}).items() if path != trained["artifact_path"]
        }
        epochs = {f"epoch-{e}": int(e) for e in checkpoints if int(e) not in done}  # the last epoch is the final model
        models += [
            stored_model(tracker, trained, label, checkpoints[str(e)], config)
            for label, e in sorted(epochs.items(), key=lambda kv: kv[1])
        ]

        def on_scored(label: str, results: dict[str, BenchmarkScore]) -> None:
            run_id = trial_run_id
            if label != FINAL:
                tags = {**{k: v for k, v in trial_tags(trial).items() if k != TAG_STAGE}, TAG_EPOCH: str(epochs[label])}
                run_id = tracker.create_run(
                    "checkpoint", f"{trial.label} {label}", tags, {"epoch": epochs[label]}, trial_run_id
                )
            with tracker.owning([run_id] if label != FINAL else []):
                metrics: dict[str, float] = {}
                for name, result in results.items():
                    metrics.update(
                        gain_metrics(
                            name,
                            result.metrics,
                            baseline["scores"][name],
                            result.item_scores,
                            base_items.get(name),
                            trial.evaluation,
                        )
                    )
                    log_benchmark_rows(tracker, run_id, name, result)
                tracker.log_metrics(run_id, metrics)
            if label == FINAL:
                final.update(metrics)

        score_models(
            trial.base_model,
            models,
            trial.benchmarks,
            trial.prompt_template,
            trial.evaluation,
            job.context,
            on_scored,
            name=trial.key,
            max_lora_rank=trial.training.lora.r if trained["adapter"] else None,
        )
    return StageResult(metrics=final)
