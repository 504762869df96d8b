#!/bin/sh
# sftlab MLflow tracking server: builds the `mlflow` command line from the environment.
#
# The Helm chart (charts/sftlab) runs this script for both the server and the migration hook, and
# tests/test_mlflow_server.py runs it as is, so what is tested is what the cluster runs.
#
#   entrypoint.sh server    (default) exec `mlflow server` with proxied artifacts
#   entrypoint.sh migrate   exec `mlflow db upgrade` on the backend store (pre-install/upgrade hook)
#   entrypoint.sh ensure-bucket  create the artifact bucket if missing, retrying until S3 answers
#                           (the chart's post-install hook for the bundled MinIO)
#   entrypoint.sh print     print the server command line and exit (debugging)
#
# Environment (credentials arrive by secretKeyRef, never from the image or literal values):
#   MLFLOW_BACKEND_STORE_URI   full SQLAlchemy DSN, e.g. postgresql+psycopg2://user:pw@host:5432/db
#     or, when it is unset, the parts (the password is URL-encoded here):
#   MLFLOW_DB_HOST MLFLOW_DB_PORT(5432) MLFLOW_DB_NAME(mlflow) MLFLOW_DB_USER(mlflow) MLFLOW_DB_PASSWORD
#   MLFLOW_ARTIFACTS_DESTINATION  s3://bucket/prefix (required); the server alone needs S3 credentials
#                              (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, MLFLOW_S3_ENDPOINT_URL)
#   MLFLOW_HOST(0.0.0.0) MLFLOW_PORT(5000) MLFLOW_WORKERS(2)
#   MLFLOW_ALLOWED_HOSTS       comma-separated Host headers accepted (service DNS names, ingress host)
#   MLFLOW_CORS_ALLOWED_ORIGINS
#   MLFLOW_BASIC_AUTH=true     enable MLflow's basic-auth app; the admin comes from
#                              MLFLOW_AUTH_ADMIN_USERNAME(admin) / MLFLOW_AUTH_ADMIN_PASSWORD, users are
#                              stored in MLFLOW_AUTH_DATABASE_URI (default: the backend store)
#   MLFLOW_EXTRA_ARGS_JSON     a JSON array of extra arguments, appended one item per argument
#                              (the chart's mlflow.extraArgs; an item may contain spaces)
# Proxied multipart uploads (multi-GB models) are read by MLflow itself from
# MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD, MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE and
# MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE; the chart sets them.
set -eu

die() { echo "entrypoint: $*" >&2; exit 64; }

backend_uri() {
    if [ -n "${MLFLOW_BACKEND_STORE_URI:-}" ]; then
        printf '%s' "$MLFLOW_BACKEND_STORE_URI"
        return
    fi
    [ -n "${MLFLOW_DB_HOST:-}" ] || die "set MLFLOW_BACKEND_STORE_URI or MLFLOW_DB_HOST"
    [ -n "${MLFLOW_DB_PASSWORD:-}" ] || die "MLFLOW_DB_PASSWORD is empty"
    # +psycopg2: a bare postgresql:// selects psycopg 3 under SQLAlchemy 2.1, which the image lacks.
    python3 - <<'PY'
import os
from urllib.parse import quote

env = os.environ.get
user = quote(env("MLFLOW_DB_USER") or "mlflow", safe="")
password = quote(env("MLFLOW_DB_PASSWORD"), safe="")
name = quote(env("MLFLOW_DB_NAME") or "mlflow", safe="")
print(f"postgresql+psycopg2://{user}:{password}@{env('MLFLOW_DB_HOST')}:{env('MLFLOW_DB_PORT') or 5432}/{name}", end="")
PY
}

