"""A fake Kubeflow Pipelines API on 127.0.0.1: the v2beta1 REST subset ``kfp.Client`` uses to
submit and watch runs (healthz, experiments list/create, runs create/get/terminate).

A run stays RUNNING until it has been read ``polls`` times, then takes the state ``decide(run)``
returns; so the number of runs in flight on the server is exactly what the client believes, and
``max_in_flight`` measures a launcher's concurrency.

With ``authenticate`` it is a multi-user install (Kubeflow profiles), as KFP's API server is: every
request but ``/healthz`` needs ``Authorization: Bearer <token>``, which ``authenticate`` maps to the
caller's namespace (KFP runs a TokenReview for the ``pipelines.kubeflow.org`` audience) or refuses
(401); experiments are listed, created and run in that namespace only (403 elsewhere).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.support.json_http import JsonHandler

PREFIX = "/apis/v2beta1"
TERMINAL = {"SUCCEEDED", "FAILED", "CANCELED", "SKIPPED"}
Decide = Callable[[dict[str, Any]], tuple[str, str | None]]  # run -> (state, error message)
Authenticate = Callable[[str], str | None]  # bearer token -> the caller's namespace, or None


class FakeKfp:
    def __init__(
        self,
        decide: Decide = lambda run: ("SUCCEEDED", None),
        polls: int = 1,
        failing_gets: int = 0,
        authenticate: Authenticate | None = None,
    ):
        self.decide = decide
        self.authenticate = authenticate
        self.refused: list[int] = []  # statuses of the requests refused for want of credentials
        self.polls = polls
        self.failing_gets = failing_gets  # the next N run reads answer 503
        self.experiments: dict[str, dict[str, Any]] = {}
        self.runs: dict[str, dict[str, Any]] = {}
        self.terminated: list[str] = []
        self.max_in_flight = 0
        self._reads: dict[str, int] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeKfp:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def in_flight(self) -> int:
        return sum(run["state"] not in TERMINAL for run in self.runs.values())

    # -- API ----------------------------------------------------------------------------------

    def handle(
        self, method: str, path: str, query: dict[str, list[str]], body: Any, authorization: str = ""
    ) -> tuple[int, Any]:
        with self._lock:
            if method == "GET" and path == "/healthz":
                return 200, {"multi_user": self.authenticate is not None}
            namespace = None
            if self.authenticate is not None:
                scheme, _, token = authorization.partition(" ")
                namespace = self.authenticate(token) if scheme == "Bearer" and token else None
                if namespace is None:
                    self.refused.append(401)
                    return 401, {"error": "Unauthenticated: no valid bearer token", "code": 16}
            if path == "/experiments":
                return self._experiments(method, query, body, namespace)
            if method == "POST" and path == "/runs":
                return self._create_run(body, namespace)
            if path.startswith("/runs/"):
                run_id, _, verb = path.removeprefix("/runs/").partition(":")
                if run_id in self.runs:
                    return self._run(method, run_id, verb)
            return 404, {"error": f"no route {method} {path}", "code": 5}

    def _denied(self, caller: str | None, namespace: str | None) -> tuple[int, Any] | None:
        if self.authenticate is None or namespace == caller:
            return None
        self.refused.append(403)
        return 403, {"error": f"PermissionDenied: {caller} may not use namespace {namespace!r}", "code": 7}

    def _experiments(self, method: str, query: dict[str, list[str]], body: Any, caller: str | None) -> tuple[int, Any]:
        asked = body.get("namespace") if method == "POST" else query.get("namespace", [None])[0]
        if denied := self._denied(caller, asked):
            return denied
        if method == "POST":
            experiment = {**body, "experiment_id": f"exp-{len(self.experiments) + 1}"}
            self.experiments[experiment["experiment_id"]] = experiment
            return 200, experiment
        wanted = [p["stringValue"] for p in json.loads(query.get("filter", ["{}"])[0]).get("predicates", [])]
        found = [
            e
            for e in self.experiments.values()
            if (not wanted or e["display_name"] in wanted)
            and (self.authenticate is None or e.get("namespace") == asked)
        ]
        return 200, {"experiments": found, "total_size": len(found)} if found else {}

    def _create_run(self, body: dict[str, Any], caller: str | None) -> tuple[int, Any]:
        experiment = self.experiments.get(body.get("experiment_id", ""), {})
        if denied := self._denied(caller, experiment.get("namespace")):
            return denied
        run = {**body, "run_id": f"run-{len(self.runs) + 1}", "state": "RUNNING"}
        self.runs[run["run_id"]] = run
        self._reads[run["run_id"]] = 0
        self.max_in_flight = max(self.max_in_flight, self.in_flight())
        return 200, run

    def _run(self, method: str, run_id: str, verb: str) -> tuple[int, Any]:
        run = self.runs[run_id]
        if method == "POST" and verb == "terminate":
            self.terminated.append(run_id)
            run["state"] = "CANCELED"
            return 200, {}
        if method != "GET" or verb:
            return 404, {"error": "unsupported", "code": 5}
        if self.failing_gets:
            self.failing_gets -= 1
            return 503, {"error": "unavailable", "code": 14}
        self._reads[run_id] += 1
        if run["state"] not in TERMINAL and self._reads[run_id] >= self.polls:
            state, message = self.decide(run)
            run["state"] = state
            if message:
                run["error"] = {"code": 2, "message": message}
        return 200, run

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(JsonHandler):
            def _serve(self) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                path, query = url.path.removeprefix(PREFIX), parse_qs(url.query)
                if path == url.path:
                    status, payload = 404, {"error": "not the KFP API"}
                else:
                    authorization = self.headers.get("Authorization", "")
                    status, payload = fake.handle(self.command, path, query, body, authorization)
                self.send_json(status, payload)

            do_GET = do_POST = do_DELETE = _serve

        return Handler
