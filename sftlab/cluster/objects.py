"""What sftlab's Kubernetes custom-object lifecycles share (TrainJobs, PyTorchJobs, InferenceServices).

Pod-spec pieces (DNS names, label values, secret env, per-pod resources, placement, /dev/shm), the
cluster connection, and ``ObjectRunner``: create one object, poll its ``status.conditions`` (logging
every change) until it settles, fails or times out, and delete it (background propagation) however
that ends — an error, Ctrl-C, or the SIGTERM a pod gets when its KFP run is cancelled. ``JobRunner``
is that for training jobs whose outcome is a Succeeded/Failed condition.

Importable without kfp; needs only the ``kubernetes`` client at run time.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, ClassVar

from sftlab.errors import SftlabError
from sftlab.signals import Terminated
from sftlab.spec.schema import SecretEnv, TaskResources

# Child objects append suffixes (pods "<name>-node-0-1-x7k2p", "<name>-predictor-<hash>-<rand>")
# and must still fit in 63 characters.
MAX_NAME = 40
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
SHM_VOLUME = "dshm"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# Diagnostics stay one readable line: a few recent warnings, each message cut short.
MAX_WARNINGS = 5
MAX_DETAIL = 240

_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


# ---------------------------------------------------------------- one-line messages


def one_line(text: object, limit: int | None = None) -> str:
    line = " ".join(str(text or "").split())
    return line if limit is None or len(line) <= limit else line[: limit - 1] + "…"


def http_error(exc: Any) -> str:
    """An ``ApiException`` as ``HTTP 422 Unprocessable Entity: <the Status message>`` on one line (its
    str() spans lines of headers and body; the message names the field the server refused)."""
    head = f"HTTP {exc.status} {one_line(exc.reason)}"
    try:
        status = json.loads(exc.body or "")
    except (TypeError, ValueError):
        return head
    message = status.get("message") if isinstance(status, dict) else None
    return f"{head}: {one_line(message, MAX_DETAIL)}" if message else head


def describe_condition(cond: Mapping[str, Any]) -> str:
    detail = ": ".join(p for p in (one_line(cond.get("reason")), one_line(cond.get("message"))) if p)
    return f"{cond.get('type')}={cond.get('status')}" + (f" ({detail})" if detail else "")


def conditions(obj: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list(((obj or {}).get("status") or {}).get("conditions") or [])


def active_conditions(obj: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The object's conditions whose status is True, by type."""
    return {str(c.get("type")): c for c in conditions(obj) if str(c.get("status")) == "True"}


# ---------------------------------------------------------------- names and pod-spec pieces


def dns_name(key: str, prefix: str = "sftlab-", max_len: int = MAX_NAME) -> str:
    """A DNS-1035 label (≤ ``max_len`` chars, starts with a letter) derived from ``key``.

    Keys that need no cleaning and fit are kept readable (``<prefix><key>``); otherwise the cleaned
    key is cut and a digest of the original appended, so distinct keys keep distinct names.
    """
    cleaned = re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", key.lower())).strip("-")
    name = f"{prefix}{cleaned}"
    if cleaned == key and len(name) <= max_len:
        return name
    tag = hashlib.sha256(key.encode()).hexdigest()[:8]
    head = name[: max_len - len(tag) - 1].rstrip("-")
    return f"{head}-{tag}"


def is_dns_name(name: str, max_len: int = MAX_NAME) -> bool:
    return len(name) <= max_len and bool(_DNS_1035.match(name))


def label_value(value: str) -> str:
    """``value`` itself when it is a valid label value, else a stable DNS-safe stand-in."""
    if len(value) <= 63 and _LABEL_VALUE.match(value):
        return value
    return dns_name(value, prefix="k-")


def env_var(name: str, value: str) -> dict[str, Any]:
    return {"name": name, "value": value}


def secret_env(secrets: Iterable[SecretEnv]) -> list[dict[str, Any]]:
    """Secret keys as env through ``secretKeyRef``: the manifest names secrets, never holds values."""
    return [
        {"name": var, "valueFrom": {"secretKeyRef": {"name": s.secret, "key": key}}}
        for s in secrets
        for var, key in s.env.items()
    ]


def pod_resources(resources: TaskResources) -> dict[str, Any]:
    """Requests/limits of a pod's main container: cpu is a request only (no throttling); memory and
    accelerators are capped."""
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if resources.cpu:
        requests["cpu"] = resources.cpu
    if resources.memory:
        requests["memory"] = limits["memory"] = resources.memory
    if resources.gpus:
        requests[resources.accelerator] = limits[resources.accelerator] = str(resources.gpus)
    return {k: v for k, v in {"requests": requests, "limits": limits}.items() if v}


