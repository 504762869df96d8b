"""kmock: a stateful Kubernetes API on 127.0.0.1 that lifecycle tests drive with the real client,
playing the controllers (Trainer, Training Operator, KServe) by patching status over HTTP.

It validates what is created as the API server does, against the upstream CRDs of the oldest and
newest supported release (``tests/support/upstream.py``): a schema violation is refused with the
server's 422 ``Invalid`` Status and its causes; an unknown field with 400 ``BadRequest`` (``strict
decoding error``) under ``fieldValidation=Strict``, and dropped under the default, ``Warn`` (the
server's ``Warning`` header lands in ``KubeServer.warnings``).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import re
import secrets
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from sftlab.cluster.objects import CustomResource
from sftlab.cluster.pytorchjob import PYTORCHJOB
from sftlab.cluster.trainjob import TRAINJOB
from sftlab.serving.inference_service import INFERENCE_SERVICE
from tests.support import upstream

NS = "sweeps"
SERVING_RUNTIME = CustomResource("serving.kserve.io", "v1alpha1", "servingruntimes", "ServingRuntime")
_TOKEN_REQUEST = re.compile(r"/api/v1/namespaces/([^/]+)/serviceaccounts/([^/]+)/token")


def _validating_emulator() -> Any:
    """kmock's emulator with the API server's admission checks for the CRDs in ``RESOURCES``."""
    import kmock
    from kmock._internal import enums
    from kmock._internal.k8s import KubernetesError

    crds = {(r.group, r.version, r.plural): r for r in KubeServer.RESOURCES}

    class ValidatingEmulator(kmock.KubernetesEmulator):  # type: ignore[misc]
        async def _handle(self, request: Any) -> Any:
            token_request = _TOKEN_REQUEST.fullmatch(request.url.path)
            if token_request and request.method == "POST":
                return self.mint(request, *token_request.groups())
            res = request.resource
            if res is not None and res.plural == "pods" and request.action == enums.action.DELETE:
                return await self._delete_pod_and_collect(request)
            key = (res.group, res.version, res.plural) if res is not None else None
            if key in crds and request.action == enums.action.CREATE and isinstance(request.data, dict):
                found = upstream.problems(request.data, res.group, res.plural, res.version)
                unknown = [p for p in found if p.unknown]
                # a violation once, not once per release
                invalid = list({(p.field, p.message): p for p in found if not p.unknown}.values())
                kind, name = crds[key].kind, request.data.get("metadata", {}).get("name", "")
                if invalid:
                    causes = [{"reason": "FieldValueInvalid", "message": p.message, "field": p.field} for p in invalid]
                    message = "; ".join(f"{p.field}: {p.message}" for p in invalid)
                    raise KubernetesError(
                        422,
                        "Invalid",
                        f'{kind}.{res.group} "{name}" is invalid: {message}',
                        {"name": name, "group": res.group, "kind": kind, "causes": causes},
                    )
                if unknown and request.params.get("fieldValidation") == "Strict":
                    fields = ", ".join(sorted({f'unknown field "{p.field}"' for p in unknown}))
                    details = {"name": name, "kind": kind}
                    raise KubernetesError(400, "BadRequest", f"strict decoding error: {fields}", details)
                if unknown:
                    self.warnings.extend(sorted({f'unknown field "{p.field}"' for p in unknown}))
                    pruned = upstream.prune_unknown(request.data, unknown)
                    request.data.clear()  # the request is frozen; what kmock stores is this dict
                    request.data.update(pruned)
            return await super()._handle(request)

        async def _delete_pod_and_collect(self, request: Any) -> Any:
            """Kubernetes' garbage collector, for pods: deleting a pod deletes what it owns."""
            key = (request.resource, request.namespace, request.name)
            pod = dict(self._objects.items()).get(key)
            uid = pod.raw.get("metadata", {}).get("uid") if pod is not None and not pod.deleted else None
            response = await super()._handle(request)
            if uid:
                async with self._lock:
                    for (resource, _ns, _name), obj in self._objects.items():
                        owners = obj.raw.get("metadata", {}).get("ownerReferences", []) if not obj.deleted else []
                        if any(owner.get("uid") == uid for owner in owners):
                            obj.delete()
                            self.collected.append(obj.last.raw["metadata"]["name"])
                            await self._buses[resource].put({"type": "DELETED", "object": obj.last.raw})
            return response

        def mint(self, request: Any, namespace: str, account: str) -> Any:
            """The TokenRequest API: a token for an existing ServiceAccount, for the audiences asked."""
            from aiohttp import web

            accounts = {
                (key[1], key[2])
                for key, obj in self._objects.items()
                if key[0].plural == "serviceaccounts" and not obj.deleted
            }
            if (namespace, account) not in accounts:
                message = f'serviceaccounts "{account}" not found'
                raise KubernetesError(404, "NotFound", message, {"name": account, "kind": "serviceaccounts"})
            spec = dict(request.data.get("spec") or {})
            lifetime = int(spec.get("expirationSeconds") or 3600)
            expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=lifetime)
            token = secrets.token_urlsafe(24)
            self.tokens[token] = Token(namespace, account, tuple(spec.get("audiences") or ()), expires)
            status = {"token": token, "expirationTimestamp": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}
            body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec, "status": status}
            return web.json_response(body, status=201)

    return ValidatingEmulator


