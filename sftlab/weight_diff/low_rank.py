"""A LoRA update as its factors: ΔW = B·A·scale, materialised a block of rows at a time.

Its own module so that measuring (``lora``) and spectra (``spectra``) both use it without a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LowRank:
    """ΔW = B·A·scale of one adapted module, computed for a block of rows at a time."""

    a: torch.Tensor  # (r, in) — or (r, num_embeddings) for embeddings
    b: torch.Tensor  # (out, r)
    scale: float
    transposed: bool  # embeddings and fan_in_fan_out layers store ΔW transposed

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.a.shape[1], self.b.shape[0]) if self.transposed else (self.b.shape[0], self.a.shape[1])

    def rows(self, rows: slice) -> torch.Tensor:
        """ΔW rows ``rows`` (float64, as the factors are read)."""
        if self.transposed:
            return (self.a[:, rows].T @ self.b.T) * self.scale
        return (self.b[rows] @ self.a) * self.scale
