"""Reading a spec: YAML from a file or a KFP parameter, validated, with relative paths resolved.

``load_spec(path)`` reports *every* problem at once, each as ``path.to.field: what was expected,
what was found``. Unknown keys are errors. Relative local paths are resolved against the spec
file's folder. A spec stored in S3 is read by ``sftlab.sources.specs``.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import ValidationError

from sftlab.errors import SftlabError, SpecError
from sftlab.spec.problems import _check_sources, _check_templates, describe_errors
from sftlab.spec.schema import Spec
from sftlab.spec.uris import classify_uri


def _resolve_local(uri: str, base_dir: Path) -> str:
    try:
        if classify_uri(uri) != "local" or uri.startswith("file:"):
            return uri
    except SftlabError:
        return uri  # reported by the source checks
    return str((base_dir / Path(uri).expanduser()).resolve())


def load_spec(path: str | os.PathLike) -> Spec:
    """Read and validate a spec file; raises SpecError listing every problem."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SftlabError(f"{source}: spec file not found") from None
    except UnicodeDecodeError:
        raise SftlabError(f"{source}: spec file is not UTF-8 text") from None
    return parse_spec(text, source=str(source), base_dir=source.resolve().parent)


def parse_spec(text: str, source: str = "<spec>", base_dir: Path | None = None) -> Spec:
    from sftlab.spec.grid import sweep_problems

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(source, [f"{where}invalid YAML: {problem}"]) from None
    if not isinstance(data, dict):
        raise SpecError(source, [f"(top level): expected a mapping of settings, got {type(data).__name__}"])
    base_dir = base_dir or Path.cwd()
    for field in ("base_models", "datasets", "benchmarks"):
        items = data.get(field)
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict) and isinstance(item.get("uri"), str):
                item["uri"] = _resolve_local(item["uri"], base_dir)
    problems = _check_sources(data)
    try:
        spec: Spec | None = Spec.model_validate(data)
    except ValidationError as exc:
        spec = None
        problems = describe_errors(exc) + problems
    problems += sweep_problems(data, spec)
    if spec is not None:
        problems += _check_templates(spec)
    if problems:
        raise SpecError(source, problems)
    assert spec is not None
    return spec
