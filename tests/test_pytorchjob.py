"""PyTorchJob manifests (the v1 training operator engine) and their lifecycle over HTTP.

The manifests are held to the ``kubeflow-training`` SDK's models when it is installed, and to the
TrainJob's pod settings always; the lifecycle runs against kmock (tests/test_trainjob.py's harness).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from sftlab.cluster.engines import engine_for
from sftlab.cluster.pods import JOB_ENV, LABEL_TRIAL_KEY
from sftlab.cluster.pytorchjob import PYTORCHJOB, PyTorchJobRunner, pytorchjob_manifest
from sftlab.cluster.trainjob import trial_job_from_manifest
from sftlab.errors import SftlabError
from sftlab.spec.job import TrialJob
from sftlab.spec.schema import DistributedConfig, TaskResources
from tests.support.kube import NS, Controller, cond, create, delete, exists, kube_api
from tests.test_trainjob import GPU_RES, SECRETS, manifest_for, pod_spec, quickstart_job

job = pytest.fixture(scope="module")(quickstart_job)
kube = pytest.fixture(scope="module")(kube_api)

IMAGE = "registry.example/sftlab:1.0"


def pytorchjob_for(job: TrialJob, resources: TaskResources = GPU_RES, **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"image": IMAGE, "nodes": 3, "namespace": NS, "secrets": SECRETS, "cache_pvc": "model-cache"}
    return pytorchjob_manifest(job, resources, **(args | kw))


def replica(manifest: dict[str, Any], kind: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A replica spec and its one container."""
    spec = manifest["spec"]["pytorchReplicaSpecs"][kind]
    (container,) = spec["template"]["spec"]["containers"]
    return spec, container


# ---------------------------------------------------------------- manifests


def test_master_and_workers_run_torchrun_on_every_gpu(job: TrialJob) -> None:
    m = pytorchjob_for(job)
    assert m["apiVersion"] == "kubeflow.org/v1" and m["kind"] == "PyTorchJob"
    assert m["metadata"]["name"] == f"sftlab-{job.trial.key}" and m["metadata"]["namespace"] == NS
    assert m["metadata"]["labels"][LABEL_TRIAL_KEY] == job.trial.key
    assert m["spec"]["nprocPerNode"] == "4"  # a string in the v1 API
    master, container = replica(m, "Master")
    worker, _ = replica(m, "Worker")
    assert (master["replicas"], worker["replicas"]) == (1, 2)
    assert master["restartPolicy"] == worker["restartPolicy"] == "Never"
    # The operator finds the container and the rendezvous port by these names.
    assert container["name"] == "pytorch"
    assert container["ports"] == [{"name": "pytorchjob-port", "containerPort": 23456}]
    # No rendezvous flags: torchrun reads PET_NNODES, PET_NODE_RANK, PET_MASTER_ADDR, ... from the operator.
    assert container["command"] == ["torchrun", "-m", "sftlab.training.distributed"]
    assert container["image"] == IMAGE
    assert container["resources"] == {
        "requests": {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "4"},
        "limits": {"memory": "64Gi", "nvidia.com/gpu": "4"},
    }


def test_pods_match_the_trainjob_for_the_same_inputs(job: TrialJob) -> None:
    """Switching the engine changes the job object, never what a node gets."""
    pt = pytorchjob_for(job)
    tj = manifest_for(job, nodes=3)
    _, container = replica(pt, "Master")
    pod = pt["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert container["env"] == tj["spec"]["trainer"]["env"]
    assert container["resources"] == tj["spec"]["trainer"]["resourcesPerNode"]
    assert container["volumeMounts"] == pod_spec(tj)["containers"][0]["volumeMounts"]
    for key in ("volumes", "nodeSelector", "tolerations"):
        assert pod[key] == pod_spec(tj)[key], key
    assert pt["metadata"]["name"] == tj["metadata"]["name"]


def test_volumes_env_and_secret_references(job: TrialJob) -> None:
    m = pytorchjob_for(job)
    master, container = replica(m, "Master")
    volumes = {v["name"]: v for v in master["template"]["spec"]["volumes"]}
    assert volumes["model-cache"]["persistentVolumeClaim"] == {"claimName": "model-cache"}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}
    assert {v["name"]: v["mountPath"] for v in container["volumeMounts"]} == {
        "model-cache": "/cache",
        "dshm": "/dev/shm",
    }
    env = {e["name"]: e for e in container["env"]}
    assert env["HF_TOKEN"] == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hub", "key": "token"}}}
    assert "value" not in env["AWS_SECRET_ACCESS_KEY"]
    assert '"value": "secret"' not in json.dumps(m) and '"value": "access"' not in json.dumps(m)
    assert master["template"]["metadata"]["labels"][LABEL_TRIAL_KEY] == job.trial.key


def test_workers_are_copies_not_aliases(job: TrialJob) -> None:
    m = pytorchjob_for(job)
    master, worker = (m["spec"]["pytorchReplicaSpecs"][k] for k in ("Master", "Worker"))
    assert master["template"] == worker["template"] and master["template"] is not worker["template"]
    assert "&id" not in yaml.safe_dump(m)  # shared dicts would dump as YAML anchors


