"""What a sweep will cost before it runs: tokens, FLOPs and GPU-hours for training and evaluation.

Estimates, with every assumption named in the output:

- training tokens = rows × mean tokens per row (truncated at ``max_length``) × epochs; rows and
  tokens come from the data when it is readable here (local files, ``tiny:`` models), else from the
  spec's size hints (``num_rows``, ``params``, ``num_items``) and the stated per-row assumption;
- training FLOPs ≈ 6·N·tokens for full fine-tuning (forward 2, backward 4), 4·N·tokens for
  LoRA/QLoRA (frozen weights get no weight gradients), plus 2·N·tokens when gradient checkpointing
  recomputes the forward pass;
- evaluation tokens = items × the tokens each item costs, as its task counts them
  (``Task.tokens_per_item``: (prompt + generated tokens) × samples, or a pass per choice), per
  evaluated checkpoint, plus one baseline per (base model, benchmark); FLOPs ≈ 2·N·tokens; judge
  calls are not counted;
- GPU-hours = FLOPs / (peak FLOP/s × MFU). Peak FLOP/s per GPU type are dense BF16 tensor-core
  figures from the vendors' datasheets (``GPU_PEAK_FLOPS``, overridable).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from sftlab.errors import SftlabError
from sftlab.spec.grid import Trial
from sftlab.spec.job import RunContext
from sftlab.spec.schema import BenchmarkSpec, ModelSpec
from sftlab.spec.uris import classify_uri

# Dense BF16 tensor FLOP/s (NVIDIA/AMD datasheets; sparsity figures are twice these).
GPU_PEAK_FLOPS: dict[str, float] = {
    "B200": 2.25e15,
    "H200": 989e12,
    "H100": 989e12,  # SXM
    "H100-PCIe": 756e12,
    "MI300X": 1.307e15,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10": 125e12,
    "V100": 125e12,  # FP16
}
WORDS_TO_TOKENS = 1.33  # tokens per whitespace word of English text, when no tokenizer is at hand


@dataclass(frozen=True)
class Assumptions:
    gpu: str = "H100"
    gpu_flops: float | None = None  # overrides the table
    mfu: float = 0.4
    eval_mfu: float | None = None  # default: the same as training
    tokens_per_row: float = 400.0  # when the data cannot be read here
    prompt_tokens: float = 200.0  # per benchmark item, when the benchmark cannot be read here
    choices: float = 4.0  # per multiple-choice item, when unread
    sample_rows: int = 200

    @property
    def peak(self) -> float:
        if self.gpu_flops:
            return self.gpu_flops
        if self.gpu not in GPU_PEAK_FLOPS:
            raise SftlabError(
                f"--gpu: unknown GPU type {self.gpu!r}; expected one of {', '.join(GPU_PEAK_FLOPS)} or give --gpu-flops"
            )
        return GPU_PEAK_FLOPS[self.gpu]

    def gpu_hours(self, flops: float, evaluation: bool = False) -> float:
        mfu = (self.eval_mfu or self.mfu) if evaluation else self.mfu
        return flops / (self.peak * mfu) / 3600


@dataclass
class Sized:
    """A measured or assumed size, and where it came from."""

    value: float | None
    source: str  # "measured" | "spec" | "assumed" | "spec (caveat)" | what to set when unknown

    def note(self, what: str) -> str | None:
        """A note when this size is unknown or rests on an assumption (shared by all it applies to)."""
        if self.value is None:
            return f"{what} unknown: {self.source}"
        if self.source == "assumed" or "(" in self.source:
            return f"{what} {self.value:g} ({self.source})"
        return None


@dataclass
class TrialCost:
    key: str
    label: str
    params: Sized
    rows: Sized
    tokens_per_row: Sized
    epochs: int
    method: str
    checkpoints_evaluated: int
    eval_tokens_per_checkpoint: float | None
    train_tokens: float | None = None
    train_flops: float | None = None
    eval_flops: float | None = None


@dataclass
class SweepCost:
    trials: list[TrialCost]
    baseline_tokens: float | None
    baseline_flops: float | None
    assumptions: Assumptions
    notes: list[str] = field(default_factory=list)

    def total(self, name: str) -> float | None:
        values = [getattr(t, name) for t in self.trials]
        return None if any(v is None for v in values) else float(sum(values))

    @property
    def train_gpu_hours(self) -> float | None:
        flops = self.total("train_flops")
        return None if flops is None else self.assumptions.gpu_hours(flops)

    @property
    def eval_gpu_hours(self) -> float | None:
        flops = self.total("eval_flops")
        if flops is None or self.baseline_flops is None:
            return None
        return self.assumptions.gpu_hours(flops + self.baseline_flops, evaluation=True)


class _Sizer:
    """Reads sizes once per model/dataset/benchmark (many trials share them)."""

    def __init__(self, ctx: RunContext, assumptions: Assumptions):
        self.ctx, self.assumptions = ctx, assumptions
        self._cache: dict[tuple[str, str], Any] = {}

    def _once(self, kind: str, key: str, compute: Any) -> Any:
        if (kind, key) not in self._cache:
            self._cache[(kind, key)] = compute()
        return self._cache[(kind, key)]

    def params(self, model: ModelSpec) -> Sized:
        if model.params:
            return Sized(model.params, "spec")
        if classify_uri(model.uri) == "hub":
            return Sized(None, f"set base_models[{model.name}].params (hub configs are not read offline)")
        return self._once("params", model.uri, lambda: Sized(float(count_params(model, self.ctx)), "measured"))

    def tokenizer(self, model: ModelSpec) -> Any | None:
        if classify_uri(model.uri) == "hub":
            return None
        from sftlab.sources import models

        return self._once(
            "tokenizer", model.uri, lambda: models.load_tokenizer(models.resolve(model, self.ctx), model.revision)
        )

    def dataset(self, trial: Trial) -> tuple[Sized, Sized]:
        """(rows trained on, mean tokens per row) for one trial."""
        ds, training = trial.dataset, trial.training
        key = f"{ds.model_dump_json()}|{trial.base_model.uri}|{training.max_length}|{trial.dataset_template}"
        total, per_row = self._once("dataset", key, lambda: self._read_dataset(trial))
        rows = total
        if training.max_rows and (total.value is None or training.max_rows < total.value):
            rows = Sized(
                float(training.max_rows),
                "spec" if total.value is not None else "spec (assumes the dataset has that many rows)",
            )
        return rows, per_row

    def _read_dataset(self, trial: Trial) -> tuple[Sized, Sized]:
        from sftlab.sources import data

        ds = trial.dataset
        kind = classify_uri(ds.uri)
        if kind == "hub" or (kind == "s3" and ds.num_rows):  # not readable offline, or not worth a download
            rows = (
                Sized(float(ds.num_rows), "spec") if ds.num_rows else Sized(None, f"set datasets[{ds.name}].num_rows")
            )
            return rows, Sized(self.assumptions.tokens_per_row, "assumed")
        usable = 0
        lengths: list[float] = []
        tokenizer = self.tokenizer(trial.base_model)
        for row in data.iter_rows(ds.uri, ds.split, self.ctx, ds.subset):
            try:
                example = data.to_example(row, ds, trial.dataset_template) if isinstance(row, dict) else None
            except (SftlabError, ValueError):  # a malformed row: the profile stage lists it; training skips it
                example = None
            if example is None:
                continue
            usable += 1
            if len(lengths) < self.assumptions.sample_rows:
                lengths.append(_example_tokens(example, trial, tokenizer))
        per_row = (
            Sized(statistics.fmean(lengths), "measured")
            if lengths
            else Sized(self.assumptions.tokens_per_row, "assumed")
        )
        return Sized(float(usable), "measured"), per_row

    def benchmark(self, bench: BenchmarkSpec, model: ModelSpec) -> tuple[float, float, float]:
        """(items, prompt tokens per item, choices per item) of a benchmark."""
        return self._once("bench", f"{bench.model_dump_json()}|{model.uri}", lambda: self._read_benchmark(bench, model))

    def _read_benchmark(self, bench: BenchmarkSpec, model: ModelSpec) -> tuple[float, float, float]:
        from sftlab.evals import task_for
        from sftlab.evals.scoring import benchmark_items
        from sftlab.profiling.similarity import benchmark_text

        assumed = self.assumptions
        kind = classify_uri(bench.uri)
        if kind == "hub" or (kind == "s3" and bench.num_items):
            if not bench.num_items:
                raise SftlabError(
                    f"benchmarks[{bench.name}].num_items: required for cost estimates of a hub benchmark "
                    "(not read offline)"
                )
            n_items = min(bench.num_items, bench.max_items or bench.num_items)
            return float(n_items), assumed.prompt_tokens * (1 + bench.num_fewshot), assumed.choices
        items = benchmark_items(bench, self.ctx)
        tokenizer = self.tokenizer(model)
        sample = items[: assumed.sample_rows]
        lengths = [_text_tokens(benchmark_text(item), tokenizer) for item in sample]
        choices = [task_for(bench.kind).choices_per_item(item) for item in sample]
        return float(len(items)), statistics.fmean(lengths) * (1 + bench.num_fewshot), statistics.fmean(choices)


def _text_tokens(text: str, tokenizer: Any | None) -> float:
    if tokenizer is None:
        return len(text.split()) * WORDS_TO_TOKENS
    return float(len(tokenizer(text)["input_ids"]))


def _example_tokens(example: Any, trial: Trial, tokenizer: Any | None) -> float:
    """Tokens one training example costs, formatted as training formats it and truncated as it truncates."""
    from sftlab.sources import data

    if tokenizer is None:
        text = " ".join(str(part) for part in (example.prompt, example.completion))
        return min(len(text.split()) * WORDS_TO_TOKENS, trial.training.max_length)
    prompt, completion = data.render_text(example, tokenizer)
    return float(min(len(tokenizer(prompt + completion)["input_ids"]), trial.training.max_length))


def count_params(model: ModelSpec, ctx: RunContext) -> int:
    """Parameters of a local model, from its config alone (built on the meta device: no weights read)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from sftlab.sources import models

    config = AutoConfig.from_pretrained(models.resolve(model, ctx), revision=model.revision)
    with torch.device("meta"):
        built = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in built.parameters())