write_auth_config() {
    # MLflow reads basic-auth settings from an ini file; write it at start so the admin password
    # stays in the Secret and the environment, never in an image layer or a ConfigMap.
    [ -n "${MLFLOW_AUTH_ADMIN_PASSWORD:-}" ] || die "MLFLOW_BASIC_AUTH=true needs MLFLOW_AUTH_ADMIN_PASSWORD"
    auth_dir="${TMPDIR:-/tmp}/mlflow-auth"
    mkdir -p "$auth_dir"
    umask 077
    cat > "$auth_dir/basic_auth.ini" <<INI
[mlflow]
default_permission = ${MLFLOW_AUTH_DEFAULT_PERMISSION:-READ}
database_uri = ${MLFLOW_AUTH_DATABASE_URI:-$BACKEND}
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME:-admin}
admin_password = ${MLFLOW_AUTH_ADMIN_PASSWORD}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
    export MLFLOW_AUTH_CONFIG_PATH="$auth_dir/basic_auth.ini"
}

ensure_bucket() {
    [ -n "${MLFLOW_ARTIFACTS_DESTINATION:-}" ] || die "MLFLOW_ARTIFACTS_DESTINATION (s3://bucket/prefix) is required"
    exec python3 - <<'PY'
import os
import sys
import time
from urllib.parse import urlsplit

import boto3
from botocore.exceptions import BotoCoreError, ClientError

bucket = urlsplit(os.environ["MLFLOW_ARTIFACTS_DESTINATION"]).netloc
s3 = boto3.client("s3", endpoint_url=os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None)
deadline = time.monotonic() + float(os.environ.get("ENSURE_BUCKET_TIMEOUT_S", "300"))
while True:
    try:
        if bucket in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
            print(f"bucket {bucket} exists")
        else:
            s3.create_bucket(Bucket=bucket)
            print(f"bucket {bucket} created")
        sys.exit(0)
    except (BotoCoreError, ClientError) as error:
        if time.monotonic() > deadline:
            sys.exit(f"bucket {bucket}: {error}")
        print(f"waiting for S3: {error}", flush=True)
        time.sleep(5)
PY
}

mode="${1:-server}"
case "$mode" in
    ensure-bucket)
        ensure_bucket
        ;;
    migrate)
        BACKEND="$(backend_uri)"
        exec mlflow db upgrade "$BACKEND"
        ;;
    server|print)
        BACKEND="$(backend_uri)"
        [ -n "${MLFLOW_ARTIFACTS_DESTINATION:-}" ] || die "MLFLOW_ARTIFACTS_DESTINATION (s3://bucket/prefix) is required"
        set -- mlflow server \
            --backend-store-uri "$BACKEND" \
            --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" \
            --serve-artifacts \
            --host "${MLFLOW_HOST:-0.0.0.0}" \
            --port "${MLFLOW_PORT:-5000}" \
            --workers "${MLFLOW_WORKERS:-2}"
        if [ -n "${MLFLOW_ALLOWED_HOSTS:-}" ]; then set -- "$@" --allowed-hosts "$MLFLOW_ALLOWED_HOSTS"; fi
        if [ -n "${MLFLOW_CORS_ALLOWED_ORIGINS:-}" ]; then set -- "$@" --cors-allowed-origins "$MLFLOW_CORS_ALLOWED_ORIGINS"; fi
        if [ "${MLFLOW_BASIC_AUTH:-false}" = "true" ]; then
            write_auth_config
            set -- "$@" --app-name basic-auth
        fi
        if [ -n "${MLFLOW_EXTRA_ARGS_JSON:-}" ]; then
            # Each item shell-quoted by Python, then re-read by eval: items keep their spaces.
            quoted="$(python3 -c 'import json, os, shlex, sys
try:
    items = json.loads(os.environ["MLFLOW_EXTRA_ARGS_JSON"])
except ValueError:
    items = None
if not (isinstance(items, list) and all(isinstance(i, str) for i in items)):
    sys.exit(1)
print(" ".join(shlex.quote(i) for i in items))')" || die "MLFLOW_EXTRA_ARGS_JSON: expected a JSON array of strings"
            eval "set -- \"\$@\" $quoted"
        fi
        if [ "$mode" = print ]; then
            # argv as a JSON array (what exec would run); the DSN may hold a password: mask it
            python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$@" | sed -E 's#(://[^:/@ ]+:)[^@ ]+@#\1***@#'
            exit 0
        fi
        exec "$@"
        ;;
    *)
        die "unknown mode '$mode' (server, migrate, ensure-bucket, print)"
        ;;
esac
