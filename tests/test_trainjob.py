"""TrainJob manifests for multi-node trials, and their create → watch → delete lifecycle over HTTP.

The lifecycle runs against kmock (a stateful in-memory Kubernetes API on 127.0.0.1) with the real
``kubernetes`` client; the test plays the Trainer controller by patching the object's status.
"""

from __future__ import annotations

import json
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from sftlab.cluster.engines import engine_for
from sftlab.cluster.pods import JOB_ENV, LABEL_TRIAL_KEY, trainjob_name
from sftlab.cluster.trainjob import TrainJobRunner, trainjob_manifest, trial_job_from_manifest
from sftlab.errors import SftlabError
from sftlab.spec.job import TrialJob, context_for
from sftlab.spec.schema import DistributedConfig, SecretEnv, TaskResources, Toleration
from tests.support.helpers import first_trial, quickstart_spec
from tests.support.kube import NS, Controller, KubeServer, cond, create, custom, delete, exists, kube_api, sigterm  # noqa: F401 - re-exported

DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
SECRETS = [
    SecretEnv(secret="s3-creds", env={"AWS_ACCESS_KEY_ID": "access", "AWS_SECRET_ACCESS_KEY": "secret"}),
    SecretEnv(secret="hub", env={"HF_TOKEN": "token"}),
]
GPU_RES = TaskResources(
    cpu="8",
    memory="64Gi",
    gpus=4,
    node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
    tolerations=[Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")],
    shm_size="16Gi",
)


def quickstart_job(tmp_path_factory: pytest.TempPathFactory) -> TrialJob:
    """The quickstart's first trial, as its stage would receive it (other test modules reuse it)."""
    tmp = tmp_path_factory.mktemp("trainjob")
    spec = quickstart_spec(tmp)
    return TrialJob(trial=first_trial(spec), context=context_for(spec).model_copy(update={"trial_run_id": "run123"}))


job = pytest.fixture(scope="module")(quickstart_job)


def manifest_for(job: TrialJob, resources: TaskResources = GPU_RES, **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"image": "registry.example/sftlab:1.0", "nodes": 2, "namespace": NS}
    args |= {"secrets": SECRETS, "cache_pvc": "model-cache"} | kw
    return trainjob_manifest(job, resources, **args)


def pod_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    (patch,) = manifest["spec"]["runtimePatches"]
    (rjob,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert rjob["name"] == "node"
    return rjob["template"]["spec"]["template"]["spec"]


# ---------------------------------------------------------------- manifests


def test_manifest_shape_and_gpu_settings(job: TrialJob) -> None:
    m = manifest_for(job)
    assert m["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and m["kind"] == "TrainJob"
    assert m["metadata"]["namespace"] == NS
    assert m["metadata"]["labels"][LABEL_TRIAL_KEY] == job.trial.key
    assert m["spec"]["runtimeRef"] == {"name": "torch-distributed"}
    trainer = m["spec"]["trainer"]
    assert trainer["image"] == "registry.example/sftlab:1.0"
    assert trainer["numNodes"] == 2 and trainer["numProcPerNode"] == 4
    assert trainer["command"][0] == "torchrun"
    assert trainer["resourcesPerNode"] == {
        "requests": {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "4"},
        "limits": {"memory": "64Gi", "nvidia.com/gpu": "4"},
    }
    pod = pod_spec(m)
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_manifest_volumes_and_env(job: TrialJob) -> None:
    m = manifest_for(job)
    pod = pod_spec(m)
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["model-cache"]["persistentVolumeClaim"] == {"claimName": "model-cache"}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}
    (container,) = pod["containers"]
    assert container["name"] == "node"
    mounts = {v["name"]: v["mountPath"] for v in container["volumeMounts"]}
    assert mounts == {"model-cache": "/cache", "dshm": "/dev/shm"}
    env = {e["name"]: e for e in m["spec"]["trainer"]["env"]}
    # The same cache layout as the pipeline tasks (tests/test_pipelines.py checks theirs).
    assert (env["SFTLAB_CACHE"]["value"], env["HF_HOME"]["value"]) == ("/cache/sftlab", "/cache/hf")
    assert env["HF_TOKEN"] == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hub", "key": "token"}}}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "s3-creds", "key": "secret"}


def test_manifest_secrets_are_references_only(job: TrialJob) -> None:
    m = manifest_for(job)
    for var in m["spec"]["trainer"]["env"]:
        if var["name"] in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "HF_TOKEN"):
            assert "value" not in var and set(var["valueFrom"]) == {"secretKeyRef"}
    # Nothing that looks like a secret value leaks anywhere in the document.
    text = json.dumps(m)
    assert "secretKeyRef" in text and '"value": "access"' not in text


def test_trial_job_round_trips_through_the_manifest(job: TrialJob) -> None:
    m = manifest_for(job)
    # Through JSON, as it would travel to the API server and into the pod env.
    back = trial_job_from_manifest(json.loads(json.dumps(m)))
    assert back == job
    assert back.context.trial_run_id == "run123"
    assert not any(
        v.get("configMapKeyRef") or v.get("valueFrom", {}).get("configMapKeyRef") for v in m["spec"]["trainer"]["env"]
    )


def test_cpu_only_manifest_has_no_gpu_and_patches_only_pod_metadata(job: TrialJob) -> None:
    m = manifest_for(job, TaskResources(cpu="2", memory="4Gi"), secrets=[], cache_pvc=None, nodes=1)
    trainer = m["spec"]["trainer"]
    assert trainer["numNodes"] == 1 and trainer["numProcPerNode"] == 1
    assert "nvidia.com/gpu" not in json.dumps(trainer["resourcesPerNode"])
    (patch,) = m["spec"]["runtimePatches"]
    (node,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    template = node["template"]["spec"]["template"]
    assert template["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}  # Kubeflow profiles: Istio
    assert template["spec"] == {}  # no placement, volumes or pull secrets
    assert [e["name"] for e in trainer["env"]] == [JOB_ENV]


def test_other_accelerator_resource_name(job: TrialJob) -> None:
    m = manifest_for(job, TaskResources(gpus=2, accelerator="amd.com/gpu"))
    assert m["spec"]["trainer"]["resourcesPerNode"]["limits"] == {"amd.com/gpu": "2"}


def test_bad_inputs_are_one_line_errors(job: TrialJob) -> None:
    with pytest.raises(SftlabError, match="nodes must be at least 1"):
        manifest_for(job, nodes=0)
    with pytest.raises(SftlabError, match="image is required"):
        manifest_for(job, image="")


@pytest.mark.parametrize(
    "key",
    ["abc123def4567890", "Model_A/Dataset.B:lr=1e-4", "x" * 200, "-leading-and-trailing-", "UPPER"],
)
def test_names_are_valid_dns_labels(key: str) -> None:
    name = trainjob_name(key)
    assert DNS_1035.match(name) and len(name) <= 40  # child pod names must fit in 63
    assert trainjob_name(key) == name  # stable
    assert trainjob_name(key + "y") != name  # distinct keys, distinct names


def test_readable_name_for_plain_keys(job: TrialJob) -> None:
    assert manifest_for(job)["metadata"]["name"] == f"sftlab-{job.trial.key}"


def test_manifest_validates_against_trainer_api_models(job: TrialJob) -> None:
    models = pytest.importorskip("kubeflow_trainer_api.models")
    m = manifest_for(job)
    parsed = models.TrainerV1alpha1TrainJob.from_dict(m)
    assert parsed.spec.trainer.num_nodes == 2
    assert parsed.spec.runtime_patches[0].training_runtime_spec.template.spec.replicated_jobs[0].name == "node"
    # No unknown keys were dropped: the model's own dump equals ours.
    assert parsed.to_dict() == m


def test_modules_do_not_import_kfp_or_kserve() -> None:
    """The cluster-job modules load fast in any pod: kserve's models load only to build a manifest."""
    import subprocess

    code = (
        "import sys, sftlab.cluster.trainjob, sftlab.cluster.pytorchjob, sftlab.serving.inference_service; "
        "sys.exit('kfp' in sys.modules or 'kserve' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1], check=False).returncode == 0


# ---------------------------------------------------------------- lifecycle over HTTP (kmock)


kube = pytest.fixture(scope="module")(kube_api)


def runner(api: Any, logs: list[str], **kw: Any) -> TrainJobRunner:
    log = kw.pop("log", logs.append)
    return TrainJobRunner(api, NS, poll_s=kw.pop("poll_s", 0.01), timeout_s=kw.pop("timeout_s", 10), log=log, **kw)


def test_success_streams_conditions_and_deletes(kube: Any, job: TrialJob) -> None:
    m = manifest_for(job)
    name = m["metadata"]["name"]
    created = cond("Created", reason="JobSetCreated", message="TrainJob is created")
    ctl = Controller(kube, name, [[created], [created, cond("Complete", reason="JobSetCompleted", message="done")]])
    logs: list[str] = []
    runner(kube, logs, sleep=ctl.sleep).run(m)
    # The object the controller saw is the manifest we sent, trial JSON included.
    stored = ctl.seen_during_run[0]
    assert stored["spec"] == m["spec"] and stored["metadata"]["labels"][LABEL_TRIAL_KEY] == job.trial.key
    assert trial_job_from_manifest(stored) == job
    assert not exists(kube, name)
    text = "\n".join(logs)
    assert "created" in logs[0]
    assert "Created=True (JobSetCreated: TrainJob is created)" in text
    assert "Complete=True (JobSetCompleted: done)" in text
    assert logs[-1].endswith("deleted")
    assert sum("Created=True" in line for line in logs) == 1  # changes only, not every poll


def test_succeeded_condition_also_counts(kube: Any, job: TrialJob) -> None:
    m = manifest_for(job)
    ctl = Controller(kube, m["metadata"]["name"], [[cond("Succeeded")]])
    runner(kube, [], sleep=ctl.sleep).run(m)
    assert not exists(kube, m["metadata"]["name"])


def test_failure_raises_reason_and_deletes(kube: Any, job: TrialJob) -> None:
    m = manifest_for(job)
    name = m["metadata"]["name"]
    failed = cond("Failed", reason="TrainingFailed", message="node-0: exit code 1\nCUDA out of memory")
    ctl = Controller(kube, name, [[cond("Created")], [cond("Created"), cond("Complete", "False"), failed]])
    with pytest.raises(SftlabError) as info:
        runner(kube, [], sleep=ctl.sleep).run(m)
    msg = str(info.value)
    assert "\n" not in msg
    assert f"TrainJob {NS}/{name} failed: Failed=True (TrainingFailed: node-0: exit code 1 CUDA out of memory)" == msg
    assert not exists(kube, name)


def test_timeout_raises_and_deletes(kube: Any, job: TrialJob) -> None:
    m = manifest_for(job)
    name = m["metadata"]["name"]
    ctl = Controller(kube, name, [[cond("Created", reason="JobSetCreated")]])

    def slow_sleep(s: float) -> None:
        ctl.sleep(s)
        time.sleep(s)

    started = time.monotonic()
    with pytest.raises(
        SftlabError, match=r"did not finish within 0.3 s \(last condition: Created=True \(JobSetCreated\)\)"
    ):
        runner(kube, [], poll_s=0.05, timeout_s=0.3, sleep=slow_sleep).run(m)
    assert time.monotonic() - started < 3
    assert not exists(kube, name)


def test_keyboard_interrupt_deletes(kube: Any, job: TrialJob) -> None:
    m = manifest_for(job)

    def interrupted(_: float) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        runner(kube, [], sleep=interrupted).run(m)
    assert not exists(kube, m["metadata"]["name"])


def test_duplicate_create_is_a_clear_error_and_leaves_the_other_alone(kube: Any, job: TrialJob) -> None:
    m = manifest_for(job)
    name = m["metadata"]["name"]
    create(kube, m)
    try:
        with pytest.raises(
            SftlabError, match=rf"TrainJob {NS}/{name} already exists .*kubectl delete trainjob -n {NS} {name}"
        ):
            runner(kube, []).run(m)
        assert exists(kube, name)  # someone else's object: not deleted
    finally:
        delete(kube, name)


def test_object_deleted_by_someone_else(kube: Any, job: TrialJob) -> None:
    m = manifest_for(job)
    name = m["metadata"]["name"]

    def vanish(_: float) -> None:
        delete(kube, name)

    with pytest.raises(SftlabError, match="disappeared while running"):
        runner(kube, [], sleep=vanish).run(m)
    assert not exists(kube, name)


def test_sigterm_deletes_and_restores_the_handler(kube: Any, job: TrialJob) -> None:
    m = manifest_for(job)
    before = signal.getsignal(signal.SIGTERM)
    logs: list[str] = []
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        runner(kube, logs, sleep=sigterm).run(m)
    assert not exists(kube, m["metadata"]["name"])
    assert logs[-1].endswith("deleted")
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize("moment", ["created", "deleted"])
def test_sigterm_during_create_or_delete_waits_for_the_request(kube: Any, job: TrialJob, moment: str) -> None:
    """A SIGTERM that comes while the create request is in flight is raised once it is done, so the
    new object is still deleted; one during the delete is raised after it, even after a success."""
    m = manifest_for(job)
    ctl = Controller(kube, m["metadata"]["name"], [[cond("Complete")]])

    def log(line: str) -> None:  # called right after the request, still inside it
        if line.endswith(moment):
            sigterm(0)

    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        runner(kube, [], sleep=ctl.sleep, log=log).run(m)
    assert not exists(kube, m["metadata"]["name"])
    # On create: cancelled before the first poll. On delete: the job had finished.
    assert bool(ctl.seen_during_run) == (moment == "deleted")


def test_launcher_for_binds_nodes_and_runtime(job: TrialJob) -> None:
    launcher = engine_for(DistributedConfig(nodes=3, runtime="my-runtime"))
    assert launcher.kind == "trainjob" and launcher.runner is TrainJobRunner
    m = launcher.manifest(job, GPU_RES, image="registry.example/sftlab:1.0", namespace=NS)
    assert m["kind"] == "TrainJob" and m["spec"]["runtimeRef"] == {"name": "my-runtime"}
    assert m["spec"]["trainer"]["numNodes"] == 3
