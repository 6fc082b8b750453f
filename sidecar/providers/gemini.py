"""Gemini adapters: the Gemini API (``x-goog-api-key``) and Vertex AI (OAuth2 bearer from a service account).

Gemini puts the model and the stream switch in the URL, so both URLs are computed at construction. Vertex
tokens come from google-auth; minting one is a blocking HTTPS call, so it never runs on the event loop:
``prepare`` only reads the cached token and, when it nears expiry, schedules a refresh in the default
executor (see ``CachedToken``).
"""

from __future__ import annotations

import asyncio
import datetime
import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import orjson

from sidecar.config import Deployment
from sidecar.core.errors import (
    ContextWindowExceeded,
    RateLimited,
    UpstreamAuthError,
    UpstreamBadRequest,
    UpstreamError,
    UpstreamServerError,
    UpstreamTimeout,
)
from sidecar.core.types import ChatRequest, ChatResponse, StreamChunk
from sidecar.formats import gemini as wire
from sidecar.formats.anthropic_extras import for_openai
from sidecar.formats.common import StreamErrorEvent, refuse_native_only
from sidecar.formats.openai import usage_from
from sidecar.providers.base import TranslatingReader, UpstreamCall, retry_after_seconds, with_partial

SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
REFRESH_MARGIN = 300.0  # seconds before expiry at which a new token is fetched
CONTEXT = re.compile(r"exceeds the maximum number of tokens|input token count|too long", re.IGNORECASE)
MAX_MESSAGE = 500


class Credentials(Protocol):
    """What google-auth credentials offer (and what tests fake): ``refresh`` blocks; ``expiry`` is naive UTC."""

    token: str | None
    expiry: datetime.datetime | None

    def refresh(self, request: Any) -> None: ...


class CachedToken:
    """An OAuth2 access token refreshed before expiry, off the event loop.

    ``current(now)`` never blocks: it returns the cached token (None before the first one arrives) and,
    when the token is missing or within ``margin`` seconds of expiry, starts one refresh in the loop's
    executor (or a thread when no loop runs). Concurrent callers share that one refresh.
    """

    def __init__(self, credentials: Credentials, request_factory: Callable[[], Any], *,
                 margin: float = REFRESH_MARGIN) -> None:
        self.credentials = credentials
        self.request_factory = request_factory
        self.margin = margin
        self.token: str | None = None
        self.expires_at = 0.0
        self.refreshing = False
        self.failures = 0
        self._lock = threading.Lock()

    def current(self, now: float) -> str | None:
        if self.token is None or now >= self.expires_at - self.margin:
            self._start_refresh()
        return self.token if now < self.expires_at else None

    def _start_refresh(self) -> None:
        with self._lock:
            if self.refreshing:
                return
            self.refreshing = True
        try:
            asyncio.get_running_loop().run_in_executor(None, self.refresh)
        except RuntimeError:  # no loop (startup, tests): a plain thread does the same job
            threading.Thread(target=self.refresh, daemon=True, name="vertex-token").start()

    def refresh(self) -> None:
        """Blocking: mint a token now. Runs in a worker thread; failures keep the old token."""
        try:
            self.credentials.refresh(self.request_factory())
            expiry = self.credentials.expiry
            self.expires_at = (expiry.replace(tzinfo=datetime.UTC).timestamp() if expiry
                               else time.time() + 3600.0)
            self.token = self.credentials.token
            self.failures = 0
        except Exception:  # any google-auth failure: retried on the next request
            self.failures += 1
        finally:
            with self._lock:
                self.refreshing = False


def load_service_account(path: str) -> CachedToken:
    """google-auth credentials from a service-account JSON key file (imported here: only Vertex needs it)."""
    from google.auth.transport.requests import Request
    from google.oauth2 import service_account

    credentials = service_account.Credentials.from_service_account_file(path, scopes=list(SCOPES))
    return CachedToken(credentials, Request)


def vertex_base(location: str) -> str:
    host = "aiplatform.googleapis.com" if location == "global" else f"{location}-aiplatform.googleapis.com"
    return f"https://{host}"


