"""Optional spectral view of ΔW: top singular values and effective rank on a seeded sample of matrices."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from sftlab.spec.schema import WeightsConfig
from sftlab.weight_diff.checkpoint import Checkpoint, TunedRows
from sftlab.weight_diff.results import Spectrum, TensorDiff, WeightDiff

if TYPE_CHECKING:
    import torch

    from sftlab.weight_diff.low_rank import LowRank

# ΔW with a side at most this long gets an exact SVD (cheap); larger ones a randomized SVD
# (Halko et al. 2011) of rank top_k + SVD_OVERSAMPLE with SVD_NITER power iterations.
EXACT_SVD_MAX_DIM = 512
SVD_OVERSAMPLE = 8
SVD_NITER = 4


def effective_rank(singular_values: torch.Tensor) -> float:
    """exp(entropy of σ/Σσ) (Roy & Vetterli 2007): 1 for rank one, n for n equal values."""
    sigma = singular_values.double().clamp_min(0)
    total = float(sigma.sum())
    if total == 0:
        return 0.0
    p = sigma[sigma > 0] / total
    return math.exp(-float((p * p.log()).sum()))


def with_spectra(
    diffs: list[TensorDiff], config: WeightsConfig, spectrum_of: Callable[[TensorDiff], Spectrum]
) -> WeightDiff:
    """Add spectra to a seeded sample of the changed 2-D matrices (all of them if there are few)."""
    if not config.spectral:
        return WeightDiff(diffs)
    candidates = [t.name for t in diffs if len(t.shape) == 2 and t.delta_norm > 0]
    chosen = set(random.Random(config.seed).sample(candidates, min(config.spectral_max_matrices, len(candidates))))
    return WeightDiff([replace(t, spectrum=spectrum_of(t)) if t.name in chosen else t for t in diffs])


def dense_spectrum(
    tensor: TensorDiff, base: Checkpoint, base_name: str, tuned_rows: TunedRows, config: WeightsConfig
) -> Spectrum:
    """Spectrum of a materialised float32 ΔW: the one place a whole matrix (two, briefly) is in memory."""
    import torch

    base_matrix = base.read_all(base_name, torch.float32)
    delta = tuned_rows(slice(None), base_matrix).to(torch.float32) - base_matrix  # reads may be views: no in-place
    del base_matrix
    return matrix_spectrum(delta, config.spectral_top_k, config.seed, tensor.delta_norm)


def matrix_spectrum(delta: torch.Tensor, top_k: int, seed: int, frobenius: float | None = None) -> Spectrum:
    """Top-k singular values and effective rank of a 2-D ΔW.

    Exact (``svdvals``) when a side is at most EXACT_SVD_MAX_DIM long; otherwise a seeded
    randomized SVD (``torch.svd_lowrank``), whose cost grows with top_k, not with the rank.
    """
    import torch

    rows, cols = delta.shape
    if min(rows, cols) <= EXACT_SVD_MAX_DIM:
        return _spectrum(torch.linalg.svdvals(delta.double()), top_k, frobenius, exact=True)
    rank = min(top_k + SVD_OVERSAMPLE, rows, cols)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _, sigma, _ = torch.svd_lowrank(delta, q=rank, niter=SVD_NITER)
    return _spectrum(sigma, top_k, frobenius, exact=rank == min(rows, cols))


def low_rank_spectrum(low_rank: LowRank, top_k: int, frobenius: float) -> Spectrum:
    """Exact spectrum of B·A·scale from an r×r core: B = Q_b R_b, Aᵀ = Q_a R_a ⇒ σ(BA) = σ(R_b R_aᵀ)."""
    import torch

    r_b = torch.linalg.qr(low_rank.b).R
    r_a = torch.linalg.qr(low_rank.a.T).R
    return _spectrum(torch.linalg.svdvals(r_b @ r_a.T) * abs(low_rank.scale), top_k, frobenius, exact=True)


def _spectrum(sigma: torch.Tensor, top_k: int, frobenius: float | None, exact: bool) -> Spectrum:
    sigma = sigma.double().sort(descending=True).values
    top = sigma[:top_k]
    total_sq = frobenius**2 if frobenius is not None else float((sigma * sigma).sum())
    energy = min(1.0, float((top * top).sum()) / total_sq) if total_sq > 0 else 0.0
    return Spectrum(tuple(float(x) for x in top), effective_rank(sigma), energy, exact)
