"""A synthetic MLflow experiment with planted effects, written with the trial metric contract.

Gains (in units of U score points) are built from known parts, each on its own benchmark so that
one part is not noise for another's test, and a test can ask the report to recover each part and
nothing else:

* boolq: gain = −K·(ppl − centre) + L·(z₂ + z₃)/√2 + method + data size + noise, where ppl is the
  (base model, dataset) perplexity and zᵢ the standardised weight change of layer i (layers 2–3 are
  the middle third of a 6-layer stack; the other layers' changes are noise); LoRA − full = +D_BOOLQ,
  1000 − 500 rows = +R, both centred within each cell;
* gsm8k: synergy codealpaca +S for llama-tiny only (model-specific) and mathinstruct −S for every
  model (universal −); full − LoRA = +D_GSM8K; gsm8k also logs exact_match (= score) and loglik;
* humaneval: synergy codealpaca +S for every model (universal +);
* noise-bench: pure noise. Every profile measure except the two perplexities is noise;
  codealpaca and mathinstruct sit at the centre perplexity, so mathinstruct → boolq has no effect;
* epochs: checkpoint runs at epochs 1 and 2; epoch 1 is E below the final gain, epoch 2 equals it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sftlab.tracking.runs import TAG_TRIAL_KEY, Tracker

U = 0.03  # score points per unit of planted gain
MODELS = ("llama-tiny", "qwen-tiny", "mistral-tiny")
FILLERS = ("alpaca", "lima", "ultrachat", "flan-knowledge", "flan-reasoning")
DATASETS = (*FILLERS, "codealpaca", "mathinstruct")
BENCHMARKS = ("boolq", "gsm8k", "humaneval", "noise-bench")
KINDS = {"boolq": "multiple_choice", "gsm8k": "gsm8k", "humaneval": "humaneval", "noise-bench": "multiple_choice"}
SEEDS = (0, 1, 2, 3)  # seeds 0-1 full FT, 2-3 LoRA; seeds 0 and 2 train on 500 rows, 1 and 3 on 1000
LAYERS = 6
CENTRE, K, L, S, R, E, NOISE = 6.0, 0.6, 1.0, 4.0, 0.6, 1.0, 0.25
PLANTED_SYNERGY = {
    ("codealpaca", "humaneval"): {m: S for m in MODELS},
    ("codealpaca", "gsm8k"): {"llama-tiny": S},
    ("mathinstruct", "gsm8k"): {m: -S for m in MODELS},
}
METHOD = {"gsm8k": 0.8, "boolq": -2.0}  # full − LoRA
NOISE_PREDICTORS = (
    "profile/tokens_mean",
    "profile/response_tokens_mean",
    "profile/distinct_2",
    "profile/near_dup_rate",
    "profile/chars_per_token",
    "profile/sim/<benchmark>/ngram_overlap_3",
    "profile/sim/<benchmark>/embed_centroid_cos",
)


@dataclass(frozen=True)
class Planned:
    key: str
    label: str
    model: str
    dataset: str
    seed: int

    @property
    def method(self) -> str:
        return "full" if self.seed < 2 else "lora"

    @property
    def rows(self) -> int:
        return 500 if self.seed % 2 == 0 else 1000


def perplexities(rng: np.random.Generator) -> dict[tuple[str, str], float]:
    out = {(m, d): float(rng.uniform(CENTRE - 3, CENTRE + 3)) for m in MODELS for d in FILLERS}
    out.update({(m, d): CENTRE for m in MODELS for d in DATASETS if d not in FILLERS})
    return out


def profile(rng: np.random.Generator, ppl: float) -> dict[str, float]:
    out = {
        "profile/ppl": ppl,
        "profile/ppl_ci_low": ppl * 0.95,
        "profile/ppl_ci_high": ppl * 1.05,
        "profile/ppl_mean_example": ppl * 1.1 + float(rng.normal(0, 0.05)),
        "profile/ppl_sampled_rows": 256.0,
        "profile/tokens_mean": float(rng.uniform(80, 200)),
        "profile/response_tokens_mean": float(rng.uniform(40, 120)),
        "profile/distinct_2": float(rng.uniform(0.3, 0.9)),
        "profile/near_dup_rate": float(rng.uniform(0, 0.1)),
        "profile/chars_per_token": float(rng.uniform(3, 5)),
        "profile/truncated_share": 0.0,
    }
    for bench in BENCHMARKS:
        out[f"profile/sim/{bench}/ngram_overlap_3"] = float(rng.uniform(0, 0.2))
        out[f"profile/sim/{bench}/embed_centroid_cos"] = float(rng.uniform(0.2, 0.8))
        out[f"profile/contaminated/{bench}"] = 0.0
    return out


def planted_gain(trial: Planned, bench: str, ppl: float, z: np.ndarray, rng: np.random.Generator) -> float:
    """Gain in units of U."""
    if bench == "noise-bench":
        return float(rng.normal(0, 1.0))
    gain = PLANTED_SYNERGY.get((trial.dataset, bench), {}).get(trial.model, 0.0)
    gain += METHOD.get(bench, 0.0) / 2 * (1 if trial.method == "full" else -1)
    if bench == "boolq":
        gain += -K * (ppl - CENTRE) + L * (z[2] + z[3]) / np.sqrt(2) + R / 2 * (1 if trial.rows == 1000 else -1)
    return float(gain + rng.normal(0, NOISE))


def eval_metrics(gains: dict[str, float], rng: np.random.Generator) -> dict[str, float]:
    """eval/base/gain per benchmark, CIs of the headline score; gsm8k also logs exact_match (= score) and loglik."""
    out: dict[str, float] = {}
    for bench, units in gains.items():
        base = 0.3
        scores = {"score": units * U}
        if bench == "gsm8k":
            scores["exact_match"] = units * U
            scores["loglik"] = units * 0.1 + float(rng.normal(0, 0.05))
        for metric, gain in scores.items():
            out[f"base/{bench}/{metric}"] = base
            out[f"eval/{bench}/{metric}"] = base + gain
            out[f"gain/{bench}/{metric}"] = gain
        out[f"eval/{bench}/items"] = 500.0
        out[f"eval/{bench}/score_ci_low"] = base + scores["score"] - 0.04
        out[f"eval/{bench}/score_ci_high"] = base + scores["score"] + 0.04
        out[f"gain/{bench}/score_ci_low"] = scores["score"] - 0.04
        out[f"gain/{bench}/score_ci_high"] = scores["score"] + 0.04
    return out


def weight_metrics(z: np.ndarray, method: str) -> dict[str, float]:
    scale = 1.0 if method == "full" else 0.2  # LoRA moves weights far less: the stratified ρ must not care
    layer = {i: scale * (0.02 + 0.004 * z[i]) for i in range(LAYERS)}
    out = {f"weights/layer_{i}/rel_change": v for i, v in layer.items()}
    for depth, members in (("bottom", (0, 1)), ("middle", (2, 3)), ("top", (4, 5))):
        out[f"weights/depth_{depth}/rel_change"] = float(np.mean([layer[i] for i in members]))
    out["weights/total/rel_change"] = float(np.mean(list(layer.values())))
    return out


def plan() -> list[Planned]:
    combos = [(m, d, s) for m in MODELS for d in DATASETS for s in SEEDS]
    return [Planned(f"key{i:03d}", f"{m}/{d}[seed={s}]", m, d, s) for i, (m, d, s) in enumerate(combos)]


def trial_tags(trial: Planned) -> dict[str, str]:
    tags = {
        TAG_TRIAL_KEY: trial.key,
        "sftlab.base_model": trial.model,
        "sftlab.dataset": trial.dataset,
        "sftlab.method": trial.method,
        "sftlab.label": trial.label,
    }
    tags.update({f"sftlab.benchmark_kind.{b}": k for b, k in KINDS.items()})
    return tags


def trial_params(trial: Planned) -> dict[str, object]:
    return {
        "training.learning_rate": 1e-5 if trial.method == "full" else 2e-6,
        "training.epochs": 3,
        "training.seed": trial.seed,
        "training.max_rows": trial.rows,
    }


def create_trial(tracker: Tracker, sweep: str | None, trial: Planned) -> str:
    return tracker.create_run("trial", trial.label, trial_tags(trial), trial_params(trial), parent_run_id=sweep)


def profiles(rng: np.random.Generator) -> dict[tuple[str, str], dict[str, float]]:
    """One profile per (base model, dataset), shared by its trials as the profile stage's cache does."""
    return {pair: profile(rng, ppl) for pair, ppl in perplexities(rng).items()}


