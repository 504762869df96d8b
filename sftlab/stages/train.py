"""Train stage: supervised fine-tuning with TRL's ``SFTTrainer`` (full or LoRA via peft).

Loss covers completions only (TRL's prompt/completion handling). The result — full weights as
safetensors, or the LoRA adapter alone — is stored once, in the trial run's MLflow artifacts
(S3 in production); downstream stages receive its URI, not a copy.

Preemption: every epoch a resumable checkpoint (weights, optimizer, scheduler, RNG state) goes to
a folder named by the trial key, outside the process; a re-run of a killed trial resumes from the
newest one instead of starting over. It is removed once the model is stored.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from sftlab import data, models
from sftlab.errors import SftlabError
from sftlab.grid import Trial
from sftlab.job import TrialJob
from sftlab.spec import TrainingConfig
from sftlab.stages.common import StageResult, log, trial_stage
from sftlab.tracking import Tracker

MODEL_ARTIFACT = "model"


def check_method(training: TrainingConfig) -> None:
    import torch

    if training.method == "qlora" and not torch.cuda.is_available():
        raise SftlabError("training.method: qlora needs a CUDA GPU (4-bit bitsandbytes); use lora or full on CPU")


def gradient_accumulation(training: TrainingConfig, world_size: int = 1) -> int:
    per_step = training.per_device_batch_size * world_size
    if training.global_batch_size % per_step:
        raise SftlabError(
            f"training.global_batch_size {training.global_batch_size} is not a multiple of "
            f"per_device_batch_size × devices = {per_step}"
        )
    return training.global_batch_size // per_step


def sft_config(training: TrainingConfig, output_dir: Path) -> Any:
    import torch
    from trl import SFTConfig

    cuda = torch.cuda.is_available()
    return SFTConfig(
        output_dir=str(output_dir),
        num_train_epochs=training.epochs,
        learning_rate=training.learning_rate,
        lr_scheduler_type=training.lr_scheduler,
        warmup_steps=training.warmup_ratio,  # a float in [0, 1) is a ratio of total steps
        per_device_train_batch_size=training.per_device_batch_size,
        gradient_accumulation_steps=gradient_accumulation(training, int(os.environ.get("WORLD_SIZE", "1"))),
        weight_decay=training.weight_decay,
        max_length=training.max_length,
        packing=training.packing,
        seed=training.seed,
        bf16=cuda and torch.cuda.is_bf16_supported(),
        use_cpu=not cuda,
        gradient_checkpointing=cuda,  # saves memory on big models; only slows tiny CPU runs
        logging_steps=1,
        save_strategy="epoch" if training.checkpoint_every_epoch else "no",
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def peft_config(training: TrainingConfig) -> Any:
    if training.method == "full":
        return None
    from peft import LoraConfig

    lora = training.lora
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )


def _callback(tracker: Tracker, run_id: str, flush_every_s: float = 10.0) -> Any:
    from transformers import TrainerCallback

    class MlflowLogCallback(TrainerCallback):
        """Per-step loss / lr / grad-norm onto the trial's own run (TRL's MLflow hook would open another).

        Buffered and written in batches (every ``flush_every_s`` and at the end): one synchronous
        tracking write per step would slow small, fast steps measurably.
        """

        def __init__(self) -> None:
            self.pending: list[tuple[int, dict[str, float]]] = []
            self.last_flush = time.monotonic()

        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001 - transformers' signature
            wanted = {"loss": "train/loss", "learning_rate": "train/lr", "grad_norm": "train/grad_norm"}
            step_metrics = {name: logs[k] for k, name in wanted.items() if logs and k in logs}
            if step_metrics:
                self.pending.append((state.global_step, step_metrics))
            if time.monotonic() - self.last_flush > flush_every_s:
                self.flush()

        def on_save(self, args, state, control, **kwargs):  # noqa: ANN001
            self.flush()  # a resumed run must not lose the curve up to its checkpoint

        def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001
            self.flush()

        def flush(self) -> None:
            tracker.log_metric_steps(run_id, self.pending)
            self.pending, self.last_flush = [], time.monotonic()

    return MlflowLogCallback()


def last_complete_checkpoint(folder: Path) -> str | None:
    """The newest checkpoint whose trainer state was written (transformers writes it last).

    A kill can land mid-save; such a half-written checkpoint is skipped, never resumed from.
    """
    steps = []
    for path in folder.glob("checkpoint-*") if folder.is_dir() else []:
        try:
            json.loads((path / "trainer_state.json").read_text())
            steps.append((int(path.name.rsplit("-", 1)[1]), path))
        except (OSError, ValueError):
            continue
    return str(max(steps)[1]) if steps else None


def checkpoint_dir(job: TrialJob) -> Path:
    """Where a trial's resumable checkpoints live: keyed by trial, so a re-run finds them."""
    return Path(job.context.root) / "checkpoints" / job.trial.key


