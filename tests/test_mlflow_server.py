"""The MLflow tracking server exactly as the Helm chart runs it, against real PostgreSQL and S3.

The server's command comes from ``mlflow/entrypoint.sh`` (the image's ENTRYPOINT) and its
environment from the chart's rendered Deployment (``charts/sftlab``): literal ``value``s as
rendered, ``secretKeyRef``s resolved from the test's stand-in Secrets. Only where it listens
changes (127.0.0.1 and a free port instead of 0.0.0.0:5000). PostgreSQL 15 runs from ``initdb`` /
``pg_ctl`` on a temp dir and S3 is moto_server, both on 127.0.0.1.

The reduced quickstart sweep then runs through ``sftlab run`` with only ``MLFLOW_TRACKING_URI``
pointing at the server and no S3 credentials at all, so every artifact that lands in the bucket
went through the server's artifact proxy (``--serve-artifacts``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
import yaml

from tests.support.helpers import EXAMPLES, REPO, free_port

ENTRYPOINT = REPO / "mlflow" / "entrypoint.sh"
CHART = REPO / "charts" / "sftlab"
BUCKET = "sftlab-artifacts"
S3_KEYS = {"access-key-id": "server-only-key-id", "secret-access-key": "server-only-secret"}
CLIENT_FORBIDDEN = ("AWS_", "MLFLOW_S3_", "AWS_ENDPOINT_URL")


# ---------------------------------------------------------------- the chart's server environment


def chart_values(s3_endpoint: str) -> dict[str, Any]:
    """External database and S3 (the production layout), pointed at the local services."""
    return {
        "postgresql": {"enabled": False},
        "externalDatabase": {"existingSecret": "mlflow-db", "dsnKey": "dsn"},
        "artifacts": {
            "bucket": BUCKET,
            "prefix": "mlflow",
            "minio": {"enabled": False},
            "s3": {"endpointUrl": s3_endpoint, "region": "us-east-1", "existingSecret": "mlflow-s3"},
        },
        "mlflow": {"workers": 1},
    }


def rendered_env(
    values: dict[str, Any], secrets: dict[str, dict[str, str]], template: str, kind: str
) -> dict[str, str]:
    """The env of the first container of ``kind`` in ``template``, secretKeyRefs resolved."""
    import helm_python

    rendered = helm_python.Chart.load(CHART).render(values, name="sftlab", namespace="ml")
    docs = [d for d in yaml.safe_load_all(rendered[f"sftlab/templates/{template}"]) if d and d["kind"] == kind]
    container = docs[0]["spec"]["template"]["spec"]["containers"][0]
    env = {}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = secrets[ref["name"]][ref["key"]]
    return env


def find_configmap(values: dict[str, Any]) -> dict[str, str]:
    """The data of the chart's cluster-defaults ConfigMap (what pipeline pods get)."""
    import helm_python

    text = helm_python.Chart.load(CHART).render(values, name="sftlab", namespace="ml")[
        "sftlab/templates/pipeline-configmap.yaml"
    ]
    return yaml.safe_load(text)["data"]


