"""The quickstart sweep cold (a fresh process per stage) vs warm (stages forked from the warm server).

    python benchmarks/quickstart.py [--spec examples/quickstart.yaml]

Each side runs ``sftlab run SPEC`` (``--no-warm-start`` for cold) in a fresh folder, from nothing:
tiny models built, profiles and baselines computed, every trial trained and scored. Both are
timed with the same stopwatch around the whole command. Per stage it then splits each task's
wall time (from its ``Executing task`` to its ``finished`` line in the trial log) into compute,
the stage's own work as the stage itself times it (``time/<stage>_s``: reading inputs, loading
the model, the work, logging), and overhead, the rest (process start, imports, teardown);
trial overhead is what the trial spent outside its tasks (kfp.local start, waiting on other
trials' claims). The last line is the headline.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = ("profile", "baseline", "train", "evaluate", "weights")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_TASK = re.compile(r"^(\d\d):(\d\d):(\d\d\.\d+) - INFO - (?:Executing task '(\w+)'|Task '(\w+)' finished with)")


def _clock(h: str, m: str, s: str) -> float:
    return int(h) * 3600 + int(m) * 60 + float(s)


def task_walls(log: Path) -> dict[str, float]:
    """Seconds from each task's start line to its finish line in a kfp.local trial log."""
    started: dict[str, float] = {}
    walls: dict[str, float] = {}
    for line in _ANSI.sub("", log.read_text(errors="replace")).splitlines():
        match = _TASK.match(line)
        if not match:
            continue
        at = _clock(*match.group(1, 2, 3))
        if match.group(4):
            started[match.group(4)] = at
        elif match.group(5) in started:
            walls[match.group(5)] = (at - started[match.group(5)]) % 86400  # past midnight
    return walls


def run_side(spec: Path, warm: bool, folder: Path) -> tuple[float, dict[str, list[float]], dict[str, list[float]]]:
    """Wall seconds of the whole sweep; per stage, compute and overhead seconds of each trial's task."""
    shutil.copytree(spec.parent, folder / spec.parent.name)
    command = [sys.executable, "-m", "sftlab.cli", "run", str(Path(spec.parent.name) / spec.name)]
    command += [] if warm else ["--no-warm-start"]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{'warm' if warm else 'cold'} quickstart failed ({done.returncode}): {done.stderr[-2000:]}")

    from sftlab.spec.loading import load_spec
    from sftlab.tracking.runs import Tracker

    loaded = load_spec(folder / spec.parent.name / spec.name)
    root = folder / loaded.tracking.root
    tracker = Tracker(f"sqlite:///{root / 'mlflow.db'}", loaded.experiment)
    compute: dict[str, list[float]] = defaultdict(list)
    overhead: dict[str, list[float]] = defaultdict(list)
    for trial in tracker.search("tags.`sftlab.stage` = 'trial'"):
        walls = task_walls(root / "logs" / f"{trial.data.tags['sftlab.trial_key']}.log")
        trial_wall = (trial.info.end_time - trial.info.start_time) / 1000
        for stage, task_wall in walls.items():
            own = trial.data.metrics.get(f"time/{stage}_s", 0.0)
            compute[stage].append(own)
            overhead[stage].append(task_wall - own)
        overhead["(trial)"].append(trial_wall - sum(walls.values()))
    return wall, compute, overhead


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=REPO / "examples" / "quickstart.yaml")
    args = parser.parse_args()
    sides = {}
    with tempfile.TemporaryDirectory(prefix="sftlab-perf-") as tmp:
        for name, warm in (("cold", False), ("warm", True)):
            print(f"running the {name} quickstart ...", flush=True)
            sides[name] = run_side(args.spec.resolve(), warm, Path(tmp) / name)
            print(f"  {name}: {sides[name][0]:.1f} s", flush=True)
    print(f"\n{'stage':<10} {'cold compute':>13} {'cold overhead':>14} {'warm compute':>13} {'warm overhead':>14}")
    print("(mean seconds per trial)")
    for stage in (*STAGES, "(trial)"):
        cells = []
        for name in ("cold", "warm"):
            _, compute, overhead = sides[name]
            cells += [_mean(compute.get(stage, [])), _mean(overhead[stage])]
        print(f"{stage:<10} " + " ".join(f"{c:>13.1f} " for c in cells))
    shares = {}
    for name in ("cold", "warm"):
        _, compute, overhead = sides[name]
        total_compute = sum(sum(v) for v in compute.values())
        total_overhead = sum(sum(v) for v in overhead.values())
        shares[name] = total_overhead / (total_compute + total_overhead)
    cold, warm = sides["cold"][0], sides["warm"][0]
    print(
        f"quickstart: warm {warm:.0f} s vs cold {cold:.0f} s = {cold / warm:.2f}x faster; "
        f"overhead {shares['warm']:.0%} of trial time warm, {shares['cold']:.0%} cold"
    )


if __name__ == "__main__":
    main()