def evaluated_checkpoints(trial: Trial) -> int:
    epochs = trial.evaluation.epochs
    if epochs == "last":
        return 1
    if epochs == "all":
        return trial.training.epochs
    return len({e for e in epochs if e <= trial.training.epochs} | {trial.training.epochs})


def eval_tokens(bench: BenchmarkSpec, items: float, prompt_tokens: float, choices: float) -> float:
    """Tokens one model processes for one benchmark (prompts + generations, or one pass per choice)."""
    from sftlab.evals import task_for

    return items * task_for(bench.kind).tokens_per_item(bench, prompt_tokens, choices)


def estimate(trials: list[Trial], ctx: RunContext, assumptions: Assumptions = Assumptions()) -> SweepCost:
    sizer = _Sizer(ctx, assumptions)
    costs: list[TrialCost] = []
    baselines: dict[str, tuple[float | None, float]] = {}  # base model -> (params, eval tokens)
    notes: dict[str, set[str]] = {}  # note -> the models/datasets it applies to
    for trial in trials:
        params = sizer.params(trial.base_model)
        rows, per_row = sizer.dataset(trial)
        per_checkpoint = 0.0
        for bench in trial.benchmarks:
            per_checkpoint += eval_tokens(bench, *sizer.benchmark(bench, trial.base_model))
        baselines[trial.base_model.uri] = (params.value, per_checkpoint)
        cost = TrialCost(
            key=trial.key,
            label=trial.label,
            params=params,
            rows=rows,
            tokens_per_row=per_row,
            epochs=trial.training.epochs,
            method=trial.training.method,
            checkpoints_evaluated=evaluated_checkpoints(trial),
            eval_tokens_per_checkpoint=per_checkpoint,
        )
        if rows.value is not None:
            cost.train_tokens = rows.value * float(per_row.value or 0) * trial.training.epochs
        if params.value is not None and cost.train_tokens is not None:
            per_token = 6.0 if trial.training.method == "full" else 4.0
            if trial.training.gradient_checkpointing is not False:  # on by default on GPUs
                per_token += 2.0
            cost.train_flops = per_token * params.value * cost.train_tokens
        if params.value is not None:
            cost.eval_flops = 2.0 * params.value * per_checkpoint * cost.checkpoints_evaluated
        for subject, what, sized in (
            (trial.base_model.name, "parameters", params),
            (trial.dataset.name, "rows", rows),
            (trial.dataset.name, "tokens per row", per_row),
        ):
            line = sized.note(what)
            if line:
                notes.setdefault(line, set()).add(subject)
        costs.append(cost)
    known = [(p, t) for p, t in baselines.values() if p is not None]
    base_tokens = sum(t for _, t in baselines.values())
    base_flops = sum(2.0 * p * t for p, t in known) if len(known) == len(baselines) else None
    lines = [f"{note} — {', '.join(sorted(subjects))}" for note, subjects in sorted(notes.items())]
    return SweepCost(costs, base_tokens, base_flops, assumptions, lines)


