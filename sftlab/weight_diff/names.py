"""Where a tensor sits in a transformer: its block, module family and depth third."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MODULE_TYPES = (*PROJECTIONS, "norm", "embed", "lm_head", "other")
DEPTHS = ("bottom", "middle", "top")

_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.")  # Llama/Qwen/Mistral, GPT-2, others
_HEAD = re.compile(r"(?:^|\.)(?:lm_head|embed_out)\.weight$")
_EMBED = re.compile(r"(?:^|\.)(?:embed_tokens|wte|word_embeddings|embed_in)\.weight$")


def layer_index(name: str) -> int | None:
    """The transformer block a tensor belongs to (``model.layers.<i>.``), None outside blocks."""
    found = _LAYER.search(name)
    return int(found.group(1)) if found else None


def module_type(name: str) -> str:
    """The module family a tensor belongs to, so changes can be compared across layers."""
    parts = name.split(".")
    if _HEAD.search(name):
        return "lm_head"
    if "embed" in name:
        return "embed"
    for kind in PROJECTIONS:
        if kind in parts:
            return kind
    return "norm" if any("norm" in p or p.startswith("ln") for p in parts) else "other"


def depth_bucket(layer: int, num_layers: int) -> str:
    """Bottom, middle or top third of the stack (sizes as equal as possible)."""
    return DEPTHS[min(2, layer * 3 // num_layers)]


def natural_key(name: str) -> list[tuple[int, Any]]:
    """Sort ``layers.10`` after ``layers.9``."""
    return [(0, int(p)) if p.isdigit() else (1, p) for p in name.split(".")]


def tied_partner(name: str, present: Iterable[str]) -> str | None:
    """The tensor a tied output head shares with the input embedding (or vice versa), if present."""
    wanted = _EMBED if _HEAD.search(name) else _HEAD if _EMBED.search(name) else None
    if wanted is None:
        return None
    found = [n for n in present if wanted.search(n)]
    return found[0] if len(found) == 1 else None
