"""The distribution ships every package of the source tree, under the one import name ``sftlab``."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.support.helpers import REPO


def test_every_source_folder_is_a_package() -> None:
    """setuptools finds packages by ``__init__.py``: a folder of modules without one would not ship."""
    missing = [
        str(folder.relative_to(REPO))
        for folder in sorted({p.parent for p in (REPO / "sftlab").rglob("*.py")})
        if "__pycache__" not in folder.parts and not (folder / "__init__.py").exists()
    ]
    assert not missing, f"folders of modules without __init__.py: {missing}"


def test_the_wheel_holds_every_module_and_no_other_top_level_name(tmp_path: Path) -> None:
    source = tmp_path / "source"  # setuptools writes build/ beside the sources: build from a copy
    shutil.copytree(REPO / "sftlab", source / "sftlab", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)]
        + [str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("sftlab-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "sftlab").rglob("*.py") if "__pycache__" not in p.parts}
    assert modules <= names, f"modules missing from the wheel: {sorted(modules - names)}"
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"sftlab"}
