"""Token lengths under the base tokenizer, and how well that tokenizer fits the text.

Lengths are kept as compact int32 arrays (4 bytes per row), never as token lists. Tokenizer fit:
characters per token (higher = the vocabulary covers the text better), the unknown-token rate
(``unk_token_id``) and the byte-fallback rate: tokens that stand for raw bytes rather than text —
SentencePiece's ``<0xNN>`` tokens, or for byte-level BPE a token whose bytes are not valid UTF-8
on their own (a split multi-byte character).
"""

from __future__ import annotations

import re
from array import array
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import numpy as np

_BYTE_TOKEN = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte -> printable-character map, inverted (the alphabet of byte-level BPE vocabularies)."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def is_byte_level(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and '"ByteLevel"' in backend.to_str()


def byte_fallback_mask(tokenizer: Any) -> np.ndarray:
    """True for each vocabulary id that is a byte-fallback token (see module docstring)."""
    size = max(len(tokenizer), max(tokenizer.get_vocab().values()) + 1)
    mask = np.zeros(size, dtype=bool)
    alphabet = _byte_level_alphabet() if is_byte_level(tokenizer) else None
    special = set(tokenizer.all_special_ids)
    for token, idx in tokenizer.get_vocab().items():
        if idx in special:
            continue
        if _BYTE_TOKEN.match(token):
            mask[idx] = True
        elif alphabet is not None and all(c in alphabet for c in token):
            try:
                bytes(alphabet[c] for c in token).decode("utf-8")
            except UnicodeDecodeError:
                mask[idx] = True
    return mask


@dataclass
class LengthStats:
    """Per-row prompt and full token lengths plus tokenizer-fit counts, accumulated per chunk."""

    unk_id: int | None
    fallback: np.ndarray
    prompt: array = field(default_factory=lambda: array("i"))
    full: array = field(default_factory=lambda: array("i"))
    chars: int = 0
    unk: int = 0
    byte_fallback: int = 0

    @classmethod
    def for_tokenizer(cls, tokenizer: Any) -> LengthStats:
        return cls(unk_id=tokenizer.unk_token_id, fallback=byte_fallback_mask(tokenizer))

    def add(self, full_texts: list[str], prompt_ids: list[list[int]], full_ids: list[list[int]]) -> None:
        # Same prompt length as the perplexity code: at least one response token is scored.
        self.prompt.extend(min(len(p), len(f) - 1) for p, f in zip(prompt_ids, full_ids, strict=True))
        self.full.extend(len(f) for f in full_ids)
        self.chars += sum(len(t) for t in full_texts)
        flat = np.fromiter(chain.from_iterable(full_ids), dtype=np.int64)
        if self.unk_id is not None:
            self.unk += int((flat == self.unk_id).sum())
        self.byte_fallback += int(self.fallback[flat[flat < len(self.fallback)]].sum())

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(prompt lengths, response lengths) as numpy arrays."""
        prompt = np.frombuffer(self.prompt, dtype=np.int32)
        return prompt, np.frombuffer(self.full, dtype=np.int32) - prompt

    def fit(self) -> dict[str, float]:
        tokens = max(1, sum(self.full))
        return {
            "chars_per_token": self.chars / tokens,
            "unk_rate": self.unk / tokens,
            "byte_fallback_rate": self.byte_fallback / tokens,
        }


def percentiles(values: np.ndarray, qs: tuple[int, ...] = (50, 90, 99)) -> dict[str, float]:
    if not len(values):
        return {f"p{q}": 0.0 for q in qs}
    return {f"p{q}": float(np.percentile(values, q)) for q in qs}


def histogram(values: np.ndarray, bins: int) -> dict[str, list[float]]:
    counts, edges = np.histogram(values, bins=bins) if len(values) else (np.zeros(0), np.zeros(0))
    return {"counts": counts.astype(int).tolist(), "edges": [round(float(e), 4) for e in edges]}
