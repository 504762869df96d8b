"""One trial's fine-tune with TRL's ``SFTTrainer`` (full or LoRA via peft), as every training process runs it.

Alone, or as one rank of ``torchrun``/``accelerate launch``: every rank trains; only rank 0 talks
to MLflow — per-step curves, params, system metrics, the model (full weights as safetensors, or the
LoRA adapter alone), the models of the epochs the evaluation asks for, the registry version, and the
stage result (``train_result.json``), which a parent that launched the ranks reads back.
Loss covers completions only (TRL's prompt/completion handling).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from sftlab import metric_names, progress
from sftlab.errors import SftlabError
from sftlab.sources import data, models
from sftlab.spec.job import StageResult, TrialJob, checkpoint_dir
from sftlab.spec.schema import TrainingConfig
from sftlab.tracking.runs import Tracker
from sftlab.training import checkpoints

log = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"
RESULT_ARTIFACT = "train_result.json"


def check_method(training: TrainingConfig) -> None:
    """Settings this machine cannot train with, as one-line errors (also checked before a local sweep starts)."""
    import torch

    cuda = torch.cuda.is_available()
    if training.method == "qlora" and not cuda:
        raise SftlabError("training.method: qlora needs a CUDA GPU (4-bit bitsandbytes); use lora or full on CPU")
    if training.attn_implementation == "flash_attention_2" and not (cuda and importlib.util.find_spec("flash_attn")):
        raise SftlabError(
            "training.attn_implementation: flash_attention_2 needs a CUDA GPU and the flash-attn package; "
            "use auto or sdpa"
        )
    if training.use_liger_kernel and not (cuda and importlib.util.find_spec("liger_kernel")):
        raise SftlabError("training.use_liger_kernel needs a CUDA GPU and the liger-kernel package")
    strategy = training.distributed.strategy
    if strategy in ("fsdp", "deepspeed_zero3") and not cuda:
        raise SftlabError(f"training.distributed.strategy: {strategy} needs CUDA GPUs; use ddp or none on CPU")
    if strategy == "deepspeed_zero3" and not importlib.util.find_spec("deepspeed"):
        raise SftlabError("training.distributed.strategy: deepspeed_zero3 needs the deepspeed package")


def gradient_accumulation(training: TrainingConfig, world_size: int = 1) -> int:
    per_step = training.per_device_batch_size * world_size
    if training.global_batch_size % per_step:
        raise SftlabError(
            f"training.global_batch_size {training.global_batch_size} is not a multiple of "
            f"per_device_batch_size × devices = {per_step}"
        )
    return training.global_batch_size // per_step


def bf16() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def sft_config(training: TrainingConfig, output_dir: Path) -> Any:
    import torch
    from trl import SFTConfig

    cuda = torch.cuda.is_available()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    # Saves memory on big models; only slows tiny CPU runs.
    checkpointing = cuda if training.gradient_checkpointing is None else training.gradient_checkpointing
    return SFTConfig(
        output_dir=str(output_dir),
        num_train_epochs=training.epochs,
        learning_rate=training.learning_rate,
        lr_scheduler_type=training.lr_scheduler,
        warmup_steps=training.warmup_ratio,  # a float in [0, 1) is a ratio of total steps
        per_device_train_batch_size=training.per_device_batch_size,
        gradient_accumulation_steps=gradient_accumulation(training, world_size),
        weight_decay=training.weight_decay,
        max_length=training.max_length,
        packing=training.packing,
        seed=training.seed,
        bf16=bf16(),
        use_cpu=not cuda,
        gradient_checkpointing=checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False}
        if checkpointing
        else None,  # DDP and LoRA need non-reentrant
        use_liger_kernel=training.use_liger_kernel,
        ddp_backend="gloo" if world_size > 1 and not cuda else None,
        ddp_find_unused_parameters=False,
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


def load_model(source: str, revision: str | None, training: TrainingConfig) -> Any:
    """The base model with the attention kernel the spec asks for (auto: ``models``' own choice)."""
    model = models.load_causal_lm(source, revision)
    if training.attn_implementation != "auto":
        model.set_attn_implementation(training.attn_implementation)
    return model


@contextmanager
def cache_turns(cache_dir: Path) -> Iterator[None]:
    """The processes of a machine fill the model/data cache one at a time: the first downloads or
    builds, the rest reuse it. Runs before torch.distributed is up, because once it is,
    transformers saves models on global rank 0 only, which would leave a cache that another node
    builds (tiny models, dequantised GGUF) without weights.
    """
    if int(os.environ.get("LOCAL_WORLD_SIZE", "1")) == 1:
        yield
        return
    import fcntl

    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".fill.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield


def _callback(tracker: Tracker, run_id: str, flush_every_s: float = 10.0) -> Any:
    from transformers import TrainerCallback

    steps = progress.Steps("step")

    class MlflowLogCallback(TrainerCallback):
        """Per-step loss / lr / grad-norm onto the trial's own run (TRL's MLflow hook would open another),
        and the step count to the sweep's console (``sftlab.progress``); main process only.

        Buffered and written in batches (every ``flush_every_s`` and at the end): one synchronous
        tracking write per step would slow small, fast steps measurably.
        """

        def __init__(self) -> None:
            self.pending: list[tuple[int, dict[str, float]]] = []
            self.last_flush = time.monotonic()

        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001 - transformers' signature
            wanted = {
                "loss": metric_names.train("loss"),
                "learning_rate": metric_names.train("lr"),
                "grad_norm": metric_names.train("grad_norm"),
            }
            step_metrics = {name: logs[k] for k, name in wanted.items() if logs and k in logs}
            if step_metrics:
                self.pending.append((state.global_step, step_metrics))
            if time.monotonic() - self.last_flush > flush_every_s:
                self.flush()

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            steps(state.global_step, state.max_steps)

        def on_save(self, args, state, control, **kwargs):  # noqa: ANN001
            self.flush()  # a resumed run must not lose the curve up to its checkpoint

        def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001
            self.flush()

        def flush(self) -> None:
            tracker.log_metric_steps(run_id, self.pending)
            self.pending, self.last_flush = [], time.monotonic()

    return MlflowLogCallback()


def run_trial(job: TrialJob) -> StageResult | None:
    """Fine-tune the trial's base model on its dataset in this process; rank 0 stores and returns the result."""
    from datasets import Dataset
    from trl import SFTTrainer

    trial, training, run_id = job.trial, job.trial.training, job.context.trial_run_id
    if run_id is None:
        raise SftlabError("train: the job has no trial_run_id")
    check_method(training)
    with cache_turns(job.context.cache_dir):
        source = models.resolve(trial.base_model, job.context)
        tokenizer = models.load_tokenizer(source, trial.base_model.revision)
        loaded = data.load_examples(
            trial.dataset, trial.dataset_template, job.context, training.max_rows, training.seed
        )
    trainable = data.drop_overlong_prompts(loaded, trial.dataset, tokenizer, training.max_length)
    overlong = len(trainable.skipped) - len(loaded.skipped)
    if trainable.skipped:
        row, reason = trainable.skipped[0]
        log.warning(
            "train: %d rows skipped (%d with a prompt of training.max_length tokens or more), first: row %d: %s",
            len(trainable.skipped),
            overlong,
            row,
            reason,
        )
    local = checkpoint_dir(job)
    args = sft_config(training, local)  # sets up torch.distributed under torchrun/accelerate
    dist = args.distributed_state
    tracker = Tracker.for_context(job.context) if dist.is_main_process else None
    model = load_model(source, trial.base_model.revision, training)  # after: each rank's own GPU is selected
    models.check_pair(model, tokenizer, trial.base_model.name)
    store = checkpoints.remote_store(job)
    resume = checkpoints.resume_point(local, store)
    callbacks = [checkpoints.upload_callback(store)] if store else []
    if tracker is not None:
        callbacks.append(_callback(tracker, run_id))
        tracker.log_params(
            run_id,
            {
                "train.world_size": dist.num_processes,
                "train.precision": "bf16" if args.bf16 else "fp32",
                "train.attn_implementation": model.config._attn_implementation,
            },
        )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list([e.as_record() for e in trainable.examples]),
        processing_class=tokenizer,
        peft_config=peft_config(training),
        callbacks=callbacks,
    )
    if resume:
        log.info("train: resuming from %s", resume)
    with system_metrics(run_id, job.context.tracking_uri, bool(resume)) if tracker else nullcontext():
        started = time.perf_counter()
        output = trainer.train(resume_from_checkpoint=resume)
        seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        trainer.save_model(str(Path(tmp) / MODEL_ARTIFACT))  # every rank: FSDP/ZeRO-3 gather the weights here
        if tracker is None:
            return None
        train_dataset: Any = trainer.train_dataset  # a tokenized datasets.Dataset, built above
        lengths = [len(ids) for ids in train_dataset["input_ids"]]
        resumed_step = int(Path(resume).name.rsplit("-", 1)[1]) if resume else 0  # checkpoint-<step>
        share_run = (output.global_step - resumed_step) / max(1, output.global_step)
        metrics = {
            metric_names.train("final_loss"): float(output.training_loss),
            metric_names.train("runtime_s"): seconds,
            metric_names.train("steps"): float(output.global_step),
            metric_names.train("resumed_from_step"): float(resumed_step),
            metric_names.train("rows"): float(len(trainable.examples)),
            metric_names.train("skipped_rows"): float(len(trainable.skipped)),
            metric_names.train("overlong_prompt_rows"): float(
                overlong
            ),  # among the skipped: nothing left to train on after truncation
            metric_names.train("truncated_rows"): float(sum(n >= training.max_length for n in lengths)),
            metric_names.train("tokens"): float(sum(lengths) * training.epochs),  # all epochs, padding excluded
            metric_names.train("tokens_per_s"): sum(lengths) * training.epochs * share_run / seconds,
        }
        return publish(job, tracker, run_id, metrics, Path(tmp) / MODEL_ARTIFACT, store)


