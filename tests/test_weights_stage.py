"""The weights stage end to end: trained model in MLflow, base on local disk or S3, checked against torch."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from sftlab.errors import SftlabError
from sftlab.sources.uris import upload_dir
from sftlab.spec.job import StageResult, TrialJob, context_for
from sftlab.spec.schema import ModelSpec, StorageConfig, WeightsConfig
from sftlab.stages.common import run_stage
from sftlab.tracking.runs import TAG_ERROR, Tracker
from tests.support.helpers import first_trial, quickstart_spec
from tests.test_weight_diff import (
    LAYERS,
    expected_rows,
    joined,
    perturbed,
    save,
    tiny_llama,
)

# Big enough that max_shard_size="200KB" splits it into several shards.
SIZE = {"hidden_size": 64, "intermediate_size": 128, "vocab_size": 128}
SPECTRAL = WeightsConfig(spectral=True, spectral_top_k=4, spectral_max_matrices=5, seed=7)


def model(seed: int = 0) -> torch.nn.Module:
    return tiny_llama(seed, **SIZE)


@pytest.fixture(scope="module")
def tracking(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One MLflow store for the module: creating a sqlite store costs ~1.5 s of migrations."""
    return tmp_path_factory.mktemp("tracking")


def make_job(tracking: Path, base_uri: str, weights: WeightsConfig) -> tuple[TrialJob, Tracker]:
    spec = quickstart_spec(tracking, base_models=[ModelSpec(name="base", uri=base_uri)], weights=weights)
    trial = first_trial(spec)
    ctx = context_for(spec)
    tracker = Tracker.for_context(ctx)
    run_id = tracker.create_trial_run(trial, None)
    return TrialJob(trial=trial, context=ctx.model_copy(update={"trial_run_id": run_id})), tracker


def run_weights(job: TrialJob, tracker: Tracker, trained_dir: Path, adapter: bool, tmp_path: Path) -> StageResult:
    """Log ``trained_dir`` as the run's model (as the train stage does) and run the stage on it."""
    run_id = job.context.trial_run_id
    assert run_id
    tracker.log_artifacts(run_id, trained_dir, "model")
    upstream = tmp_path / "train.json"
    upstream.write_text(json.dumps({"outputs": {"run_id": run_id, "artifact_path": "model", "adapter": adapter}}))
    return run_stage("weights", job.to_json(), tmp_path / "weights.json", {"model": str(upstream)})


def lora_adapter(base: torch.nn.Module, folder: Path) -> dict[str, torch.Tensor]:
    """Save a LoRA adapter with non-trivial ΔW; return the merged model's state for checking."""
    from peft import LoraConfig, get_peft_model

    copy = model()
    copy.load_state_dict(base.state_dict())
    peft_model = get_peft_model(
        copy, LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear")
    )
    torch.manual_seed(5)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.add_(0.05 * torch.randn_like(param))
    peft_model.save_pretrained(folder)
    return {k: v.clone() for k, v in peft_model.merge_and_unload().state_dict().items()}


def check_logged(
    job: TrialJob, tracker: Tracker, result: StageResult, base: dict, tuned: dict, tmp_path: Path
) -> pd.DataFrame:
    """Metrics and artifacts in MLflow equal a direct torch computation; returns the Parquet table."""
    run_id = job.context.trial_run_id
    assert run_id
    metrics = tracker.client.get_run(run_id).data.metrics
    assert {k: metrics[k] for k in result.metrics} == pytest.approx(result.metrics)

    for i in range(LAYERS):
        names = [n for n in base if n.startswith(f"model.layers.{i}.")]
        b, t = joined(base, names), joined(tuned, names)
        assert metrics[f"weights/layer_{i}/rel_change"] == pytest.approx(float((t - b).norm() / b.norm()), rel=1e-6)
    b, t = joined(base, list(base)), joined(tuned, list(base))
    assert metrics["weights/total/abs_change"] == pytest.approx(float((t - b).norm()), rel=1e-6)
    assert metrics["weights/total/cosine"] == pytest.approx(float(b @ t / (b.norm() * t.norm())), rel=1e-9)

    files = {f.path for f in tracker.client.list_artifacts(run_id, "weights")}
    assert files == {"weights/weight_change_heatmap.png", "weights/tensors.json", "weights/tensors.parquet"}
    local = Path(tracker.download(run_id, "weights", tmp_path / "logged"))
    assert (local / "weight_change_heatmap.png").read_bytes()[:4] == b"\x89PNG"
    table = pd.read_parquet(local / "tensors.parquet")
    as_json = json.loads((local / "tensors.json").read_text())
    assert as_json["columns"] == list(table.columns) and len(as_json["data"]) == len(table) == len(base)
    rows = table.set_index("name")
    for name, want in expected_rows(base, tuned).items():
        for field, value in want.items():
            assert rows.loc[name, field] == pytest.approx(value, rel=1e-5, abs=1e-7), (name, field)
    return table


