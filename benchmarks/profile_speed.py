"""Profile stage speed: batched perplexity vs a bare forward loop, and near-duplicate throughput.

    python benchmarks/profile_speed.py                     # defaults: tiny llama, 512 rows; 200k dup rows
    python benchmarks/profile_speed.py --hidden 256 --rows 1024 --dup-rows 200000

Perplexity: the stage's ``response_nll`` (batching, scoring, bookkeeping included) against a bare
``model(**batch)`` loop over exactly the same batches (``make_batches``), interleaved and
repeated in one process; the best of the repeats is compared (target: stage >= 0.9x bare).
Near duplicates: the stage's streaming path (word hashing + datasketch MinHash + LSH band keys)
over synthetic rows with planted near copies. Prints details, then one headline line.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import numpy as np


def build_model(hidden: int, layers: int) -> object:
    from sftlab.sources import models
    from sftlab.sources.tiny import build_tiny
    from sftlab.spec.tiny_uri import TinySpec

    folder = build_tiny(Path(tempfile.mkdtemp()) / "model", TinySpec(hidden=hidden, layers=layers, pretrain_steps=0))
    return models.load_causal_lm(str(folder))


def perplexity_speed(args: argparse.Namespace) -> float:
    import torch

    from sftlab.profiling.perplexity import Tokenized, make_batches, response_nll

    torch.manual_seed(0)
    model = build_model(args.hidden, args.layers)
    vocab = model.config.vocab_size
    rng = random.Random(0)
    items = []
    for _ in range(args.rows):
        length = rng.randint(24, args.max_length)
        items.append(Tokenized([rng.randrange(vocab) for _ in range(length)], rng.randint(4, length // 2)))
    batches = make_batches(items, args.batch_size, args.max_length)
    tokens = sum(sum(b.lengths) for b in batches)
    device = next(model.parameters()).device

    def bare() -> None:
        with torch.inference_mode():
            for batch in batches:
                model(**batch.model_inputs(device))

    def stage() -> None:
        response_nll(model, items, args.batch_size, args.max_length)

    stage(), bare()  # warm-up
    best = {"bare": float("inf"), "stage": float("inf")}
    for _ in range(args.repeats):
        for name, fn in (("bare", bare), ("stage", stage)):
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    rates = {k: tokens / v for k, v in best.items()}
    print(
        f"perplexity: {args.rows} rows, {len(batches)} batches of <= {args.batch_size}, {tokens} tokens, "
        f"device {device}"
    )
    print(f"  bare model(**batch): {rates['bare']:,.0f} tok/s   stage response_nll: {rates['stage']:,.0f} tok/s")
    return rates["stage"] / rates["bare"]


def near_dup_speed(args: argparse.Namespace) -> tuple[float, float, float]:
    from sftlab.profiling.diversity import DuplicateFinder
    from sftlab.profiling.ngrams import HashedChunk
    from sftlab.stages.profile import CHUNK_ROWS

    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(20_000)]
    originals: list[list[str]] = []
    texts = []
    for _ in range(args.dup_rows):
        if originals and rng.random() < 0.1:  # planted near copy: one word of ~40 changed
            words = list(rng.choice(originals))
            words[rng.randrange(len(words))] = "changed"
        else:
            words = rng.choices(vocab, k=rng.randint(30, 50))
            if len(originals) < 5000:
                originals.append(words)
        texts.append(" ".join(words))
    finder = DuplicateFinder(threshold=0.8, num_perm=128, shingle=3)
    start = time.perf_counter()
    for i in range(0, len(texts), CHUNK_ROWS):
        chunk = texts[i : i + CHUNK_ROWS]
        finder.add(chunk, HashedChunk.of(chunk))
    exact, near, _ = finder.rates()
    elapsed = time.perf_counter() - start
    print(
        f"near-dup: {len(texts)} rows (~10% planted near copies) in {elapsed:.1f} s; exact {exact:.3f}, near {near:.3f}"
    )
    return len(texts) / elapsed, near, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dup-rows", type=int, default=200_000)
    args = parser.parse_args()
    np.random.seed(0)
    ratio = perplexity_speed(args)
    rows_per_s, near, _ = near_dup_speed(args)
    print(
        f"HEADLINE profile_speed: perplexity stage/bare = {ratio:.2f}x (target >= 0.9x); "
        f"near-dup {rows_per_s:,.0f} rows/s on {args.dup_rows:,} rows (near-dup rate {near:.3f})"
    )


if __name__ == "__main__":
    main()
