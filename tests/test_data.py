"""Data sources and formats: local files, S3 (real moto server), chat/prompt-completion/instruction rows."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest

from sftlab.errors import SftlabError
from sftlab.sources import data, models
from sftlab.sources.uris import download, read_text, upload_dir
from sftlab.spec.job import RunContext
from sftlab.spec.schema import DatasetSpec, ModelSpec, StorageConfig
from tests.support.helpers import EXAMPLES

TEMPLATE = "###Question: {instruction}\n###Answer: {response}"


def ctx(tmp_path: Path) -> RunContext:
    return RunContext(tracking_uri="sqlite:///unused.db", experiment="x", root=str(tmp_path))


def test_instruction_rows_use_the_template(tmp_path: Path) -> None:
    ds = DatasetSpec(name="m", uri=str(EXAMPLES / "data/math.jsonl"))
    loaded = data.load_examples(ds, TEMPLATE, ctx(tmp_path))
    assert len(loaded.examples) == 64 and not loaded.skipped
    first = loaded.examples[0]
    assert first.prompt.startswith("###Question: ") and first.prompt.endswith("\n###Answer: ")
    assert first.completion.endswith("#### 15")


def test_chat_rows_stay_conversational_and_render_like_training(tmp_path: Path, tiny_model: Path) -> None:
    ds = DatasetSpec(name="c", uri=str(EXAMPLES / "data/chat.jsonl"), format="messages")
    loaded = data.load_examples(ds, None, ctx(tmp_path), max_rows=5, seed=1)
    assert len(loaded.examples) == 5
    example = loaded.examples[0]
    assert example.prompt[-1]["role"] == "user" and example.completion[0]["role"] == "assistant"
    tokenizer = models.load_tokenizer(str(tiny_model))
    prompt, completion = data.render_text(example, tokenizer)
    assert prompt.endswith("<|im_start|>assistant\n")
    assert completion.startswith(example.completion[0]["content"]) and "<|im_end|>" in completion


def test_malformed_rows_are_reported_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]},
        {"text": "no messages"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    loaded = data.load_examples(DatasetSpec(name="m", uri=str(path), format="messages"), None, ctx(tmp_path))
    assert len(loaded.examples) == 1
    assert [i for i, _ in loaded.skipped] == [1, 2, 3]
    assert "role system/user/assistant" in loaded.skipped[0][1]


def test_bad_json_line_is_listed_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"instruction": "a", "response": "b"}\n{not json\n\xff\xfe\n[1, 2]\n')
    loaded = data.load_examples(DatasetSpec(name="b", uri=str(path)), TEMPLATE, ctx(tmp_path))
    assert len(loaded.examples) == 1
    assert loaded.skipped == [
        (1, "bad.jsonl:2: not valid JSON (JSONDecodeError)"),
        (2, "bad.jsonl:3: not valid JSON (UnicodeDecodeError)"),
        (3, "bad.jsonl:4: expected a JSON object, got list"),
    ]
    # Benchmark items must all be usable: there a bad line is a one-line error naming it.
    with pytest.raises(SftlabError, match=r"bad.jsonl: bad.jsonl:2: not valid JSON"):
        data.read_rows(str(path), "test", ctx(tmp_path))


def test_parquet_and_folder_sources(tmp_path: Path) -> None:
    import pandas as pd

    rows = data.read_rows(str(EXAMPLES / "data/math.jsonl"), "train", ctx(tmp_path))
    folder = tmp_path / "math"
    folder.mkdir()
    pd.DataFrame(rows).to_parquet(folder / "train-00000.parquet")
    pd.DataFrame(rows[:3]).to_parquet(folder / "test-00000.parquet")
    loaded = data.load_examples(DatasetSpec(name="m", uri=str(folder)), TEMPLATE, ctx(tmp_path))
    assert len(loaded.examples) == 64  # the train split's file, not the test one
    assert loaded.examples[5].completion == rows[5]["response"]


def test_empty_dataset_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text(json.dumps({"instruction": "q", "response": ""}) + "\n")
    with pytest.raises(
        SftlabError, match=r"dataset e .*: no usable rows \(first problem, row 0: missing text field 'response'\)"
    ):
        data.load_examples(DatasetSpec(name="e", uri=str(path)), TEMPLATE, ctx(tmp_path))


def test_s3_dataset_and_model_round_trip(tmp_path: Path, s3_env: str, tiny_model: Path) -> None:
    s3 = boto3.client("s3", endpoint_url=s3_env)
    s3.create_bucket(Bucket="sftlab-data")
    s3.upload_file(str(EXAMPLES / "data/code.jsonl"), "sftlab-data", "sets/code.jsonl")
    upload_dir(tiny_model, "s3://sftlab-data/models/tiny", StorageConfig())
    c = ctx(tmp_path)

    loaded = data.load_examples(DatasetSpec(name="code", uri="s3://sftlab-data/sets/code.jsonl"), TEMPLATE, c)
    assert len(loaded.examples) == 48

    local = Path(models.resolve(ModelSpec(name="t", uri="s3://sftlab-data/models/tiny"), c))
    assert sorted(p.name for p in local.iterdir()) == sorted(p.name for p in tiny_model.iterdir())
    assert (local / "model.safetensors").read_bytes() == (tiny_model / "model.safetensors").read_bytes()
    assert models.load_causal_lm(str(local)).config.hidden_size == 64

    assert "def " in read_text("s3://sftlab-data/sets/code.jsonl", StorageConfig())
    with pytest.raises(SftlabError, match=r"s3://sftlab-data/missing.jsonl: not found"):
        download("s3://sftlab-data/missing.jsonl", tmp_path, StorageConfig())


def test_model_folder_without_weights(tmp_path: Path) -> None:
    (tmp_path / "empty-model").mkdir()
    with pytest.raises(SftlabError, match="has no weights"):
        models.resolve(ModelSpec(name="e", uri=str(tmp_path / "empty-model")), ctx(tmp_path))


def test_tiny_models_are_deterministic(tmp_path: Path) -> None:
    from sftlab.sources.tiny import resolve_tiny

    a = resolve_tiny("tiny:llama?hidden=32&layers=2&seed=5", tmp_path / "a")
    b = resolve_tiny("tiny:llama?hidden=32&layers=2&seed=5", tmp_path / "b")
    c = resolve_tiny("tiny:llama?hidden=32&layers=2&seed=6", tmp_path / "c")
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()
    with pytest.raises(SftlabError, match="parameter hidden"):
        resolve_tiny("tiny:llama?hidden=huge", tmp_path)


def test_tokenizer_that_does_not_belong_to_the_weights(tmp_path: Path) -> None:
    """Bad input: a model folder whose tokenizer came from a larger-vocabulary model."""
    import shutil

    from sftlab.sources import models
    from sftlab.sources.tiny import build_tiny
    from sftlab.spec.tiny_uri import TinySpec

    small = build_tiny(tmp_path / "small", TinySpec(vocab=512, pretrain_steps=0))
    large = build_tiny(tmp_path / "large", TinySpec(vocab=2048, pretrain_steps=0))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(large / name, small / name)
    model, tokenizer = models.load_causal_lm(str(small)), models.load_tokenizer(str(small))
    with pytest.raises(SftlabError) as info:
        models.check_pair(model, tokenizer, "small")
    assert str(info.value) == (
        f"model small: its tokenizer has {len(tokenizer)} tokens but the model's embeddings only 512; "
        "the tokenizer files do not belong to these weights"
    )
    models.check_pair(
        models.load_causal_lm(str(large)), models.load_tokenizer(str(large)), "large"
    )  # a true pair passes


def test_the_platform_store_endpoint_applies_to_its_own_bucket_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The chart's store endpoint must not redirect a user's own buckets (as AWS_ENDPOINT_URL_S3 did)."""
    from sftlab.sources.uris import s3_endpoint
    from sftlab.spec.schema import StorageConfig

    for var in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SFTLAB_STORE_S3_ENDPOINT", "http://sftlab-minio.ml.svc:9000")
    monkeypatch.setenv("SFTLAB_STORE_BUCKET", "mlflow")
    assert s3_endpoint(StorageConfig(), "mlflow") == "http://sftlab-minio.ml.svc:9000"
    assert s3_endpoint(StorageConfig(), "my-datasets") is None  # AWS S3, as boto3 decides
    assert s3_endpoint(StorageConfig(s3_endpoint_url="http://mine:9000"), "mlflow") == "http://mine:9000"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://user-choice:9000")
    assert s3_endpoint(StorageConfig(), "my-datasets") == "http://user-choice:9000"