def shm_volume(size: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A memory-backed /dev/shm of ``size`` (NCCL and data loaders outgrow the default 64 MB): the
    volume and its mount."""
    volume = {"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": size}}
    return volume, {"name": SHM_VOLUME, "mountPath": "/dev/shm"}


# ---------------------------------------------------------------- cluster connection


def cluster_namespace(
    configured: str | None = None, *, setting: str = "", path: Path = SERVICE_ACCOUNT_NAMESPACE
) -> str:
    """``configured``, else the namespace of the pod this runs in; ``setting`` names where to
    configure one, for the error."""
    if configured:
        return configured
    try:
        namespace = path.read_text().strip()
    except OSError:
        namespace = ""
    if not namespace:
        fix = f" (set {setting})" if setting else ""
        raise SftlabError(f"no Kubernetes namespace: not running in a pod ({path} is missing) and none configured{fix}")
    return namespace


# KFP's driver gives every task pod its own name and uid (backend/src/v2/compiler/argocompiler).
POD_NAME_ENV, POD_UID_ENV = "KFP_POD_NAME", "KFP_POD_UID"
POD_NAMESPACE_ENV = "SFTLAB_POD_NAMESPACE"


def task_pod_owner(namespace: str, path: Path = SERVICE_ACCOUNT_NAMESPACE) -> dict[str, Any] | None:
    """An ownerReference to the pipeline pod this runs in, for objects it creates in ``namespace``.

    Argo stops a cancelled step by SIGTERM to its whole process group; KFP's launcher, the pod's
    main process, has no handler and dies at once, and the pod with it, so no ``finally`` in the
    stage can be relied on to delete what it created. With this reference Kubernetes' garbage
    collector deletes the object once the pod is gone. Owners must be in the object's namespace (a
    reference to an owner elsewhere reads as a missing owner, and the object is deleted at once),
    so objects created in another namespace get none.
    """
    name, uid = os.environ.get(POD_NAME_ENV), os.environ.get(POD_UID_ENV)
    if not (name and uid):
        return None
    try:
        pod_namespace = os.environ.get(POD_NAMESPACE_ENV) or path.read_text().strip()
    except OSError:
        return None
    if pod_namespace != namespace:
        return None
    return {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid}


def api_client() -> Any:
    """A ``kubernetes`` ApiClient: the pod's service account in a cluster, else the kubeconfig."""
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        try:
            # $KUBECONFIG as it is now: the client reads it once, when it is imported.
            config.load_kube_config(os.environ.get("KUBECONFIG"), client_configuration=configuration)
        except (config.ConfigException, OSError) as exc:
            raise SftlabError(
                f"no Kubernetes cluster: not in a pod and no usable kubeconfig ({one_line(exc, MAX_DETAIL)})"
            ) from None
    return client.ApiClient(configuration)


# ---------------------------------------------------------------- lifecycle


@dataclass(frozen=True)
class CustomResource:
    group: str
    version: str
    plural: str
    kind: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


class Failed(Exception):
    """Raised by a ``settled`` check: the object is in a state it will not recover from."""


class _Cancellation:
    """While entered, SIGTERM raises ``Terminated`` (a KeyboardInterrupt), so ``finally`` blocks still run.

    Kubernetes stops a pod (a cancelled KFP run, an eviction) with SIGTERM, on which Python would
    exit at once and leave the object behind. While ``held`` (an API call in flight whose outcome
    decides what to clean up), a SIGTERM waits and is raised at ``release`` or on exit. Only the
    main thread may own signal handlers; in other threads this does nothing.
    """

    def __init__(self) -> None:
        self._held = True
        self._pending = False
        self._installed = False
        self._previous: Any = None

    def __enter__(self) -> _Cancellation:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
            self._installed = True
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if self._previous is None else self._previous)
        if self._pending and exc_type is None:
            raise Terminated("SIGTERM")

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        if self._held:
            self._pending = True
        else:
            raise Terminated("SIGTERM")

    def hold(self) -> None:
        self._held = True

    def release(self) -> None:
        self._held = False
        if self._pending:
            self._pending = False
            raise Terminated("SIGTERM")