def test_single_cpu_node_has_only_a_master(job: TrialJob) -> None:
    m = pytorchjob_for(job, TaskResources(cpu="2", memory="4Gi"), nodes=1, secrets=[], cache_pvc=None)
    assert set(m["spec"]["pytorchReplicaSpecs"]) == {"Master"}
    assert m["spec"]["nprocPerNode"] == "1"
    master, container = replica(m, "Master")
    assert "volumes" not in master["template"]["spec"] and "volumeMounts" not in container
    assert "nvidia.com/gpu" not in json.dumps(container["resources"])
    assert [e["name"] for e in container["env"]] == [JOB_ENV]


def test_trial_job_round_trips(job: TrialJob) -> None:
    assert trial_job_from_manifest(json.loads(json.dumps(pytorchjob_for(job)))) == job


def test_bad_inputs_are_one_line_errors(job: TrialJob) -> None:
    with pytest.raises(SftlabError, match="^pytorchjob: nodes must be at least 1"):
        pytorchjob_for(job, nodes=0)
    with pytest.raises(SftlabError, match="^pytorchjob: an image is required"):
        pytorchjob_for(job, image="")


def test_manifest_validates_against_training_operator_models(job: TrialJob) -> None:
    pytest.importorskip("kubeflow.training")
    from kubeflow.training import ApiClient

    m = pytorchjob_for(job)

    class Response:  # what ApiClient.deserialize reads
        data = json.dumps(m)

    parsed = ApiClient().deserialize(Response, "KubeflowOrgV1PyTorchJob")
    assert parsed.spec.nproc_per_node == "4"
    assert parsed.spec.pytorch_replica_specs["Worker"].replicas == 2
    assert parsed.spec.pytorch_replica_specs["Master"].template.spec.containers[0].ports[0].container_port == 23456
    # No unknown or misspelt keys were dropped: the models' own dump equals ours.
    assert ApiClient().sanitize_for_serialization(parsed) == m


# ---------------------------------------------------------------- lifecycle over HTTP (kmock)


def run(api: Any, manifest: dict[str, Any], logs: list[str], **kw: Any) -> None:
    PyTorchJobRunner(api, NS, poll_s=0.01, timeout_s=kw.pop("timeout_s", 10), log=logs.append, **kw).run(manifest)


def test_launcher_runs_a_pytorchjob_to_success_and_deletes_it(kube: Any, job: TrialJob) -> None:
    launcher = engine_for(DistributedConfig(nodes=2, launcher="pytorchjob"))
    assert launcher.kind == "pytorchjob" and launcher.runner is PyTorchJobRunner
    m = launcher.manifest(job, GPU_RES, image=IMAGE, namespace=NS, secrets=SECRETS)
    name = m["metadata"]["name"]
    assert m["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1
    created, running = cond("Created", reason="PyTorchJobCreated"), cond("Running", reason="PyTorchJobRunning")
    steps = [
        [created],
        [created, running],
        [created, cond("Running", "False"), cond("Succeeded", reason="PyTorchJobSucceeded")],
    ]
    ctl = Controller(kube, name, steps, PYTORCHJOB)
    logs: list[str] = []
    launcher.runner(kube, NS, poll_s=0.01, timeout_s=10, log=logs.append, sleep=ctl.sleep).run(m)
    assert trial_job_from_manifest(ctl.seen_during_run[0]) == job
    assert not exists(kube, name, PYTORCHJOB)
    text = "\n".join(logs)
    assert f"PyTorchJob {NS}/{name} created" in text and "Running=True (PyTorchJobRunning)" in text
    assert "Succeeded=True (PyTorchJobSucceeded)" in text
    assert logs[-2:] == [f"PyTorchJob {NS}/{name} finished", f"PyTorchJob {NS}/{name} deleted"]


def test_failed_condition_is_the_error_and_the_job_is_deleted(kube: Any, job: TrialJob) -> None:
    m = pytorchjob_for(job)
    name = m["metadata"]["name"]
    failed = cond(
        "Failed", reason="PyTorchJobFailed", message="PyTorchJob sweeps/x is failed because 1 Worker replica(s) failed."
    )
    ctl = Controller(kube, name, [[cond("Running")], [cond("Running", "False"), failed]], PYTORCHJOB)
    with pytest.raises(SftlabError) as info:
        run(kube, m, [], sleep=ctl.sleep)
    assert str(info.value) == f"PyTorchJob {NS}/{name} failed: Failed=True (PyTorchJobFailed: {failed['message']})"
    assert not exists(kube, name, PYTORCHJOB)


def test_someone_elses_job_is_an_error_and_survives(kube: Any, job: TrialJob) -> None:
    m = pytorchjob_for(job)
    name = m["metadata"]["name"]
    create(kube, m, PYTORCHJOB)
    try:
        with pytest.raises(SftlabError, match=rf"already exists .*`kubectl delete pytorchjob -n {NS} {name}`"):
            run(kube, m, [])
        assert exists(kube, name, PYTORCHJOB)
    finally:
        delete(kube, name, PYTORCHJOB)


def test_ctrl_c_while_waiting_deletes(kube: Any, job: TrialJob) -> None:
    m = pytorchjob_for(job)

    def interrupted(_: float) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(kube, m, [], sleep=interrupted)
    assert not exists(kube, m["metadata"]["name"], PYTORCHJOB)
