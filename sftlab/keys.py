"""Cache and trial keys: stable short hashes of JSON-able settings.

Its own module so that anything keying a cache (downloads, trials, profiles) needs no grid.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def digest(payload: Any, length: int = 16) -> str:
    """Stable short hash of JSON-able data (sorted keys, no whitespace)."""
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]
