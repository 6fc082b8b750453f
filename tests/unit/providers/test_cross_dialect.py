"""Provider error classification (Anthropic, Gemini, Azure) and the Vertex token cache."""

from __future__ import annotations

import datetime
import threading
import time
from collections.abc import Callable

import orjson

from sidecar.core.errors import ContentPolicyViolation, RateLimited, UpstreamAuthError, UpstreamServerError
from sidecar.providers.anthropic import classify_anthropic_error
from sidecar.providers.gemini import CachedToken, classify_gemini_error
from sidecar.providers.openai_compatible import classify_openai_error


def anthropic_body(type_: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": type_, "message": "m"}})


def test_anthropic_errors() -> None:
    limited = classify_anthropic_error(429, {"retry-after": "7"}, anthropic_body("rate_limit_error"))
    assert isinstance(limited, RateLimited) and limited.retry_after == 7.0
    overloaded = classify_anthropic_error(529, {}, anthropic_body("overloaded_error"))
    assert isinstance(overloaded, RateLimited) and overloaded.retryable and overloaded.code == "overloaded"
    assert isinstance(classify_anthropic_error(401, {}, anthropic_body("authentication_error")), UpstreamAuthError)
    assert classify_anthropic_error(400, {}, anthropic_body("invalid_request_error")).status == 400


def gemini_body(code: int, status: str, details: list[dict[str, object]]) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": "m", "status": status, "details": details}})


def test_gemini_errors() -> None:
    retry = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "34s"}]
    limited = classify_gemini_error(429, {}, gemini_body(429, "RESOURCE_EXHAUSTED", retry))
    assert isinstance(limited, RateLimited) and limited.retry_after == 34.0
    for odd in ("nan", "-5s", "inf", "soon"):  # no advice, not a negative or endless pause
        retry = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": odd}]
        assert classify_gemini_error(429, {}, gemini_body(429, "RESOURCE_EXHAUSTED", retry)).retry_after is None
    assert isinstance(classify_gemini_error(503, {}, gemini_body(503, "UNAVAILABLE", [])), UpstreamServerError)
    bad_key = gemini_body(400, "INVALID_ARGUMENT", [{"reason": "API_KEY_INVALID"}])
    assert isinstance(classify_gemini_error(400, {}, bad_key), UpstreamAuthError)


def test_azure_content_filter_is_a_content_policy_violation() -> None:
    body = orjson.dumps({"error": {"message": "filtered", "type": None, "param": "prompt", "code": "content_filter",
                                   "innererror": {"code": "ResponsibleAIPolicyViolation"}}})
    error = classify_openai_error(400, {}, body)
    assert isinstance(error, ContentPolicyViolation) and not error.retryable


class FakeCredentials:
    """Refreshes only when the test opens ``gate``, so the test sees the state before and after."""

    def __init__(self) -> None:
        self.token: str | None = None
        self.expiry: datetime.datetime | None = None
        self.calls = 0
        self.gate = threading.Event()

    def refresh(self, request: object) -> None:
        self.gate.wait(5)
        self.gate.clear()
        self.calls += 1
        self.token = f"tok-{self.calls}"
        self.expiry = datetime.datetime.now(datetime.UTC).replace(tzinfo=None) + datetime.timedelta(seconds=600)


def wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.time() + 5
    while not condition() and time.time() < deadline:
        time.sleep(0.01)


def test_token_is_cached_and_refreshed_before_expiry_in_the_background() -> None:
    credentials = FakeCredentials()
    token = CachedToken(credentials, lambda: None, margin=300)
    now = time.time()
    assert token.current(now) is None  # nothing yet: a refresh starts in a thread; the caller never waits
    assert token.current(now) is None and token.refreshing  # one refresh in flight, not two
    credentials.gate.set()
    wait_for(lambda: token.token is not None and not token.refreshing)
    assert token.current(now) == "tok-1" and credentials.calls == 1  # cached: no new refresh
    assert token.current(now + 350) == "tok-1"  # inside the margin: still served while a refresh runs
    assert token.refreshing
    credentials.gate.set()
    wait_for(lambda: credentials.calls == 2 and not token.refreshing)
    assert token.current(now) == "tok-2"
