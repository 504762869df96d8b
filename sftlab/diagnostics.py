"""Causes a failed trial's own exception may not name: a full disk, the kernel's OOM killer.

``torch.save`` on a full disk raises "unexpected pos 576 vs 534", and a process the OOM killer
ends prints nothing at all; these checks look at the machine instead of the message.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

# A filesystem counts as full below either bound: 64 MiB cannot hold a checkpoint of any real model.
FULL_BELOW_BYTES, FULL_BELOW_SHARE = 64 * 2**20, 0.01


def full_disks(paths: Iterable[str | Path]) -> list[str]:
    """``"PATH: N MiB free of M MiB"`` for each filesystem among ``paths`` that is (nearly) full or
    too small to hold a checkpoint (a failed write may already have freed its partial file)."""
    seen: set[int] = set()
    found = []
    for path in paths:
        path = Path(path)
        while not path.exists() and path != path.parent:
            path = path.parent
        try:
            device = path.stat().st_dev
            usage = shutil.disk_usage(path)
        except OSError:
            continue
        if device in seen:
            continue
        seen.add(device)
        if usage.free < FULL_BELOW_BYTES or usage.free < FULL_BELOW_SHARE * usage.total:
            found.append(f"{path}: {usage.free / 2**20:.1f} MiB free of {usage.total / 2**20:.0f} MiB")
    return found


def disk_full_hint(paths: Iterable[str | Path]) -> str:
    """`` (disk full or too small: …)`` to append to an error message, or an empty string."""
    full = full_disks(paths)
    return f" (disk full or too small: {'; '.join(full)})" if full else ""


def scratch_paths(root: str | Path) -> list[Path]:
    """Where a stage writes: the tracking root (checkpoints, artifacts), temp files, the HF cache, cwd."""
    hf_home = os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface"
    return [Path(root), Path(tempfile.gettempdir()), Path(hf_home), Path.cwd()]


def oom_kills() -> int | None:
    """The kernel's count of OOM kills (``/proc/vmstat``; memory-cgroup kills included), if readable."""
    try:
        for line in Path("/proc/vmstat").read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == "oom_kill":
                return int(value)
    except (OSError, ValueError):
        pass
    return None
