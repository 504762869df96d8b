"""The import graph points one way: no cycle between sibling modules or packages, and the core never
imports kfp. ``lint-imports`` (import-linter, configured in pyproject.toml) checks both; these tests
run it on the tree and on a copy with a cycle planted, so a contract that stopped biting would fail."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.helpers import REPO


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` with ``root`` first on the path, so the copy's ``sftlab`` is the one analysed."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    lint = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(lint), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_import_contracts_hold() -> None:
    done = lint_imports(REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


def planted(tmp_path: Path, module: str, line: str) -> Path:
    root = tmp_path / "tree"
    shutil.copytree(REPO / "sftlab", root / "sftlab", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", root)
    target = root / module
    target.write_text(target.read_text() + f"\n\ndef _planted() -> None:\n    {line}\n")
    return root


def test_a_cycle_hidden_in_a_function_breaks_the_contract(tmp_path: Path) -> None:
    # spec is the floor: a lazy import of the tracking layer from it closes a cycle (tracking -> spec).
    root = planted(tmp_path, "sftlab/spec/schema.py", "from sftlab.tracking import runs  # noqa: F401")
    done = lint_imports(root)
    assert done.returncode != 0 and ".spec -> .tracking" in done.stdout


def test_kfp_in_the_core_breaks_the_contract(tmp_path: Path) -> None:
    root = planted(tmp_path, "sftlab/stages/train.py", "import kfp  # noqa: F401")
    done = lint_imports(root)
    assert done.returncode != 0 and "kfp" in done.stdout
