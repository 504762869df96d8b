"""Spec loading: good specs load, bad ones report every problem as ``field.path: expected, got``."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from sftlab.errors import SftlabError, SpecError
from sftlab.spec.loading import load_spec, parse_spec
from sftlab.spec.schema import TaskResources
from sftlab.spec.uris import classify_uri
from tests.support.helpers import EXAMPLES, run_cli

GOOD = f"""
name: s
base_models: [{{name: m, uri: "tiny:llama?seed=3"}}]
datasets: [{{name: d, uri: {EXAMPLES}/data/math.jsonl}}]
benchmarks: [{{name: b, uri: {EXAMPLES}/data/gsm8k_tiny.jsonl}}]
"""


def test_quickstart_loads_with_paths_resolved() -> None:
    spec = load_spec(EXAMPLES / "quickstart.yaml")
    assert spec.experiment == "quickstart"
    assert Path(spec.datasets[0].uri).is_absolute() and Path(spec.datasets[0].uri).exists()
    assert spec.base_models[0].uri.startswith("tiny:")
    assert spec.sweep == {"training.method": ["full", "lora"]}


def test_defaults_follow_the_study() -> None:
    spec = parse_spec(GOOD, base_dir=EXAMPLES)
    assert spec.prompt_template == "###Question: {instruction}\n###Answer: {response}"
    assert (spec.training.learning_rate, spec.training.global_batch_size, spec.training.epochs) == (1e-5, 32, 10)


def test_three_mistakes_reported_together(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("data/math.jsonl", "data/nope.jsonl") + "training: {learning_rate: -1, epoch: 3}\n")
    with pytest.raises(SpecError) as info:
        load_spec(bad)
    text = str(info.value)
    assert text.splitlines()[0] == f"{bad}: 3 problems:"
    assert "training.learning_rate: expected greater than 0, got -1" in text
    assert "training.epoch: unknown key" in text
    assert f"datasets[0].uri: no such file or folder, got '{EXAMPLES}/data/nope.jsonl'" in text


def test_cli_reports_all_problems_and_exits_nonzero(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        GOOD.replace('"tiny:llama?seed=3"', '"gs://bucket/model"')
        + "sweep: {training.method: [full, lroa], base_model: [zz]}\n"
    )
    result = run_cli("plan", str(bad))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0] == f"error: {bad}: 3 problems:"
    assert any("base_models[0].uri: unsupported URI scheme 'gs:'" in line for line in lines)
    assert any("sweep.training.method[1]: expected 'full', 'lora' or 'qlora', got 'lroa'" in line for line in lines)
    assert any("sweep.base_model[0]: expected one of m, got 'zz'" in line for line in lines)


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ("sweep: {training.learning_rate: []}", "sweep.training.learning_rate: expected a non-empty list"),
        ("sweep: {optimizer: [adam]}", "sweep.optimizer: unknown axis"),
        ("sweep: {training.lora.rank: [8]}", "sweep.training.lora.rank: training.lora has no field 'rank'"),
        (
            "training: {global_batch_size: 10, per_device_batch_size: 4}",
            "training: global_batch_size (10) must be a multiple",
        ),
        ("prompt_template: 'Q: {question} A:'", "prompt_template: expected a template containing {instruction}"),
        ("name: 'bad name!'", "name: string should match pattern"),
    ],
)
def test_single_mistakes(snippet: str, expected: str) -> None:
    text = GOOD + snippet + "\n" if not snippet.startswith("name:") else GOOD.replace("name: s", snippet)
    with pytest.raises(SpecError) as info:
        parse_spec(text, source="x.yaml", base_dir=EXAMPLES)
    assert expected in str(info.value)


def test_yaml_syntax_error_names_line() -> None:
    with pytest.raises(SpecError, match=r"x.yaml: 1 problem:\n  line 3, column \d+: invalid YAML"):
        parse_spec("name: s\nbase_models: [\n  - : :\n", source="x.yaml")


def test_duplicate_names() -> None:
    with pytest.raises(SpecError, match="datasets: name 'd' is used more than once"):
        parse_spec(GOOD.replace("datasets: [", f"datasets: [{{name: d, uri: {EXAMPLES}/data/code.jsonl}}, "))


def test_uri_kinds() -> None:
    assert classify_uri("s3://b/k") == "s3"
    assert classify_uri("tiny:llama") == "tiny"
    assert classify_uri("HuggingFaceTB/SmolLM2-135M") == "hub"
    assert classify_uri("data/train.jsonl") == "local"
    assert classify_uri("./model") == "local"
    with pytest.raises(SftlabError, match="unsupported URI scheme 'http:'"):
        classify_uri("http://example.com/x")


def test_spec_missing_file() -> None:
    with pytest.raises(SftlabError, match="spec file not found"):
        load_spec("/nonexistent/spec.yaml")


def test_qlora_without_cuda_fails_before_anything_runs(tmp_path: Path) -> None:
    spec = tmp_path / "qlora.yaml"
    spec.write_text(GOOD + f"tracking: {{root: {tmp_path / 'runs'}}}\nsweep: {{training.method: [full, qlora]}}\n")
    result = run_cli("run", str(spec), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"error: {spec}: 1 problem:",
        "  training.method: qlora needs a CUDA GPU (4-bit bitsandbytes); use lora or full on CPU "
        "(trial m/d[method=qlora])",
    ]
    assert not (tmp_path / "runs").exists()  # nothing started, nothing tracked


def test_multi_node_training_fails_locally_before_anything_runs(tmp_path: Path) -> None:
    spec = tmp_path / "nodes.yaml"
    spec.write_text(GOOD + f"tracking: {{root: {tmp_path / 'runs'}}}\ntraining: {{distributed: {{nodes: 4}}}}\n")
    result = run_cli("run", str(spec), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "training.distributed.nodes: 4 nodes need a cluster (sftlab submit)" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_evaluated_epochs_must_exist_and_be_checkpointed() -> None:
    with pytest.raises(SpecError, match=r"epoch 12 is past the last training epoch \(10\)"):
        parse_spec(GOOD + "evaluation: {epochs: [1, 12]}\n")
    with pytest.raises(SpecError, match="needs training.checkpoint_every_epoch: true"):
        parse_spec(GOOD + "evaluation: {epochs: all}\ntraining: {checkpoint_every_epoch: false}\n")
    assert parse_spec(
        GOOD + "evaluation: {epochs: [1, 12]}\nsweep: {training.epochs: [10, 12]}\n"
    ).evaluation.epochs == [1, 12]


@pytest.mark.parametrize("value", ["2", "500m", "0.5", ".5", "16Gi", "512Mi", "1e9", "1E3", "8G", "4Ti", "1Ei", "1E"])
def test_resource_quantities_the_api_server_takes_are_taken(value: str) -> None:
    assert TaskResources(cpu=value, memory=value, shm_size=value).memory == value


@pytest.mark.parametrize(
    # Zero, negative, signed; and what Decimal (inside kubernetes' parse_quantity) would read but the
    # API server refuses: spaces, "_", non-finite, non-ASCII digits, "K", an exponent with a suffix, "mi".
    "value",
    ["0", "0Gi", "0e5", "-4Gi", "+1", "16GB", "16 Gi", " 16Gi", "1_000", "inf", "nan", "١", "1K", "2e1Gi", "1mi", ""],
)
def test_resource_quantities_the_api_server_refuses_are_refused(value: str) -> None:
    with pytest.raises(ValidationError, match="expected a positive Kubernetes quantity such as 16Gi or 512Mi"):
        TaskResources(memory=value)
