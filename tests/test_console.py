"""The sweep console: stage lines and counters from the progress files that stage processes write.

Events come from real processes appending to a real file (as a trial's stages do); the console
is read off a pipe (plain lines, as in CI or a log) and off a pseudo-terminal (live bars).
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from sftlab import progress
from sftlab.sweep.console import SweepConsole
from sftlab.sweep.runner import short_label
from sftlab.sweep.summary import Gain, headline

WRITER = textwrap.dedent(
    """
    import sys, time
    from sftlab import progress
    steps = progress.Steps("step")
    with progress.stage("train"):
        for i in range(1, 41):
            steps(i, 40)
            time.sleep(float(sys.argv[1]))
    try:
        with progress.stage("evaluate"):
            raise RuntimeError("server went away\\nsecond line")
    except RuntimeError:
        pass
    """
)


def _write_events(path: Path, pause_s: float) -> subprocess.Popen[bytes]:
    env = {**os.environ, progress.ENV: str(path)}
    return subprocess.Popen([sys.executable, "-c", WRITER, str(pause_s)], env=env)


def test_concurrent_writers_never_interleave_lines(tmp_path: Path) -> None:
    path = tmp_path / "progress.jsonl"
    writers = [_write_events(path, 0.0) for _ in range(4)]
    assert all(w.wait(60) == 0 for w in writers)
    events = [json.loads(line) for line in path.read_text().splitlines()]
    assert sum(e["event"] == "stage_start" for e in events) == 8
    assert sum(e["event"] == "steps" and e["done"] == 40 for e in events) == 4  # the last count always
    assert sum(e["event"] == "steps" for e in events) < 4 * 40  # throttled, not a line per step
    failed = [e for e in events if e["event"] == "stage_end" and not e["ok"]]
    assert [e["error"] for e in failed] == ["server went away"] * 4


def test_plain_console_says_stages_and_moving_counters(tmp_path: Path) -> None:
    path = tmp_path / "progress.jsonl"
    lines: list[str] = []
    console = SweepConsole(echo=lines.append, live=False, plain_every_s=0.5, poll_s=0.1)
    with console:
        console.watch("k1", "[1/1] tiny/math", path)
        writer = _write_events(path, 0.1)  # 40 steps over ~4 s: several plain lines
        assert writer.wait(60) == 0
        time.sleep(0.3)
        console.forget("k1")
    assert lines[0] == "[1/1] tiny/math: train started"
    assert any(line.startswith("[1/1] tiny/math: train finished in ") for line in lines)
    counters = [line for line in lines if line.startswith("[1/1] tiny/math: train step ")]
    assert 2 <= len(counters) <= 12, lines  # about one per plain_every_s while the count moves
    assert counters == sorted(set(counters), key=counters.index)  # a count that did not move is not repeated
    assert lines[-1].startswith("[1/1] tiny/math: evaluate FAILED after ") and lines[-1].endswith(": server went away")


LIVE = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from sftlab.sweep.console import SweepConsole
    console = SweepConsole(live=True, poll_s=0.05)
    with console:
        console.watch("k1", "[1/1] tiny/math", Path(sys.argv[1]))
        console.line("a line above the bars")
        while "evaluate" not in Path(sys.argv[1]).read_text():
            time.sleep(0.05)
        time.sleep(0.3)
    """
)


def test_live_console_on_a_terminal_draws_bars(tmp_path: Path) -> None:
    path = tmp_path / "progress.jsonl"
    path.touch()
    main, child = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-c", LIVE, str(path)], stdin=child, stdout=child, stderr=child, env={**os.environ}
    )
    os.close(child)
    writer = _write_events(path, 0.05)
    out = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(main, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    assert writer.wait(60) == 0 and proc.wait(60) == 0
    text = out.decode("utf-8", "replace")
    assert "a line above the bars" in text and "tiny/math: train started" in text
    assert "━" in text and "/40" in text  # rich's bar and its done/total column
    assert "\x1b[" in text  # drawn in place with terminal control codes


def test_short_labels_keep_head_and_tail() -> None:
    label = "smollm2-135m/alpaca[method=lora,learning_rate=0.0002,epochs=3,lora.r=16]"
    short = short_label(label)
    assert len(short) == 48 and short.startswith("smollm2-135m/alpaca[") and short.endswith("lora.r=16]")
    assert short_label("tiny/math") == "tiny/math"


def test_headline_counts_only_gains_with_a_ci_clear_of_zero() -> None:
    gains = [
        Gain("a/math", "gsm8k", 0.20, 0.10, 0.30),
        Gain("a/code", "gsm8k", 0.05, -0.02, 0.12),
        Gain("b/math", "gsm8k", -0.15, -0.25, -0.05),
    ]
    lines = headline(gains)
    assert lines[0] == "best gains (CI above 0): 1 of 3 trial x benchmark gains"
    assert lines[1] == "  a/math on gsm8k: +0.200 [+0.100, +0.300]"
    assert lines[2] == "got worse (CI below 0): 1" and lines[3].startswith("  b/math on gsm8k: -0.150")
    assert headline([]) == ["gains: none with a confidence interval (no trial finished its evaluation)"]
