"""OpenAI-format error answers map to the error class that decides what happens next."""

from __future__ import annotations

import orjson
import pytest

from sidecar.core import errors
from sidecar.providers.openai_compatible import classify_openai_error


def body(message: str = "m", type_: str = "t", code: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "param": None, "code": code}})


@pytest.mark.parametrize(("status", "raw", "headers", "cls"), [
    (429, body(code="rate_limit_exceeded"), {"retry-after": "2"}, errors.RateLimited),
    (429, body(code="insufficient_quota"), {}, errors.UpstreamAuthError),
    (401, body(code="invalid_api_key"), {}, errors.UpstreamAuthError),
    (403, body(), {}, errors.UpstreamAuthError),
    (403, body("Input validation error: `inputs` tokens + `max_new_tokens` must be <= context length"), {},
     errors.ContextWindowExceeded),  # Together
    (400, body(code="context_length_exceeded"), {}, errors.ContextWindowExceeded),
    (400, orjson.dumps({"object": "error", "message": "The input (9000 tokens) is longer than the model's "
                        "context length (8192 tokens).", "type": "BadRequest", "code": 400}), {},
     errors.ContextWindowExceeded),  # SGLang flat body
    (400, body(code="content_filter"), {}, errors.ContentPolicyViolation),  # Azure
    (400, body(), {}, errors.UpstreamBadRequest),
    (422, body(), {}, errors.UpstreamBadRequest),
    (404, body(code="model_not_found"), {}, errors.UpstreamServerError),
    (408, b"", {}, errors.UpstreamTimeout),
    (409, b"", {}, errors.UpstreamServerError),
    (500, b"<html>oops</html>", {}, errors.UpstreamServerError),
    (503, orjson.dumps({"object": "error", "message": "The request queue is full.", "code": 503}), {},
     errors.UpstreamServerError),
])
def test_classification(status: int, raw: bytes, headers: dict[str, str], cls: type) -> None:
    error = classify_openai_error(status, headers, raw)
    assert type(error) is cls
    assert error.upstream_status == status


def test_retry_after_headers() -> None:
    assert classify_openai_error(429, {"retry-after-ms": "1500"}, b"").retry_after == 1.5
    assert classify_openai_error(429, {"retry-after": "3"}, b"").retry_after == 3.0
    assert classify_openai_error(429, {"retry-after": "soon"}, b"").retry_after is None


def test_not_found_fails_over_without_retry_and_bad_request_keeps_status() -> None:
    assert classify_openai_error(404, {}, body()).retryable is False
    assert classify_openai_error(422, {}, body()).status == 422


def test_long_messages_are_clipped() -> None:
    error = classify_openai_error(400, {}, body("x" * 5000))
    assert len(error.message) < 600
