"""The Bedrock adapter: event-stream frames parsed by botocore however the bytes are split, in-stream exceptions
and JSON errors classified, a corrupt or cut stream refused, requests signed as AWS verifies them, and
credentials refreshed off the request path."""

from __future__ import annotations

import datetime
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar import config
from sidecar.core.errors import (
    ContextWindowExceeded,
    RateLimited,
    UpstreamAuthError,
    UpstreamBadRequest,
    UpstreamError,
    UpstreamServerError,
    UpstreamTimeout,
)
from sidecar.core.types import ChatRequest
from sidecar.providers.aws_auth import AwsCredentials
from sidecar.providers.bedrock import BedrockAdapter, classify_bedrock_error
from sidecar.testing.fake_aws import ACCESS_KEY, SECRET_KEY, corrupt, event, exception, frame
from sidecar.testing.fake_bedrock import frames

BLOCKS = [{"pieces": ["The quick ", "brown fox"]},
          {"toolUse": {"toolUseId": "tooluse_1", "name": "get_weather", "input": {"city": "Oslo"}}}]
USAGE = {"inputTokens": 9, "outputTokens": 2, "totalTokens": 11}
STREAM = b"".join(frames(BLOCKS, "tool_use", USAGE))


def adapter(**params: object) -> BedrockAdapter:
    deployment = config.parse({"model_list": [{"model_name": "claude", "litellm_params": {
        "model": "bedrock/us.anthropic.claude-3-7-sonnet-20250219-v1:0", "aws_region_name": "us-east-1",
        "aws_access_key_id": ACCESS_KEY, "aws_secret_access_key": SECRET_KEY, **params}}]}).deployments[0]
    return BedrockAdapter(deployment)


def read(parts: list[bytes], include_usage: bool = True) -> list[dict[str, object]]:
    request = ChatRequest("claude", {"model": "claude", "messages": []}, stream=True, include_usage=include_usage)
    reader = adapter().stream_reader(request)
    chunks = [c for part in parts for c in reader.feed(part)] + reader.finish()
    assert reader.done and reader.usage is not None and reader.usage.total_tokens == 11
    return [{k: v for k, v in orjson.loads(c.raw).items() if k not in ("id", "created")}  # random id, the clock
            for c in chunks]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(STREAM) - 1), max_size=12))
def test_any_split_of_the_stream_gives_the_same_chunks(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    parts = [STREAM[a:b] for a, b in zip([0, *points], [*points, len(STREAM)], strict=True)]
    chunks = read(parts)
    assert chunks == read([STREAM])
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])  # type: ignore[index]
    assert text == "The quick brown fox"
    assert chunks[-1]["usage"] == {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}


@pytest.mark.parametrize(("name", "kind"), [("throttlingException", RateLimited),
                                            ("modelStreamErrorException", UpstreamServerError),
                                            ("serviceUnavailableException", UpstreamServerError),
                                            ("validationException", UpstreamBadRequest)])
def test_in_stream_exceptions_are_classified(name: str, kind: type[UpstreamError]) -> None:
    reader = adapter().stream_reader(ChatRequest("c", {"model": "c", "messages": []}, stream=True))
    assert reader.feed(event("messageStart", {"role": "assistant"}))
    with pytest.raises(kind) as caught:
        reader.feed(exception(name, "Too many tokens, please wait before trying again."))
    assert type(caught.value) is kind


def test_a_corrupt_or_cut_stream_is_an_upstream_failure() -> None:
    request = ChatRequest("c", {"model": "c", "messages": []}, stream=True)
    first, second = frames(BLOCKS, "end_turn", USAGE)[:2]
    reader = adapter().stream_reader(request)
    reader.feed(first)
    with pytest.raises(UpstreamServerError, match="corrupt"):
        reader.feed(corrupt(second))
    reader = adapter().stream_reader(request)
    reader.feed(first + second[:10])
    with pytest.raises(UpstreamServerError, match="cut off"):
        reader.finish()
    reader = adapter().stream_reader(request)  # an event whose payload is not JSON is skipped, not fatal
    bad = frame({":event-type": "contentBlockDelta", ":message-type": "event"}, b'{"x":!}')
    assert reader.feed(bad) == [] and reader.skipped == 1


def error(name: str, status: int, message: str, **headers: str) -> UpstreamError:
    return classify_bedrock_error(status, {"x-amzn-errortype": f"{name}:http://internal.amazon.com/coral/x/",
                                           **headers}, orjson.dumps({"message": message}))


def test_json_errors_are_classified() -> None:
    limited = error("ThrottlingException", 429, "Too many tokens, please wait before trying again.",
                    **{"retry-after": "2"})
    assert isinstance(limited, RateLimited) and limited.retry_after == 2.0
    assert isinstance(error("ValidationException", 400, "Input is too long for requested model."),
                      ContextWindowExceeded)
    bad = error("ValidationException", 400, "A conversation must start with a user message.")
    assert type(bad) is UpstreamBadRequest and bad.status == 400
    assert isinstance(error("ModelTimeoutException", 408, "timed out"), UpstreamTimeout)
    for name in ("ExpiredTokenException", "InvalidSignatureException", "UnrecognizedClientException",
                 "AccessDeniedException"):
        assert isinstance(error(name, 403, "no"), UpstreamAuthError)
    missing = error("ResourceNotFoundException", 404, "no such model")
    assert isinstance(missing, UpstreamServerError) and not missing.retryable
    quota = error("ServiceQuotaExceededException", 400, "quota")
    assert isinstance(quota, RateLimited) and not quota.retryable
    assert isinstance(error("ModelNotReadyException", 429, "warming up"), RateLimited)
    assert isinstance(error("ModelErrorException", 424, "boom"), UpstreamServerError)
    denied = error("AccessDeniedException", 403, "User: arn:aws:sts::123456789012:assumed-role/gw/s is not "
                                                 "authorized to perform: bedrock:InvokeModel")
    assert "123456789012" not in denied.message and "<arn>" in denied.message
    by_body = classify_bedrock_error(429, {}, orjson.dumps({"__type": "com.amazon#ThrottlingException",
                                                            "message": "slow down"}))
    assert isinstance(by_body, RateLimited) and by_body.code == "ThrottlingException"


