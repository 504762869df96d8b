"""A spec given by where it is: a file path, an ``s3://`` URI, or the YAML text itself (a KFP parameter)."""

from __future__ import annotations

from pathlib import Path

from sftlab.spec.loading import load_spec, parse_spec
from sftlab.spec.schema import Spec, StorageConfig


def load_spec_source(source: str, storage: StorageConfig | None = None) -> Spec:
    """A spec given as a file path, an ``s3://`` URI, or the YAML text itself (KFP parameter)."""
    if source.startswith("s3://"):
        from sftlab.sources.uris import read_text

        return parse_spec(read_text(source, storage or StorageConfig()), source=source)
    if "\n" not in source and Path(source).exists():
        return load_spec(source)
    return parse_spec(source, source="<spec parameter>")
