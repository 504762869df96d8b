"""Compile the pipelines and submit sweeps to a KFP cluster.

``python -m sftlab.kfp.pipelines.compile`` regenerates the committed ``trial_pipeline.yaml`` and
``sweep_pipeline.yaml`` (release image, no pod settings: compiled without a spec).
"""

import tempfile
from pathlib import Path
from typing import Any, Literal

from kfp import compiler

from sftlab.errors import SftlabError, SpecError
from sftlab.kfp.auth import kfp_client, kfp_errors
from sftlab.kfp.components.sweep import is_local_store
from sftlab.kfp.pipelines.sweep import build_sweep_pipeline
from sftlab.kfp.pipelines.trial import build_trial_pipeline
from sftlab.spec.schema import Spec
from sftlab.spec.uris import classify_uri

PipelineKind = Literal["trial", "sweep"]
BUILDERS: dict[PipelineKind, Any] = {"trial": build_trial_pipeline, "sweep": build_sweep_pipeline}
# The committed IR lives in the repository's top-level pipelines/ folder, where a user looks for
# what to upload in the KFP UI (``python -m sftlab.kfp.pipelines.compile`` in a checkout rewrites it).
PIPELINES_DIR = Path(__file__).resolve().parents[3] / "pipelines"
COMPILED: dict[PipelineKind, Path] = {kind: PIPELINES_DIR / f"{kind}_pipeline.yaml" for kind in BUILDERS}
MAX_PARAMETER_CHARS = 10_000  # KFP rejects longer pipeline parameters (kubeflow/pipelines#12510)


def compile_pipeline(kind: PipelineKind, spec: Spec | None, out: Path) -> Path:
    """Compile the trial or sweep pipeline for ``spec`` (None: release image, no pod settings)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(BUILDERS[kind](spec), str(out))
    return out


def spec_parameter(spec_source: str) -> str:
    """The sweep pipeline's ``spec`` argument: an ``s3://`` URI as is, a file's text, or the text."""
    if spec_source.startswith("s3://"):
        return spec_source
    try:
        is_file = "\n" not in spec_source and Path(spec_source).is_file()
    except OSError:  # e.g. one-line YAML longer than a file name may be
        is_file = False
    text = Path(spec_source).read_text(encoding="utf-8") if is_file else spec_source
    if len(text) > MAX_PARAMETER_CHARS:
        raise SftlabError(
            f"the spec is {len(text):,} characters, over KFP's {MAX_PARAMETER_CHARS:,}-character parameter "
            "limit: upload it to S3 and submit its s3:// URI"
        )
    return text


def cluster_problems(spec: Spec) -> list[str]:
    """What in ``spec`` cannot work from cluster pods: files on this machine, a local MLflow store."""
    problems = []
    if spec.tracking.uri and is_local_store(spec.tracking.uri):
        problems.append(f"tracking.uri: a local store is not shared with cluster pods, got {spec.tracking.uri!r}")
    sources: dict[str, list[Any]] = {
        "base_models": spec.base_models,
        "datasets": spec.datasets,
        "benchmarks": spec.benchmarks,
    }
    for field, items in sources.items():
        for i, item in enumerate(items):
            if classify_uri(item.uri) == "local":
                problems.append(
                    f"{field}[{i}].uri: a local path is not visible to cluster pods (use s3:// or a hub id), "
                    f"got {item.uri!r}"
                )
    return problems


def submit(
    spec_source: str,
    host: str | None,
    experiment: str | None,
    spec: Spec,
    *,
    namespace: str | None = None,
    token: str | None = None,
) -> str:
    """Submit the sweep pipeline for ``spec`` to KFP; returns the KFP run id.

    ``spec_source`` (a spec file, an ``s3://`` URI, or YAML text) becomes the run's ``spec``
    parameter; ``spec`` (already loaded from it) sets the image and secrets and is checked for
    things pods cannot reach. ``host`` defaults to ``spec.pipeline.kfp_host`` (None in-cluster);
    ``experiment`` to the spec's experiment name; ``namespace`` and ``token`` are what multi-user KFP
    asks for (``sftlab.kfp.auth``).
    """
    parameter = spec_parameter(spec_source)
    problems = cluster_problems(spec)
    if problems:
        raise SpecError(spec_source if "\n" not in spec_source else "<spec>", problems)
    target = host or spec.pipeline.kfp_host
    with tempfile.TemporaryDirectory(prefix="sftlab-kfp-") as tmp, kfp_errors(target):
        client = kfp_client(target, token)
        package = compile_pipeline("sweep", spec, Path(tmp) / "sweep_pipeline.yaml")
        result = client.create_run_from_pipeline_package(
            str(package),
            arguments={"spec": parameter},
            run_name=spec.name,
            experiment_name=experiment or spec.experiment,
            namespace=namespace,
        )
    return result.run_id


def main() -> None:
    for kind, path in COMPILED.items():
        compile_pipeline(kind, None, path)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
