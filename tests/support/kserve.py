"""A KServe stand-in that does with an InferenceService what KServe's controller does.

For each InferenceService created in kmock it
- selects the runtime as KServe does (pkg/controller/v1beta1/inferenceservice/utils): the one
  ``predictor.model.runtime`` names, which must support the model format, else the ServingRuntimes
  of the namespace and the ClusterServingRuntimes (upstream's files) whose format entry has
  ``autoSelect``, highest ``priority`` first; none is ``InvalidSpec`` (``NoSupportingRuntime``);
- merges the runtime's container into the predictor's (``MergeRuntimeContainers``): the runtime's
  args with ``{{.Name}}`` filled in, then the predictor's; resources key by key, so a runtime limit
  the predictor does not override stays; requests above limits are refused as the API server
  refuses such a pod;
- downloads ``storageUri`` as the storage initializer does, with S3 credentials only from Secrets
  of the predictor's ServiceAccount, in KServe's format (``awsAccessKeyID``/``awsSecretAccessKey``,
  ``serving.kserve.io/s3-endpoint`` and ``s3-usehttps``; pkg/credentials/s3/s3_secret.go), never
  from the test's environment; none is ``BlockedByFailedLoad``;
- starts the runtime's server: sftlab's image's entrypoint parsed by the real argument parser
  (``python -m sftlab.serving.server``) with the merged args, or, for KServe's Hugging Face server on
  its Transformers backend, a server whose completions answer ``logprobs: null``
  (huggingfaceserver/generative_model.py), and reports it Ready at its address.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import httpx
import yaml
from kubernetes.utils import parse_quantity

from sftlab.serving.inference_service import INFERENCE_SERVICE
from sftlab.serving.process import LocalModelServer
from tests.support.json_http import JsonHandler
from tests.support.kube import NS, SERVING_RUNTIME, custom
from tests.support.upstream import UPSTREAM

REPO = Path(__file__).resolve().parents[2]
CLUSTER_RUNTIMES = [yaml.safe_load((UPSTREAM / "kserve-v0.20.0" / "kserve-huggingfaceserver.yaml").read_text())]


def serve_entrypoint() -> list[str]:
    """The ENTRYPOINT of images/Dockerfile's serve target (what runs in sftlab's ServingRuntime)."""
    text = (REPO / "images" / "Dockerfile").read_text()
    stage = text[text.index("AS serve\n") :]
    return json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", stage, re.M).group(1))  # type: ignore[union-attr]


class Refused(Exception):
    """What KServe reports in ``status.modelStatus``: ``transition`` and ``lastFailureInfo``."""

    def __init__(self, transition: str, reason: str, message: str):
        super().__init__(f"{transition} ({reason}: {message})")
        self.transition, self.reason, self.message = transition, reason, message


def select_runtime(isvc: dict[str, Any], namespaced: list[dict[str, Any]]) -> dict[str, Any]:
    model = isvc["spec"]["predictor"]["model"]
    fmt = model["modelFormat"]["name"]

    def formats(runtime: dict[str, Any]) -> list[dict[str, Any]]:
        return [f for f in runtime["spec"].get("supportedModelFormats", []) if f["name"] == fmt]

    if model.get("runtime"):
        named = [r for r in namespaced + CLUSTER_RUNTIMES if r["metadata"]["name"] == model["runtime"]]
        if not named:
            raise Refused("InvalidSpec", "RuntimeNotRecognized", f"specified runtime {model['runtime']} not found")
        if not formats(named[0]):
            raise Refused(
                "InvalidSpec",
                "NoSupportingRuntime",
                f"specified runtime {model['runtime']} does not support specified framework/version {fmt}",
            )
        return named[0]
    candidates = [
        (max(f.get("priority", 0) for f in formats(r)), -i, r)
        for i, r in enumerate(namespaced + CLUSTER_RUNTIMES)  # namespaced runtimes first at equal priority
        if any(f.get("autoSelect") for f in formats(r))
    ]
    if not candidates:
        raise Refused(
            "InvalidSpec", "NoSupportingRuntime", f"no runtime found to support predictor with model type {fmt}"
        )
    return max(candidates, key=lambda c: (c[0], c[1]))[2]


def merge_container(runtime: dict[str, Any], isvc: dict[str, Any]) -> dict[str, Any]:
    name = isvc["metadata"]["name"]
    base = dict(runtime["spec"]["containers"][0])
    model = isvc["spec"]["predictor"]["model"]
    args = [a.replace("{{.Name}}", name) for a in base.get("args", [])] + list(model.get("args", []))
    resources: dict[str, dict[str, Any]] = {}
    for kind in ("requests", "limits"):
        merged = {**base.get("resources", {}).get(kind, {}), **model.get("resources", {}).get(kind, {})}
        if merged:
            resources[kind] = merged
    for key, request in resources.get("requests", {}).items():
        limit = resources.get("limits", {}).get(key)
        if limit is not None and parse_quantity(request) > parse_quantity(limit):
            raise Refused(
                "InvalidSpec",
                "PodInvalid",
                f"spec.containers[0].resources.requests: Invalid value: {request!r}: must be less than or equal "
                f"to {key} limit of {limit}",
            )
    env = {e["name"]: e for e in base.get("env", [])} | {e["name"]: e for e in model.get("env", [])}
    return {**base, "args": args, "resources": resources, "env": list(env.values())}


def s3_credentials(api: Any, isvc: dict[str, Any]) -> dict[str, str]:
    """boto3 client settings from the predictor's ServiceAccount, as the storage initializer gets them."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core = client.CoreV1Api(api)
    account = isvc["spec"]["predictor"].get("serviceAccountName") or "default"
    try:
        names = [ref.name for ref in core.read_namespaced_service_account(account, NS).secrets or []]
    except ApiException as exc:
        if exc.status != 404:
            raise
        names = []
    for secret_name in names:
        secret = core.read_namespaced_secret(secret_name, NS)
        data = secret.data or {}
        if "awsAccessKeyID" in data and "awsSecretAccessKey" in data:
            notes = secret.metadata.annotations or {}
            scheme = "http" if notes.get("serving.kserve.io/s3-usehttps") == "0" else "https"
            endpoint = notes.get("serving.kserve.io/s3-endpoint")
            return {
                "aws_access_key_id": base64.b64decode(data["awsAccessKeyID"]).decode(),
                "aws_secret_access_key": base64.b64decode(data["awsSecretAccessKey"]).decode(),
                "region_name": notes.get("serving.kserve.io/s3-region", "us-east-1"),
                **({"endpoint_url": f"{scheme}://{endpoint}"} if endpoint else {}),
            }
    raise Refused(
        "BlockedByFailedLoad",
        "ModelLoadFailed",
        f"storage-initializer: NoCredentialsError: Unable to locate credentials (ServiceAccount {account} has no "
        "Secret with awsAccessKeyID/awsSecretAccessKey)",
    )