def advice(cost: SweepCost) -> list[str]:
    """Which cost dominates, and the options that cut it, with their effect."""
    train, evaluation = cost.train_gpu_hours, cost.eval_gpu_hours
    if train is None or evaluation is None:
        return []
    lines = []
    if evaluation > train:
        lines.append(f"evaluation dominates: {evaluation / max(train, 1e-12):.1f}× the training GPU-hours")
        many = [t for t in cost.trials if t.checkpoints_evaluated > 1]
        if many:
            saved = sum(t.eval_flops * (1 - 1 / t.checkpoints_evaluated) for t in many if t.eval_flops)
            lines.append(
                "evaluating only the last epoch (evaluation.epochs: last) saves "
                f"{cost.assumptions.gpu_hours(saved, True):,.0f} GPU-h"
                " (or list a few epochs, e.g. [1, 5, 10])"
            )
        lines.append(
            "cap benchmarks with max_items, and serve LoRA trials of one base model from one server "
            "(evaluation.backend: kserve, runtime vllm: adapters share the base model's start-up and download)"
        )
    else:
        lines.append(f"training dominates: {train / max(evaluation, 1e-12):.1f}× the evaluation GPU-hours")
        lines.append("LoRA costs about 2/3 of full fine-tuning per token; max_rows subsamples the data")
    return lines


