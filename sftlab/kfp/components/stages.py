"""The trial stages as KFP components: ``<stage>`` here runs ``sftlab/stages/<stage>.py``.

Each component takes the same three parameters — ``job`` (the trial's ``TrialJob`` JSON),
``kfp_run_id`` and ``kfp_task`` (the pipeline passes KFP's run-id and task-name placeholders so the
MLflow run links back to the KFP run) — plus the upstream results it needs, and produces a small
result JSON (with the MLflow URIs of anything big) and the stage's metrics. The result artifact
carries the trial's MLflow run id and tracking URI as metadata, for the jump from the KFP UI.

Function bodies import ``sftlab`` themselves: KFP ships only the function's source to the task.
That import runs under KFP's task runtime, which loads only the runtime half of the SDK (artifact
types): importing its compile-time half there fails with a circular import, so this module keeps
that half out of its module-level imports. No ``from __future__ import annotations`` either: KFP
reads the artifact annotations at runtime.
"""

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

if TYPE_CHECKING:  # compile-time half of the SDK: not importable inside a running task
    from kfp.dsl.base_component import BaseComponent


def execute(
    stage: str, job: str, kfp_run_id: str, kfp_task: str, result: Artifact, metrics: Metrics, **inputs: Artifact
) -> None:
    """Run one stage through ``run_stage`` and publish its result: the body every component shares."""
    from sftlab.stages.common import kfp_metadata, run_stage

    outcome = run_stage(stage, job, result.path, {name: a.path for name, a in inputs.items()}, kfp_run_id, kfp_task)
    for name, value in outcome.metrics.items():
        if math.isfinite(value):  # KFP's backend rejects NaN/inf metadata; MLflow keeps the full record
            metrics.log_metric(name, value)
    result.metadata.update(kfp_metadata(job))


def profile(job: str, kfp_run_id: str, kfp_task: str, result: Output[Dataset], metrics: Output[Metrics]):
    """Profile the training data under the base model (token lengths, truncation, response perplexity)."""
    from sftlab.kfp.components.stages import execute

    execute("profile", job, kfp_run_id, kfp_task, result, metrics)


def baseline(job: str, kfp_run_id: str, kfp_task: str, result: Output[Dataset], metrics: Output[Metrics]):
    """Evaluate the base model on the spec's benchmarks: the reference the fine-tuned model is compared to."""
    from sftlab.kfp.components.stages import execute

    execute("baseline", job, kfp_run_id, kfp_task, result, metrics)


def train(job: str, kfp_run_id: str, kfp_task: str, model: Output[Model], metrics: Output[Metrics]):
    """Fine-tune the base model; ``model`` is a small JSON naming the MLflow artifact, not the weights."""
    from sftlab.kfp.components.stages import execute

    execute("train", job, kfp_run_id, kfp_task, model, metrics)


def evaluate(
    job: str,
    kfp_run_id: str,
    kfp_task: str,
    model: Input[Model],
    baseline: Input[Dataset],
    result: Output[Dataset],
    metrics: Output[Metrics],
):
    """Evaluate the fine-tuned model on the benchmarks and compare it with the baseline."""
    from sftlab.kfp.components.stages import execute

    execute("evaluate", job, kfp_run_id, kfp_task, result, metrics, model=model, baseline=baseline)


def weights(
    job: str, kfp_run_id: str, kfp_task: str, model: Input[Model], result: Output[Dataset], metrics: Output[Metrics]
):
    """Measure how fine-tuning changed the weights, layer by layer."""
    from sftlab.kfp.components.stages import execute

    execute("weights", job, kfp_run_id, kfp_task, result, metrics, model=model)


@dataclass(frozen=True)
class StageComponents:
    profile: "BaseComponent"
    baseline: "BaseComponent"
    train: "BaseComponent"
    evaluate: "BaseComponent"
    weights: "BaseComponent"


def stage_components(image: str) -> StageComponents:
    """The five stage components, built on ``image`` (which must have sftlab, and so kfp, installed)."""
    funcs = (profile, baseline, train, evaluate, weights)
    return StageComponents(*(dsl.component(func, base_image=image, install_kfp_package=False) for func in funcs))