@dataclass(frozen=True)
class Token:
    """A token minted through kmock's TokenRequest API: whom it names, for which audiences, until when."""

    namespace: str
    service_account: str
    audiences: tuple[str, ...]
    expires: datetime.datetime

    def valid_for(self, audience: str) -> bool:
        return audience in self.audiences and datetime.datetime.now(datetime.UTC) < self.expires


class KubeServer:
    """kmock's Kubernetes emulator on 127.0.0.1, in its own thread and event loop.

    It serves every kind sftlab creates and the chart's ServingRuntime, plus pods and events (read
    for diagnostics) and ServiceAccounts and Secrets (what KServe and the TokenRequest API read). It applies no
    label or field selectors: clients must filter what they list themselves.
    """

    RESOURCES = (TRAINJOB, PYTORCHJOB, INFERENCE_SERVICE, SERVING_RUNTIME)

    def __init__(self) -> None:
        self._ready = threading.Event()
        self.warnings: list[str] = []  # unknown fields dropped under fieldValidation=Warn
        self.tokens: dict[str, Token] = {}  # minted through it
        self.collected: list[str] = []  # objects the garbage collector deleted with their owner pod
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self.url = ""

    async def _main(self) -> None:
        import kmock

        async with _validating_emulator()() as handler, kmock.Server(handler) as server:
            handler.warnings = self.warnings
            handler.tokens = self.tokens
            handler.collected = self.collected
            for r in self.RESOURCES:
                handler.resources[f"{r.group}/{r.version}/{r.plural}"] = {}
            for core in ("pods", "events", "serviceaccounts", "secrets"):
                handler.resources[f"v1/{core}"] = {}
            self.handler = handler
            self.url = str(server.url).rstrip("/")
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> Self:
        self._thread.start()
        assert self._ready.wait(15), "kmock did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def service_account(api: Any, name: str, secrets: list[str] | None = None) -> None:
    from kubernetes import client

    body = {"metadata": {"name": name}, "secrets": [{"name": s} for s in secrets or []]}
    client.CoreV1Api(api).create_namespaced_service_account(NS, body)


def kubeconfig(url: str, folder: Path) -> Path:
    """A kubeconfig file whose current context is the kmock server at ``url``."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": url}}],
        "users": [{"name": "me", "user": {}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "me"}}],
    }
    path = folder / "kubeconfig"
    path.write_text(json.dumps(config))
    return path


def kube_api() -> Iterator[Any]:
    """A ``kubernetes`` ApiClient talking to kmock over HTTP (other test modules reuse it)."""
    from kubernetes import client

    with KubeServer() as server:
        api = client.ApiClient(client.Configuration(host=server.url))
        yield api
        api.close()


def custom(api: Any) -> Any:
    from kubernetes import client

    return client.CustomObjectsApi(api)


def exists(api: Any, name: str, resource: CustomResource = TRAINJOB) -> bool:
    from kubernetes.client.exceptions import ApiException

    r = resource
    try:
        custom(api).get_namespaced_custom_object(r.group, r.version, NS, r.plural, name)
        return True
    except ApiException as exc:
        assert exc.status == 404
        return False


def create(api: Any, manifest: dict[str, Any], resource: CustomResource = TRAINJOB) -> None:
    """Someone else's object, created behind the runner's back."""
    custom(api).create_namespaced_custom_object(resource.group, resource.version, NS, resource.plural, manifest)


def delete(api: Any, name: str, resource: CustomResource = TRAINJOB) -> None:
    custom(api).delete_namespaced_custom_object(resource.group, resource.version, NS, resource.plural, name)


class Controller:
    """Plays the operator: on each poll, patches the next status over HTTP."""

    def __init__(self, api: Any, name: str, steps: list[list[dict[str, Any]]], resource: CustomResource = TRAINJOB):
        self.api, self.name, self.steps, self.resource = api, name, list(steps), resource
        self.seen_during_run: list[dict[str, Any]] = []

    def sleep(self, _: float) -> None:
        r = self.resource
        obj = custom(self.api).get_namespaced_custom_object(r.group, r.version, NS, r.plural, self.name)
        self.seen_during_run.append(obj)
        if self.steps:
            self.patch({"conditions": self.steps.pop(0)})

    def patch(self, status: dict[str, Any]) -> None:
        r = self.resource
        custom(self.api).patch_namespaced_custom_object_status(
            r.group, r.version, NS, r.plural, self.name, {"status": status}
        )


def cond(type_: str, status: str = "True", reason: str = "", message: str = "") -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message}


def sigterm(_: float) -> None:
    """What the kubelet does to a pipeline pod whose KFP run is cancelled."""
    os.kill(os.getpid(), signal.SIGTERM)
