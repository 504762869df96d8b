"""Cost estimates: hand-computed values, and sizes measured from readable data and local models."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sftlab.cost import GPU_PEAK_FLOPS, Assumptions, estimate, evaluated_checkpoints, format_cost
from sftlab.errors import SftlabError
from sftlab.spec.grid import expand
from sftlab.spec.job import context_for
from sftlab.spec.loading import parse_spec as parse_yaml
from sftlab.spec.schema import Spec
from tests.support.helpers import quickstart_spec

ASSUME = Assumptions(tokens_per_row=100, prompt_tokens=50)


def parse_spec(data: dict) -> Spec:
    return parse_yaml(yaml.safe_dump(data))


def hub_spec(tmp_path: Path, **training: object) -> dict:
    return {
        "name": "c",
        "base_models": [{"name": "m", "uri": "org/model-1b", "params": 1e9}],
        "datasets": [{"name": "d", "uri": "org/data", "num_rows": 1000}],
        "benchmarks": [{"name": "g", "kind": "gsm8k", "uri": "org/gsm8k", "num_items": 10, "max_new_tokens": 20}],
        "training": {
            "epochs": 2,
            "max_rows": 500,
            "gradient_checkpointing": False,
            "global_batch_size": 8,
            "per_device_batch_size": 8,
            **training,
        },
        "tracking": {"root": str(tmp_path)},
    }


def cost_of(tmp_path: Path, **training: object):
    spec = parse_spec(hub_spec(tmp_path, **training))
    return estimate(expand(spec), context_for(spec), ASSUME)


def test_hand_computed_full_fine_tuning(tmp_path: Path) -> None:
    cost = cost_of(tmp_path)
    (trial,) = cost.trials
    assert trial.train_tokens == 500 * 100 * 2  # max_rows × assumed tokens/row × epochs
    assert trial.train_flops == 6 * 1e9 * 100_000
    # gsm8k: items × (prompt + generation) + the reference log-likelihood pass over the prompt
    assert trial.eval_tokens_per_checkpoint == 10 * (50 + 20) + 10 * 50
    assert trial.eval_flops == 2 * 1e9 * 1200 and cost.baseline_flops == 2 * 1e9 * 1200
    assert cost.train_gpu_hours == pytest.approx(6e14 / (GPU_PEAK_FLOPS["H100"] * 0.4) / 3600)
    assert cost.eval_gpu_hours == pytest.approx(4.8e12 / (GPU_PEAK_FLOPS["H100"] * 0.4) / 3600)
    assert cost.notes == ["tokens per row 100 (assumed) — d"]


def test_each_kind_counts_its_own_tokens_per_item(tmp_path: Path) -> None:
    """The task of each kind says what an item costs: choices scored, samples generated, extra passes."""
    data = hub_spec(tmp_path)
    hub = {"uri": "org/bench", "num_items": 10}
    data["benchmarks"] = [
        {"name": "mc", "kind": "multiple_choice", **hub},
        {"name": "code", "kind": "mbpp", "num_samples": 3, "temperature": 0.5, "max_new_tokens": 20, **hub},
        {"name": "short", "kind": "qa", "max_new_tokens": 20, **hub},
        {"name": "g", "kind": "gsm8k", "max_new_tokens": 20, **hub},
    ]
    spec = parse_spec(data)
    (trial,) = estimate(expand(spec), context_for(spec), ASSUME).trials
    mc = 10 * 4 * 50  # a pass per choice (4 assumed), nothing generated
    code = 10 * 3 * (50 + 20)  # every sample: the prompt and its generation
    short = 10 * (50 + 20)
    gsm8k = 10 * (50 + 20) + 10 * 50  # + the reference solution's log-likelihood pass
    assert trial.eval_tokens_per_checkpoint == mc + code + short + gsm8k


def test_lora_checkpointing_and_evaluated_epochs(tmp_path: Path) -> None:
    lora = cost_of(tmp_path, method="lora", gradient_checkpointing=None)
    assert lora.trials[0].train_flops == (4 + 2) * 1e9 * 100_000  # frozen weights; recomputed forward
    spec = parse_spec({**hub_spec(tmp_path), "evaluation": {"epochs": "all"}})
    every = estimate(expand(spec), context_for(spec), ASSUME)
    assert every.trials[0].checkpoints_evaluated == 2 and every.trials[0].eval_flops == 2 * 2 * 1e9 * 1200
    spec = parse_spec({**hub_spec(tmp_path, epochs=10), "evaluation": {"epochs": [1, 5]}})
    assert evaluated_checkpoints(expand(spec)[0]) == 3  # 1, 5 and the final model


def test_evaluation_dominance_and_advice(tmp_path: Path) -> None:
    data = {**hub_spec(tmp_path, epochs=10), "evaluation": {"epochs": "all"}}
    data["benchmarks"][0]["num_items"] = 5000
    cost = estimate(expand(parse_spec(data)), context_for(parse_spec(data)), ASSUME)
    text = format_cost(cost)
    ratio = cost.eval_gpu_hours / cost.train_gpu_hours
    assert f"evaluation dominates: {ratio:.1f}×" in text and "evaluation.epochs: last" in text


def test_unknown_sizes_are_named_not_guessed(tmp_path: Path) -> None:
    data = hub_spec(tmp_path)
    del data["base_models"][0]["params"]
    spec = parse_spec(data)
    cost = estimate(expand(spec), context_for(spec), ASSUME)
    assert cost.trials[0].train_flops is None and cost.train_gpu_hours is None
    assert any("base_models[m].params" in n for n in cost.notes)
    del data["benchmarks"][0]["num_items"]
    spec = parse_spec(data)
    with pytest.raises(SftlabError, match=r"benchmarks\[g\].num_items"):
        estimate(expand(spec), context_for(spec), ASSUME)
    with pytest.raises(SftlabError, match="unknown GPU type 'Z80'"):
        _ = Assumptions(gpu="Z80").peak


@pytest.mark.slow  # trains a model or runs servers for tens of seconds
def test_local_data_and_models_are_measured(tmp_path: Path) -> None:
    """Rows, tokens per row and parameters come from the quickstart's files and tiny models."""
    import torch
    from transformers import AutoModelForCausalLM

    from sftlab.sources import data, models

    spec = quickstart_spec(tmp_path)
    trials = expand(spec)
    ctx = context_for(spec)
    cost = estimate(trials, ctx)
    trial, measured = trials[0], cost.trials[0]
    rows = [r for r in data.iter_rows(trial.dataset.uri, "train", ctx) if not isinstance(r, str)]
    assert measured.rows.value == len(rows) and measured.rows.source == "measured"
    model = AutoModelForCausalLM.from_pretrained(models.resolve(trial.base_model, ctx))
    assert measured.params.value == sum(p.numel() for p in model.parameters())
    tokenizer = models.load_tokenizer(models.resolve(trial.base_model, ctx))
    lengths = []
    for row in rows[:200]:
        prompt, completion = data.render_text(data.to_example(row, trial.dataset, trial.dataset_template), tokenizer)
        lengths.append(min(len(tokenizer(prompt + completion)["input_ids"]), trial.training.max_length))
    assert measured.tokens_per_row.value == pytest.approx(sum(lengths) / len(lengths))
    assert not cost.notes and torch.is_tensor(next(model.parameters()))