def log_trial(
    tracker: Tracker, run_id: str, trial: Planned, prof: dict[str, float], rng: np.random.Generator, checkpoints: bool
) -> None:
    """The trial's metrics, and checkpoint child runs at epochs 1 and 2 when asked."""
    z = rng.normal(0, 1, LAYERS)
    ppl = prof["profile/ppl"]
    gains = {b: planted_gain(trial, b, ppl, z, rng) for b in BENCHMARKS}
    metrics = {**prof, **eval_metrics(gains, rng), **weight_metrics(z, trial.method)}
    metrics.update({"train/final_loss": float(np.log(ppl)), "time/train_s": 10.0, "time/evaluate_s": 300.0})
    tracker.log_metrics(run_id, metrics)
    if checkpoints:
        for epoch, offset in ((1, -E), (2, 0.0)):
            tags = {**{k: v for k, v in trial_tags(trial).items()}, "sftlab.epoch": str(epoch)}
            child = tracker.create_run(
                "checkpoint", f"{trial.label} epoch {epoch}", tags, {"epoch": epoch}, parent_run_id=run_id
            )
            epoch_gains = {b: g + offset + float(rng.normal(0, 0.3)) for b, g in gains.items()}
            tracker.log_metrics(child, eval_metrics(epoch_gains, rng))
            tracker.finish(child)