def download(uri: str, dst: Path, settings: dict[str, str]) -> Path:
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    s3 = boto3.session.Session().client("s3", **settings)
    for obj in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []):
        target = dst / obj["Key"][len(prefix) :].lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(bucket, obj["Key"], str(target))
    return dst


class NullLogprobs:
    """KServe's Hugging Face server on its Transformers backend, as its OpenAI completions answer:
    the text, with ``logprobs: null`` in every choice (the rest passes through to ``upstream``)."""

    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")
        proxy = self

        class Handler(JsonHandler):
            def do_GET(self) -> None:
                self._relay(None)

            def do_POST(self) -> None:
                self._relay(self.rfile.read(int(self.headers.get("Content-Length") or 0)))

            def _relay(self, body: bytes | None) -> None:
                answer = httpx.request(
                    self.command, proxy.upstream + self.path, content=body, headers={"Content-Type": "application/json"}
                )
                payload = answer.json()
                if self.path.endswith("/completions") and answer.status_code == 200:
                    for choice in payload.get("choices", []):
                        choice["logprobs"] = None
                self.send_json(answer.status_code, payload)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class FakeKServe(threading.Thread):
    """Plays KServe's controller for every InferenceService in the namespace (see the module)."""

    def __init__(self, api: Any, cache: Path):
        super().__init__(daemon=True)
        self.api, self.cache = api, cache
        self.servers: dict[str, tuple[LocalModelServer, NullLogprobs | None]] = {}
        self.created: list[str] = []
        self.deleted: list[str] = []
        self.refused: dict[str, str] = {}
        self.containers: dict[str, dict[str, Any]] = {}  # the merged container of each service
        self.stop = threading.Event()

    def run(self) -> None:
        r = INFERENCE_SERVICE
        while not self.stop.is_set():
            items = custom(self.api).list_namespaced_custom_object(r.group, r.version, NS, r.plural)["items"]
            names = {obj["metadata"]["name"] for obj in items}
            for obj in items:
                name = obj["metadata"]["name"]
                if name not in self.servers and name not in self.refused:
                    self._reconcile(obj)
            for name in list(self.servers):
                if name not in names:
                    self._stop_server(name)
                    self.deleted.append(name)
            for name in list(self.refused):
                if name not in names:
                    del self.refused[name]
            time.sleep(0.2)

    def _reconcile(self, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        try:
            s = SERVING_RUNTIME
            namespaced = custom(self.api).list_namespaced_custom_object(s.group, s.version, NS, s.plural)["items"]
            runtime = select_runtime(obj, namespaced)
            container = merge_container(runtime, obj)
            self.containers[name] = container
            folder = download(
                obj["spec"]["predictor"]["model"]["storageUri"], self.cache / name, s3_credentials(self.api, obj)
            )
            server, proxy = self._start(runtime, container, folder)
        except Refused as refusal:
            self.refused[name] = str(refusal)
            info = {"reason": refusal.reason, "message": refusal.message}
            self._status(name, {"modelStatus": {"transitionStatus": refusal.transition, "lastFailureInfo": info}})
            return
        self.servers[name] = (server, proxy)
        self.created.append(name)
        address = proxy.url if proxy else server.base_url.removesuffix("/openai/v1")
        self._status(name, {"address": {"url": address}, "conditions": [{"type": "Ready", "status": "True"}]})

    def _start(
        self, runtime: dict[str, Any], container: dict[str, Any], folder: Path
    ) -> tuple[LocalModelServer, NullLogprobs | None]:
        if "sftlab-serve" in container["image"]:
            from sftlab.serving.server import _parse_args

            command = serve_entrypoint()
            assert command[:3] == ["python", "-m", "sftlab.serving.server"], command
            try:
                args = _parse_args([*command[3:], *container["args"]])
            except SystemExit as exc:
                raise Refused(
                    "BlockedByFailedLoad", "ModelLoadFailed", f"container exited with code {exc.code}"
                ) from None
            return LocalModelServer(folder, name=args.name, ready_timeout=120).__enter__(), None

        def last(flag: str, default: str | None = None) -> str:  # argparse: the last occurrence wins
            values = [a.split("=", 1)[1] for a in container["args"] if a.startswith(f"{flag}=")]
            found = values[-1] if values else default
            assert found is not None, (flag, container["args"])
            return found

        served, backend = last("--model_name"), last("--backend", "huggingface")
        if backend != "huggingface":
            raise Refused("BlockedByFailedLoad", "ModelLoadFailed", f"backend {backend} needs a GPU")
        server = LocalModelServer(folder, name=served, ready_timeout=120).__enter__()
        return server, NullLogprobs(server.base_url.removesuffix("/openai/v1"))

    def _status(self, name: str, status: dict[str, Any]) -> None:
        r = INFERENCE_SERVICE
        custom(self.api).patch_namespaced_custom_object_status(
            r.group, r.version, NS, r.plural, name, {"status": status}
        )

    def _stop_server(self, name: str) -> None:
        server, proxy = self.servers.pop(name)
        server.__exit__(None, None, None)
        if proxy is not None:
            proxy.close()

    def close(self) -> None:
        self.stop.set()
        self.join(10)
        for name in list(self.servers):
            self._stop_server(name)
