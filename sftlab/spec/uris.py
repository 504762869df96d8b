"""What kind of source a URI names (a local path, ``s3://``, ``tiny:`` or a hub id).

The spec checks URIs by kind before anything runs; ``sftlab.sources`` turns each kind into local files.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from sftlab.errors import SftlabError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


_FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".txt", ".yaml", ".yml", ".safetensors", ".gguf")


def classify_uri(uri: str) -> Literal["local", "s3", "tiny", "hub"]:
    """What kind of source a URI names; an unsupported scheme is a one-line error.

    Without a scheme, a string is a hub id (``org/name``) unless it looks like a path: it starts
    with ``/ . ~``, has more than one ``/``, ends in a data/model file suffix, or exists.
    """
    scheme = urlsplit(uri).scheme
    if scheme == "s3":
        return "s3"
    if scheme == "tiny":
        return "tiny"
    if scheme == "file":
        return "local"
    if scheme and len(scheme) > 1:
        raise SftlabError(
            f"unsupported URI scheme '{scheme}:' in {uri!r} (expected a local path, s3://, tiny: or a hub id)"
        )
    looks_like_path = uri.startswith(("/", ".", "~")) or uri.lower().endswith(_FILE_SUFFIXES)
    if looks_like_path or not _HUB_ID.match(uri) or Path(uri).exists():
        return "local"
    return "hub"
