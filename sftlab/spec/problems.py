"""A spec's problems as ``field.path: expected …, got …`` lines, all reported at once."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from sftlab.errors import SftlabError
from sftlab.spec.schema import BENCHMARK_KINDS, Spec, check_template
from sftlab.spec.uris import classify_uri


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not re.fullmatch(r"[\w.-]+", str(part)):
            out += f"[{str(part)!r}]"  # odd keys (spaces, newlines) stay on one readable line
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _noise(part: Any, before: Any) -> bool:
    """Loc parts that name pydantic's machinery, not a field: validator functions, and the kind
    of a list's benchmark (its class is chosen by ``kind``; the path reads ``benchmarks[0].pass_k``)."""
    if not isinstance(part, str):
        return False
    return part.startswith("function-") or (isinstance(before, int) and part in BENCHMARK_KINDS)


def describe_errors(exc: ValidationError, prefix: str = "") -> list[str]:
    """pydantic errors -> ``field.path: expected ..., got ...`` lines."""
    lines = []
    for err in exc.errors():
        loc = tuple(p for i, p in enumerate(err["loc"]) if not _noise(p, err["loc"][i - 1] if i else None))
        path = _loc(loc)
        path = f"{prefix}{'.' if prefix and not path.startswith('[') else ''}{path}" if prefix else path
        kind, msg = err["type"], err["msg"]
        if kind == "union_tag_invalid":  # an unknown kind: read as the literal it is
            field = err["ctx"]["discriminator"].strip("'")
            *others, last = err["ctx"]["expected_tags"].split(", ")
            expected = f"{', '.join(others)} or {last}" if others else last
            got = err["input"].get(field) if isinstance(err["input"], dict) else err["input"]
            lines.append(f"{path}.{field}: expected {expected}, got {got!r}")
        elif kind == "extra_forbidden":
            lines.append(f"{path}: unknown key")
        elif kind == "missing":
            lines.append(f"{path}: required field is missing")
        else:
            msg = msg.removeprefix("Value error, ").replace("Input should be", "expected")
            msg = msg[0].lower() + msg[1:]
            if kind == "value_error" and isinstance(err["input"], dict):
                # A check across a group's fields: its message names them; the group's whole input is noise.
                lines.append(
                    msg if path == "(top level)" and re.match(r"[a-z_]+(\.[a-z_]+)*: ", msg) else f"{path}: {msg}"
                )
            else:
                lines.append(f"{path}: {msg}, got {err['input']!r}")
    return lines


def _check_sources(data: dict[str, Any]) -> list[str]:
    """URI and name checks on the raw mapping, so they run even when other fields are invalid."""
    problems = []
    for field in ("base_models", "datasets", "benchmarks"):
        items = data.get(field)
        if not isinstance(items, list):
            continue
        for i, item in enumerate(items):
            uri = item.get("uri") if isinstance(item, dict) else None
            if not isinstance(uri, str) or not uri:
                continue
            problem = _uri_problem(uri, model=field == "base_models")
            if problem:
                problems.append(f"{field}[{i}].uri: {problem}")
        names = [item.get("name") for item in items if isinstance(item, dict)]
        for dup in sorted({n for n in names if n is not None and names.count(n) > 1}, key=str):
            problems.append(f"{field}: name {dup!r} is used more than once")
    return problems


def _uri_problem(uri: str, model: bool) -> str | None:
    try:
        kind = classify_uri(uri)
    except SftlabError as exc:
        return str(exc)
    if kind == "local" and not Path(uri.removeprefix("file://")).exists():
        return f"no such file or folder, got {uri!r}"
    if kind == "tiny" and not model:
        return f"tiny: URIs name models, not data, got {uri!r}"
    if kind == "tiny":
        from sftlab.spec.tiny_uri import parse_tiny_uri

        try:
            parse_tiny_uri(uri)
        except SftlabError as exc:
            return str(exc)
    return None


def _check_templates(spec: Spec) -> list[str]:
    problems = []
    for i, ds in enumerate(spec.datasets):
        if ds.format == "instruction" and (ds.template or spec.prompt_template) is None:
            problems.append(f"datasets[{i}].template: instruction data needs a template (or set prompt_template)")
        elif ds.template is not None:
            try:
                check_template(ds.template)
            except ValueError as exc:
                problems.append(f"datasets[{i}].template: {exc}, got {ds.template!r}")
    return problems