def _si(value: float | None, unit: str = "") -> str:
    if value is None:
        return "?"
    for factor, suffix in ((1e21, "Z"), (1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{suffix}{unit}"
    return f"{value:.3g}{unit}"


def format_cost(cost: SweepCost, max_rows: int = 50) -> str:
    """The per-trial table (first ``max_rows``), totals, notes and advice, as plain text."""
    a = cost.assumptions
    lines = [
        f"{'trial':<48} {'params':>7} {'rows':>7} {'tok/row':>7} {'train tok':>9} {'train FLOP':>10} "
        f"{'ckpts':>5} {'eval FLOP':>10}"
    ]
    for t in cost.trials[:max_rows]:
        lines.append(
            f"{t.label[:48]:<48} {_si(t.params.value):>7} {_si(t.rows.value):>7} {_si(t.tokens_per_row.value):>7} "
            f"{_si(t.train_tokens):>9} {_si(t.train_flops):>10} {t.checkpoints_evaluated:>5} {_si(t.eval_flops):>10}"
        )
    if len(cost.trials) > max_rows:
        lines.append(f"... and {len(cost.trials) - max_rows} more trials")
    train_h, eval_h = cost.train_gpu_hours, cost.eval_gpu_hours
    gpu = (
        f"{a.gpu} ({_si(a.peak, 'FLOP/s')} peak, "
        f"MFU {a.mfu:g}{'' if a.eval_mfu is None else f', eval MFU {a.eval_mfu:g}'})"
    )
    lines += [
        "",
        f"totals for {len(cost.trials)} trials on {gpu}:",
        f"  training:   {_si(cost.total('train_tokens'))} tokens, {_si(cost.total('train_flops'))} FLOP, "
        f"{'?' if train_h is None else f'{train_h:,.1f}'} GPU-h",
        f"  evaluation: {_si(cost.total('eval_flops'))} FLOP for trials + "
        f"{_si(cost.baseline_flops)} FLOP for baselines, "
        f"{'?' if eval_h is None else f'{eval_h:,.1f}'} GPU-h",
    ]
    lines += [f"  note: {n}" for n in cost.notes]
    lines += [f"  → {line}" for line in advice(cost)]
    return "\n".join(lines)
