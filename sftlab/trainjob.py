"""Multi-node training of one trial through a Kubeflow Trainer ``TrainJob``.

``trainjob_manifest`` turns a trial and its train-stage resources into a TrainJob (Kubeflow
Trainer v2 API, ``trainer.kubeflow.org/v1alpha1``, field names checked against the
``kubeflow-trainer-api`` 2.3.0 models: pod-level settings go in ``spec.runtimePatches``, which
replaced the earlier ``podTemplateOverrides``). ``TrainJobRunner`` creates it, polls its
``status.conditions`` until it completes, fails or times out, logs every condition change, and
deletes it afterwards whatever happened.

This module is importable without kfp; it needs only the ``kubernetes`` client at run time.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sftlab.errors import SftlabError
from sftlab.job import CACHE_MOUNT, TrialJob, cache_env
from sftlab.spec import SecretEnv, TaskResources

GROUP = "trainer.kubeflow.org"
VERSION = "v1alpha1"
PLURAL = "trainjobs"
KIND = "TrainJob"
API_VERSION = f"{GROUP}/{VERSION}"

DEFAULT_RUNTIME = "torch-distributed"
# The torch-distributed runtime's replicated job and container are both called "node".
NODE = "node"
# torchrun reads its rendezvous settings (PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK,
# PET_MASTER_ADDR, PET_MASTER_PORT) from the env the Trainer's torch plugin injects.
# NOTE: the ``sftlab.stages.distributed`` entry point does not exist yet; it is to read the
# trial from $SFTLAB_TRIAL_JOB and run the train stage under torchrun.
DEFAULT_COMMAND: tuple[str, ...] = ("torchrun", "-m", "sftlab.stages.distributed")

JOB_ENV = "SFTLAB_TRIAL_JOB"
LABEL_TRIAL_KEY = "sftlab.trial-key"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
CACHE_VOLUME = "model-cache"
SHM_VOLUME = "dshm"
# Child names (JobSet, Jobs, pods "<name>-node-<i>-<j>-<rand>") must still fit in 63 characters.
MAX_NAME = 40

SUCCESS_CONDITIONS = ("Complete", "Succeeded")
FAILURE_CONDITIONS = ("Failed",)

_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def trainjob_name(trial_key: str, prefix: str = "sftlab-") -> str:
    """A DNS-1035 label (≤ ``MAX_NAME`` chars, starts with a letter) derived from the trial key.

    Keys that need no cleaning and fit are kept readable (``sftlab-<key>``); otherwise the cleaned
    key is cut and a digest of the original appended, so distinct keys keep distinct names.
    """
    cleaned = re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", trial_key.lower())).strip("-")
    name = f"{prefix}{cleaned}"
    if cleaned == trial_key and len(name) <= MAX_NAME:
        return name
    tag = hashlib.sha256(trial_key.encode()).hexdigest()[:8]
    head = name[: MAX_NAME - len(tag) - 1].rstrip("-")
    return f"{head}-{tag}"


def _label_value(value: str) -> str:
    if len(value) <= 63 and _LABEL_VALUE.match(value):
        return value
    return trainjob_name(value, prefix="k-")


def _env(name: str, value: str) -> dict[str, Any]:
    return {"name": name, "value": value}


def _secret_env(secrets: Iterable[SecretEnv]) -> list[dict[str, Any]]:
    """Secret keys as env through ``secretKeyRef``: the manifest names secrets, never holds values."""
    return [
        {"name": var, "valueFrom": {"secretKeyRef": {"name": s.secret, "key": key}}}
        for s in secrets
        for var, key in s.env.items()
    ]


def _resources(resources: TaskResources) -> dict[str, Any]:
    """Per-node requests/limits: cpu is a request only (no throttling); memory and GPUs are capped."""
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if resources.cpu:
        requests["cpu"] = resources.cpu
    if resources.memory:
        requests["memory"] = limits["memory"] = resources.memory
    if resources.gpus:
        requests[resources.accelerator] = limits[resources.accelerator] = str(resources.gpus)
    return {k: v for k, v in {"requests": requests, "limits": limits}.items() if v}


def trainjob_manifest(
    job: TrialJob,
    resources: TaskResources,
    *,
    image: str,
    nodes: int,
    namespace: str,
    secrets: Sequence[SecretEnv] = (),
    cache_pvc: str | None = None,
    runtime: str = DEFAULT_RUNTIME,
    command: Sequence[str] = DEFAULT_COMMAND,
    args: Sequence[str] = (),
) -> dict[str, Any]:
    """A TrainJob running one trial on ``nodes`` nodes with ``resources`` per node.

    The trial travels as its TrialJob JSON in ``$SFTLAB_TRIAL_JOB`` (a few KB; no ConfigMap).
    One process per GPU (``numProcPerNode``), or one on a CPU-only node.
    """
    if nodes < 1:
        raise SftlabError(f"trainjob: nodes must be at least 1, got {nodes}")
    if not image:
        raise SftlabError("trainjob: an image is required")
    key = job.trial.key
    name = trainjob_name(key)
    labels = {LABEL_TRIAL_KEY: _label_value(key), LABEL_MANAGED_BY: "sftlab"}

    env = [_env(JOB_ENV, job.to_json())]
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    if cache_pvc:
        env.extend(_env(name, value) for name, value in cache_env().items())
        volumes.append({"name": CACHE_VOLUME, "persistentVolumeClaim": {"claimName": cache_pvc}})
        mounts.append({"name": CACHE_VOLUME, "mountPath": CACHE_MOUNT})
    if resources.shm_size:
        volumes.append({"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": resources.shm_size}})
        mounts.append({"name": SHM_VOLUME, "mountPath": "/dev/shm"})
    env.extend(_secret_env(secrets))

    trainer: dict[str, Any] = {
        "image": image,
        "command": list(command),
        "env": env,
        "numNodes": nodes,
        "numProcPerNode": max(resources.gpus, 1),
    }
    if args:
        trainer["args"] = list(args)
    per_node = _resources(resources)
    if per_node:
        trainer["resourcesPerNode"] = per_node

    pod_spec: dict[str, Any] = {}
    if resources.node_selector:
        pod_spec["nodeSelector"] = dict(resources.node_selector)
    if resources.tolerations:
        pod_spec["tolerations"] = [t.model_dump(exclude_none=True) for t in resources.tolerations]
    if volumes:
        pod_spec["volumes"] = volumes
        pod_spec["containers"] = [{"name": NODE, "volumeMounts": mounts}]

    spec: dict[str, Any] = {"runtimeRef": {"name": runtime}, "trainer": trainer}
    if pod_spec:
        spec["runtimePatches"] = [
            {
                "manager": "sftlab",
                "trainingRuntimeSpec": {
                    "template": {
                        "spec": {
                            "replicatedJobs": [
                                {"name": NODE, "template": {"spec": {"template": {"metadata": {"labels": labels}, "spec": pod_spec}}}}
                            ]
                        }
                    }
                },
            }
        ]
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": spec,
    }


def trial_job_from_manifest(manifest: dict[str, Any]) -> TrialJob:
    """The TrialJob a manifest carries (what the pods will read from $SFTLAB_TRIAL_JOB)."""
    for var in manifest["spec"]["trainer"].get("env", []):
        if var.get("name") == JOB_ENV:
            return TrialJob.from_json(var["value"])
    raise SftlabError(f"trainjob: the manifest has no {JOB_ENV} env")


def _one_line(text: object) -> str:
    return " ".join(str(text or "").split())


def _describe(cond: dict[str, Any]) -> str:
    detail = ": ".join(p for p in (_one_line(cond.get("reason")), _one_line(cond.get("message"))) if p)
    return f"{cond.get('type')}={cond.get('status')}" + (f" ({detail})" if detail else "")


class TrainJobRunner:
    """Create a TrainJob, wait for its outcome, and always delete it afterwards."""

    def __init__(
        self,
        api_client: Any,
        namespace: str,
        poll_s: float = 10.0,
        timeout_s: float = 24 * 3600.0,
        log: Callable[[str], None] = print,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        from kubernetes import client

        self.api = client.CustomObjectsApi(api_client)
        self.namespace = namespace
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        self.log = log
        self._clock = clock
        self._sleep = sleep

    def run(self, manifest: dict[str, Any]) -> None:
        """Run the TrainJob to completion; raise SftlabError (one line) on failure or timeout."""
        from kubernetes.client.exceptions import ApiException

        name = manifest["metadata"]["name"]
        ref = f"TrainJob {self.namespace}/{name}"
        try:
            self.api.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, manifest)
        except ApiException as exc:
            if exc.status == 409:
                # Not ours: never delete an object this call did not create.
                raise SftlabError(
                    f"{ref} already exists (another run of this trial?); delete it with "
                    f"`kubectl delete trainjob -n {self.namespace} {name}` and retry"
                ) from None
            raise SftlabError(f"{ref}: create failed: HTTP {exc.status} {_one_line(exc.reason)}") from None
        self.log(f"{ref} created")
        try:
            self._wait(name, ref)
        finally:
            self._delete(name, ref)

    def _wait(self, name: str, ref: str) -> None:
        from kubernetes.client.exceptions import ApiException

        deadline = self._clock() + self.timeout_s
        seen: dict[str, tuple[Any, ...]] = {}
        last = "no conditions yet"
        while True:
            try:
                obj = self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
            except ApiException as exc:
                if exc.status == 404:
                    raise SftlabError(f"{ref} disappeared while running (deleted by someone else?)") from None
                if exc.status and exc.status < 500:
                    raise SftlabError(f"{ref}: status read failed: HTTP {exc.status} {_one_line(exc.reason)}") from None
                self.log(f"{ref}: status read failed (HTTP {exc.status}), retrying")
                obj = {}
            conditions = ((obj or {}).get("status") or {}).get("conditions") or []
            for cond in conditions:
                state = (cond.get("status"), cond.get("reason"), cond.get("message"))
                if seen.get(cond.get("type")) != state:
                    seen[cond.get("type")] = state
                    last = _describe(cond)
                    self.log(f"{ref}: {last}")
            active = {c.get("type"): c for c in conditions if str(c.get("status")) == "True"}
            for kind in FAILURE_CONDITIONS:
                if kind in active:
                    raise SftlabError(f"{ref} failed: {_describe(active[kind])}")
            for kind in SUCCESS_CONDITIONS:
                if kind in active:
                    self.log(f"{ref} finished: {_describe(active[kind])}")
                    return
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise SftlabError(f"{ref} did not finish within {self.timeout_s:g} s (last condition: {last})")
            self._sleep(min(self.poll_s, remaining))

    def _delete(self, name: str, ref: str) -> None:
        """Delete the TrainJob and its children (background propagation); never mask the outcome."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        try:
            self.api.delete_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name, body=client.V1DeleteOptions(propagation_policy="Background")
            )
            self.log(f"{ref} deleted")
        except ApiException as exc:
            if exc.status != 404:
                self.log(f"{ref}: delete failed: HTTP {exc.status} {_one_line(exc.reason)}; delete it by hand")
        except Exception as exc:  # noqa: BLE001 - cleanup must not hide the run's own error
            self.log(f"{ref}: delete failed: {type(exc).__name__}: {_one_line(exc)}; delete it by hand")
