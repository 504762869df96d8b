"""Regenerate the tiny example datasets (deterministic): ``python examples/data/make_data.py``.

Written for sftlab: GSM8K-format arithmetic (training and evaluation sets drawn with different
seeds), small Python coding tasks, and short general chat answers. Small enough that a tiny model
partly learns them in seconds, so the quickstart shows real, varying effects.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from sftlab.sources.tiny import arithmetic_problem, chat_problem, code_problem

HERE = Path(__file__).parent


def write(name: str, rows: list[dict]) -> None:
    with (HERE / name).open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")


def main() -> None:
    rng = random.Random(101)
    write(
        "math.jsonl",
        [dict(zip(("instruction", "response"), arithmetic_problem(rng)[:2], strict=True)) for _ in range(64)],
    )
    rng = random.Random(202)
    write("code.jsonl", [dict(zip(("instruction", "response"), code_problem(rng), strict=True)) for _ in range(48)])
    rng = random.Random(303)
    chats = []
    for _ in range(48):
        question, answer = chat_problem(rng)
        chats.append({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]})
    write("chat.jsonl", chats)
    rng = random.Random(404)
    write(
        "gsm8k_tiny.jsonl",
        [dict(zip(("question", "answer"), arithmetic_problem(rng)[:2], strict=True)) for _ in range(40)],
    )


if __name__ == "__main__":
    main()