def test_plan_prints_the_study_grid_and_its_cost_offline() -> None:
    from tests.support.helpers import EXAMPLES, run_cli

    result = run_cli("plan", str(EXAMPLES / "study.yaml"), env={"HF_HUB_OFFLINE": "1"}, timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "240 trials; benchmarks: math-4shot, gsm8k-0shot, gsm8k-4shot, humaneval" in out
    assert "method=lora,learning_rate=2e-06,global_batch_size=128" in out  # recipes, not a product
    assert "totals for 240 trials on H100" in out and "evaluation dominates" in out
    assert "?" not in out.split("totals for")[1].split("note:")[0]  # every size known from the spec's hints
    slow = run_cli("plan", str(EXAMPLES / "study.yaml"), "--gpu", "A100", timeout=120).stdout

    def gpu_hours(text: str) -> float:
        return float(text.split("training:")[1].split("FLOP,")[1].split("GPU-h")[0].replace(",", ""))

    assert gpu_hours(slow) == pytest.approx(gpu_hours(out) * 989 / 312, rel=0.01)


def test_malformed_rows_are_not_counted(tmp_path: Path) -> None:
    import json

    rows = [{"instruction": "q", "response": "a"}] * 3 + [{"instruction": "no response"}, {"oops": 1}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    data = hub_spec(tmp_path)
    data["datasets"][0] = {"name": "d", "uri": str(tmp_path / "d.jsonl")}
    data["training"]["max_rows"] = None
    spec = parse_spec(data)
    (trial,) = estimate(expand(spec), context_for(spec), ASSUME).trials
    assert trial.rows.value == 3 and trial.rows.source == "measured"
