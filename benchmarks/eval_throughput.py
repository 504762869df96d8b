"""Evaluation throughput: sftlab's concurrent batching client vs sequential requests, and sandbox cost.

    python benchmarks/eval_throughput.py                 # tiny llama, 64 prompts, 32 new tokens
    python benchmarks/eval_throughput.py --prompts 128 --hidden 256

Serving: one local kserve model server; the same prompts are completed (greedy, same
``max_tokens``) once one request at a time with one prompt each — what a naive harness does — and
once through ``CompletionsClient`` (``--concurrency`` requests in flight, ``--batch-size`` prompts
per request, so the server's batcher fills its batches). Outputs must be identical; the ratio of
wall times is the headline. Sandbox: ``--programs`` trivial programs through ``sftlab.evals.sandbox.runner``
(namespaces, limits, scrubbed env) vs a bare ``subprocess.run([python, -c, ...])``, per program.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def serving_speed(args: argparse.Namespace) -> float:
    from sftlab.serving.client import CompletionsClient
    from sftlab.serving.process import LocalModelServer
    from sftlab.sources.tiny import build_tiny
    from sftlab.spec.tiny_uri import TinySpec

    model = build_tiny(
        Path(tempfile.mkdtemp()) / "model", TinySpec(hidden=args.hidden, layers=args.layers, pretrain_steps=0)
    )
    prompts = [
        f"###Question: Ada has {i} apples and gets {i % 7 + 1} more. How many apples?\n###Answer:"
        for i in range(args.prompts)
    ]
    with LocalModelServer(model, name="bench", ready_timeout=180) as server:

        def run(concurrency: int, batch_size: int) -> tuple[float, list[str]]:
            with CompletionsClient(
                server.base_url, server.model_name, concurrency=concurrency, batch_size=batch_size
            ) as client:
                client.complete(prompts[:2], max_tokens=2)  # warm-up: connections, first-call overheads
                started = time.perf_counter()
                out = client.complete(prompts, max_tokens=args.max_tokens)
                return time.perf_counter() - started, out

        seq_times, conc_times = [], []
        for _ in range(args.repeats):  # interleaved, so drift hits both sides alike
            seq_s, seq_out = run(1, 1)
            conc_s, conc_out = run(args.concurrency, args.batch_size)
            seq_times.append(seq_s)
            conc_times.append(conc_s)
    if seq_out != conc_out:
        mismatched = sum(a != b for a, b in zip(seq_out, conc_out, strict=True))
        print(f"WARNING: {mismatched} of {len(prompts)} outputs differ between batched and unbatched runs")
    seq, conc = min(seq_times), min(conc_times)
    print(
        f"serving: sequential {seq:.2f} s ({len(prompts) / seq:.1f} prompts/s), "
        f"concurrent x{args.concurrency} batch {args.batch_size}: {conc:.2f} s ({len(prompts) / conc:.1f} prompts/s)"
    )
    return seq / conc


def sandbox_overhead(args: argparse.Namespace) -> tuple[float, float]:
    """(ms per program in the sandbox, ms per bare subprocess)."""
    from sftlab.evals.sandbox.runner import run_many
    from sftlab.spec.schema import SandboxConfig

    config = SandboxConfig(workers=1)
    programs = ["assert sum(range(10)) == 45\n"] * args.programs
    started = time.perf_counter()
    results = run_many(programs, config)
    sandboxed = (time.perf_counter() - started) / len(programs)
    if not all(r.passed for r in results):
        raise SystemExit(f"sandbox: {sum(not r.passed for r in results)} trivial programs failed")
    started = time.perf_counter()
    for program in programs:
        subprocess.run([sys.executable, "-I", "-c", program], check=True, capture_output=True)
    bare = (time.perf_counter() - started) / len(programs)
    print(f"sandbox: {sandboxed * 1000:.1f} ms/program, bare subprocess {bare * 1000:.1f} ms/program")
    return sandboxed * 1000, bare * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--programs", type=int, default=40)
    args = parser.parse_args()
    speedup = serving_speed(args)
    sandboxed, bare = sandbox_overhead(args)
    print(
        f"eval_throughput: concurrent client {speedup:.2f}x sequential requests; "
        f"sandbox {sandboxed:.0f} ms/program (+{sandboxed - bare:.0f} ms over a bare subprocess)"
    )


if __name__ == "__main__":
    main()