def train(trial: Trial, job: TrialJob, tracker: Tracker, run_id: str, out_dir: Path) -> dict[str, float]:
    """Fine-tune the trial's base model on its dataset; save the model (or adapter) to ``out_dir``."""
    from datasets import Dataset
    from trl import SFTTrainer

    training = trial.training
    check_method(training)
    source = models.resolve(trial.base_model, job.context)
    tokenizer = models.load_tokenizer(source, trial.base_model.revision)
    loaded = data.load_examples(trial.dataset, trial.dataset_template, job.context, training.max_rows, training.seed)
    train_set = Dataset.from_list([e.as_record() for e in loaded.examples])
    model = models.load_causal_lm(source, trial.base_model.revision)
    checkpoints = checkpoint_dir(job)
    resume = last_complete_checkpoint(checkpoints)
    trainer = SFTTrainer(
        model=model,
        args=sft_config(training, checkpoints),
        train_dataset=train_set,
        processing_class=tokenizer,
        peft_config=peft_config(training),
        callbacks=[_callback(tracker, run_id)],
    )
    tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
    if resume:
        log.info("train: resuming from %s", resume)
    started = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - started
    resumed_step = int(Path(resume).name.rsplit("-", 1)[1]) if resume else 0  # checkpoint-<step>
    trainer.model.save_pretrained(out_dir / MODEL_ARTIFACT, safe_serialization=True)
    tokenizer.save_pretrained(out_dir / MODEL_ARTIFACT)
    truncated = sum(len(ids) >= training.max_length for ids in trainer.train_dataset["input_ids"])
    share_run = (output.global_step - resumed_step) / max(1, output.global_step)
    return {
        "train/final_loss": float(output.training_loss),
        "train/runtime_s": seconds,
        "train/steps": float(output.global_step),
        "train/resumed_from_step": float(resumed_step),
        "train/rows": float(len(loaded.examples)),
        "train/skipped_rows": float(len(loaded.skipped)),
        "train/truncated_rows": float(truncated),
        "train/tokens_per_s": tokens * training.epochs * share_run / seconds,
    }


def run(job: TrialJob, inputs: dict[str, Any]) -> StageResult:
    with trial_stage(job, "train") as (tracker, run_id), tempfile.TemporaryDirectory() as tmp:
        metrics = train(job.trial, job, tracker, run_id, Path(tmp))
        tracker.log_metrics(run_id, metrics)
        tracker.log_artifacts(run_id, Path(tmp) / MODEL_ARTIFACT, MODEL_ARTIFACT)
        shutil.rmtree(checkpoint_dir(job), ignore_errors=True)  # the stored model supersedes them
        if job.context.register_models:
            register(tracker, job, run_id)
        log.info("train: %s", ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    adapter = job.trial.training.method != "full"
    outputs = {"run_id": run_id, "artifact_path": MODEL_ARTIFACT, "adapter": adapter, "uri": f"runs:/{run_id}/{MODEL_ARTIFACT}"}
    return StageResult(metrics=metrics, outputs=outputs)


def register(tracker: Tracker, job: TrialJob, run_id: str) -> None:
    """Each fine-tune becomes a version of ``<experiment>.<base model>``, tagged with its trial."""
    trial = job.trial
    name = f"{job.context.experiment}.{trial.base_model.name}"
    if tracker.client.search_registered_models(filter_string=f"name = '{name}'") == []:
        tracker.client.create_registered_model(name, description=f"Fine-tunes of {trial.base_model.uri}")
    tracker.client.create_model_version(
        name,
        source=f"runs:/{run_id}/{MODEL_ARTIFACT}",
        run_id=run_id,
        tags={"sftlab.trial_key": trial.key, "sftlab.dataset": trial.dataset.name, "sftlab.method": trial.training.method,
              "sftlab.adapter": str(trial.training.method != "full").lower()},
        description=trial.label,
    )


def fetch_trained(job: TrialJob, model_output: dict[str, Any], dst: Path) -> Path:
    """Download a trained model/adapter (a train stage's outputs) from MLflow into ``dst``."""
    tracker = Tracker.for_context(job.context)
    return tracker.download(model_output["run_id"], model_output["artifact_path"], dst)