@contextmanager
def system_metrics(run_id: str, tracking_uri: str, resumed: bool) -> Iterator[None]:
    """MLflow's system metrics (CPU, memory, disk, network, GPU) on the trial run while it trains."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, tracking_uri=tracking_uri, resume_logging=resumed)
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()


def publish(
    job: TrialJob,
    tracker: Tracker,
    run_id: str,
    metrics: dict[str, float],
    model_dir: Path,
    store: checkpoints.CheckpointStore | None,
) -> StageResult:
    """Rank 0, after training: metrics, the model, the requested epochs' models, the registry
    version and the stage result go to the trial run; then the resumable checkpoints go away."""
    import torch

    trial, training = job.trial, job.trial.training
    if torch.cuda.is_available():
        metrics[metric_names.train("gpu_max_memory_gb")] = torch.cuda.max_memory_allocated() / 2**30  # rank 0's peak
    tracker.log_metrics(run_id, metrics)
    (model_dir / "training_args.bin").unlink(missing_ok=True)  # a pickle of the arguments, not part of the model
    tracker.log_artifacts(run_id, model_dir, MODEL_ARTIFACT)
    local = checkpoint_dir(job)
    epochs = checkpoints.requested_epochs(trial)
    stored = checkpoints.store_epoch_models(tracker, run_id, local, store, [e for e in epochs if e < training.epochs])
    if training.epochs in epochs:
        stored[str(training.epochs)] = MODEL_ARTIFACT  # the last epoch's model is the final one
    if job.context.register_models:
        register(tracker, job, run_id)
    uri = f"runs:/{run_id}/{MODEL_ARTIFACT}"
    outputs: dict[str, Any] = {
        "run_id": run_id,
        "artifact_path": MODEL_ARTIFACT,
        "adapter": training.method != "full",
        "uri": uri,
    }
    if stored:
        outputs["checkpoints"] = stored
    result = StageResult(metrics=metrics, outputs=outputs)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / RESULT_ARTIFACT).write_text(result.model_dump_json(indent=2))
        tracker.log_artifact(run_id, Path(tmp) / RESULT_ARTIFACT)
    shutil.rmtree(local, ignore_errors=True)  # the stored model supersedes the resumable checkpoints
    if store:
        try:
            store.delete()
        except (SftlabError, OSError) as exc:
            log.warning("train: checkpoints at %s were not removed: %s", store.uri, exc)
    log.info("train: %s", ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    return result


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
        tags={
            "sftlab.trial_key": trial.key,
            "sftlab.dataset": trial.dataset.name,
            "sftlab.method": trial.training.method,
            "sftlab.adapter": str(trial.training.method != "full").lower(),
        },
        description=trial.label,
    )