class GeminiAdapter:
    """Adapter for one ``gemini`` or ``vertex_ai`` deployment."""

    def __init__(self, deployment: Deployment, token: CachedToken | None = None) -> None:
        self.deployment = deployment
        self.extra_body = deployment.params.extra_body if deployment.params is not None else None
        self.vertex = deployment.provider == "vertex_ai"
        if self.vertex:
            location = deployment.vertex_location or "us-central1"
            base = deployment.api_base or vertex_base(location)
            version = deployment.api_version or "v1"
            prefix = (f"{base}/{version}/projects/{deployment.vertex_project}/locations/{location}"
                      f"/publishers/google/models/{deployment.model}")
        else:
            prefix = f"{deployment.api_base}/{deployment.api_version or 'v1beta'}/models/{deployment.model}"
        self.url = f"{prefix}:generateContent"
        self.stream_url = f"{prefix}:streamGenerateContent?alt=sse"
        self.token = token
        if self.vertex and token is None and deployment.vertex_credentials:
            self.token = load_service_account(deployment.vertex_credentials)
        self.headers: dict[str, str] = {}
        self.refresh_credentials()
        if self.token is not None:
            self.token.current(time.time())  # start fetching the first token now, in the background

    def refresh_credentials(self) -> None:
        headers = {"content-type": "application/json", **dict(self.deployment.extra_headers)}
        key = self.deployment.api_key.value if self.deployment.api_key else ""
        if key:  # Gemini API keys, and Vertex "express mode" keys
            headers["x-goog-api-key"] = key
        self.headers = headers

    def _headers(self) -> Mapping[str, str]:
        if self.token is None:
            return self.headers
        token = self.token.current(time.time())
        if token is None:
            raise UpstreamServerError("no Vertex AI access token yet; it is being fetched")
        return {**self.headers, "authorization": f"Bearer {token}"}

    def prepare(self, request: ChatRequest) -> UpstreamCall:
        if request.native_only:
            raise refuse_native_only(request, "Gemini")
        source, dropped = request.body, ()
        if request.extras is not None:  # an Anthropic app's thinking, effort, server features, max_tokens
            source, info = {**request.body}, self.deployment.model_info
            dropped = for_openai(source, request.extras, max_output_tokens=info.max_output_tokens,
                                 supports_reasoning=info.capabilities.get("supports_reasoning"))
            if source.pop("user", None) is not None:  # metadata.user_id: Gemini has no end-user field
                dropped += ("metadata.user_id",)
        body = wire.to_generate_body(source)
        if self.extra_body:  # the deployment's extra_body, under what the request says
            body = {**self.extra_body, **body}
        return UpstreamCall(self.stream_url if request.stream else self.url, self._headers(), orjson.dumps(body),
                            self.deployment.proxy, dropped)

    def read_response(self, request: ChatRequest, body: bytes) -> ChatResponse:
        try:
            data = orjson.loads(body)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            completion = wire.to_openai_completion(data, self.deployment.model, int(time.time()))
        except ValueError as exc:
            raise UpstreamServerError(f"the upstream sent a malformed answer: {exc}", upstream_status=200) from None
        return ChatResponse(completion, None, usage_from(completion.get("usage")))

    def stream_reader(self, request: ChatRequest) -> GeminiStreamReader:
        return GeminiStreamReader(wire.GeminiToOpenAI(model=self.deployment.model, created=int(time.time()),
                                                      max_event=self.deployment.max_sse_event_bytes,
                                                      include_usage=request.include_usage))

    def classify_error(self, status: int, headers: Mapping[str, str], body: bytes) -> UpstreamError:
        return classify_gemini_error(status, headers, body)


class GeminiStreamReader(TranslatingReader):
    __slots__ = ()
    translator: wire.GeminiToOpenAI

    def feed(self, data: bytes) -> list[StreamChunk]:
        return self._wrap(lambda: self.translator.feed(data))

    def finish(self) -> list[StreamChunk]:
        return self._wrap(self.translator.finish)

    @staticmethod
    def _wrap(translate: Callable[[], list[dict[str, Any]]]) -> list[StreamChunk]:
        try:
            chunks = translate()
        except StreamErrorEvent as exc:
            error = exc.payload.get("error")
            code = error.get("code") if isinstance(error, dict) else 0
            raise with_partial(classify_gemini_error(code if isinstance(code, int) else 500, {},
                                                     orjson.dumps(exc.payload)), _convert(exc.partial)) from None
        return _convert(chunks)


def _convert(chunks: list[dict[str, Any]]) -> list[StreamChunk]:
    return [StreamChunk(orjson.dumps(c), c, usage_from(c.get("usage"))) for c in chunks]


def _retry_delay(details: list[Any]) -> float | None:
    """``google.rpc.RetryInfo.retryDelay`` ("34s", "1.5s") → seconds."""
    for detail in details:
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            delay = str(detail.get("retryDelay", ""))
            try:
                seconds = float(delay.removesuffix("s"))
            except ValueError:
                return None
            return seconds if math.isfinite(seconds) and seconds >= 0 else None  # "nan", "-5s": no advice
    return None


def classify_gemini_error(status: int, headers: Mapping[str, str], body: bytes) -> UpstreamError:
    """A Google RPC error answer (reference §6.4) → the error class that decides what happens next."""
    try:
        data = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, list) and data:
        data = data[0]
    error = data.get("error") if isinstance(data, dict) else None
    error = error if isinstance(error, dict) else {}
    rpc = str(error.get("status") or "")
    details = error.get("details") if isinstance(error.get("details"), list) else []
    reasons = {str(d.get("reason")) for d in details if isinstance(d, dict) and d.get("reason")}
    message = str(error.get("message") or f"upstream answered {status}")
    message = message if len(message) <= MAX_MESSAGE else message[:MAX_MESSAGE] + "…"
    kwargs = {"upstream_status": status, "body": body, "code": rpc or None}
    if status == 429 or rpc == "RESOURCE_EXHAUSTED":
        return RateLimited(message, retry_after=_retry_delay(details) or retry_after_seconds(headers), **kwargs)
    if "API_KEY_INVALID" in reasons or status in (401, 403) or rpc in (
            "UNAUTHENTICATED", "PERMISSION_DENIED", "FAILED_PRECONDITION"):
        return UpstreamAuthError(message, **kwargs)
    if status == 400 and CONTEXT.search(message):
        return ContextWindowExceeded(message, **{**kwargs, "code": None})  # the app sees context_length_exceeded
    if status == 404:
        missing = UpstreamServerError(message, **kwargs)
        missing.retryable = False
        return missing
    if status == 504 or rpc == "DEADLINE_EXCEEDED":
        return UpstreamTimeout(message, phase="upstream", **kwargs)
    if 400 <= status < 500 and status != 409:
        rejected = UpstreamBadRequest(message, **kwargs)
        rejected.status = status
        return rejected
    return UpstreamServerError(message, retry_after=retry_after_seconds(headers), **kwargs)