def check_spectra(table: pd.DataFrame, base: dict, tuned: dict, weights: WeightsConfig) -> None:
    """The sampled matrices' top singular values equal torch.linalg.svdvals of ΔW."""
    changed = [n for n in base if base[n].dim() == 2 and not torch.equal(base[n], tuned[n])]
    sampled = table[table["top_singular_values"].notna()]
    assert len(sampled) == min(weights.spectral_max_matrices, len(changed))
    assert set(sampled["name"]) <= set(changed)
    for row in sampled.itertuples():
        want = torch.linalg.svdvals(tuned[row.name].double() - base[row.name].double())
        assert list(row.top_singular_values) == pytest.approx(
            want[: weights.spectral_top_k].tolist(), rel=1e-4, abs=1e-6
        )


@pytest.mark.parametrize("sharded", [False, True], ids=["unsharded", "sharded"])
def test_full_model_from_local_disk(tmp_path: Path, tracking: Path, sharded: bool) -> None:
    shard = {"max_shard_size": "200KB"} if sharded else {}
    base_model = model()
    base_dir, tuned_dir = save(base_model, tmp_path / "base", **shard), tmp_path / "tuned"
    tuned_model = perturbed(base_model)
    save(tuned_model, tuned_dir, **shard)
    assert (base_dir / "model.safetensors.index.json").is_file() == sharded
    if sharded:
        assert len(list(tuned_dir.glob("*.safetensors"))) > 2
    weights = SPECTRAL if sharded else WeightsConfig()
    job, tracker = make_job(tracking, str(base_dir), weights)
    result = run_weights(job, tracker, tuned_dir, adapter=False, tmp_path=tmp_path)
    base_state, tuned_state = base_model.state_dict(), tuned_model.state_dict()
    table = check_logged(job, tracker, result, base_state, tuned_state, tmp_path)
    if sharded:
        check_spectra(table, base_state, tuned_state, weights)
        assert result.metrics["weights/spectral/matrices"] == 2  # only two matrices changed
    else:
        assert table["top_singular_values"].isna().all() and not any("spectral" in k for k in result.metrics)


def test_lora_from_local_disk(tmp_path: Path, tracking: Path) -> None:
    base_model = model()
    base_dir = save(base_model, tmp_path / "base")
    merged = lora_adapter(base_model, tmp_path / "adapter")
    job, tracker = make_job(tracking, str(base_dir), WeightsConfig())
    result = run_weights(job, tracker, tmp_path / "adapter", adapter=True, tmp_path=tmp_path)
    check_logged(job, tracker, result, base_model.state_dict(), merged, tmp_path)


@pytest.mark.parametrize("adapter", [False, True], ids=["full", "lora"])
def test_sharded_base_model_on_s3(tmp_path: Path, tracking: Path, s3_env: str, adapter: bool) -> None:
    import boto3

    base_model = model()
    base_dir = save(base_model, tmp_path / "base", max_shard_size="200KB")
    bucket = f"weights-{'lora' if adapter else 'full'}"
    boto3.client("s3", endpoint_url=s3_env).create_bucket(Bucket=bucket)
    upload_dir(base_dir, f"s3://{bucket}/models/base", StorageConfig())
    if adapter:
        tuned = lora_adapter(base_model, tmp_path / "trained")
    else:
        tuned = perturbed(base_model).state_dict()
        save(perturbed(base_model), tmp_path / "trained")
    job, tracker = make_job(tracking, f"s3://{bucket}/models/base", SPECTRAL)
    result = run_weights(job, tracker, tmp_path / "trained", adapter=adapter, tmp_path=tmp_path)
    table = check_logged(job, tracker, result, base_model.state_dict(), tuned, tmp_path)
    check_spectra(table, base_model.state_dict(), tuned, SPECTRAL)
    assert math.isfinite(result.metrics["weights/spectral/effective_rank_mean"])


def test_trained_folder_without_weights_fails_in_one_line(tmp_path: Path, tracking: Path) -> None:
    base_dir = save(model(), tmp_path / "base")
    (tmp_path / "trained").mkdir()
    (tmp_path / "trained" / "config.json").write_text("{}")
    job, tracker = make_job(tracking, str(base_dir), WeightsConfig())
    with pytest.raises(SftlabError, match=r"^fine-tuned model .*: no safetensors weights[^\n]*$"):
        run_weights(job, tracker, tmp_path / "trained", adapter=False, tmp_path=tmp_path)
    run_id = job.context.trial_run_id
    assert run_id
    assert tracker.client.get_run(run_id).data.tags[TAG_ERROR].startswith("weights: SftlabError: fine-tuned model")
