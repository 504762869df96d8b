"""Bad input (issue #10): each case gives one line that names the field or file and what was expected.

The corpus, by case of the issue. Cases tested elsewhere are listed where they live, so this
docstring is the whole map; the rest are tested here.

Specs
- wrong types: ``SPEC_CASES`` here (epochs-not-an-int, models-not-a-list); any mutation of the
  quickstart spec: test_properties.py::test_any_mutated_spec_loads_or_lists_one_line_problems
- unknown keys: test_spec.py::test_three_mistakes_reported_together (nested); ``SPEC_CASES`` (top level)
- empty grids: test_spec.py::test_single_mistakes (an empty sweep axis); ``SPEC_CASES`` (no base models / datasets)
- impossible resources: ``SPEC_CASES`` (memory and cpu strings Kubernetes would reject, negative
  or zero sizes, GPU counts out of range, a GPU model given as the accelerator, an accelerator
  without GPUs, more nodes than allowed, no parallel trials, vLLM serving without GPUs)
- conflicting options: test_spec.py::test_qlora_without_cuda_fails_before_anything_runs,
  test_spec.py::test_multi_node_training_fails_locally_before_anything_runs,
  test_spec.py::test_evaluated_epochs_must_exist_and_be_checkpointed,
  test_launch_config.py::test_settings_this_cpu_machine_cannot_run_are_one_line_errors
  (FlashAttention, Liger, FSDP/ZeRO-3 on CPU); ``SPEC_CASES`` (LoRA trials evaluated by KServe's
  huggingface runtime; and, as exact lines, two cross-field checks that test_spec.py matches in
  part, since their message used to end with the whole group's or spec's input); a benchmark
  setting given to a kind that does not take it, an unknown kind
- paths that do not exist: test_spec.py::test_three_mistakes_reported_together (a dataset),
  test_spec.py::test_spec_missing_file; ``SPEC_CASES`` (a base model folder)
- URIs with unsupported schemes: test_spec.py::test_cli_reports_all_problems_and_exits_nonzero
  (gs:), test_spec.py::test_uri_kinds (http:); ``SPEC_CASES`` (hf: data, tiny: data, tracking URI)
- huge grids: ``test_huge_grid_*``, ``test_plan_warns_about_a_huge_grid`` and
  ``test_a_grid_past_the_hard_limit_is_refused_before_it_is_built`` here, through the CLI

Cluster
- ``sftlab submit`` to a KFP host that refuses the connection, or that wants credentials the user
  did not give (multi-user KFP): ``test_submit_to_an_unusable_kfp_api_is_one_line`` here

Data
- malformed JSONL: test_data.py::test_bad_json_line_is_listed_with_file_and_line
- malformed Parquet rows and files: ``DATA_CASES`` here (nulls, a numeric column, bad chat
  rows, a corrupt file); malformed JSON/CSV files and unsupported file types: ``DATA_CASES``
- wrong chat roles: test_data.py::test_malformed_rows_are_reported_not_fatal; ``DATA_CASES`` (Parquet)
- empty responses: test_data.py::test_malformed_rows_are_reported_not_fatal,
  test_data.py::test_empty_dataset_is_one_clear_error, test_profile.py::test_bad_rows_are_reported_with_ids_not_fatal
- non-UTF-8 bytes: test_data.py::test_bad_json_line_is_listed_with_file_and_line (JSONL lines);
  ``DATA_CASES`` (JSON and CSV files)
- rows longer than any max length: ``test_overlong_prompts_*`` here (a prompt alone fills
  training.max_length: skipped by row id, exactly the rows TRL would drop, never a crash in the trainer);
  benchmark prompts longer than the model's context window: tests/test_long_prompts.py
- an empty dataset: test_data.py::test_empty_dataset_is_one_clear_error (no usable row);
  ``DATA_CASES`` (an empty JSONL file, a blank one, an empty Parquet file)

Models
- a directory without weights: test_data.py::test_model_folder_without_weights,
  test_weight_diff.py::test_errors_are_one_line (weight analysis)
- mismatched tokenizer: test_data.py::test_tokenizer_that_does_not_belong_to_the_weights
- architecture mismatch between base and fine-tuned: test_weight_diff.py::test_errors_are_one_line
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from sftlab.cli import CONFIRM_ABOVE
from sftlab.errors import SftlabError, SpecError
from sftlab.sources import data, models
from sftlab.spec.grid import MAX_TRIALS
from sftlab.spec.job import RunContext
from sftlab.spec.loading import parse_spec
from sftlab.spec.schema import DatasetSpec, ResourcesConfig
from tests.support.helpers import EXAMPLES, free_port, run_cli
from tests.test_spec import GOOD

TEMPLATE = "###Question: {instruction}\n###Answer: {response}"
GSM8K_TINY = EXAMPLES / "data" / "gsm8k_tiny.jsonl"


def one_line(message: str, *names: str) -> str:
    assert message.strip() and "\n" not in message and "Traceback" not in message, message
    for name in names:
        assert name in message, (name, message)
    return message


# ---------------------------------------------------------------------------------------------
# Specs: (case, changes to the GOOD spec as dotted path -> value, the one expected problem)

SPEC_CASES: list[tuple[str, dict[str, Any], str]] = [
    (
        "epochs-not-an-int",
        {"training.epochs": "ten"},
        "training.epochs: expected a valid integer, unable to parse string as an integer, got 'ten'",
    ),
    ("models-not-a-list", {"base_models": "tiny:llama"}, "base_models: expected a valid list, got 'tiny:llama'"),
    ("unknown-top-level-key", {"epochs": 3}, "epochs: unknown key"),
    (
        "no-base-models",
        {"base_models": []},
        "base_models: list should have at least 1 item after validation, not 0, got []",
    ),
    ("no-datasets", {"datasets": []}, "datasets: list should have at least 1 item after validation, not 0, got []"),
    (
        "memory-in-gigabytes",
        {"resources.train": {"gpus": 1, "memory": "16GB"}},
        "resources.train.memory: expected a positive Kubernetes quantity such as 16Gi or 512Mi, got '16GB'",
    ),
    (
        "negative-memory",
        {"resources.default.memory": "-4Gi"},
        "resources.default.memory: expected a positive Kubernetes quantity such as 16Gi or 512Mi, got '-4Gi'",
    ),
    (
        "cpu-in-words",
        {"resources.default.cpu": "two"},
        "resources.default.cpu: expected a positive Kubernetes quantity such as 2 or 500m, got 'two'",
    ),
    (
        "zero-shm",
        {"resources.train": {"gpus": 8, "shm_size": "0Gi"}},
        "resources.train.shm_size: expected a positive Kubernetes quantity such as 16Gi, got '0Gi'",
    ),
    (
        "negative-gpus",
        {"resources.train.gpus": -1},
        "resources.train.gpus: expected greater than or equal to 0, got -1",
    ),
    (
        "too-many-gpus",
        {"resources.train.gpus": 128},
        "resources.train.gpus: expected less than or equal to 64, got 128",
    ),
    (
        "gpu-model-as-accelerator",
        {"resources.train": {"gpus": 8, "accelerator": "H100"}},
        (
            "resources.train.accelerator: expected an extended resource name such as nvidia.com/gpu or amd.com/gpu "
            "(pick the GPU model with node_selector), got 'H100'"
        ),
    ),
    (
        "accelerator-without-gpus",
        {"resources.train.accelerator": "amd.com/gpu"},
        (
            "resources.train: accelerator 'amd.com/gpu' is set but gpus is 0: "
            "set gpus ≥ 1, or drop accelerator to run on CPU"
        ),
    ),
    (
        "too-many-nodes",
        {"training.distributed.nodes": 1000},
        "training.distributed.nodes: expected less than or equal to 512, got 1000",
    ),
    (
        "no-parallel-trials",
        {"pipeline.max_parallel_trials": 0},
        "pipeline.max_parallel_trials: expected greater than or equal to 1, got 0",
    ),
    (
        "vllm-without-gpus",
        {"evaluation": {"backend": "kserve", "kserve": {"runtime": "vllm"}}},
        "evaluation.kserve.runtime: vllm needs GPUs: set resources.evaluate.gpus ≥ 1, or use runtime sftlab",
    ),
    (
        "kserve-huggingface-cannot-score-loglikelihoods",
        {"evaluation": {"backend": "kserve", "kserve": {"runtime": "huggingface"}}},
        (
            "evaluation.kserve.runtime: huggingface (KServe's Transformers backend) answers completions without "
            "log-probabilities, which benchmarks b score; use runtime sftlab (the chart's ServingRuntime), "
            "or vllm with GPUs"
        ),
    ),
    (
        "kserve-without-memory",
        {"evaluation.backend": "kserve"},
        (
            "resources.evaluate.memory: required with evaluation.backend kserve (else the ServingRuntime's own "
            "memory limit, 2Gi for KServe's, caps the model server)"
        ),
    ),
    (
        "lora-on-kserve-huggingface",
        {"evaluation.backend": "kserve", "sweep": {"training.method": ["full", "lora"]}},
        (
            "evaluation.kserve.runtime: LoRA adapters are served by vLLM: "
            "set runtime vllm (with resources.evaluate.gpus ≥ 1), or evaluate with backend local"
        ),
    ),
    (
        "batch-not-divisible",
        {"training": {"global_batch_size": 10, "per_device_batch_size": 4}},
        "training: global_batch_size (10) must be a multiple of per_device_batch_size (4)",
    ),  # the group's input is not echoed
    (
        "epoch-past-the-last",
        {"evaluation.epochs": [1, 12]},
        "evaluation.epochs: epoch 12 is past the last training epoch (10)",
    ),  # nor the whole spec's
    (
        "model-folder-missing",
        {"base_models": [{"name": "m", "uri": "./no-such-model"}]},
        f"base_models[0].uri: no such file or folder, got '{EXAMPLES / 'no-such-model'}'",
    ),
    (
        "hf-scheme-data",
        {"datasets": [{"name": "d", "uri": "hf://org/set"}]},
        (
            "datasets[0].uri: unsupported URI scheme 'hf:' in 'hf://org/set' "
            "(expected a local path, s3://, tiny: or a hub id)"
        ),
    ),
    (
        "tiny-data",
        {"datasets": [{"name": "d", "uri": "tiny:llama"}]},
        "datasets[0].uri: tiny: URIs name models, not data, got 'tiny:llama'",
    ),
    (
        "setting-of-another-kind",
        {"benchmarks": [{"name": "b", "kind": "gsm8k", "uri": str(GSM8K_TINY), "pass_k": [1]}]},
        "benchmarks[0].pass_k: unknown key",
    ),
    (
        "unknown-benchmark-kind",
        {"benchmarks": [{"name": "b", "kind": "mmlu", "uri": str(GSM8K_TINY)}]},
        "benchmarks[0].kind: expected 'gsm8k', 'math', 'humaneval', 'mbpp', 'multiple_choice', 'qa' or 'judge', "
        "got 'mmlu'",
    ),
    (
        "too-many-samples",
        {"benchmarks": [{"name": "b", "kind": "mbpp", "uri": str(GSM8K_TINY), "num_samples": 5000}]},
        "benchmarks[0].num_samples: expected less than or equal to 1000, got 5000",
    ),  # the kind's own settings keep their paths
    (
        "pass-k-above-samples",
        {"benchmarks": [{"name": "b", "kind": "humaneval", "uri": str(GSM8K_TINY), "pass_k": [1, 10]}]},
        "benchmarks[0]: pass_k values must be in 1..num_samples (1), got [1, 10]",
    ),
    (
        "judge-without-endpoint",
        {"benchmarks": [{"name": "b", "kind": "judge", "uri": str(GSM8K_TINY)}]},
        "benchmarks[0]: kind judge needs a judge endpoint (judge.url, judge.model)",
    ),
    (
        "tracking-scheme",
        {"tracking.uri": "mlfow://tracking:5000"},
        (
            "tracking.uri: unsupported tracking URI scheme 'mlfow:' "
            "(expected http(s)://, sqlite:///, postgresql://, mysql://, file: or databricks), got 'mlfow://tracking:5000'"
        ),
    ),
]


def good_with(changes: dict[str, Any]) -> str:
    spec = yaml.safe_load(GOOD)
    for path, value in changes.items():
        *parents, leaf = path.split(".")
        node = spec
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = copy.deepcopy(value)
    return yaml.safe_dump(spec)


@pytest.mark.parametrize(("changes", "expected"), [pytest.param(c, e, id=i) for i, c, e in SPEC_CASES])
def test_spec_case(changes: dict[str, Any], expected: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(good_with(changes), source="bad.yaml", base_dir=EXAMPLES)
    assert info.value.problems == [expected]
    one_line(expected)


def test_valid_resources_still_load() -> None:
    """Quantities Kubernetes takes pass, YAML numbers included; a validated spec survives a JSON round
    trip (components rebuild it from the job's JSON)."""
    resources = {
        "default": {"cpu": 2, "memory": "512Mi"},
        "train": {"cpu": "500m", "memory": "1e9", "gpus": 8, "accelerator": "amd.com/gpu", "shm_size": "16Gi"},
        "evaluate": {"cpu": 0.5, "memory": "64G", "gpus": 1},
    }
    spec = parse_spec(
        good_with(
            {
                "resources": resources,
                "evaluation": {"backend": "kserve", "kserve": {"runtime": "vllm"}},
                "tracking.uri": "postgresql+psycopg2://mlflow@db/mlflow",
            }
        )
    )
    assert (spec.resources.default.cpu, spec.resources.evaluate.cpu) == ("2", "0.5")
    assert ResourcesConfig.model_validate_json(spec.resources.model_dump_json()) == spec.resources


# ---------------------------------------------------------------------------------------------
# Huge grids: the real CLI in a subprocess. 15 seeds × 14 epoch counts = 210 trials.

HUGE = {"sweep": {"training.seed": list(range(15)), "training.epochs": list(range(1, 15))}}
N_HUGE = 15 * 14
QUESTION = f"{N_HUGE} trials will run on this machine (more than {CONFIRM_ABOVE}). Continue? [y/N]"


def cli(*args: str, stdin: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sftlab.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
        check=False,
    )


def test_huge_grid_is_above_the_limit() -> None:
    assert N_HUGE > CONFIRM_ABOVE


@pytest.mark.parametrize("answer", ["", "n\n"], ids=["stdin-closed", "no"])
def test_huge_grid_without_yes_stops_before_anything_is_tracked(tmp_path: Path, answer: str) -> None:
    spec = tmp_path / "huge.yaml"
    spec.write_text(good_with({**HUGE, "tracking.root": str(tmp_path / "runs")}))
    result = cli("run", str(spec), stdin=answer)
    assert result.returncode == 2
    assert QUESTION in result.stdout
    assert result.stderr.splitlines() == [
        f"error: {N_HUGE} trials not started: more than {CONFIRM_ABOVE} need a yes (answer y, or pass --yes)"
    ]
    assert not (tmp_path / "runs").exists()  # no MLflow store, no run, no log


@pytest.mark.parametrize(("flags", "answer"), [(["--yes"], ""), ([], "y\n")], ids=["--yes", "yes"])
def test_huge_grid_with_yes_goes_on_to_run(tmp_path: Path, flags: list[str], answer: str) -> None:
    """Past the question the sweep opens MLflow first: a tracking server that is not there stops it
    there, which proves the question was passed without training 210 trials."""
    port = free_port()
    spec = tmp_path / "huge.yaml"
    spec.write_text(
        good_with({**HUGE, "tracking.uri": f"http://127.0.0.1:{port}", "tracking.root": str(tmp_path / "runs")})
    )
    result = cli(
        "run",
        str(spec),
        *flags,
        stdin=answer,
        env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"},
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (QUESTION in result.stdout) == (not flags)
    assert result.stderr.startswith(f"error: MLflow at http://127.0.0.1:{port}: cannot open experiment 's'")


def test_plan_warns_about_a_huge_grid(tmp_path: Path) -> None:
    spec = tmp_path / "huge.yaml"
    spec.write_text(good_with(HUGE))
    result = run_cli("plan", str(spec), "--no-cost", timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"\n{N_HUGE} trials; benchmarks: b" in result.stdout
    assert result.stderr.splitlines() == [
        (
            f"warning: {N_HUGE} trials, more than {CONFIRM_ABOVE}: a local `sftlab run` asks before starting them "
            "(--yes skips the question)"
        )
    ]


def test_a_grid_past_the_hard_limit_is_refused_before_it_is_built(tmp_path: Path) -> None:
    """A typo'd axis (range(1000) for range(10)) must not spend minutes building trials first."""
    spec = tmp_path / "typo.yaml"
    spec.write_text(
        good_with({"sweep": {"training.seed": list(range(1000)), "training.max_rows": list(range(1, 1001))}})
    )
    result = run_cli("plan", str(spec), "--no-cost", timeout=60)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: sweep: 1,000,000 trials (1 base_model × 1 dataset × 1000 training.max_rows × 1000 training.seed) "
        f"is more than sftlab runs from one spec ({MAX_TRIALS:,}); split it"
    ]


# ---------------------------------------------------------------------------------------------
# Data: (case, file name, writer, format, expected) where expected is the skipped rows (the rest
# load) or, for a dataset nothing can be trained on, the one-line error with {path} filled in.


def parquet(columns: dict[str, list[Any]]) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table(columns), path)

    return write


def raw(content: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(content)


CHAT_OK = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
DATA_CASES: list[tuple[str, str, Callable[[Path], None], str, list[tuple[int, str]] | str]] = [
    (
        "parquet-nulls",
        "nulls.parquet",
        parquet({"instruction": ["a", None, "c"], "response": ["x", "y", None]}),
        "instruction",
        [(1, "missing text field 'instruction'"), (2, "missing text field 'response'")],
    ),
    (
        "parquet-numeric-column",
        "numbers.parquet",
        parquet({"instruction": ["a", "b"], "response": [1, 2]}),
        "instruction",
        "dataset d ({path}): no usable rows (first problem, row 0: field 'response' is int, expected text)",
    ),
    (
        "parquet-chat-roles",
        "chat.parquet",
        parquet({"messages": [CHAT_OK, [{"role": "bot", "content": "hi"}, CHAT_OK[1]], None]}),
        "messages",
        [
            (1, "message 0 has role 'bot'; each message needs role system/user/assistant"),
            (2, "missing 'messages' list"),
        ],
    ),
    (
        "parquet-corrupt",
        "corrupt.parquet",
        raw(b"PAR1 this is not parquet"),
        "instruction",
        "{path}: not a readable Parquet file (ArrowInvalid: Parquet magic bytes not found in footer.",
    ),
    (
        "parquet-empty",
        "empty.parquet",
        parquet({"instruction": [], "response": []}),
        "instruction",
        "dataset d ({path}): no usable rows",
    ),
    ("jsonl-empty", "empty.jsonl", raw(b""), "instruction", "dataset d ({path}): no usable rows"),
    ("jsonl-blank", "blank.jsonl", raw(b"\n  \n\n"), "instruction", "dataset d ({path}): no usable rows"),
    (
        "json-truncated",
        "cut.json",
        raw(b'[{"instruction": "a", '),
        "instruction",
        "{path}: not valid JSON (Expecting property name enclosed in double quotes at line 1, column 23)",
    ),
    (
        "json-latin-1",
        "latin.json",
        raw('[{"instruction": "café", "response": "x"}]'.encode("latin-1")),
        "instruction",
        "{path}: not UTF-8 text (byte 21: invalid continuation byte)",
    ),
    (
        "csv-latin-1",
        "latin.csv",
        raw("instruction,response\ncafé,x\n".encode("latin-1")),
        "instruction",
        "{path}: not a readable CSV file (UnicodeDecodeError: 'utf-8' codec can't decode byte 0xe9",
    ),
    (
        "unsupported-file-type",
        "rows.txt",
        raw(b"instruction: a\n"),
        "instruction",
        "{path}: unsupported data file type '.txt' (expected .jsonl, .jsonl.gz, .json, .parquet, .csv)",
    ),
]


def ctx(tmp_path: Path) -> RunContext:
    return RunContext(tracking_uri="sqlite:///unused.db", experiment="x", root=str(tmp_path))


@pytest.mark.parametrize(("name", "write", "fmt", "expected"), [pytest.param(*c[1:], id=c[0]) for c in DATA_CASES])
def test_data_case(
    tmp_path: Path, name: str, write: Callable[[Path], None], fmt: str, expected: list[tuple[int, str]] | str
) -> None:
    path = tmp_path / name
    write(path)
    ds = DatasetSpec.model_validate({"name": "d", "uri": str(path), "format": fmt})
    if isinstance(expected, list):
        loaded = data.load_examples(ds, TEMPLATE, ctx(tmp_path))
        assert loaded.skipped == expected
        assert len(loaded.examples) == len(loaded.row_ids) and not set(loaded.row_ids) & {i for i, _ in expected}
        for _, reason in expected:
            one_line(reason)
        return
    with pytest.raises(SftlabError) as info:
        data.load_examples(ds, TEMPLATE, ctx(tmp_path))
    assert one_line(str(info.value), name).startswith(expected.format(path=path))


# ---------------------------------------------------------------------------------------------
# Rows longer than any max length: a prompt that alone fills training.max_length


MAX_LENGTH = 64
LONG = "How many apples does Ana have? " * 40  # well over 64 tokens
SHORT = "How many apples does Ana have?"


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    from sftlab.sources.tiny import build_tiny
    from sftlab.spec.tiny_uri import TinySpec

    folder = build_tiny(tmp_path_factory.mktemp("tiny") / "model", TinySpec(pretrain_steps=0))
    return models.load_causal_lm(str(folder)), models.load_tokenizer(str(folder))


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def overlong_reason(tokenizer: Any, prompt: str) -> str:
    n = len(tokenizer(prompt)["input_ids"])
    assert n >= MAX_LENGTH
    return (
        f"prompt is {n} tokens; training.max_length is {MAX_LENGTH}, "
        "so truncation leaves no completion token to train on"
    )


def test_overlong_prompts_are_skipped_by_row_id(tmp_path: Path, tiny_pair: tuple[Any, Any]) -> None:
    _, tokenizer = tiny_pair
    rows = [
        {"instruction": SHORT, "response": "5"},
        {"instruction": LONG, "response": "5"},  # nothing of the response survives truncation
        {"instruction": "", "response": "5"},  # malformed: listed with the overlong one, in row order
        {"instruction": SHORT, "response": LONG},  # truncated, but its start is still trained
    ]
    ds = DatasetSpec(name="d", uri=str(write_rows(tmp_path / "d.jsonl", rows)))
    loaded = data.load_examples(ds, TEMPLATE, ctx(tmp_path))
    kept = data.drop_overlong_prompts(loaded, ds, tokenizer, MAX_LENGTH)
    prompt = data.render_template(TEMPLATE, LONG)
    assert kept.skipped == [(1, overlong_reason(tokenizer, prompt)), (2, "missing text field 'instruction'")]
    assert kept.row_ids == [0, 3] and [e.completion for e in kept.examples] == ["5", LONG]
    one_line(kept.skipped[0][1], "training.max_length")


def test_overlong_prompts_only_is_one_error_not_a_crash_in_the_trainer(
    tmp_path: Path, tiny_pair: tuple[Any, Any]
) -> None:
    _, tokenizer = tiny_pair
    path = write_rows(tmp_path / "long.jsonl", [{"instruction": LONG, "response": "5"}] * 3)
    ds = DatasetSpec(name="d", uri=str(path))
    loaded = data.load_examples(ds, TEMPLATE, ctx(tmp_path))
    with pytest.raises(SftlabError) as info:
        data.drop_overlong_prompts(loaded, ds, tokenizer, MAX_LENGTH)
    reason = overlong_reason(tokenizer, data.render_template(TEMPLATE, LONG))
    assert one_line(str(info.value)) == f"dataset d ({path}): no usable rows (first problem, row 0: {reason})"


def test_overlong_prompts_are_the_rows_trl_drops(tmp_path: Path, tiny_pair: tuple[Any, Any]) -> None:
    """Chat rows through the chat template, two at the boundary: what is kept is exactly what TRL's
    SFTTrainer keeps."""
    from datasets import Dataset
    from trl import SFTTrainer

    from sftlab.spec.schema import TrainingConfig
    from sftlab.training.sft import sft_config

    model, tokenizer = tiny_pair

    def user(content: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": content}]

    def prompt_tokens(content: str) -> int:
        return len(
            tokenizer.apply_chat_template(user(content), tokenize=True, add_generation_prompt=True, return_dict=True)[
                "input_ids"
            ]
        )

    fills = next(n for n in range(1, 200) if prompt_tokens("apples " * n) >= MAX_LENGTH)
    assert prompt_tokens("apples " * fills) == MAX_LENGTH and prompt_tokens("apples " * (fills - 1)) == MAX_LENGTH - 1
    answer = [{"role": "assistant", "content": "5"}]
    chats = [
        user(SHORT) + answer,
        [{"role": "system", "content": LONG}, *user(SHORT), *answer],
        user("apples " * (fills - 1)) + answer,  # one answer token fits: kept
        user("apples " * fills) + answer,  # none fits: skipped
        user(SHORT) + [{"role": "assistant", "content": LONG}],
    ]
    ds = DatasetSpec(
        name="c", uri=str(write_rows(tmp_path / "c.jsonl", [{"messages": m} for m in chats])), format="messages"
    )
    loaded = data.load_examples(ds, None, ctx(tmp_path))
    kept = data.drop_overlong_prompts(loaded, ds, tokenizer, MAX_LENGTH)
    assert [i for i, _ in kept.skipped] == [1, 3] and kept.row_ids == [0, 2, 4]

    training = TrainingConfig(max_length=MAX_LENGTH, global_batch_size=4, per_device_batch_size=4, epochs=1)
    trainer = SFTTrainer(
        model=model,
        args=sft_config(training, tmp_path / "out"),
        processing_class=tokenizer,
        train_dataset=Dataset.from_list([e.as_record() for e in loaded.examples]),
    )
    assert len(trainer.train_dataset) == len(kept.examples)


@pytest.mark.parametrize("refusal", ["unreachable", "unauthenticated"])
def test_submit_to_an_unusable_kfp_api_is_one_line(tmp_path: Path, refusal: str) -> None:
    from tests.support.kfp_api import FakeKfp

    spec = yaml.safe_load((EXAMPLES / "quickstart.yaml").read_text())
    for item in spec["datasets"] + spec["benchmarks"]:
        item["uri"] = f"s3://bucket/{Path(item['uri']).name}"
    spec["base_models"] = [{"name": "m", "uri": "org/model"}]
    spec["tracking"] = {"uri": "http://mlflow.sftlab:5000"}
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    with FakeKfp(authenticate=lambda token: None) as kfp_api:
        host = "http://127.0.0.1:9" if refusal == "unreachable" else kfp_api.url
        done = cli("submit", str(spec_file), "--host", host, stdin="")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    line = lines[0]
    assert line.startswith(f"error: KFP API at {host}: ")
    if refusal == "unreachable":
        assert "cannot connect" in line and "Connection refused" in line
    else:
        assert "HTTP 401 Unauthorized" in line and "pass --token-file and --namespace" in line