def test_requests_are_signed_as_aws_checks_them() -> None:
    bedrock = adapter(aws_session_token="tok")
    deadline = time.time() + 5
    while bedrock.credentials.frozen is None and time.time() < deadline:  # type: ignore[union-attr]
        time.sleep(0.01)
    call = bedrock.prepare(ChatRequest("c", {"model": "c", "messages": [{"role": "user", "content": "Hi"}]},
                                       stream=True))
    assert call.url.endswith("/model/us.anthropic.claude-3-7-sonnet-20250219-v1%3A0/converse-stream")
    headers = call.headers
    assert headers["x-amz-security-token"] == "tok" and "x-amz-content-sha256" not in headers
    assert headers["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/")
    assert "SignedHeaders=content-type;host;x-amz-date;x-amz-security-token," in headers["authorization"]
    # verify as the service does: rebuild from the wire path and the signed headers, sign with the secret
    signed = {"content-type": headers["content-type"], "host": "bedrock-runtime.us-east-1.amazonaws.com",
              "x-amz-date": headers["x-amz-date"], "x-amz-security-token": "tok"}
    rebuilt = AWSRequest(method="POST", url=call.url, data=call.body, headers=signed)
    rebuilt.context["timestamp"] = headers["x-amz-date"]
    auth = SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY, "tok"), "bedrock", "us-east-1")
    expected = auth.signature(auth.string_to_sign(rebuilt, auth.canonical_request(rebuilt)), rebuilt)
    assert headers["authorization"].endswith(f"Signature={expected}")
    again = bedrock.prepare(ChatRequest("c", {"model": "c", "messages": [{"role": "user", "content": "Hi"}]}))
    assert again.url.endswith("%3A0/converse") and again.headers is not headers  # signed per attempt


def test_an_api_key_is_a_bearer_token() -> None:
    bedrock = adapter(api_key="bedrock-key")
    call = bedrock.prepare(ChatRequest("c", {"model": "c", "messages": [{"role": "user", "content": "Hi"}]}))
    assert call.headers["authorization"] == "Bearer bedrock-key" and bedrock.signer is None


class Refreshable:
    """Stands for botocore's refreshable credentials: each refresh waits for the test to open ``gate``."""

    def __init__(self) -> None:
        self.calls = 0
        self.gate = threading.Event()
        self._expiry_time: datetime.datetime | None = None

    def get_frozen_credentials(self) -> tuple[str, str, str]:
        self.gate.wait(5)
        self.gate.clear()
        self.calls += 1
        self._expiry_time = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=1800)
        return ("ASIA", "secret", f"token-{self.calls}")


def wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.time() + 5
    while not condition() and time.time() < deadline:
        time.sleep(0.01)


def test_credentials_are_refreshed_in_the_background_before_they_expire() -> None:
    source = Refreshable()
    credentials = AwsCredentials(lambda: source, margin=960)
    now = time.time()
    assert credentials.current(now) is None and credentials.refreshing  # resolving: the caller never waits
    source.gate.set()
    wait_for(lambda: credentials.frozen is not None and not credentials.refreshing)
    assert credentials.current(now)[2] == "token-1" and source.calls == 1
    later = now + 1800 - 900  # inside botocore's refresh window: served from the cache while a refresh runs
    assert credentials.current(later)[2] == "token-1" and credentials.refreshing
    source.gate.set()
    wait_for(lambda: source.calls == 2 and not credentials.refreshing)
    assert credentials.current(now)[2] == "token-2"
    assert credentials.current(now + 4000) is None  # never sign with expired credentials


def test_missing_credentials_are_an_auth_failure_after_resolution() -> None:
    credentials = AwsCredentials(lambda: None)
    credentials.refresh()
    assert credentials.frozen is None and credentials.error and "no AWS credentials" in credentials.error
    bedrock = adapter()
    bedrock.credentials = credentials
    credentials.refresh_at = time.time() + 60
    with pytest.raises(UpstreamAuthError, match="no AWS credentials"):
        bedrock.prepare(ChatRequest("c", {"model": "c", "messages": [{"role": "user", "content": "Hi"}]}))


def test_static_keys_from_a_mounted_secret_are_reread(tmp_path: Path) -> None:
    secret = tmp_path / "aws-secret"
    secret.write_text("first-secret\n")
    bedrock = adapter(aws_secret_access_key=f"file:{secret}")
    assert bedrock.credentials.frozen.secret_key == "first-secret"  # type: ignore[union-attr]
    secret.write_text("rotated-secret\n")
    os.utime(secret, (time.time() + 5, time.time() + 5))
    bedrock.credentials.refresh()  # type: ignore[union-attr]  (the worker thread's job, every few minutes)
    assert bedrock.credentials.frozen.secret_key == "rotated-secret"  # type: ignore[union-attr]
