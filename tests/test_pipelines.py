"""The KFP layer: compiled pipelines, pod settings, core purity, submission and the launchers.

KFP's REST API is a real HTTP server on 127.0.0.1 (``tests/support/kfp_api.py``); local trials run real
``kfp.local`` child processes. Positive end-to-end trials (real stages) are in test_end_to_end.py.
No ``from __future__ import annotations``: KFP reads component annotations at runtime.
"""

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from kfp.dsl import Dataset, Output

from sftlab import __version__
from sftlab.errors import SftlabError, SpecError
from sftlab.spec.grid import Trial, expand
from sftlab.spec.job import RunContext, TrialJob
from sftlab.spec.loading import parse_spec
from sftlab.spec.schema import DEFAULT_IMAGE, Spec
from sftlab.sweep.launcher import StartTrial, TrialOutcome
from tests.support.kfp_api import FakeKfp

REPO = Path(__file__).resolve().parents[1]
GPU_RESOURCES = {
    "default": {"cpu": "2", "memory": "8Gi"},
    "train": {
        "cpu": "8",
        "memory": "64Gi",
        "gpus": 2,
        "accelerator": "nvidia.com/gpu",
        "node_selector": {"pool": "a100"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "shm_size": "16Gi",
    },
    "model_cache_pvc": "model-cache",
    "secrets": [
        {"secret": "mlflow-auth", "env": {"MLFLOW_TRACKING_USERNAME": "user", "MLFLOW_TRACKING_PASSWORD": "password"}}
    ],
}
MLFLOW = "http://mlflow.example:5000"  # never contacted: these tests stop at the KFP layer


def spec_data(rates: int = 2, **extra: Any) -> dict[str, Any]:
    """A spec that needs no files: a tiny: model, a hub dataset, ``rates`` trials."""
    return {
        "name": "pipetest",
        "base_models": [{"name": "m", "uri": "tiny:llama?hidden=64&layers=4"}],
        "datasets": [{"name": "d", "uri": "org/data"}],
        "sweep": {"training.learning_rate": [0.1 * (i + 1) for i in range(rates)]},
        "tracking": {"uri": MLFLOW},
        **extra,
    }


def make_spec(rates: int = 2, **extra: Any) -> Spec:
    return parse_spec(yaml.safe_dump(spec_data(rates, **extra)))


def starter(tracking_uri: str, root: Path, started: list[Trial] | None = None) -> StartTrial:
    """A ``start`` callback without MLflow: the job's trial run id is ``mlflow-<index>``."""

    def start(trial: Trial) -> TrialJob:
        if started is not None:
            started.append(trial)
        run_id = f"mlflow-{trial.index}"
        ctx = RunContext(tracking_uri=tracking_uri, experiment="pipetest", root=str(root), trial_run_id=run_id)
        return TrialJob(trial=trial, context=ctx)

    return start


def load_docs(path: Path) -> list[dict[str, Any]]:
    return list(yaml.safe_load_all(path.read_text(encoding="utf-8")))


def images(pipeline_spec: dict[str, Any]) -> set[str]:
    return {e["container"]["image"] for e in pipeline_spec["deploymentSpec"]["executors"].values()}


def k8s_executors(platform_spec: dict[str, Any]) -> dict[str, Any]:
    return platform_spec["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def job_of(run: dict[str, Any]) -> TrialJob:
    """The TrialJob a fake-KFP run was submitted with."""
    return TrialJob.from_json(run["runtime_config"]["parameters"]["job"])


# ---------------------------------------------------------------------------------------------
# Compiled pipelines


def test_committed_pipelines_match_a_fresh_compile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sftlab.kfp.pipelines.compile import COMPILED, compile_pipeline

    monkeypatch.setenv("SFTLAB_IMAGE", "somewhere/else:dev")  # must not leak into the committed files
    for kind, committed in COMPILED.items():
        fresh = load_docs(compile_pipeline(kind, None, tmp_path / committed.name))
        assert fresh == load_docs(committed), f"{committed.name} is stale: run python -m sftlab.kfp.pipelines.compile"
        assert images(fresh[0]) == {f"{DEFAULT_IMAGE}:{__version__}"}


def test_every_step_requests_resources_and_retries(tmp_path: Path) -> None:
    """A pod without requests is placed anywhere and evicted first; a lost pod retries (stages
    resume), in the committed pipelines, built with no spec."""
    from sftlab.kfp.pipelines.compile import COMPILED

    for kind, path in COMPILED.items():
        ir, _platform = load_docs(path)
        tasks = ir["root"]["dag"]["tasks"]
        for name, task in tasks.items():
            policy = task["retryPolicy"]
            assert (policy["maxRetryCount"], policy["backoffDuration"]) == (2, "60s"), (kind, name)
            resources = ir["deploymentSpec"]["executors"][task["componentRef"]["name"].replace("comp-", "exec-")]
            requests = resources["container"]["resources"]
            assert requests["resourceCpuRequest"] and requests["resourceMemoryRequest"], (kind, name)
    sweep, _ = load_docs(COMPILED["sweep"])
    launch = sweep["deploymentSpec"]["executors"]["exec-launch"]["container"]["resources"]
    assert (launch["resourceCpuRequest"], launch["resourceMemoryLimit"]) == ("250m", "2Gi")
    # kfp.local honours retry policies too: local trials run without (a local failure would only
    # be repeated, minutes later).
    from kfp import compiler

    from sftlab.kfp.pipelines.trial import build_trial_pipeline

    compiler.Compiler().compile(build_trial_pipeline(None, retries=False), str(tmp_path / "local.yaml"))
    local, _ = load_docs(tmp_path / "local.yaml")
    assert not any("retryPolicy" in task for task in local["root"]["dag"]["tasks"].values())


def test_image_pull_secrets_reach_every_pipeline_pod(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sftlab.kfp.pipelines.compile import compile_pipeline

    monkeypatch.delenv("SFTLAB_IMAGE_PULL_REFS", raising=False)
    spec = make_spec(pipeline={"image_pull_secrets": ["registry-a"]})
    for kind in ("trial", "sweep"):
        _ir, platform = load_docs(compile_pipeline(kind, spec, tmp_path / f"{kind}.yaml"))
        for name, executor in k8s_executors(platform).items():
            assert [ref["secretName"] for ref in executor["imagePullSecret"]] == ["registry-a"], (kind, name)
    # In the cluster, the launch step compiles trial runs with the chart's when the spec names none.
    monkeypatch.setenv("SFTLAB_IMAGE_PULL_REFS", "chart-registry")
    _ir, platform = load_docs(compile_pipeline("trial", make_spec(), tmp_path / "in-cluster.yaml"))
    assert {ref["secretName"] for e in k8s_executors(platform).values() for ref in e["imagePullSecret"]} == {
        "chart-registry"
    }


def test_spec_resources_compile_into_the_pipelines(tmp_path: Path) -> None:
    from sftlab.kfp.pipelines.compile import compile_pipeline

    spec = make_spec(resources=GPU_RESOURCES, pipeline={"image": "registry.local/sftlab:dev"})
    ir, platform = load_docs(compile_pipeline("trial", spec, tmp_path / "trial.yaml"))
    executors = ir["deploymentSpec"]["executors"]
    train = executors["exec-train"]["container"]
    assert train["image"] == "registry.local/sftlab:dev"
    assert train["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert train["resources"]["accelerator"]["resourceCount"] == "2"
    assert (train["resources"]["resourceCpuLimit"], train["resources"]["resourceMemoryRequest"]) == ("8", "64Gi")
    profile = executors["exec-profile"]["container"]["resources"]
    assert profile["resourceCpuRequest"] == "2" and "accelerator" not in profile
    assert all(not task["cachingOptions"].get("enableCache") for task in ir["root"]["dag"]["tasks"].values())

    k8s = k8s_executors(platform)
    assert k8s["exec-train"]["nodeSelector"]["labels"] == {"pool": "a100"}
    assert k8s["exec-train"]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert "nodeSelector" not in k8s["exec-profile"]
    secret_env = {
        ("mlflow-auth", "user", "MLFLOW_TRACKING_USERNAME"),
        ("mlflow-auth", "password", "MLFLOW_TRACKING_PASSWORD"),
    }
    for name in ("exec-profile", "exec-baseline", "exec-train", "exec-evaluate", "exec-weights"):
        env = {(s["secretName"], k["secretKey"], k["envVar"]) for s in k8s[name]["secretAsEnv"] for k in s["keyToEnv"]}
        assert env == secret_env, name

    assert k8s["exec-train"]["emptyDirMounts"] == [
        {"volumeName": "dshm", "mountPath": "/dev/shm", "medium": "Memory", "sizeLimit": "16Gi"}
    ]
    assert "emptyDirMounts" not in k8s["exec-profile"]
    for name in ("exec-profile", "exec-baseline", "exec-train", "exec-evaluate", "exec-weights"):
        assert [(m["constant"], m["mountPath"]) for m in k8s[name]["pvcMount"]] == [("model-cache", "/cache")], name
        env = {e["name"]: e["value"] for e in executors[name]["container"]["env"]}
        assert env == {"SFTLAB_CACHE": "/cache/sftlab", "HF_HOME": "/cache/hf"}, name

    ir, platform = load_docs(compile_pipeline("sweep", spec, tmp_path / "sweep.yaml"))
    assert images(ir) == {"registry.local/sftlab:dev"}
    assert set(k8s_executors(platform)) == {"exec-plan", "exec-launch", "exec-report"}


def test_stages_that_start_their_own_pods_run_in_small_tasks(tmp_path: Path) -> None:
    """A multi-node TrainJob and KServe InferenceServices get the GPUs; the KFP tasks that start
    them only orchestrate, so they must not hold GPUs while they wait."""
    from sftlab.kfp.pipelines.compile import compile_pipeline

    resources = {**GPU_RESOURCES, "evaluate": {"gpus": 1, "memory": "32Gi"}}
    local = make_spec(resources=resources)
    ir, _ = load_docs(compile_pipeline("trial", local, tmp_path / "local.yaml"))
    executors = ir["deploymentSpec"]["executors"]
    assert executors["exec-evaluate"]["container"]["resources"]["accelerator"]["resourceCount"] == "1"
    delegated = make_spec(resources=resources, training={"distributed": {"nodes": 4}}, evaluation={"backend": "kserve"})
    ir, _ = load_docs(compile_pipeline("trial", delegated, tmp_path / "delegated.yaml"))
    executors = ir["deploymentSpec"]["executors"]
    for name in ("exec-train", "exec-evaluate", "exec-baseline"):
        assert "accelerator" not in executors[name]["container"]["resources"], name
        assert executors[name]["container"]["resources"]["resourceCpuRequest"] == "2", name  # the default task size


def test_core_package_never_imports_kfp() -> None:
    modules = sorted(
        ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for path in (REPO / "sftlab").rglob("*.py")
        if "kfp" not in path.relative_to(REPO / "sftlab").parts  # the KFP layer, sftlab.kfp
    )
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "loaded = sorted(m for m in sys.modules if m == 'kfp' or m.startswith('kfp.'))\n"
        "assert not loaded, f'the core imports kfp: {loaded[:5]}'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]


# ---------------------------------------------------------------------------------------------
# Submitting to KFP


def test_submit_sends_the_sweep_pipeline_with_the_spec_text(tmp_path: Path) -> None:
    from sftlab.kfp.pipelines.compile import submit

    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec_data(resources=GPU_RESOURCES)), encoding="utf-8")
    spec = parse_spec(spec_file.read_text(encoding="utf-8"))
    with FakeKfp() as kfp_api:
        run_id = submit(str(spec_file), host=kfp_api.url, experiment=None, spec=spec)
    (experiment,) = kfp_api.experiments.values()
    run = kfp_api.runs[run_id]
    assert experiment["display_name"] == "pipetest" and run["experiment_id"] == experiment["experiment_id"]
    assert run["display_name"] == "pipetest"
    assert run["runtime_config"]["parameters"] == {"spec": spec_file.read_text(encoding="utf-8")}
    assert run["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "sftlab-sweep"
    assert "exec-launch" in k8s_executors(run["pipeline_spec"]["platform_spec"])


def test_submit_to_multi_user_kfp_with_a_token_file_and_namespace(tmp_path: Path) -> None:
    """From a workstation: the token comes from a file (never echoed) and the run lands in the
    user's profile namespace."""
    token = "minted-by-kubectl-create-token"
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec_data(resources=GPU_RESOURCES)), encoding="utf-8")
    (tmp_path / "token").write_text(token + "\n", encoding="utf-8")
    with FakeKfp(authenticate=lambda given: "team-a" if given == token else None) as kfp_api:
        command = [sys.executable, "-m", "sftlab.cli", "submit", str(spec_file), "--host", kfp_api.url]
        done = subprocess.run(
            [*command, "--namespace", "team-a", "--token-file", str(tmp_path / "token")], capture_output=True, text=True
        )
        without = subprocess.run(command + ["--namespace", "team-a"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert [e["namespace"] for e in kfp_api.experiments.values()] == ["team-a"] and len(kfp_api.runs) == 1
    assert token not in done.stdout + done.stderr
    assert without.returncode != 0 and kfp_api.refused == [401]


def test_submit_refuses_what_cluster_pods_cannot_use(tmp_path: Path) -> None:
    from sftlab.kfp.pipelines.compile import submit

    data_file = tmp_path / "train.jsonl"
    data_file.write_text('{"instruction": "1+1", "response": "2"}\n', encoding="utf-8")
    local = make_spec(datasets=[{"name": "d", "uri": str(data_file)}], tracking={"uri": "sqlite:///x.db"})
    nowhere = "http://127.0.0.1:9"  # both are refused before any request
    with pytest.raises(SpecError) as caught:
        submit(yaml.safe_dump(spec_data()), host=nowhere, experiment=None, spec=local)
    assert [p.split(":")[0] for p in caught.value.problems] == ["tracking.uri", "datasets[0].uri"]
    with pytest.raises(SftlabError, match="10,000-character"):
        submit(yaml.safe_dump(spec_data(description="x" * 10_001)), host=nowhere, experiment=None, spec=make_spec())


# ---------------------------------------------------------------------------------------------
# KfpTrialLauncher


def test_kfp_launcher_caps_runs_in_flight_and_maps_failures(tmp_path: Path) -> None:
    import kfp

    from sftlab.kfp.pipelines.launchers import KfpTrialLauncher

    def decide(run: dict[str, Any]) -> tuple[str, str | None]:
        return ("FAILED", "task train failed") if job_of(run).trial.index % 2 else ("SUCCEEDED", None)

    spec = make_spec(rates=5, resources=GPU_RESOURCES)
    trials, started, outcomes = expand(spec), [], {}
    with FakeKfp(decide, polls=2, failing_gets=2) as kfp_api:  # two 503s: tolerated, not fatal
        client = kfp.Client(host=kfp_api.url)
        launcher = KfpTrialLauncher(client, max_parallel=2, poll_s=0.01, experiment="sweeps", spec=spec)
        launcher.run(trials, starter(MLFLOW, tmp_path, started), lambda job, o: outcomes.update({o.key: o}))

    assert kfp_api.max_in_flight == 2 and len(kfp_api.runs) == 5 and started == trials
    assert [e["display_name"] for e in kfp_api.experiments.values()] == ["sweeps"]
    for run in kfp_api.runs.values():
        assert run["display_name"] == job_of(run).trial.label
        assert run["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "sftlab-trial"
        assert "exec-train" in k8s_executors(run["pipeline_spec"]["platform_spec"])
    for trial in trials:
        outcome = outcomes[trial.key]
        assert outcome.run_id == f"mlflow-{trial.index}"
        if trial.index % 2:
            assert not outcome.ok and "FAILED" in outcome.error and "task train failed" in outcome.error
        else:
            assert outcome.ok and outcome.error is None


def test_a_trial_whose_job_parameter_kfp_would_refuse_fails_alone_in_one_line(tmp_path: Path) -> None:
    import kfp

    from sftlab.kfp.pipelines.launchers import KfpTrialLauncher

    template = "Context: " + "x" * 10_500 + "\n{instruction}\nAnswer: {response}"
    spec = make_spec(rates=1, prompt_template=template)
    outcomes: list[TrialOutcome] = []
    with FakeKfp() as kfp_api:
        launcher = KfpTrialLauncher(kfp.Client(host=kfp_api.url), poll_s=0.01, spec=spec)
        launcher.run(expand(spec), starter(MLFLOW, tmp_path), lambda job, o: outcomes.append(o))
    (outcome,) = outcomes
    assert not outcome.ok and kfp_api.runs == {}
    assert outcome.error is not None and "\n" not in outcome.error
    assert outcome.error.startswith("could not start the trial: its job parameter is ")
    assert "characters, over KFP's 10,000" in outcome.error


def test_kfp_launcher_terminates_runs_in_flight_when_interrupted(tmp_path: Path) -> None:
    import kfp

    from sftlab.kfp.pipelines.launchers import KfpTrialLauncher

    def decide(run: dict[str, Any]) -> tuple[str, str | None]:
        return ("SUCCEEDED", None) if run["run_id"] == "run-1" else ("RUNNING", None)

    outcomes: list[TrialOutcome] = []

    def finish(job: TrialJob, outcome: TrialOutcome) -> None:
        outcomes.append(outcome)
        if len(outcomes) == 1:
            raise KeyboardInterrupt

    with FakeKfp(decide) as kfp_api:
        launcher = KfpTrialLauncher(kfp.Client(host=kfp_api.url), max_parallel=3, poll_s=0.01)
        with pytest.raises(KeyboardInterrupt):
            launcher.run(expand(make_spec(rates=4)), starter(MLFLOW, tmp_path), finish)
    assert sorted(kfp_api.terminated) == ["run-2", "run-3"] and len(kfp_api.runs) == 3
    # The trials cut short are recorded as failed (their MLflow runs must not stay RUNNING).
    assert [o.ok for o in outcomes] == [True, False, False]
    assert {o.error for o in outcomes[1:]} == {"interrupted (KeyboardInterrupt)"}


def test_a_cancelled_launch_step_terminates_the_trial_runs_it_started(tmp_path: Path) -> None:
    """Cancelling the sweep run deletes the launch step's pod (SIGTERM): the trial runs in flight
    are terminated and recorded as interrupted, not left running on the cluster's GPUs."""
    import signal
    import time

    from sftlab.kfp.components.sweep import write_plan
    from sftlab.sweep.runner import prepare

    with FakeKfp(lambda run: ("RUNNING", None)) as kfp_api:
        data = spec_data(
            tracking={"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
            pipeline={"kfp_host": kfp_api.url, "max_parallel_trials": 2},
        )
        spec_file, plan_file = tmp_path / "spec.yaml", tmp_path / "plan.json"
        spec_file.write_text(yaml.safe_dump(data), encoding="utf-8")
        tracker, plan = prepare(parse_spec(spec_file.read_text(encoding="utf-8")))
        write_plan(plan, str(plan_file))
        script = (
            "import sys; from pathlib import Path; from sftlab.kfp.components.sweep import run_launch; "
            "run_launch(Path(sys.argv[1]).read_text(), sys.argv[2], None)"
        )
        step = subprocess.Popen(
            [sys.executable, "-c", script, str(spec_file), str(plan_file)], stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + 120
        while len(kfp_api.runs) < 2 and step.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(kfp_api.runs) == 2, step.communicate()[1] if step.poll() is not None else "no runs submitted"
        step.send_signal(signal.SIGTERM)
        stderr = step.communicate(timeout=60)[1]
    assert step.returncode != 0
    assert sorted(kfp_api.terminated) == sorted(kfp_api.runs), stderr
    trials = list(tracker.search("tags.`sftlab.stage` = 'trial'"))
    assert len(trials) == 2 and {t.info.status for t in trials} == {"FAILED"}
    assert {t.data.tags["sftlab.error"] for t in trials} == {"interrupted (Terminated)"}


# ---------------------------------------------------------------------------------------------
# LocalTrialLauncher


def test_local_launcher_isolates_a_failing_trial(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Every stage opens the trial's MLflow run first, so an unusable tracking URI fails the trial
    inside a real kfp.local task, without depending on what the stages compute."""
    from sftlab.kfp.pipelines.launchers import LocalTrialLauncher

    events: list[tuple[str, Trial | TrialOutcome]] = []
    start = starter("bogus-scheme://nowhere", tmp_path)

    def start_trial(trial: Trial) -> TrialJob:
        events.append(("start", trial))
        return start(trial)

    trials = expand(make_spec(rates=2))
    launcher = LocalTrialLauncher(tmp_path / "local", max_parallel=1)
    launcher.run(trials, start_trial, lambda job, outcome: events.append(("finish", outcome)))

    assert [kind for kind, _ in events] == ["start", "finish", "start", "finish"]
    for trial, (_, outcome) in zip(trials, events[1::2], strict=True):
        assert isinstance(outcome, TrialOutcome) and outcome.key == trial.key and not outcome.ok
        stage, _, cause = outcome.error.partition(": ")
        assert stage in {"profile", "baseline"} and "bogus-scheme" in cause, outcome.error  # train waits for profile
        log = launcher.log_path(trial.key).read_text(encoding="utf-8")
        assert "Traceback" in log and "bogus-scheme" in log
    assert capfd.readouterr().out == ""  # trial output goes to the logs, not the console


def test_a_task_that_died_without_an_exception_is_not_blamed_on_an_earlier_one() -> None:
    """kfp.local logs each task between "Executing task" and its status; a task the OOM killer
    ended prints no exception, and an earlier task's handled error must not be reported for it."""
    from sftlab.kfp.pipelines.launchers import DIED_SILENTLY, last_error

    log = "\n".join(
        [
            "01:00 - INFO - Executing task \x1b[96m'profile'\x1b[0m",
            "    ValueError: a row the profile skipped, logged and handled",
            "01:01 - INFO - Task \x1b[96m'profile'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m",
            "01:01 - INFO - Executing task \x1b[96m'train'\x1b[0m",
            "    {'loss': 2.1}",
            "01:02 - ERROR - Task \x1b[96m'train'\x1b[0m finished with status \x1b[91mFAILURE\x1b[0m",
            "RuntimeError: Pipeline 'sftlab-trial' finished with status FAILURE. Inner task failed: 'train'.",
        ]
    )
    assert last_error(log) == f"train: {DIED_SILENTLY}"
    with_exception = log.replace(
        "{'loss': 2.1}", "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    )
    assert last_error(with_exception) == "train: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"


# ---------------------------------------------------------------------------------------------
# The sweep pipeline's launch step, under KFP's task runtime


def write_text(text: str, out: Output[Dataset]):
    """A component handing the launch step its plan (kfp.local takes no pipeline input artifacts)."""
    with open(out.path, "w", encoding="utf-8") as f:
        f.write(text)


def _fails_the_second_trial(run: dict[str, Any]) -> tuple[str, str | None]:
    return ("FAILED", "boom") if job_of(run).trial.index == 1 else ("SUCCEEDED", None)


def run_launch_step(tmp_path: Path, kfp_api: FakeKfp) -> tuple[Any, Any, int]:
    """kfp.local runs the launch component as KFP does (``_KFP_RUNTIME=true``, where kfp.Client
    cannot be imported) against ``kfp_api``: (tracker, plan, failed trials)."""
    from kfp import dsl, local

    from sftlab.kfp.components.sweep import sweep_components, write_plan
    from sftlab.sweep.runner import prepare

    data = spec_data(tracking={"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}, pipeline={"kfp_host": kfp_api.url})
    spec_text = yaml.safe_dump(data)
    tracker, plan = prepare(parse_spec(spec_text))
    plan_file = tmp_path / "plan.json"
    write_plan(plan, str(plan_file))
    launch = sweep_components("unused-locally").launch
    writer = dsl.component(write_text, base_image="python:3.11", install_kfp_package=False)

    @dsl.pipeline
    def launch_only(spec: str, plan: str) -> int:
        return launch(spec=spec, plan=writer(text=plan).output).outputs["Output"]

    runner = local.SubprocessRunner(use_venv=False)
    local.init(runner, pipeline_root=str(tmp_path / "kfp"), workspace_root=str(tmp_path / "ws"))
    failed = launch_only(spec=spec_text, plan=plan_file.read_text(encoding="utf-8")).output
    return tracker, plan, failed


@pytest.mark.filterwarnings("ignore:You may be attemping")  # kfp.local on an image name without "python"
def test_launch_step_runs_trials_from_inside_a_kfp_task(tmp_path: Path) -> None:
    """The launch step must submit every pending trial and record the outcomes."""
    with FakeKfp(_fails_the_second_trial) as kfp_api:
        tracker, plan, failed = run_launch_step(tmp_path, kfp_api)

    assert failed == 1 and len(kfp_api.runs) == 2
    runs = tracker.search("tags.`sftlab.stage` = 'trial'")
    assert {run.data.tags["sftlab.trial_key"]: run.info.status for run in runs} == {
        plan.trials[0].key: "FINISHED",
        plan.trials[1].key: "FAILED",
    }
    assert {job_of(run).context.sweep_run_id for run in kfp_api.runs.values()} == {plan.context.sweep_run_id}


def test_multi_user_kfp_refuses_a_client_without_credentials() -> None:
    import kfp
    from kfp_server_api.exceptions import ApiException

    with FakeKfp(authenticate=lambda token: None) as kfp_api, pytest.raises(ApiException) as refused:
        kfp.Client(host=kfp_api.url).create_experiment("sweeps", namespace="team-a")
    assert refused.value.status == 401 and kfp_api.refused == [401]


@pytest.mark.filterwarnings("ignore:You may be attemping")
def test_launch_step_mints_its_own_token_for_multi_user_kfp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In a profile namespace the launch step knows only its namespace and ServiceAccount (downward
    API, as the compiled pipeline sets them); it mints pipelines.kubeflow.org tokens through the
    TokenRequest API and runs the trials in its own namespace."""
    from kubernetes import client

    from sftlab.cluster.objects import POD_NAMESPACE_ENV
    from sftlab.kfp.auth import AUDIENCE, POD_SERVICE_ACCOUNT_ENV
    from tests.support.kube import NS, KubeServer, kubeconfig, service_account

    with KubeServer() as kube:
        api = client.ApiClient(client.Configuration(host=kube.url))
        service_account(api, "default-editor")

        def authenticate(token: str) -> str | None:
            minted = kube.tokens.get(token)
            return minted.namespace if minted is not None and minted.valid_for(AUDIENCE) else None

        monkeypatch.setenv("KUBECONFIG", str(kubeconfig(kube.url, tmp_path)))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        monkeypatch.setenv(POD_NAMESPACE_ENV, NS)
        monkeypatch.setenv(POD_SERVICE_ACCOUNT_ENV, "default-editor")
        with FakeKfp(_fails_the_second_trial, authenticate=authenticate) as kfp_api:
            _tracker, _plan, failed = run_launch_step(tmp_path, kfp_api)

    assert failed == 1 and len(kfp_api.runs) == 2 and kfp_api.refused == []
    assert [e["namespace"] for e in kfp_api.experiments.values()] == [NS]
    assert {(t.namespace, t.service_account, t.audiences) for t in kube.tokens.values()} == {
        (NS, "default-editor", (AUDIENCE,))
    }


def test_minted_tokens_are_renewed_before_they_expire(tmp_path: Path) -> None:
    from kubernetes import client

    from sftlab.errors import SftlabError
    from sftlab.kfp.auth import TokenRequestCredentials
    from tests.support.kube import NS, KubeServer, service_account

    with KubeServer() as kube:
        api = client.ApiClient(client.Configuration(host=kube.url))
        service_account(api, "default-editor")
        now = [0.0]
        credentials = TokenRequestCredentials(client.CoreV1Api(api), NS, "default-editor", clock=lambda: now[0])
        first = credentials._get_token()
        now[0] = 0.5 * 3600
        assert credentials._get_token() == first and len(kube.tokens) == 1
        now[0] = 0.9 * 3600
        assert credentials._get_token() != first and len(kube.tokens) == 2
        stranger = TokenRequestCredentials(client.CoreV1Api(api), NS, "nobody")
        with pytest.raises(SftlabError, match=r"ServiceAccount sweeps/nobody: HTTP 404 Not Found: .*not found"):
            stranger._get_token()
        api.close()
