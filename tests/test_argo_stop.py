"""A cancelled KFP run, stopped as Argo stops it: what a stage created must not outlive its pod.

Argo's emissary sends SIGTERM to the whole process group of the step's main container, whose main
process is KFP's launcher; the launcher has no handler and dies at once, the emissary exits with
it, and the container's processes are killed with the pod, so a stage's own ``finally`` gets no
time (argoproj/argo-workflows: cmd/argoexec/commands/emissary.go; kubeflow/pipelines:
backend/src/v2/component/launcher_v2.go). The guarantee is Kubernetes' garbage collector: every
object a stage creates is owned by the stage's pod, and kmock deletes owned objects with their pod.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from sftlab.kfp.pipelines.launchers import _group_alive
from sftlab.serving.inference_service import INFERENCE_SERVICE
from tests.support.kube import NS, KubeServer, custom, kubeconfig
from tests.test_inference_service import isvc

POD, POD_UID = "sweep-abc-evaluate-pod", "0b8e6c9e-1f0c-4bd8-9a59-2c51f6f6b0a1"

STAGE = textwrap.dedent(
    """
    import time
    from sftlab.cluster.objects import ObjectRunner, api_client
    from sftlab.serving.inference_service import INFERENCE_SERVICE
    from tests.test_inference_service import isvc

    runner = ObjectRunner(api_client(), INFERENCE_SERVICE, "sweeps", poll_s=0.1, timeout_s=600)
    with runner.created(isvc()):
        print("created", flush=True)
        time.sleep(600)
    """
)


def _pod(uid: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": POD, "namespace": NS, "uid": uid}}


def _isvc_names(api: Any) -> list[str]:
    r = INFERENCE_SERVICE
    items = custom(api).list_namespaced_custom_object(r.group, r.version, NS, r.plural)["items"]
    return [obj["metadata"]["name"] for obj in items]


@pytest.mark.parametrize("race", ["stage-cleans-up-first", "container-torn-down-first"])
def test_a_stage_stopped_like_argo_stops_it_leaves_nothing_once_its_pod_is_gone(tmp_path: Path, race: str) -> None:
    """Whether the stage's SIGTERM handler deletes the service before the container is torn down
    or not (a race on a real cluster), nothing is left once the pod is gone."""
    from kubernetes import client

    with KubeServer() as kube:
        api = client.ApiClient(client.Configuration(host=kube.url))
        core = client.CoreV1Api(api)
        core.create_namespaced_pod(NS, _pod(POD_UID))
        env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig(kube.url, tmp_path)),
            "KFP_POD_NAME": POD,
            "KFP_POD_UID": POD_UID,
            "SFTLAB_POD_NAMESPACE": NS,
            "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
        }
        env.pop("KUBERNETES_SERVICE_HOST", None)
        (tmp_path / "stage.py").write_text(STAGE)
        # The launcher: a parent without a SIGTERM handler, leading the step's process group.
        launcher = subprocess.Popen(
            ["sh", "-c", f"{sys.executable} {tmp_path / 'stage.py'}"],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert launcher.stdout is not None
        assert launcher.stdout.readline() == f"InferenceService {NS}/{isvc()['metadata']['name']} created\n"
        assert launcher.stdout.readline() == "created\n"
        (name,) = _isvc_names(api)
        r = INFERENCE_SERVICE
        created = custom(api).get_namespaced_custom_object(r.group, r.version, NS, r.plural, name)
        assert created["metadata"]["ownerReferences"] == [
            {"apiVersion": "v1", "kind": "Pod", "name": POD, "uid": POD_UID}
        ]

        if race == "stage-cleans-up-first":
            os.killpg(launcher.pid, signal.SIGTERM)  # the emissary: SIGTERM to the whole group
            launcher.wait(10)  # the launcher dies at once; the stage gets time to finish its cleanup
            deadline = time.monotonic() + 10
            while _group_alive(launcher.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        os.killpg(launcher.pid, signal.SIGKILL)  # the container goes, with whatever still runs in it
        launcher.wait(10)
        core.delete_namespaced_pod(POD, NS)  # the kubelet reports the pod gone

        deadline = time.monotonic() + 10
        while _isvc_names(api) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _isvc_names(api) == []
        # Deleted by the stage itself, or else by the collector with the pod.
        assert kube.collected == ([] if race == "stage-cleans-up-first" else [name])
        api.close()


def test_objects_in_another_namespace_are_not_owned_by_the_pod(monkeypatch: Any) -> None:
    """An owner outside the object's namespace reads as a missing owner, and the collector would
    delete the object at once: such objects get no reference."""
    from sftlab.cluster.objects import task_pod_owner

    monkeypatch.setenv("KFP_POD_NAME", POD)
    monkeypatch.setenv("KFP_POD_UID", POD_UID)
    monkeypatch.setenv("SFTLAB_POD_NAMESPACE", NS)
    assert task_pod_owner(NS) == {"apiVersion": "v1", "kind": "Pod", "name": POD, "uid": POD_UID}
    assert task_pod_owner("elsewhere") is None
    monkeypatch.delenv("KFP_POD_UID")
    assert task_pod_owner(NS) is None
    assert isvc()["metadata"].get("ownerReferences") is None  # the manifest itself stays as built
