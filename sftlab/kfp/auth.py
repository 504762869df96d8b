"""A ``kfp.Client`` that multi-user Kubeflow Pipelines lets in, from a pod or a workstation.

In multi-user mode (Kubeflow profiles) the KFP API server authenticates every request by a bearer
token for the audience ``pipelines.kubeflow.org`` (TokenReview) and authorises it in the caller's
namespace (SubjectAccessReview). ``kfp.Client()`` finds such a token only where the pod has the
projected volume a Kubeflow PodDefault adds (``/var/run/secrets/kubeflow/pipelines/token``); a
pipeline's own task pods have none, and with an explicit host it sends no credentials at all. So
the sweep's launch step mints the token itself through the TokenRequest API, for its own
ServiceAccount (the chart's Role allows exactly that), and renews it before it expires: a sweep
outlives any one token. On a workstation the user passes a token (``sftlab submit --token-file``).
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import kfp
from kfp.client import KF_PIPELINES_SA_TOKEN_ENV, KF_PIPELINES_SA_TOKEN_PATH
from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials
from kfp.client.token_credentials_base import TokenCredentialsBase

from sftlab.cluster.objects import POD_NAMESPACE_ENV, api_client, http_error
from sftlab.errors import SftlabError

AUDIENCE = "pipelines.kubeflow.org"
# Set from the downward API on the launch step, with POD_NAMESPACE_ENV (sftlab.cluster.objects, which
# owns the pod's identity): spec.serviceAccountName.
POD_SERVICE_ACCOUNT_ENV = "SFTLAB_POD_SERVICE_ACCOUNT"
TOKEN_LIFETIME_S = 3600
RENEW_AT = 0.8  # of a token's lifetime


class TokenRequestCredentials(TokenCredentialsBase):
    """Audience-bound tokens for ``service_account``, minted on demand and renewed before expiry."""

    def __init__(
        self,
        core_api: Any,
        namespace: str,
        service_account: str,
        lifetime_s: int = TOKEN_LIFETIME_S,
        clock: Callable[[], float] = time.time,
    ):
        self.core_api, self.namespace, self.service_account = core_api, namespace, service_account
        self.lifetime_s, self.clock = lifetime_s, clock
        self._token, self._renew_at = "", 0.0
        self._lock = threading.Lock()

    def _get_token(self) -> str:
        from kubernetes.client import AuthenticationV1TokenRequest, V1TokenRequestSpec
        from kubernetes.client.exceptions import ApiException

        with self._lock:
            if self._token and self.clock() < self._renew_at:
                return self._token
            spec = V1TokenRequestSpec(audiences=[AUDIENCE], expiration_seconds=self.lifetime_s)
            body = AuthenticationV1TokenRequest(spec=spec)
            try:
                answer = self.core_api.create_namespaced_service_account_token(
                    self.service_account, self.namespace, body
                )
            except ApiException as exc:
                raise SftlabError(
                    f"KFP credentials: cannot mint a {AUDIENCE} token for ServiceAccount "
                    f"{self.namespace}/{self.service_account}: {http_error(exc)} (the chart's pipeline Role "
                    "grants create on serviceaccounts/token for its ServiceAccounts)"
                ) from None
            granted = answer.status.expiration_timestamp  # the server may grant less than asked
            lifetime = min(self.lifetime_s, granted.timestamp() - time.time()) if granted else self.lifetime_s
            self._token, self._renew_at = answer.status.token, self.clock() + RENEW_AT * max(lifetime, 0.0)
            return self._token

    def refresh_api_key_hook(self, config: Any) -> None:
        config.api_key["authorization"] = self._get_token()


def _pod_identity() -> tuple[str, str] | None:
    namespace, account = os.environ.get(POD_NAMESPACE_ENV), os.environ.get(POD_SERVICE_ACCOUNT_ENV)
    return (namespace, account) if namespace and account else None


def kfp_client(host: str | None, token: str | None = None) -> kfp.Client:
    """A client with the credentials multi-user KFP needs (single-user KFP ignores them):

    a ``token`` given by the user; else the PodDefault's projected token where it is mounted; else,
    in a pipeline pod that knows its ServiceAccount, tokens minted through the TokenRequest API;
    else none (single-user KFP, or a port-forward that authenticates elsewhere).
    """
    if token:
        return _quiet_client(host=host, existing_token=token)
    credentials: TokenCredentialsBase | None = None
    projected = os.environ.get(KF_PIPELINES_SA_TOKEN_ENV) or KF_PIPELINES_SA_TOKEN_PATH
    identity = _pod_identity()
    if Path(projected).is_file():
        credentials = ServiceAccountTokenVolumeCredentials(projected)
    elif identity is not None:
        from kubernetes import client

        credentials = TokenRequestCredentials(client.CoreV1Api(api_client()), *identity)
    return _quiet_client(host=host, credentials=credentials)


def _quiet_client(**kwargs: Any) -> kfp.Client:
    """kfp.Client, without the version warning it prints when its health check fails (the
    request that fails next says why, in one line: ``kfp_errors``)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="This client only works with", category=FutureWarning)
        return kfp.Client(**kwargs)


@contextmanager
def kfp_errors(host: str | None) -> Iterator[None]:
    """The KFP API's failures as one line naming the host (kfp.Client raises multi-line
    exceptions with headers, or a chain of urllib3 retries)."""
    from kfp_server_api.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    where = f"KFP API at {host or 'the in-cluster address'}"
    try:
        yield
    except ApiException as exc:
        detail = " ".join(str(exc.body or "").split())[:300]
        hint = " (multi-user KFP: pass --token-file and --namespace)" if exc.status in (401, 403) else ""
        raise SftlabError(f"{where}: HTTP {exc.status} {exc.reason}: {detail}{hint}") from None
    except HTTPError as exc:
        cause = getattr(exc, "reason", None) or exc
        raise SftlabError(f"{where}: cannot connect ({' '.join(str(cause).split())[:300]})") from None


def user_namespace(configured: str | None) -> str | None:
    """The namespace runs and experiments belong to in multi-user KFP: the one configured, else the
    pod's own (a profile namespace), else None (single-user KFP takes none)."""
    identity = _pod_identity()
    return configured or (identity[0] if identity else None)
