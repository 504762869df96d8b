"""A trial that runs out of disk or memory fails alone, with the cause recorded; the others go on.

Both faults are real: a 1 MiB tmpfs mounted over one trial's checkpoint folder (the kernel
answers ENOSPC, and torch.save turns that into "unexpected pos …"), and a memory cgroup
whose limit the kernel's OOM killer enforces on another trial's train process (SIGKILL, no
Python traceback). Both need root's mount and cgroup rights; without them the test is skipped.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

import pytest
import yaml

from sftlab.spec.grid import expand
from sftlab.spec.loading import load_spec
from sftlab.tracking.runs import TAG_ERROR, TAG_TRIAL_KEY, Tracker
from tests.support.helpers import EXAMPLES

pytestmark = pytest.mark.slow
MEMORY_CGROUPS = Path("/sys/fs/cgroup/memory")


def mount_tiny_tmpfs(where: Path) -> None:
    where.mkdir(parents=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], check=False, capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here: {done.stderr.strip()}")


def memory_cgroup(name: str) -> Path:
    group = MEMORY_CGROUPS / name
    try:
        group.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot create a memory cgroup (v1) here: {exc}")
    return group


def find_process(*needles: str, function: str | None = None) -> int | None:
    """The pid of a process whose command line holds every needle (and runs this kfp function), if any."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        # The task's python process, not the `sh -ec` wrapper whose script names the same module.
        is_task = "kfp.dsl.executor_main" in args and "--function_to_execute" in args[:-1]
        runs = args[args.index("--function_to_execute") + 1] if is_task else None
        if all(any(needle in arg for arg in args) for needle in needles) and function in (None, runs):
            return int(proc.name)
    return None


def wait_for(find: Callable[[], int | None], sweep: subprocess.Popen[str], what: str) -> int:
    deadline = time.monotonic() + 600
    while sweep.poll() is None and time.monotonic() < deadline:
        found = find()
        if found is not None:
            return found
        time.sleep(0.1)
    raise AssertionError(f"{what} never started")


def starve_train_stage(trial_key: str, sweep: subprocess.Popen[str], group: Path) -> None:
    """Play a machine that runs out of memory while the trial trains: the kernel's OOM killer, not
    the test, ends the train process.

    The trial's kfp.local process joins a memory cgroup as it starts, so every task process it
    forks is charged there; once the train task starts, the limit is set a little above what the
    cgroup holds, with the train process left alone in it, so its own imports exceed the limit and
    nothing else can be chosen; the limit is lifted once it is gone.
    """
    trial = wait_for(
        lambda: find_process("sftlab.kfp.pipelines.local_trial", f"{trial_key}/job.json"), sweep, "the trial"
    )
    (group / "cgroup.procs").write_text(str(trial))
    train = wait_for(
        lambda: find_process(f'\\"key\\":\\"{trial_key}\\"', function="train"),
        sweep,
        "the train stage",
    )
    for pid in (group / "cgroup.procs").read_text().split():  # the train process stays alone with the charges
        if int(pid) != train:
            (MEMORY_CGROUPS / "cgroup.procs").write_text(pid)
    usage = int((group / "memory.usage_in_bytes").read_text())
    (group / "memory.limit_in_bytes").write_text(str(usage + 16 * 2**20))
    while Path(f"/proc/{train}").exists() and sweep.poll() is None:
        time.sleep(0.1)
    (group / "memory.limit_in_bytes").write_text("-1")


def test_a_trial_out_of_disk_or_memory_fails_alone(tmp_path: Path) -> None:
    spec = yaml.safe_load((EXAMPLES / "quickstart.yaml").read_text())
    for item in spec["datasets"] + spec["benchmarks"]:
        item["uri"] = str(EXAMPLES / item["uri"])
    spec["sweep"] = {
        "base_model": ["tiny-llama-chat"],
        "dataset": ["math"],
        "training.method": ["full"],
        "training.learning_rate": [1e-4, 2e-4, 3e-4],
    }
    spec["pipeline"] = {"max_parallel_trials": 1}
    spec["tracking"] = {"root": str(tmp_path / "runs")}
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    disk_full, out_of_memory, healthy = (t.key for t in expand(load_spec(spec_path)))

    tiny_disk = tmp_path / "runs" / "checkpoints" / disk_full
    mount_tiny_tmpfs(tiny_disk)
    group = None
    proc = subprocess.Popen(
        # Cold starts: the memory cgroup holds the trial's process tree, and a warm-started stage
        # would be a child of the sweep's warm server instead (the reason --no-warm-start exists).
        [sys.executable, "-m", "sftlab.cli", "run", str(spec_path), "--no-warm-start"],
        cwd=tmp_path,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        group = memory_cgroup(f"sftlab-test-{os.getpid()}")
        starve_train_stage(out_of_memory, proc, group)
        output = proc.communicate(timeout=900)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        subprocess.run(["umount", "-l", str(tiny_disk)], check=False)
        if group is not None:
            for pid in (group / "cgroup.procs").read_text().split():
                with suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            time.sleep(0.5)
            group.rmdir()

    assert proc.returncode == 1, output  # the sweep ends, and says some trials failed
    assert "3 total, 0 skipped (already finished), 1 finished now, 2 failed" in output
    tracker = Tracker(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}", "quickstart")
    trials = {t.data.tags[TAG_TRIAL_KEY]: t for t in tracker.search("tags.`sftlab.stage` = 'trial'")}
    assert trials[healthy].info.status == "FINISHED" and "eval/gsm8k-tiny/score" in trials[healthy].data.metrics

    no_space = trials[disk_full]
    assert no_space.info.status == "FAILED"
    assert no_space.data.tags[TAG_ERROR].startswith("train: ")
    assert re.search(
        rf"\(disk full or too small: {re.escape(str(tiny_disk))}: [01]\.\d MiB free of 1 MiB\)$",
        no_space.data.tags[TAG_ERROR],
    )

    killed = trials[out_of_memory]
    assert killed.info.status == "FAILED"
    assert killed.data.tags[TAG_ERROR].startswith("train: killed by the kernel's out-of-memory killer (1 OOM kill(s)")
    assert "lower the batch size or max_length" in killed.data.tags[TAG_ERROR]
    # The report counts the finished trial and lists both failures with their causes.
    assert "FAILED" in output and "out-of-memory" in output and "disk full or too small" in output
