"""AWS credentials and SigV4 signing for Bedrock, through botocore.

botocore is imported only here and only when a bedrock deployment signs requests (it costs ~100 ms of start-up
and ~20 MiB of memory). Where credentials come from follows LiteLLM's precedence (reference §A8): a web identity
token with a role, a role to assume (``aws_role_name``), a profile, static keys, else botocore's default chain
(environment, EKS web identity / IRSA, profiles, SSO, container and instance roles).

Resolving or refreshing them may call STS or the instance metadata service: blocking network calls that never
run on the event loop. ``AwsCredentials.current`` returns the cached frozen credentials and, when they near
expiry (or every few minutes for credentials without one), starts a refresh in the loop's executor — as
``gemini.CachedToken`` does for Vertex tokens. Signing itself is CPU only and happens per attempt, so a retry
is signed afresh.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from sidecar.config.aws import AwsSettings

log = logging.getLogger("sidecar.providers.aws")
# botocore refreshes temporary credentials 15 minutes before they expire ("advisory" window); asking a little
# earlier makes that refresh happen in our worker thread, never on a request.
REFRESH_MARGIN = 16 * 60.0
RECHECK = 300.0  # credentials without an expiry (static, profile files) are looked at again this often
RETRY_AFTER_FAILURE = 10.0


class AwsCredentials:
    """Frozen credentials (access key, secret, token) kept fresh by a worker thread.

    ``resolve`` (blocking) returns botocore credentials, possibly refreshable; ``get_frozen_credentials`` on them
    is where botocore refreshes. ``error`` says why there are none, once resolution failed.
    """

    def __init__(self, resolve: Callable[[], Any], *, margin: float = REFRESH_MARGIN, rebuild: bool = False) -> None:
        self.resolve = resolve
        self.margin = margin
        self.rebuild = rebuild  # resolve again on every refresh: static keys from files that may be rotated
        self.source: Any = None
        self.frozen: Any = None
        self.refresh_at = 0.0
        self.expires_at = math.inf
        self.refreshing = False
        self.failures = 0
        self.error: str | None = None
        self._lock = threading.Lock()

    def current(self, now: float) -> Any:
        """The frozen credentials to sign with now (None when there are none yet); never blocks."""
        if now >= self.refresh_at:
            self._start_refresh()
        return self.frozen if now < self.expires_at else None

    def expire(self) -> None:
        """The upstream said our token expired: refresh before the next request."""
        self.refresh_at = 0.0

    def _start_refresh(self) -> None:
        with self._lock:
            if self.refreshing:
                return
            self.refreshing = True
        try:
            asyncio.get_running_loop().run_in_executor(None, self.refresh)
        except RuntimeError:  # no loop (start-up, tests): a thread does the same job
            threading.Thread(target=self.refresh, daemon=True, name="aws-credentials").start()

    def refresh(self) -> None:
        """Blocking: resolve or refresh now. Runs in a worker thread; a failure keeps the old credentials."""
        try:
            if self.source is None or self.rebuild:
                self.source = self.resolve()
            if self.source is None:
                raise LookupError("no AWS credentials were found (environment, web identity, profiles, "
                                  "container or instance role)")
            frozen = self.source.get_frozen_credentials()
            expiry = getattr(self.source, "_expiry_time", None)  # botocore keeps it only on refreshable ones
            now = time.time()
            self.expires_at = expiry.timestamp() if expiry is not None else math.inf
            self.refresh_at = min(now + RECHECK, self.expires_at - self.margin)
            self.frozen, self.error, self.failures = frozen, None, 0
        except Exception as exc:  # any botocore failure (STS down, no credentials): retried later
            self.failures += 1
            self.refresh_at = time.time() + RETRY_AFTER_FAILURE
            self.error = str(exc)[:300] or type(exc).__name__
            if self.failures == 1:
                log.warning("AWS credentials unavailable: %s", self.error)
        finally:
            with self._lock:
                self.refreshing = False


def resolver(aws: AwsSettings) -> Callable[[], Any]:
    """The blocking function that builds the deployment's botocore credentials (called in a worker thread)."""
    return lambda: _credentials(aws)


def _credentials(aws: AwsSettings) -> Any:
    from botocore.credentials import Credentials

    for secret in (aws.access_key_id, aws.secret_access_key, aws.session_token):
        if secret is not None:
            secret.refresh()  # a mounted Kubernetes Secret may have been rotated (a stat when it was not)
    static = (Credentials(aws.access_key_id.value, aws.secret_access_key.value,  # type: ignore[union-attr]
                          aws.session_token.value if aws.session_token else None) if aws.static_keys else None)
    if static is not None and aws.role_name is None:
        return static
    import botocore.session
    from botocore.credentials import (
        AssumeRoleCredentialFetcher,
        AssumeRoleWithWebIdentityCredentialFetcher,
        DeferredRefreshableCredentials,
    )

    session = botocore.session.Session(profile=aws.profile_name)
    if aws.role_name is None:
        return session.get_credentials()

    def sts(service: str, **kwargs: Any) -> Any:
        return session.create_client(service, region_name=aws.region, endpoint_url=aws.sts_endpoint, **kwargs)

    extra = {"RoleSessionName": aws.session_name or "llm-sidecar"}
    if aws.web_identity_token is not None:
        token = aws.web_identity_token
        fetcher: Any = AssumeRoleWithWebIdentityCredentialFetcher(sts, lambda: token.value, aws.role_name,
                                                                  extra_args=extra)
        return DeferredRefreshableCredentials(fetcher.fetch_credentials, "assume-role-with-web-identity")
    if aws.external_id:
        extra["ExternalId"] = aws.external_id
    fetcher = AssumeRoleCredentialFetcher(sts, static or session.get_credentials(), aws.role_name, extra_args=extra)
    return DeferredRefreshableCredentials(fetcher.fetch_credentials, "assume-role")


class SigV4Signer:
    """botocore's ``SigV4Auth`` for service ``bedrock``; bound to the credentials of the moment."""

    __slots__ = ("_auth", "_credentials", "_request", "_sigv4", "region")

    def __init__(self, region: str) -> None:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        self.region = region
        self._sigv4, self._request = SigV4Auth, AWSRequest
        self._auth: Any = None
        self._credentials: Any = None

    def sign(self, credentials: Any, url: str, headers: Mapping[str, str], body: bytes) -> dict[str, str]:
        """``headers`` plus ``x-amz-date``, ``authorization`` (and ``x-amz-security-token``) for this exact
        request. ``url`` is sent as it is: its path is already percent-encoded, and signed encoded again, as
        botocore does."""
        if credentials is not self._credentials:
            self._auth, self._credentials = self._sigv4(credentials, "bedrock", self.region), credentials
        request = self._request(method="POST", url=url, data=body, headers=dict(headers))
        self._auth.add_auth(request)
        return {name.lower(): value for name, value in request.headers.items()}