class ObjectRunner:
    """Create one custom object, wait for its status to settle, and always delete it afterwards."""

    def __init__(
        self,
        api_client: Any,
        resource: CustomResource,
        namespace: str,
        *,
        poll_s: float,
        timeout_s: float,
        log: Callable[[str], None] = print,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        from kubernetes import client

        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.resource = resource
        self.namespace = namespace
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        self.log = log
        self._clock = clock
        self._sleep = sleep

    def ref(self, name: str) -> str:
        return f"{self.resource.kind} {self.namespace}/{name}"

    @contextmanager
    def created(self, manifest: dict[str, Any]) -> Iterator[str]:
        """Create the object and yield its name; delete it when the block exits, however it exits.

        An object that already exists is someone else's: that is an error, and it is never deleted.
        """
        name = manifest["metadata"]["name"]
        with _Cancellation() as cancellation:
            self._create(name, manifest)
            try:
                cancellation.release()
                yield name
            finally:
                cancellation.hold()
                self._delete(name)

    def wait(
        self,
        name: str,
        settled: Callable[[dict[str, Any]], bool],
        *,
        goal: str = "finish",
        diagnose: Callable[[], str] | None = None,
    ) -> dict[str, Any]:
        """Poll until ``settled(obj)``; return that object. Logs each condition change.

        ``settled`` raises ``Failed`` for an object that will not get there; that and a timeout
        become one-line SftlabErrors, followed by ``diagnose()`` when given.
        """
        ref = self.ref(name)
        deadline = self._clock() + self.timeout_s
        seen: dict[str, tuple[Any, ...]] = {}
        last = "no conditions yet"
        while True:
            obj = self._read(name, ref)
            for cond in conditions(obj):
                state = (cond.get("status"), cond.get("reason"), cond.get("message"))
                kind = str(cond.get("type"))
                if seen.get(kind) != state:
                    seen[kind] = state
                    last = describe_condition(cond)
                    self.log(f"{ref}: {last}")
            try:
                if obj and settled(obj):
                    return obj
            except Failed as exc:
                raise SftlabError(f"{ref} failed: {exc}{self._diagnosis(diagnose)}") from None
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise SftlabError(
                    f"{ref} did not {goal} within {self.timeout_s:g} s "
                    f"(last condition: {last}){self._diagnosis(diagnose)}"
                )
            self._sleep(min(self.poll_s, remaining))

    def diagnostics(self, name: str, pod_labels: Mapping[str, str]) -> str:
        """One line on why ``name`` is not there yet: its pods' states and the latest Warning events
        for it and its pods."""
        from kubernetes.client.exceptions import ApiException

        try:
            pods = self._pods(pod_labels)
            warnings = self._warnings([name] + [p["metadata"]["name"] for p in pods])
        except ApiException as exc:
            return f"diagnostics unavailable: {http_error(exc)}"
        parts = ["pods: " + ("; ".join(_pod_state(p) for p in pods) if pods else "none")]
        if warnings:
            parts.append("warnings: " + "; ".join(warnings))
        return ", ".join(parts)

    def _diagnosis(self, diagnose: Callable[[], str] | None) -> str:
        if diagnose is None:
            return ""
        try:
            return f"; {diagnose()}"
        except Exception as exc:  # noqa: BLE001 - diagnostics must not hide the error they explain
            return f"; diagnostics unavailable: {type(exc).__name__}: {one_line(exc, MAX_DETAIL)}"

    def _create(self, name: str, manifest: dict[str, Any]) -> None:
        from kubernetes.client.exceptions import ApiException

        ref = self.ref(name)
        r = self.resource
        owner = task_pod_owner(self.namespace)
        if owner is not None:
            metadata = manifest.get("metadata", {})
            owners = [*metadata.get("ownerReferences", []), owner]
            manifest = {**manifest, "metadata": {**metadata, "ownerReferences": owners}}
        try:
            # Strict: a field this cluster's CRD does not know fails here, not silently dropped (the
            # server's default, Warn), which would run the object without the setting.
            self.custom.create_namespaced_custom_object(
                r.group, r.version, self.namespace, r.plural, manifest, field_validation="Strict"
            )
        except ApiException as exc:
            if exc.status == 409:
                raise SftlabError(
                    f"{ref} already exists and is not this run's, so it is left alone (another run of the "
                    f"same work?); delete it with `kubectl delete {r.kind.lower()} -n {self.namespace} {name}` "
                    "and retry"
                ) from None
            raise SftlabError(f"{ref}: create failed: {http_error(exc)}") from None
        self.log(f"{ref} created")

    def _read(self, name: str, ref: str) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        r = self.resource
        try:
            return self.custom.get_namespaced_custom_object(r.group, r.version, self.namespace, r.plural, name) or {}
        except ApiException as exc:
            if exc.status == 404:
                raise SftlabError(f"{ref} disappeared while running (deleted by someone else?)") from None
            if exc.status and exc.status < 500:
                raise SftlabError(f"{ref}: status read failed: {http_error(exc)}") from None
            self.log(f"{ref}: status read failed (HTTP {exc.status}), retrying")
            return {}

    def _delete(self, name: str) -> None:
        """Delete the object and its children (background propagation); never mask the outcome."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        ref = self.ref(name)
        r = self.resource
        options = client.V1DeleteOptions(propagation_policy="Background")
        try:
            self.custom.delete_namespaced_custom_object(
                r.group, r.version, self.namespace, r.plural, name, body=options
            )
            self.log(f"{ref} deleted")
        except ApiException as exc:
            if exc.status != 404:
                self.log(f"{ref}: delete failed: {http_error(exc)}; delete it by hand")
        except Exception as exc:  # noqa: BLE001 - cleanup must not hide the run's own error
            self.log(f"{ref}: delete failed: {type(exc).__name__}: {one_line(exc, MAX_DETAIL)}; delete it by hand")

    def _pods(self, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        items = _items(self.core.list_namespaced_pod(self.namespace, label_selector=selector, _preload_content=False))
        # The API server filters by the selector already; checking again costs nothing.
        return [p for p in items if labels.items() <= ((p.get("metadata") or {}).get("labels") or {}).items()]

    def _warnings(self, names: list[str]) -> list[str]:
        events = []
        for name in names:
            listed = self.core.list_namespaced_event(
                self.namespace, field_selector=f"involvedObject.name={name}", _preload_content=False
            )
            # As with pods: the field selector is the server's filter, this check ours.
            events += [
                e
                for e in _items(listed)
                if e.get("type") == "Warning" and (e.get("involvedObject") or {}).get("name") == name
            ]
        events.sort(key=_event_time)
        return [_event_line(e) for e in events[-MAX_WARNINGS:]]


class JobRunner:
    """Run a training job (a custom object with Succeeded/Failed conditions) to its outcome.

    Subclasses name the resource and the condition types that mean success and failure.
    """

    RESOURCE: ClassVar[CustomResource]
    SUCCESS: ClassVar[tuple[str, ...]]
    FAILURE: ClassVar[tuple[str, ...]] = ("Failed",)

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
        self.objects = ObjectRunner(
            api_client, self.RESOURCE, namespace, poll_s=poll_s, timeout_s=timeout_s, log=log, clock=clock, sleep=sleep
        )

    def run(self, manifest: dict[str, Any]) -> None:
        """Run the job to completion; raise SftlabError (one line) on failure or timeout."""
        with self.objects.created(manifest) as name:
            self.objects.wait(name, self._settled)
            self.objects.log(f"{self.objects.ref(name)} finished")

    def _settled(self, obj: dict[str, Any]) -> bool:
        active = active_conditions(obj)
        for kind in self.FAILURE:
            if kind in active:
                raise Failed(describe_condition(active[kind]))
        return any(kind in active for kind in self.SUCCESS)


# ---------------------------------------------------------------- diagnostics helpers


def _items(response: Any) -> list[dict[str, Any]]:
    """Items of a list response read as plain JSON (typed models reject partial objects)."""
    return list((json.loads(response.data) or {}).get("items") or [])


def _pod_state(pod: Mapping[str, Any]) -> str:
    """``name Phase`` and why: unschedulable, or a container waiting, failed or restarting."""
    status = pod.get("status") or {}
    parts = [f"{pod['metadata']['name']} {status.get('phase') or 'Unknown'}"]
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and str(cond.get("status")) == "False":
            parts.append(f"unschedulable: {one_line(cond.get('message') or cond.get('reason'), MAX_DETAIL)}")
    for container in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        parts += _container_problems(container)
    return ", ".join(parts)


def _container_problems(container: Mapping[str, Any]) -> list[str]:
    name, state = container["name"], container.get("state") or {}
    problems = []
    if state.get("waiting"):
        problems.append(f"{name} waiting: {_reason(state['waiting'])}")
    elif (state.get("terminated") or {}).get("exitCode"):
        problems.append(f"{name} exited {state['terminated']['exitCode']}: {_reason(state['terminated'])}")
    last = (container.get("lastState") or {}).get("terminated")
    if last and container.get("restartCount"):
        problems.append(
            f"{name} restarted {container['restartCount']}x, last exit {last.get('exitCode')}: {_reason(last)}"
        )
    return problems


def _reason(state: Mapping[str, Any]) -> str:
    message = one_line(state.get("message"), MAX_DETAIL)
    return one_line(state.get("reason")) + (f" ({message})" if message else "")


def _event_time(event: Mapping[str, Any]) -> str:
    created = (event.get("metadata") or {}).get("creationTimestamp")
    return event.get("lastTimestamp") or event.get("eventTime") or created or ""


def _event_line(event: Mapping[str, Any]) -> str:
    obj = event.get("involvedObject") or {}
    count = f" (x{event['count']})" if (event.get("count") or 1) > 1 else ""
    message = one_line(event.get("message"), MAX_DETAIL)
    return f"{obj.get('kind')}/{obj.get('name')} {event.get('reason')}{count}: {message}"