def entrypoint_env(extra: dict[str, str]) -> dict[str, str]:
    """A clean process environment (no developer credentials) plus ``extra``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(CLIENT_FORBIDDEN) and not k.startswith("MLFLOW_")}
    return {**base, "PATH": os.environ["PATH"], **extra}


def run_entrypoint(
    command: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``mlflow/entrypoint.sh COMMAND`` as the chart's container runs it."""
    return subprocess.run(
        ["sh", str(ENTRYPOINT), command], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def chart_env(kind: str) -> dict[str, Any]:
    """The MLflow Deployment's env as the chart renders it for ``ci/<kind>-values.yaml``."""
    from tests.test_chart import env_of, find, manifests, values

    return env_of(find(manifests(values(kind)), "Deployment", "-mlflow"))


def test_entrypoint_builds_the_server_command_from_parts() -> None:
    """The bundled-database path: the DSN is assembled with the password URL-encoded, and the
    printed command masks it."""
    env = entrypoint_env(
        {
            "MLFLOW_DB_HOST": "sftlab-postgresql",
            "MLFLOW_DB_PASSWORD": "p@ss:w/rd%",
            "MLFLOW_ARTIFACTS_DESTINATION": "s3://b/mlflow",
            "MLFLOW_WORKERS": "3",
            "MLFLOW_ALLOWED_HOSTS": "a,b:*",
            # What the chart renders for mlflow.extraArgs ["--uvicorn-opts", "--timeout-keep-alive 120"].
            "MLFLOW_EXTRA_ARGS_JSON": chart_env("external")["MLFLOW_EXTRA_ARGS_JSON"],
        }
    )
    out = json.loads(
        subprocess.run(["sh", str(ENTRYPOINT), "print"], env=env, capture_output=True, text=True, check=True).stdout
    )
    assert out[:2] == ["mlflow", "server"]
    assert out[out.index("--backend-store-uri") + 1] == "postgresql+psycopg2://mlflow:***@sftlab-postgresql:5432/mlflow"
    assert "p@ss" not in " ".join(out)
    assert out[out.index("--artifacts-destination") + 1] == "s3://b/mlflow"
    assert "--serve-artifacts" in out and out[out.index("--workers") + 1] == "3"
    assert out[out.index("--allowed-hosts") + 1] == "a,b:*"
    assert out[-2:] == ["--uvicorn-opts", "--timeout-keep-alive 120"]
    assert "--app-name" not in out
    env["MLFLOW_EXTRA_ARGS_JSON"] = "--uvicorn-opts"  # not JSON: one line, not a crash loop of mlflow errors
    bad = subprocess.run(["sh", str(ENTRYPOINT), "print"], env=env, capture_output=True, text=True)
    assert bad.returncode == 64
    assert bad.stderr.strip() == "entrypoint: MLFLOW_EXTRA_ARGS_JSON: expected a JSON array of strings"


def test_entrypoint_rejects_missing_settings() -> None:
    env = entrypoint_env({"MLFLOW_BACKEND_STORE_URI": "sqlite:///x.db"})
    bad = subprocess.run(["sh", str(ENTRYPOINT), "server"], env=env, capture_output=True, text=True)
    assert bad.returncode == 64 and "MLFLOW_ARTIFACTS_DESTINATION" in bad.stderr
    bad = subprocess.run(["sh", str(ENTRYPOINT), "server"], env=entrypoint_env({}), capture_output=True, text=True)
    assert bad.returncode == 64 and "MLFLOW_BACKEND_STORE_URI or MLFLOW_DB_HOST" in bad.stderr
    auth = {
        "MLFLOW_BACKEND_STORE_URI": "sqlite:///x.db",
        "MLFLOW_ARTIFACTS_DESTINATION": "s3://b",
        "MLFLOW_BASIC_AUTH": "true",
    }
    bad = subprocess.run(["sh", str(ENTRYPOINT), "print"], env=entrypoint_env(auth), capture_output=True, text=True)
    assert bad.returncode == 64 and "MLFLOW_AUTH_ADMIN_PASSWORD" in bad.stderr
    bad = subprocess.run(["sh", str(ENTRYPOINT), "serve"], env=entrypoint_env(auth), capture_output=True, text=True)
    assert bad.returncode == 64 and "unknown mode" in bad.stderr


# ---------------------------------------------------------------- PostgreSQL on a temp dir


def _as_postgres(cmd: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; CI and sessions run as root.
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture
def postgres() -> Iterator[str]:
    """A PostgreSQL server on 127.0.0.1 with database ``mlflow`` (trust auth); yields its DSN."""
    if not (shutil.which("initdb") and shutil.which("pg_ctl")):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not on PATH")
    import psycopg2

    root = Path(tempfile.mkdtemp(prefix="sftlab-pg-"))  # under /tmp: pytest's tmp dirs are 0700 root
    data, port = root / "data", free_port()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    started = False
    try:
        subprocess.run(
            _as_postgres(["initdb", "-D", str(data), "-U", "mlflow", "--auth=trust", "-E", "UTF8"]),
            check=True,
            capture_output=True,
        )
        subprocess.run(
            _as_postgres(
                [
                    "pg_ctl",
                    "-D",
                    str(data),
                    "-l",
                    str(root / "log"),
                    "-w",
                    "-o",
                    f"-c listen_addresses=127.0.0.1 -p {port} -k {root}",
                    "start",
                ]
            ),
            check=True,
            capture_output=True,
        )
        started = True
        conn = psycopg2.connect(host="127.0.0.1", port=port, user="mlflow", dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE mlflow")
        conn.close()
        yield f"postgresql+psycopg2://mlflow:unused@127.0.0.1:{port}/mlflow"
    finally:
        if started:
            subprocess.run(
                _as_postgres(["pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop"]), capture_output=True
            )
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------- the sweep


def reduced_quickstart(tmp_path: Path) -> Path:
    spec = yaml.safe_load((EXAMPLES / "quickstart.yaml").read_text())
    for item in spec["datasets"] + spec["benchmarks"]:
        item["uri"] = str(EXAMPLES / item["uri"])
    spec["sweep"] = {"base_model": ["tiny-llama-chat"], "dataset": ["math"], "training.method": ["full"]}
    spec["tracking"] = {"uri": None, "root": str(tmp_path / "runs")}  # uri from $MLFLOW_TRACKING_URI
    path = tmp_path / "quickstart.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"mlflow server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).text.strip() == "OK":
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"mlflow server not healthy after {timeout:.0f} s:\n{log.read_text()[-4000:]}")


@pytest.mark.slow
def test_quickstart_against_chart_configured_server(tmp_path: Path, postgres: str, s3_endpoint: str) -> None:
    import psycopg2

    values = chart_values(s3_endpoint)
    secrets = {"mlflow-db": {"dsn": postgres}, "mlflow-s3": S3_KEYS}
    server_env = rendered_env(values, secrets, "mlflow-deployment.yaml", "Deployment")
    # What the chart must have set for this to be the production configuration:
    assert server_env["MLFLOW_ARTIFACTS_DESTINATION"] == f"s3://{BUCKET}/mlflow"
    assert server_env["MLFLOW_S3_ENDPOINT_URL"] == s3_endpoint
    assert server_env["MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD"] == "true"
    port = free_port()
    server_env.update(MLFLOW_HOST="127.0.0.1", MLFLOW_PORT=str(port))  # instead of 0.0.0.0:5000

    # The hooks' commands with the hooks' env: the migration Job creates the schema. Its env is the
    # bundled-database flavour (DSN assembled from parts, a password that must be URL-encoded; trust
    # auth ignores it, but a wrongly encoded '@' or '/' would break the URL).
    db_port = postgres.rsplit(":", 1)[1].split("/")[0]
    bundled = {"artifacts": {"minio": {"enabled": False}, "s3": {"endpointUrl": s3_endpoint}}}
    migrate_env = rendered_env(
        bundled, {"sftlab-postgresql": {"password": "p@ss:w/rd%"}}, "mlflow-migrate-job.yaml", "Job"
    )
    assert migrate_env["MLFLOW_DB_HOST"] == "sftlab-postgresql" and "MLFLOW_BACKEND_STORE_URI" not in migrate_env
    migrate_env.update(MLFLOW_DB_HOST="127.0.0.1", MLFLOW_DB_PORT=db_port)
    migrated = run_entrypoint("migrate", entrypoint_env(migrate_env), tmp_path, timeout=180)
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    bucket = run_entrypoint("ensure-bucket", entrypoint_env(server_env), tmp_path)
    assert bucket.returncode == 0 and f"bucket {BUCKET} created" in bucket.stdout, bucket.stderr

    log = tmp_path / "mlflow-server.log"
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as sink:
        server = subprocess.Popen(
            ["sh", str(ENTRYPOINT)],
            env=entrypoint_env(server_env),
            cwd=tmp_path,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_healthy(url, server, log)

        # The client: tracking URI only. No AWS_* / MLFLOW_S3_* at all, so artifacts must be proxied.
        client_env = {k: v for k, v in os.environ.items() if not k.startswith(CLIENT_FORBIDDEN)}
        client_env["MLFLOW_TRACKING_URI"] = url
        spec = reduced_quickstart(tmp_path)
        run = subprocess.run(
            [sys.executable, "-m", "sftlab.cli", "run", str(spec)],
            cwd=tmp_path,
            env=client_env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        out = run.stdout + run.stderr
        assert run.returncode == 0, out[-6000:]
        assert "1 trials: 0 already finished, 1 to run" in out, out[-3000:]
        assert "trials: 1 total, 0 skipped (already finished), 1 finished now, 0 failed" in out, out[-3000:]
        assert f"MLflow:    {url}" in out, out[-3000:]

        # Runs are rows in PostgreSQL, their artifacts proxied (mlflow-artifacts:/ URIs).
        conn = psycopg2.connect(postgres.replace("postgresql+psycopg2", "postgresql"))
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT r.run_uuid, r.status, r.artifact_uri, t.value FROM runs r "
                    "JOIN experiments e ON e.experiment_id = r.experiment_id "
                    "JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = 'sftlab.stage' WHERE e.name = 'quickstart'"
                )
                rows = cur.fetchall()
        finally:
            conn.close()
        by_stage: dict[str, list[tuple[str, str, str]]] = {}
        for run_id, status, artifact_uri, stage in rows:
            by_stage.setdefault(stage, []).append((run_id, status, artifact_uri))
        assert len(by_stage.get("sweep", [])) == 1 and len(by_stage.get("trial", [])) == 1, by_stage
        assert {"profile", "baseline"} <= set(by_stage), by_stage
        assert all(status == "FINISHED" for runs in by_stage.values() for _, status, _ in runs), by_stage
        assert all(uri.startswith("mlflow-artifacts:/") for runs in by_stage.values() for *_, uri in runs), by_stage
        (sweep_id, _, _), (trial_id, _, _) = by_stage["sweep"][0], by_stage["trial"][0]

        # Artifacts are objects in the bucket, under the chart's prefix.
        s3 = boto3.client(
            "s3",
            endpoint_url=s3_endpoint,
            region_name="us-east-1",
            aws_access_key_id=S3_KEYS["access-key-id"],
            aws_secret_access_key=S3_KEYS["secret-access-key"],
        )
        keys = [
            o["Key"]
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
            for o in page.get("Contents", [])
        ]
        assert keys and all(k.startswith("mlflow/") for k in keys), keys[:5]
        model = [k for k in keys if f"/{trial_id}/artifacts/model/" in k]
        assert any(k.endswith(".safetensors") for k in model), model
        assert any(k.endswith("config.json") for k in model), model
        size = s3.head_object(Bucket=BUCKET, Key=next(k for k in model if k.endswith(".safetensors")))["ContentLength"]
        assert size > 100_000  # the trained weights, not a placeholder
        report = [k for k in keys if f"/{sweep_id}/artifacts/report/" in k]
        assert any(k.endswith("report.html") for k in report), report
        html = s3.get_object(Bucket=BUCKET, Key=next(k for k in report if k.endswith("report.html")))["Body"].read()
        assert b"tiny-llama-chat" in html and b"math" in html

        # Multi-GB models: proxied multipart upload with the chart's client settings (ConfigMap),
        # scaled down to S3's 5 MiB minimum part. The server creates the upload and presigns the
        # parts; the client, still without credentials, sends 3 parts (multipart ETag "...-3").
        small_parts = {"mlflow": {"multipartUpload": {"chunkSizeBytes": 5 * 2**20, "minimumFileSizeBytes": 5 * 2**20}}}
        defaults = find_configmap(small_parts)
        multipart_env = {**client_env, **{k: v for k, v in defaults.items() if "MULTIPART" in k}}
        assert multipart_env["MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD"] == "true"
        big = tmp_path / "weights.bin"
        big.write_bytes(os.urandom(11 * 2**20))
        logged = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys, mlflow\nmlflow.set_experiment('multipart')\n"
                "with mlflow.start_run() as run:\n    mlflow.log_artifact(sys.argv[1])\nprint(run.info.run_id)",
                str(big),
            ],
            env=multipart_env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert logged.returncode == 0, logged.stderr[-3000:]
        mpu_run = logged.stdout.split()[-1]
        (key,) = [
            o["Key"]
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
            for o in page.get("Contents", [])
            if o["Key"].endswith(f"/{mpu_run}/artifacts/weights.bin")
        ]
        head = s3.head_object(Bucket=BUCKET, Key=key)
        assert head["ContentLength"] == 11 * 2**20 and head["ETag"].strip('"').endswith("-3"), head["ETag"]
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)  # the server and its workers: a session of our own
            server.wait(20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(10)
