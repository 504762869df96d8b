"""Grid expansion and trial keys."""

from __future__ import annotations

from sftlab.spec.grid import expand, trial_key
from sftlab.spec.loading import load_spec, parse_spec
from tests.support.helpers import EXAMPLES


def test_quickstart_grid_is_models_by_datasets_by_methods() -> None:
    trials = expand(load_spec(EXAMPLES / "quickstart.yaml"))
    assert len(trials) == 8
    combos = {(t.base_model.name, t.dataset.name, t.training.method) for t in trials}
    assert len(combos) == 8
    assert len({t.key for t in trials}) == 8
    assert [t.index for t in trials] == list(range(8))


def test_keys_are_deterministic_and_ignore_names() -> None:
    text = (EXAMPLES / "quickstart.yaml").read_text()
    first = [t.key for t in expand(load_spec(EXAMPLES / "quickstart.yaml"))]
    again = [t.key for t in expand(parse_spec(text, base_dir=EXAMPLES))]
    renamed = [t.key for t in expand(parse_spec(text.replace("name: math", "name: arithmetic"), base_dir=EXAMPLES))]
    assert first == again == renamed


def test_key_changes_with_any_setting() -> None:
    trial = expand(load_spec(EXAMPLES / "quickstart.yaml"))[0]
    base = trial_key(trial.base_model, trial.dataset, trial.training, trial.benchmarks, trial.prompt_template)
    assert base == trial.key
    faster = trial.training.model_copy(update={"learning_rate": 0.01})
    assert trial_key(trial.base_model, trial.dataset, faster, trial.benchmarks, trial.prompt_template) != base
    other_template = "Q: {instruction}\nA: {response}"
    assert trial_key(trial.base_model, trial.dataset, trial.training, trial.benchmarks, other_template) != base


def test_sweep_axes_multiply_and_restrict() -> None:
    text = (
        (EXAMPLES / "quickstart.yaml")
        .read_text()
        .replace(
            "training.method: [full, lora]",
            "training.method: [full, lora]\n  training.learning_rate: [0.001, 0.002, 0.004]\n"
            "  base_model: [tiny-qwen-mixed]",
        )
    )
    trials = expand(parse_spec(text, base_dir=EXAMPLES))
    assert len(trials) == 1 * 2 * 2 * 3
    assert {t.base_model.name for t in trials} == {"tiny-qwen-mixed"}
    assert sorted({t.training.learning_rate for t in trials}) == [0.001, 0.002, 0.004]
    assert "learning_rate=0.004" in trials[-1].label
