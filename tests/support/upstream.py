"""The upstream CRDs in ``tests/upstream/`` as validators that refuse what the API server refuses.

A CRD's ``openAPIV3Schema`` is a structural schema the API server applies with Kubernetes rules on
top of JSON Schema: objects with ``properties`` reject unknown fields under
``fieldValidation=Strict`` (the default ``Warn`` drops them with a warning), except below
``x-kubernetes-preserve-unknown-fields``; ``x-kubernetes-int-or-string`` takes either;
``nullable`` admits null; ``metadata`` is a full ObjectMeta, checked by the server itself. This
module turns those rules into a Draft 7 schema for ``jsonschema`` (Kubernetes' CEL
``x-kubernetes-validations`` are not evaluated: the ones in these CRDs guard updates, or fields sftlab
does not set).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

UPSTREAM = Path(__file__).resolve().parents[1] / "upstream"
# Oldest and newest supported release of each controller, as folders of tests/upstream/.
RELEASES = {
    "serving.kserve.io": ("kserve-v0.16.0", "kserve-v0.20.0"),
    "trainer.kubeflow.org": ("trainer-v2.2.0",),
    "kubeflow.org": ("training-operator-v1.9.4",),
}

_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
OBJECT_META: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "maxLength": 253, "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"},
        "generateName": {"type": "string"},
        "namespace": {"type": "string"},
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
        "finalizers": {"type": "array", "items": {"type": "string"}},
        "ownerReferences": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["apiVersion", "kind", "name", "uid"],
                "properties": {
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "name": {"type": "string"},
                    "uid": {"type": "string"},
                    "controller": {"type": "boolean"},
                    "blockOwnerDeletion": {"type": "boolean"},
                },
            },
        },
    },
}


@dataclass(frozen=True)
class Problem:
    """One refusal: ``unknown`` ones are what Strict field validation rejects (HTTP 400), the rest
    are schema violations (HTTP 422 Invalid)."""

    field: str
    message: str
    unknown: bool
    release: str


def _kubernetes_rules(node: Any) -> Any:
    if isinstance(node, list):
        return [_kubernetes_rules(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {k: _kubernetes_rules(v) for k, v in node.items()}
    if node.pop("x-kubernetes-int-or-string", False):
        node.pop("type", None)
        node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.pop("nullable", False) and "type" in node:
        node["type"] = [node["type"], "null"]
    preserve = node.pop("x-kubernetes-preserve-unknown-fields", False)
    if node.get("type") in ("object", ["object", "null"]) and "properties" in node and not preserve:
        node.setdefault("additionalProperties", False)
    if node.pop("x-kubernetes-embedded-resource", False):
        props = node.setdefault("properties", {})
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        props["metadata"] = {**OBJECT_META, "additionalProperties": True}
    return node


def crd_path(release: str, group: str, plural: str) -> Path:
    return UPSTREAM / release / f"{group}_{plural}.yaml"


@cache
def validator(release: str, group: str, plural: str, version: str) -> jsonschema.Draft7Validator:
    crd = yaml.safe_load(crd_path(release, group, plural).read_text())
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema = _kubernetes_rules(copy.deepcopy(served["schema"]["openAPIV3Schema"]))
    schema["properties"]["metadata"] = OBJECT_META
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
    return jsonschema.Draft7Validator(schema)


def problems(manifest: dict[str, Any], group: str, plural: str, version: str) -> list[Problem]:
    """Everything every supported release of the CRD refuses in ``manifest``."""
    found = []
    for release in RELEASES[group]:
        for error in validator(release, group, plural, version).iter_errors(manifest):
            path = ".".join(str(p) for p in error.absolute_path)
            if error.validator == "additionalProperties" and error.validator_value is False:
                known = set(error.schema.get("properties", {}))
                for extra in sorted(set(error.instance) - known):
                    field = f"{path}.{extra}" if path else extra
                    found.append(Problem(field, f'unknown field "{field}"', True, release))
            else:
                found.append(Problem(path or "<root>", error.message, False, release))
    return found


def prune_unknown(manifest: dict[str, Any], unknown: list[Problem]) -> dict[str, Any]:
    """The object as the API server stores it under ``fieldValidation=Warn``: unknown fields dropped."""
    pruned = copy.deepcopy(manifest)
    for problem in unknown:
        *parents, last = problem.field.split(".")
        node: Any = pruned
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node.pop(last, None)
    return pruned


def assert_valid(manifest: dict[str, Any], group: str, plural: str, version: str) -> None:
    found = problems(manifest, group, plural, version)
    assert not found, "\n".join(f"{p.release}: {p.field}: {p.message}" for p in found)
