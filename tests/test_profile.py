"""Profiling measures on crafted inputs with hand-checked values, and the profile stage end to end."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from sftlab.profiling import embeddings, perplexity
from sftlab.profiling.diversity import DistinctCounter, DistinctN, DuplicateFinder
from sftlab.profiling.lengths import LengthStats, byte_fallback_mask
from sftlab.profiling.ngrams import HashedChunk
from sftlab.profiling.similarity import BenchmarkOverlap
from sftlab.profiling.stream import Reservoir, RowProblems, iter_examples
from sftlab.spec.job import context_for
from sftlab.spec.schema import DatasetSpec, ProfileConfig
from sftlab.stages.common import run_stage
from sftlab.stages.profile import profile_key
from sftlab.stats import DEFAULT_CONFIDENCE as LEVEL
from sftlab.tracking.runs import Tracker
from tests.support.helpers import EXAMPLES, REPO, first_trial, quickstart_spec

WORDS40 = " ".join(f"w{i}" for i in range(40))


def test_distinct_n_on_a_hand_checked_corpus() -> None:
    # unigrams a b a b a c: 3/6; bigrams ab ba ab ac: 3/4; trigrams aba bab: 2/2 (none cross rows)
    counter = DistinctN(max_n=3)
    counter.add(HashedChunk.of(["a b A b", "a   c"]))
    assert counter.values() == {1: 0.5, 2: 0.75, 3: 1.0}


def test_distinct_sketch_is_exact_below_k_and_close_above() -> None:
    rng = np.random.default_rng(0)
    exact = DistinctCounter(k=1 << 12)
    values = rng.integers(0, 2000, size=10_000).astype(np.uint64)
    exact.add(values[:5000])
    exact.add(values[5000:])
    assert exact.distinct() == len(np.unique(values))
    sketch = DistinctCounter(k=1 << 10)
    for _ in range(20):  # 200k distinct random hashes, each seen twice
        batch = rng.integers(
            0, np.iinfo(np.uint64).max, size=10_000, dtype=np.uint64, endpoint=True
        )  # hashes span 64 bits
        sketch.add(batch)
        sketch.add(batch)
    assert sketch.total == 400_000 and sketch.distinct() == pytest.approx(200_000, rel=0.1)


def test_exact_and_near_duplicates() -> None:
    near = WORDS40.replace("w39", "changed")  # 37 of 39 distinct 3-word shingles shared: Jaccard 0.95
    far = " ".join(f"w{i}" for i in range(20)) + " " + " ".join(f"x{i}" for i in range(20))  # Jaccard ~0.3
    texts = [WORDS40, "the cat sat on the mat", WORDS40, near, far, "short"]
    finder = DuplicateFinder(threshold=0.8, num_perm=128, shingle=3)
    finder.add(texts, HashedChunk.of(texts))
    exact, near_rate, exact_rows = finder.rates()
    assert exact_rows == [2] and exact == pytest.approx(1 / 6)
    assert near_rate == pytest.approx(2 / 6)  # rows 2 (exact) and 3 (near); row 4 is not similar enough

    # The signatures are datasketch's own MinHash over the same shingle hashes.
    from datasketch import MinHash

    chunk = HashedChunk.of([near])
    hashes, _ = chunk.ngrams(3)
    ref = MinHash(num_perm=128, seed=1, hashfunc=int)
    ref.update_batch((hashes & np.uint64(0xFFFFFFFF)).tolist())
    assert np.array_equal(finder.signatures(chunk)[0], ref.hashvalues)


def test_ngram_overlap_and_planted_contamination() -> None:
    thirteen = "one two three four five six seven eight nine ten eleven twelve thirteen"
    items = [
        {"question": f"{thirteen} fourteen", "answer": "#### 1"},  # planted in training row 1
        {"question": "the cat sat", "answer": "on the mat"},  # clean: too short, and not in training
        {"question": " ".join(f"q{i}" for i in range(14)), "answer": "#### 2"},  # clean, long enough
    ]
    bench = BenchmarkOverlap("b", items, (1, 2, 3), 13)
    training = ["zzz", f"x {thirteen.upper()} y", "the cat"]
    bench.add(HashedChunk.of(training), first_row=0)
    # Distinct benchmark unigrams: item 0 has 16, item 1 five (the cat sat on mat), item 2 adds 15
    # ("####" is shared with item 0): 36. Found in training: one..thirteen, the, cat = 15.
    overlaps = bench.overlaps()
    assert overlaps[1] == pytest.approx(15 / 36)
    item0 = f"{thirteen} fourteen #### 1".split()
    item1 = ["the", "cat", "sat", "on", "the", "mat"]
    item2 = [f"q{i}" for i in range(14)] + ["####", "2"]
    bigrams = {tuple(w[i : i + 2]) for w in (item0, item1, item2) for i in range(len(w) - 1)}
    assert overlaps[2] == pytest.approx((12 + 1) / len(bigrams))  # 12 inside the 13-gram, plus "the cat"
    found = bench.contaminated()
    assert [(c.item, c.train_row, c.ngram) for c in found] == [(0, 1, thirteen)]
    assert bench.short_items == 1


def test_tokenizer_fit_on_hand_checked_cases(tiny_model: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    # Byte-level BPE trained on ASCII: "é" (2 bytes) and "😀" (4 bytes) are 6 lone byte tokens.
    bpe = AutoTokenizer.from_pretrained(tiny_model)
    stats = LengthStats.for_tokenizer(bpe)
    ids = bpe("é😀", add_special_tokens=False)["input_ids"]
    stats.add(["é😀"], [ids[:1]], [ids])
    assert len(ids) == 6 and stats.fit() == {"chars_per_token": 2 / 6, "unk_rate": 0.0, "byte_fallback_rate": 1.0}

    # SentencePiece-style vocabulary: <0xNN> tokens are byte fallback, unk_token_id is unknown.
    vocab = {"[UNK]": 0, "hello": 1, "world": 2, "<0xC3>": 3}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    word = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]")
    assert byte_fallback_mask(word).tolist() == [False, False, False, True]
    stats = LengthStats.for_tokenizer(word)
    text = "hello there world"
    ids = word(text, add_special_tokens=False)["input_ids"]
    stats.add([text], [ids[:1]], [ids])
    assert ids == [1, 0, 2]
    assert stats.fit() == pytest.approx({"chars_per_token": 17 / 3, "unk_rate": 1 / 3, "byte_fallback_rate": 0.0})


def test_perplexity_bootstrap_interval() -> None:
    constant = perplexity.summarize([(2.0, 2)] * 50, resamples=200, seed=0, confidence=LEVEL)  # every row ppl e^1
    assert constant.token_weighted == pytest.approx(np.e) and constant.ci_token_weighted == pytest.approx((np.e, np.e))
    rng = np.random.default_rng(0)
    rows = [(float(rng.uniform(1, 3) * n), int(n)) for n in rng.integers(5, 50, size=400)]
    small = perplexity.summarize(rows[:50], resamples=500, seed=0, confidence=LEVEL)
    large = perplexity.summarize(rows, resamples=500, seed=0, confidence=LEVEL)
    for s in (small, large):
        assert s.ci_token_weighted[0] < s.token_weighted < s.ci_token_weighted[1]
        assert s.ci_mean_example[0] < s.mean_example < s.ci_mean_example[1]

    def width(s: perplexity.PerplexitySummary) -> float:
        return s.ci_token_weighted[1] - s.ci_token_weighted[0]

    assert width(large) < 0.7 * width(small)  # ~1/sqrt(n): 8x the rows, ~2.8x narrower
    assert perplexity.summarize([(1.0, 0)], 10, 0, LEVEL).rows == 0  # nothing scored: NaN, not a crash


def test_embedding_measures_on_hand_made_vectors() -> None:
    eye = np.eye(3, dtype=np.float32)
    assert embeddings.mean_pairwise_distance(eye) == pytest.approx(1.0)
    assert embeddings.mean_pairwise_distance(np.repeat(eye[:1], 4, 0)) == pytest.approx(0.0)
    sim = embeddings.benchmark_similarity(eye[:2], eye[:1])
    assert sim == pytest.approx({"embed_centroid_cos": np.sqrt(0.5), "embed_max_sim": 1.0})
    assert embeddings.resolve_model(None)[0] is None
    assert "not installed" in (embeddings.resolve_model("package:no-such-package-xyz")[1] or "")


def test_bad_rows_are_reported_with_ids_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    lines = [
        '{"instruction": "a", "response": "b"}',
        "{not json",
        "[1, 2]",
        "",
        '{"instruction": "a", "response": "   "}',
        '{"instruction": "c", "response": "d"}',
    ]
    path.write_text("\n".join(lines))
    problems = RowProblems()
    ctx = context_for(quickstart_spec(tmp_path))
    rows = list(iter_examples(DatasetSpec(name="d", uri=str(path)), "Q: {instruction} A: {response}", ctx, problems))
    assert [i for i, _ in rows] == [0, 4]  # blank lines are not rows, as in data.load_examples
    assert [i for i, _ in problems.listed] == [1, 2, 3]
    assert problems.count == 3 and problems.empty_response == 1


def test_reservoir_is_seeded_and_uniform() -> None:
    def sample(seed: int) -> list[int]:
        r: Reservoir[int] = Reservoir(10, seed)
        for i in range(1000):
            r.add(i)
        return r.items

    assert sample(1) == sample(1) != sample(2)
    counts = np.zeros(1000)
    for seed in range(300):
        counts[sample(seed)] += 1
    assert counts[:500].sum() == pytest.approx(counts[500:].sum(), rel=0.15)  # early rows not favoured


def test_profile_stage_end_to_end(tmp_path: Path) -> None:
    """The shipped chat data plus planted rows: metrics, JSON artifact and card in MLflow."""
    gsm = [json.loads(line) for line in (EXAMPLES / "data" / "gsm8k_tiny.jsonl").read_text().splitlines()]
    lines = (EXAMPLES / "data" / "chat.jsonl").read_text().splitlines()
    planted = {
        "messages": [
            {"role": "user", "content": "A story?"},
            {"role": "assistant", "content": f"Sure. {gsm[3]['question']} Ask me."},
        ]
    }
    bad = [
        "{broken",
        json.dumps({"messages": []}),
        json.dumps({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": " "}]}),
    ]
    rows = [*lines, json.dumps(planted), lines[0], *bad]
    data_file = tmp_path / "chat_planted.jsonl"
    data_file.write_text("\n".join(rows) + "\n")

    spec = quickstart_spec(tmp_path)
    spec.datasets = [DatasetSpec(name="chat", uri=str(data_file), format="messages")]
    spec.profile = ProfileConfig(max_rows=16, batch_size=8, embedding_rows=32, bootstrap_resamples=200)
    trial = first_trial(spec, dataset="chat", **{"training.method": "full"})
    ctx = context_for(spec)
    tracker = Tracker.for_context(ctx)
    trial_run = tracker.create_trial_run(trial, None)
    from sftlab.spec.job import TrialJob

    job = TrialJob(trial=trial, context=ctx.model_copy(update={"trial_run_id": trial_run}))
    m = run_stage("profile", job.to_json(), tmp_path / "out.json").metrics

    usable = rows[:-3]
    assert m["profile/rows"] == 50 and m["profile/skipped_rows"] == 3
    assert m["profile/malformed_share"] == pytest.approx(3 / 53) and m["profile/empty_response_share"] == pytest.approx(
        1 / 53
    )
    assert m["profile/exact_dup_rate"] == pytest.approx((len(usable) - len(set(usable))) / 50)
    assert m["profile/near_dup_rate"] >= m["profile/exact_dup_rate"]
    assert m["profile/turns_mean"] == 2.0 and m["profile/ppl_sampled_rows"] == 16
    assert m["profile/ppl_ci_low"] < m["profile/ppl"] < m["profile/ppl_ci_high"]
    assert m["profile/contaminated/gsm8k-tiny"] == 1
    for key in ("ngram_overlap_1", "ngram_overlap_2", "ngram_overlap_3", "embed_centroid_cos", "embed_max_sim"):
        assert 0 <= m[f"profile/sim/gsm8k-tiny/{key}"] <= 1.0001
    assert 0 < m["profile/embed_pairwise_distance"] < 1 and 0 < m["profile/distinct_1"] < m["profile/distinct_2"] <= 1
    assert m["profile/chars_per_token"] > 1 and m["profile/truncated_share"] == 0.0
    assert len(m) < 60

    profile_run = tracker.cached("profile", profile_key(trial))
    assert profile_run is not None and profile_run.data.metrics == pytest.approx(m)
    out = tracker.download(profile_run.info.run_id, "", tmp_path / "artifacts")
    detail = json.loads((out / "profile.json").read_text())
    assert detail["benchmarks"]["gsm8k-tiny"]["contaminated"] == [
        {"item": 3, "train_row": 48, "ngram": gsm[3]["question"].lower()}
    ]
    assert [b["row"] for b in detail["bad_rows"]] == [50, 51, 52]
    assert 49 in detail["exact_duplicate_rows"]
    assert len(detail["per_example_ppl"]) == 16 and sum(detail["histograms"]["response_tokens"]["counts"]) == 50
    card = (out / "profile_card.html").read_text()
    assert card.count("data:image/png;base64,") == 2 and "gsm8k-tiny" in card
    assert tracker.client.get_run(trial_run).data.metrics["profile/contaminated/gsm8k-tiny"] == 1


MEMORY_PROBE = textwrap.dedent(
    """
    import json, random, sys
    from pathlib import Path
    from sftlab.sources import data, models
    from sftlab.spec.job import RunContext
    from sftlab.profiling.stream import RowProblems, iter_examples
    from sftlab.spec.schema import STUDY_TEMPLATE, DatasetSpec, ProfileConfig
    from sftlab.stages.profile import stream_profile

    tmp, tokenizer_dir, rows = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    # The shipped data's ~120 distinct words: enough distinct n-grams to fill the distinct-n sketches.
    words = sorted({
        w for f in Path("examples/data").glob("*.jsonl") for line in f.open()
        for w in line.replace('"', " ").split() if w.isalpha()
    })
    def write(path, n):
        rng = random.Random(0)
        with path.open("w") as fh:
            for _ in range(n):
                row = {"instruction": " ".join(rng.choices(words, k=4)), "response": " ".join(rng.choices(words, k=8))}
                fh.write(json.dumps(row) + "\\n")
    write(tmp / "small.jsonl", 100)
    write(tmp / "big.jsonl", rows)
    tok = models.load_tokenizer(tokenizer_dir)
    ctx = RunContext(tracking_uri="sqlite:///:memory:", experiment="x", root=str(tmp))
    cfg = ProfileConfig(max_rows=64, embedding_rows=64)
    def peak_mb():  # VmHWM: peak RSS since the last reset (ru_maxrss would include the parent's at fork)
        status = Path("/proc/self/status").read_text()
        return int(status.split("VmHWM:")[1].split()[0]) / 1024
    def reset_peak():
        Path("/proc/self/clear_refs").write_text("5")
    def profile(name):
        problems = RowProblems()
        ds = DatasetSpec(name="d", uri=str(tmp / name))
        state = stream_profile(iter_examples(ds, STUDY_TEMPLATE, ctx, problems), tok, cfg, [], problems)
        state.dups.rates(), state.distinct.values()
        return state.rows
    profile("small.jsonl")  # warm-up on 100 rows: lazy imports (datasketch, scipy) are not counted
    reset_peak()
    before = peak_mb()
    assert profile("big.jsonl") == rows
    streamed = peak_mb() - before
    reset_peak()
    before = peak_mb()
    loaded = data.load_examples(DatasetSpec(name="d", uri=str(tmp / "big.jsonl")), STUDY_TEMPLATE, ctx)
    materialised = peak_mb() - before
    print(json.dumps({"streamed_mb": streamed, "materialised_mb": materialised, "rows": len(loaded.examples)}))
    """
)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS reset")
def test_streaming_profile_memory_is_bounded(tmp_path: Path, tiny_model: Path) -> None:
    """200k rows streamed: peak RSS grows far less than holding the rows as Python objects does."""
    proc = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(tmp_path), str(tiny_model), "200000"],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print("memory (MB):", result)
    # Calibration: merely holding the rows (no token lists) costs > 100 MB, so the bound is real.
    assert result["materialised_mb"] > 100, result
    # Streaming keeps ~100 bytes per row (lengths, hashes, band keys) plus fixed-size sketches.
    assert result["streamed_mb"] < 0.6 * result["materialised_mb"] and result["streamed_mb"] < 80, result
