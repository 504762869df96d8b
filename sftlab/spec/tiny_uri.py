"""The ``tiny:`` URI grammar: which tiny model a URI names, validated with the spec.

``sftlab.sources.tiny`` builds the model; the spec only needs to know the URI is well formed.
"""

from __future__ import annotations

import hashlib
import json
from urllib.parse import parse_qsl, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sftlab.errors import SftlabError

CORPORA = ("none", "math", "code", "chat", "mixed")


ARCHS = ("llama", "qwen2")


class TinySpec(BaseModel):
    """Parameters of a tiny model; every field is a query parameter of a ``tiny:`` URI."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    arch: str = Field("llama", pattern="^(llama|qwen2)$")
    hidden: int = Field(64, ge=16, le=1024)
    layers: int = Field(4, ge=1, le=32)
    heads: int = Field(4, ge=1, le=32)
    vocab: int = Field(1024, ge=300, le=32000)
    seed: int = 0
    pretrain: str = Field("none", pattern="^(none|math|code|chat|mixed)$")
    pretrain_steps: int = Field(150, ge=0, le=5000)

    @property
    def key(self) -> str:
        blob = json.dumps(self.model_dump(), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def parse_tiny_uri(uri: str) -> TinySpec:
    """``tiny:llama?hidden=64&seed=1`` -> TinySpec; a one-line error names the bad parameter."""
    parts = urlsplit(uri)
    if parts.scheme != "tiny":
        raise SftlabError(f"{uri}: expected a tiny: URI such as tiny:llama?hidden=64&layers=4")
    arch = (parts.netloc or parts.path).strip("/") or "llama"
    params: dict[str, str] = {"arch": arch, **dict(parse_qsl(parts.query))}
    try:
        return TinySpec.model_validate(params)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise SftlabError(f"{uri}: parameter {field}: {first['msg']}") from None
