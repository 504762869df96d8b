"""The distribution ships every package of the source tree (explicit lists drift as modules are added)."""

from __future__ import annotations

import tomllib

from tests.conftest import REPO


def test_every_source_package_is_declared() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    declared = set(config["packages"])
    mapping = config["package-dir"]
    on_disk = set()
    for package, folder in mapping.items():
        for init in (REPO / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(REPO / folder)
            on_disk.add(".".join([package, *relative.parts]))
    assert on_disk <= declared, f"packages missing from pyproject.toml: {sorted(on_disk - declared)}"
    assert {name.split(".")[0] for name in declared} == {"sftlab"}  # no other top-level import name
