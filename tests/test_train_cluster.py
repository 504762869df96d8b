"""Multi-node dispatch of the train stage, over real HTTP against kmock, with real training pods' work.

The stage runs as in a pipeline pod (its namespace and cluster client pointed at kmock).
The test plays the Kubeflow Trainer controller: it reads the TrainJob the stage created, runs the
manifest's own command once per node — torchrun with the ``PET_*`` rendezvous env the Trainer's
torch plugin injects, two "nodes" on 127.0.0.1 — with the manifest's env, then patches the status.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from sftlab.cluster.trainjob import GROUP, PLURAL, VERSION, trial_job_from_manifest
from sftlab.errors import SftlabError
from sftlab.spec.job import CACHE_MOUNT, TrialJob
from sftlab.spec.schema import DistributedConfig, SecretEnv, TaskResources
from sftlab.stages.common import run_stage
from sftlab.tracking.runs import TAG_ERROR, Tracker
from sftlab.training import multinode as cluster
from tests.support.helpers import REPO, free_port
from tests.support.kube import kube_api
from tests.test_distributed import STEPS, trial_job

NS = "team-a"
IMAGE = "registry.example/sftlab:1.0"
kube = pytest.fixture(scope="module")(kube_api)


def multi_node_job(tmp_path: Path, **distributed: Any) -> tuple[TrialJob, Tracker]:
    """A 2-node trial whose checkpoints go to a shared volume (both nodes upload, rank 0 marks)."""
    resources = TaskResources(cpu="2", memory="4Gi")
    job, tracker = trial_job(
        tmp_path,
        train_resources=resources,
        distributed=DistributedConfig(nodes=2, **distributed),
        checkpoint_uri=str(tmp_path / "pvc"),
    )
    placement = job.context.resources.model_copy(
        update={
            "secrets": [SecretEnv(secret="mlflow", env={"MLFLOW_TRACKING_TOKEN": "token"})],
            "model_cache_pvc": "models",
        }
    )
    return job.model_copy(
        update={"context": job.context.model_copy(update={"image": IMAGE, "resources": placement})}
    ), tracker


class Controller(threading.Thread):
    """Waits for the TrainJob, runs its nodes as local processes, reports the outcome in its status."""

    def __init__(self, api: Any, volume: Path):
        super().__init__(daemon=True)
        from kubernetes import client

        self.custom = client.CustomObjectsApi(api)
        self.volume = volume
        self.seen: dict[str, Any] = {}
        self.logs: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._play()
        except BaseException as exc:  # noqa: BLE001 - re-raised by the test
            self.error = exc

    def _play(self) -> None:
        deadline = time.monotonic() + 60
        while not (items := self.custom.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)["items"]):
            assert time.monotonic() < deadline, "no TrainJob was created"
            time.sleep(0.1)
        self.seen = items[0]
        trainer = self.seen["spec"]["trainer"]
        # Plain env values as the pod gets them; the cache volume's mount point becomes a local folder.
        env = {e["name"]: e["value"].replace(CACHE_MOUNT, str(self.volume)) for e in trainer["env"] if "value" in e}
        port = str(free_port())
        nodes = [
            subprocess.Popen(
                trainer["command"],
                cwd=REPO,
                env={
                    **os.environ,
                    **env,
                    "OMP_NUM_THREADS": "1",
                    "PET_NNODES": str(trainer["numNodes"]),
                    "PET_NPROC_PER_NODE": str(trainer["numProcPerNode"]),
                    "PET_NODE_RANK": str(rank),
                    "PET_MASTER_ADDR": "127.0.0.1",
                    "PET_MASTER_PORT": port,
                },
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for rank in range(trainer["numNodes"])
        ]
        self.logs = [node.communicate(timeout=600)[0] for node in nodes]
        ok = all(node.returncode == 0 for node in nodes)
        condition = {
            "type": "Complete" if ok else "Failed",
            "status": "True",
            "reason": "JobSetCompleted" if ok else "JobSetFailed",
            "message": "",
        }
        name = self.seen["metadata"]["name"]
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, NS, PLURAL, name, {"status": {"conditions": [condition]}}
        )


@pytest.mark.slow  # trains a model or runs servers for tens of seconds
def test_multi_node_trial_runs_as_a_trainjob_and_returns_rank0s_result(
    tmp_path: Path, kube: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    job, tracker = multi_node_job(tmp_path)
    monkeypatch.setattr(cluster, "cluster_namespace", lambda: NS)
    monkeypatch.setattr(cluster, "api_client", lambda: kube)
    monkeypatch.setattr(cluster, "POLL_S", 0.2)
    controller = Controller(kube, tmp_path / "cache-volume")
    controller.start()
    try:
        result = run_stage("train", job.to_json(), tmp_path / "model.json")
    finally:
        controller.join(30)
        print("\n".join(controller.logs)[-5000:])  # the nodes' output, shown when the test fails
    if controller.error:
        raise controller.error

    # The job the stage built: the pipeline pod's image, namespace, train resources, secrets and cache.
    manifest = controller.seen
    trainer = manifest["spec"]["trainer"]
    assert manifest["metadata"]["namespace"] == NS and manifest["spec"]["runtimeRef"] == {"name": "torch-distributed"}
    assert (trainer["image"], trainer["numNodes"], trainer["numProcPerNode"]) == (IMAGE, 2, 1)
    assert trainer["command"] == ["torchrun", "-m", "sftlab.training.distributed"]
    assert trainer["resourcesPerNode"] == {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "4Gi"}}
    env = {e["name"]: e for e in trainer["env"]}
    assert env["MLFLOW_TRACKING_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "mlflow", "key": "token"}}
    assert trial_job_from_manifest(manifest) == job  # the trial and its run id, as the pods read them
    assert "models" in str(manifest["spec"]["runtimePatches"])  # the model-cache PVC
    assert (tmp_path / "cache-volume" / "sftlab").is_dir()  # the pods used the shared cache
    assert "rank 0/2: done" in controller.logs[0] and "rank 1/2: done" in controller.logs[1]
    assert not any("upload to" in log for log in controller.logs)  # both nodes uploaded each epoch without a failure
    assert not (tmp_path / "pvc" / job.trial.key).exists()  # and was removed once the model was stored

    # The stage returns what rank 0 stored; the job is gone.
    run = tracker.client.get_run(job.context.trial_run_id)
    assert run.data.params["train.world_size"] == "2"
    assert result.metrics["train/steps"] == STEPS and result.outputs["uri"] == f"runs:/{job.context.trial_run_id}/model"
    assert {a.path for a in tracker.client.list_artifacts(job.context.trial_run_id, "model")} >= {
        "model/model.safetensors"
    }
    assert "time/train_s" in run.data.metrics
    assert kube_jobs(kube) == []


def kube_jobs(api: Any) -> list[Any]:
    from kubernetes import client

    return client.CustomObjectsApi(api).list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)["items"]


def test_outside_a_pod_multi_node_is_a_clear_error(tmp_path: Path) -> None:
    job, tracker = multi_node_job(tmp_path)
    message = (
        "training.distributed.nodes 2 runs the trial as a cluster job from a pipeline pod: no Kubernetes namespace: "
        "not running in a pod (/var/run/secrets/kubernetes.io/serviceaccount/namespace is missing) and none configured"
    )
    with pytest.raises(SftlabError) as info:
        run_stage("train", job.to_json(), tmp_path / "model.json")
    assert str(info.value) == message
    assert tracker.client.get_run(job.context.trial_run_id).data.tags[TAG_ERROR] == f"train: SftlabError: {message}"


def test_sharded_strategies_across_nodes_are_refused(tmp_path: Path) -> None:
    job, _ = multi_node_job(tmp_path, strategy="fsdp")
    with pytest.raises(SftlabError, match="fsdp across nodes is not supported"):
        run_stage("train", job.to_json(), tmp_path / "model.json")
