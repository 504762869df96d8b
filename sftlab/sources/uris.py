"""Fetching sources named by URI: local paths, ``s3://bucket/key`` (boto3) and hub ids.

The S3 endpoint comes from the spec's ``storage`` settings; else, for the platform's own bucket
(``SFTLAB_STORE_BUCKET``, set by the chart), ``SFTLAB_STORE_S3_ENDPOINT``; else the standard
environment variables (``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``, ``MLFLOW_S3_ENDPOINT_URL``).
Credentials only ever come from the environment (or the pod's identity), never from a spec.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from sftlab.errors import SftlabError
from sftlab.keys import digest
from sftlab.spec.schema import StorageConfig

_ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL")
STORE_ENDPOINT_ENV, STORE_BUCKET_ENV = "SFTLAB_STORE_S3_ENDPOINT", "SFTLAB_STORE_BUCKET"


def split_s3(uri: str) -> tuple[str, str]:
    parts = urlsplit(uri)
    if parts.scheme != "s3" or not parts.netloc:
        raise SftlabError(f"{uri}: expected s3://bucket/key")
    return parts.netloc, parts.path.lstrip("/")


def s3_endpoint(storage: StorageConfig, bucket: str) -> str | None:
    if storage.s3_endpoint_url:
        return storage.s3_endpoint_url
    if bucket and bucket == os.environ.get(STORE_BUCKET_ENV) and os.environ.get(STORE_ENDPOINT_ENV):
        return os.environ[STORE_ENDPOINT_ENV]
    return next((os.environ[v] for v in _ENDPOINT_VARS if os.environ.get(v)), None)


def s3_client(storage: StorageConfig, bucket: str):
    import boto3
    from botocore.config import Config

    endpoint = s3_endpoint(storage, bucket)
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=storage.region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        config=Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=10, read_timeout=120),
    )


def s3_error(uri: str, exc: Exception) -> SftlabError:
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "404", "NoSuchBucket"):
            return SftlabError(f"{uri}: not found ({code})")
        return SftlabError(f"{uri}: S3 error {code}")
    if isinstance(exc, EndpointConnectionError):
        return SftlabError(f"{uri}: cannot reach the S3 endpoint ({exc.kwargs.get('endpoint_url', '?')})")
    if isinstance(exc, NoCredentialsError):
        return SftlabError(f"{uri}: no S3 credentials in the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)")
    return SftlabError(f"{uri}: {type(exc).__name__}: {exc}")


def read_text(uri: str, storage: StorageConfig) -> str:
    bucket, key = split_s3(uri)
    try:
        body = s3_client(storage, bucket).get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception as exc:  # noqa: BLE001 - boto errors become one line
        raise s3_error(uri, exc) from None
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise SftlabError(f"{uri}: expected UTF-8 text") from None


def download(uri: str, cache_dir: Path, storage: StorageConfig) -> Path:
    """Copy an S3 object, or every object under an S3 prefix, into the cache; return the local path.

    A folder is complete only once its marker is written, so an interrupted download is never
    mistaken for a finished one.
    """
    bucket, key = split_s3(uri)
    target = Path(cache_dir) / "s3" / digest(uri) / (Path(key.rstrip("/")).name or bucket)
    marker = target.parent / ".complete"
    if marker.exists():
        return target
    client = s3_client(storage, bucket)
    try:
        prefix = key.rstrip("/") + "/"
        keys = [
            obj["Key"]
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for obj in page.get("Contents", [])
        ]
        if keys:
            for obj_key in keys:
                dest = target / obj_key[len(prefix) :]
                dest.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(bucket, obj_key, str(dest))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, key, str(target))
    except SftlabError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise s3_error(uri, exc) from None
    marker.write_text(uri)
    return target


def upload_dir(local_dir: Path, uri: str, storage: StorageConfig, skip_prefix: str | None = None) -> None:
    """Every file under ``local_dir``, except those whose name starts with ``skip_prefix``."""
    bucket, key = split_s3(uri)
    client = s3_client(storage, bucket)
    try:
        for path in sorted(Path(local_dir).rglob("*")):
            if skip_prefix and path.name.startswith(skip_prefix):
                continue
            if path.is_file():
                client.upload_file(str(path), bucket, f"{key.rstrip('/')}/{path.relative_to(local_dir).as_posix()}")
    except Exception as exc:  # noqa: BLE001
        raise s3_error(uri, exc) from None
