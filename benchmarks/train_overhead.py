"""Training throughput of the sftlab train stage vs a plain TRL script, same model, data and settings.

    python benchmarks/train_overhead.py [--epochs 30] [--repeats 5]

Both sides run in this process on the same tiny model (built offline) and the shipped math data,
with identical ``SFTConfig`` settings (checked: the only default that differed was TRL's bf16, which
the plain side turns off on CPU as sftlab does); the plain side is what a user writes by hand.
Each side's tokens/s is timed around ``trainer.train()`` only (model loading and MLflow artifact
upload are one-off costs outside the loop), runs alternate to share any machine noise, and the
median of the repeats is compared. Target: sftlab >= 0.97x plain TRL. The last line is the headline.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def plain_trl(model_dir: str, rows: list[dict], epochs: int, out: Path) -> float:
    """Tokens/s of a hand-written TRL fine-tune with the settings the quickstart uses."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    args = SFTConfig(
        output_dir=str(out),
        num_train_epochs=epochs,
        learning_rate=2e-3,
        lr_scheduler_type="constant",
        per_device_train_batch_size=8,
        max_length=128,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
        gradient_checkpointing=False,
        seed=0,
        bf16=False,  # TRL defaults to bf16, emulated (slow) on CPU; sftlab trains fp32 there: compare like with like
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
    started = time.perf_counter()
    trainer.train()
    return tokens * epochs / (time.perf_counter() - started)


def sftlab_stage(root: Path, epochs: int) -> float:
    """Tokens/s reported by the sftlab train stage (per-step MLflow logging, checkpoints off)."""
    from sftlab.spec.grid import expand
    from sftlab.spec.job import TrialJob, context_for
    from sftlab.spec.loading import load_spec
    from sftlab.stages.common import run_stage
    from sftlab.tracking.runs import Tracker

    spec = load_spec(REPO / "examples" / "quickstart.yaml")
    spec.tracking.root = str(root)
    spec.tracking.register_models = False
    trial = next(t for t in expand(spec) if t.dataset.name == "math" and t.training.method == "full")
    training = trial.training.model_copy(update={"epochs": epochs, "checkpoint_every_epoch": False})
    trial = trial.model_copy(update={"training": training})
    ctx = context_for(spec)
    run_id = Tracker.for_context(ctx).create_trial_run(trial, None)
    job = TrialJob(trial=trial, context=ctx.model_copy(update={"trial_run_id": run_id}))
    return run_stage("train", job.to_json(), root / "model.json").metrics["train/tokens_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)  # long enough that step noise averages out
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    import logging

    logging.disable(logging.INFO)
    from sftlab.sources.data import load_examples
    from sftlab.sources.tiny import resolve_tiny
    from sftlab.spec.job import RunContext
    from sftlab.spec.loading import load_spec
    from sftlab.spec.schema import STUDY_TEMPLATE

    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        os.environ["SFTLAB_CACHE"] = str(tmp / "cache")
        spec = load_spec(REPO / "examples" / "quickstart.yaml")
        model = next(m for m in spec.base_models if m.name == "tiny-llama-chat")
        model_dir = str(resolve_tiny(model.uri, tmp / "cache"))
        math = next(d for d in spec.datasets if d.name == "math")
        ctx = RunContext(tracking_uri="unused", experiment="bench", root=str(tmp))
        rows = [e.as_record() for e in load_examples(math, STUDY_TEMPLATE, ctx).examples]
        plain_trl(model_dir, rows, 1, tmp / "warm")  # warm-up: imports, kernels, page cache
        sftlab_stage(tmp / "warm-sftlab", 1)
        plain, ours = [], []
        for i in range(args.repeats):
            plain.append(plain_trl(model_dir, rows, args.epochs, tmp / f"plain{i}"))
            ours.append(sftlab_stage(tmp / f"sftlab{i}", args.epochs))
            print(f"repeat {i + 1}: plain TRL {plain[-1]:,.0f} tok/s, sftlab {ours[-1]:,.0f} tok/s", file=sys.stderr)
    p, s = statistics.median(plain), statistics.median(ours)
    print(f"median of {args.repeats}: plain TRL {p:,.0f} tok/s; sftlab train stage {s:,.0f} tok/s")
    print(f"train_overhead: sftlab/plain TRL tokens/s = {s / p:.3f}x (target >= 0.97x)")


if __name__ == "__main__":
    main()
