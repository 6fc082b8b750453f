"""AWS Bedrock adapter: Converse and ConverseStream at ``{api_base}/model/{model id}/converse[-stream]``.

Requests are signed with SigV4 per attempt (``aws_auth``), or carry a Bedrock API key as a bearer token. The
streamed answer is AWS's binary ``vnd.amazon.eventstream``, framed and CRC-checked by botocore's
``EventStreamBuffer``; each event's JSON goes to ``formats.bedrock_stream``. An Anthropic app's own body is
translated straight to Converse and the answer straight back (``formats.bedrock_anthropic``): its bytes ride
along as ``native`` for the Anthropic ingress, while the router still sees OpenAI chunks.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

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
from sidecar.core.types import ChatRequest, ChatResponse, StreamChunk, WireFormat
from sidecar.formats import bedrock as wire
from sidecar.formats.bedrock_anthropic import ConverseToAnthropic, converse_request, converse_to_message
from sidecar.formats.bedrock_stream import ConverseToOpenAI
from sidecar.formats.common import refuse_native_only
from sidecar.formats.eventstream import FrameDecoder, FrameError, TooLarge
from sidecar.formats.openai import usage_from
from sidecar.formats.sse import MAX_EVENT
from sidecar.policy import betas
from sidecar.providers import aws_auth
from sidecar.providers.anthropic import passthrough
from sidecar.providers.base import TranslatingReader, UpstreamCall, retry_after_seconds, with_partial

# Context-window messages, matched case-sensitively as LiteLLM does ("Too many tokens, please wait" is throttling).
CONTEXT = re.compile(r"too many tokens|expected maxLength:|Input is too long|prompt is too long|prompt: length: 1\.\."
                     r"|Too many input tokens|model_context_window_exceeded")
ARN = re.compile(r"arn:aws[a-z-]*:[a-z0-9-]+:[a-z0-9-]*:\d*:[^\s\"',]+")
MAX_MESSAGE = 500
AUTH_ERRORS = frozenset({"AccessDeniedException", "UnrecognizedClientException", "InvalidSignatureException",
                         "ExpiredTokenException", "IncompleteSignature", "MissingAuthenticationTokenException",
                         "InvalidClientTokenId", "SignatureDoesNotMatch"})
SERVER_ERRORS = frozenset({"ModelErrorException", "ModelStreamErrorException", "InternalServerException",
                           "ServiceUnavailableException", "InternalFailure"})


def new_id(prefix: str) -> str:
    return prefix + os.urandom(12).hex()


class BedrockAdapter:
    """Adapter for one ``bedrock`` deployment; URLs, the signer and static headers made at construction."""

    def __init__(self, deployment: Deployment, credentials: aws_auth.AwsCredentials | None = None) -> None:
        aws = deployment.aws
        assert aws is not None, "bedrock deployments carry their AWS settings"
        self.deployment = deployment
        self.extra_body = deployment.params.extra_body if deployment.params is not None else None
        self.model_id = aws.model_id
        self.betas = betas.for_deployment(deployment)
        prefix = f"{deployment.api_base}/model/{quote(aws.model_id, safe='')}"  # ':' and '/' encoded, as botocore
        self.url, self.stream_url = f"{prefix}/converse", f"{prefix}/converse-stream"
        self.credentials: aws_auth.AwsCredentials | None = None
        self.signer: aws_auth.SigV4Signer | None = None
        if deployment.api_key is None:  # SigV4; else a Bedrock API key as bearer token
            static = aws.static_keys and aws.role_name is None
            self.credentials = credentials or aws_auth.AwsCredentials(aws_auth.resolver(aws), rebuild=static)
            self.signer = aws_auth.SigV4Signer(aws.region)
            if credentials is None and static:
                self.credentials.refresh()  # no network involved: ready for the first request
            else:
                self.credentials.current(time.time())  # may call STS or IMDS: resolved in the background
        self.headers: dict[str, str] = {}
        self.refresh_credentials()

    def refresh_credentials(self) -> None:
        headers = {"content-type": "application/json", **dict(self.deployment.extra_headers)}
        if self.deployment.api_key is not None:
            headers["authorization"] = f"Bearer {self.deployment.api_key.value}"
        self.headers = headers

    def _signed(self, url: str, body: bytes) -> Mapping[str, str]:
        if self.signer is None or self.credentials is None:
            return self.headers
        frozen = self.credentials.current(time.time())
        if frozen is None:
            if self.credentials.error is not None:
                raise UpstreamAuthError(f"no AWS credentials to sign with: {self.credentials.error}")
            raise UpstreamServerError("AWS credentials are still being fetched")
        return self.signer.sign(frozen, url, self.headers, body)

    def prepare(self, request: ChatRequest) -> UpstreamCall:
        dropped: tuple[str, ...] = ()
        if passthrough(request):
            beta = self.betas.header(request.extras.beta) if request.extras is not None else None
            body, dropped = converse_request(request.source, self.model_id, beta=beta,  # type: ignore[arg-type]
                                             max_output_tokens=self.deployment.model_info.max_output_tokens)
        else:
            if request.native_only and request.wire is not WireFormat.ANTHROPIC:
                raise refuse_native_only(request, "Bedrock")
            body = wire.to_converse(request.body, self.model_id,
                                    default_max_tokens=self.deployment.model_info.max_output_tokens)
        if self.extra_body:  # the deployment's extra_body, under what the request says
            body = {**self.extra_body, **body}
        url = self.stream_url if request.stream else self.url
        data = orjson.dumps(body)
        return UpstreamCall(url, self._signed(url, data), data, self.deployment.proxy, dropped)

    def read_response(self, request: ChatRequest, body: bytes) -> ChatResponse:
        model = self.deployment.model
        try:
            data = orjson.loads(body)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            completion = wire.to_openai_completion(data, new_id("chatcmpl-"), model, int(time.time()))
        except ValueError as exc:
            raise UpstreamServerError(f"the upstream sent a malformed answer: {exc}", upstream_status=200) from None
        native = orjson.dumps(converse_to_message(data, new_id("msg_"), model)) if passthrough(request) else None
        return ChatResponse(completion, None, usage_from(completion.get("usage")), native=native)

    def stream_reader(self, request: ChatRequest) -> BedrockStreamReader:
        model = self.deployment.model
        translator = ConverseToOpenAI(id_=new_id("chatcmpl-"), model=model, created=int(time.time()),
                                      include_usage=request.include_usage)
        native = ConverseToAnthropic(id_=new_id("msg_"), model=model) if passthrough(request) else None
        return BedrockStreamReader(translator, native, self.deployment.max_sse_event_bytes)

    def classify_error(self, status: int, headers: Mapping[str, str], body: bytes) -> UpstreamError:
        error = classify_bedrock_error(status, headers, body)
        if error.code == "ExpiredTokenException" and self.credentials is not None:
            self.credentials.expire()  # fetch fresh credentials before the next attempt
        return error


class BedrockStreamReader(TranslatingReader):
    """ConverseStream bytes (any split) → OpenAI chunks; with ``native``, Anthropic events ride along."""

    __slots__ = ("frames", "native")
    translator: ConverseToOpenAI

    def __init__(self, translator: ConverseToOpenAI, native: ConverseToAnthropic | None,
                 max_event: int = MAX_EVENT) -> None:
        super().__init__(translator)
        self.frames = FrameDecoder(max_event)
        self.native = native

    def feed(self, data: bytes) -> list[StreamChunk]:
        broken: FrameError | None = None
        try:
            frames = self.frames.feed(data)
        except FrameError as error:  # a bad CRC, length or header: the framing cannot be trusted past this point
            frames, broken = error.frames, error
        out: list[StreamChunk] = []
        try:
            for headers, payload in frames:
                out += self._message(headers, payload)
        except UpstreamError as error:  # an error or exception message
            raise with_partial(error, out) from None
        if isinstance(broken, TooLarge):
            raise with_partial(UpstreamServerError(f"an event of the upstream's stream is longer than "
                                                   f"{self.frames.max_frame} bytes", upstream_status=200,
                                                   cause="sse_event_too_large"), out)
        if broken is not None:
            raise with_partial(UpstreamServerError("the upstream's event stream is corrupt", upstream_status=200), out)
        return out

    def finish(self) -> list[StreamChunk]:
        if self.frames.pending and not (self.translator.done or self.translator.stopped):
            raise UpstreamServerError("the upstream's event stream was cut off mid-event", upstream_status=200)
        tail = self.native.finish() if self.native is not None else b""
        return [StreamChunk(b"", {}, native=tail)] if tail else []

    def _message(self, headers: Mapping[str, object], payload: bytes) -> list[StreamChunk]:
        kind = headers.get(":message-type")
        if kind == "error":
            raise classify_exception(str(headers.get(":error-code") or "InternalServerException"),
                                     str(headers.get(":error-message") or ""))
        try:
            data = orjson.loads(payload) if payload else {}
        except orjson.JSONDecodeError:
            data = None
        if kind == "exception":
            message = str(data.get("message") or "") if isinstance(data, dict) else ""
            raise classify_exception(str(headers.get(":exception-type") or ""), message)
        if not isinstance(data, dict):
            self.translator.skipped += 1
            return []
        name = str(headers.get(":event-type"))
        translator = self.translator
        chunks = [StreamChunk(orjson.dumps(c), c, translator.usage if "usage" in c else None)
                  for c in translator.event(name, data)]
        if self.native is not None:
            native = self.native.event(name, data)
            if native:
                if not chunks:
                    chunks = [StreamChunk(b"", {})]
                chunks[0].native = native
        return chunks


def _clip(message: str) -> str:
    message = ARN.sub("<arn>", message)  # account ids and resource names stay in the pod
    return message if len(message) <= MAX_MESSAGE else message[:MAX_MESSAGE] + "…"


def _error_name(headers: Mapping[str, str], data: object) -> str:
    """``x-amzn-ErrorType`` (``Name:http://internal…``), else the body's ``__type``/``code`` (``ns#Name``)."""
    name = headers.get("x-amzn-errortype") or ""
    if not name and isinstance(data, dict):
        name = str(data.get("__type") or data.get("code") or "")
    return name.split(":", 1)[0].rsplit("#", 1)[-1]


def classify_bedrock_error(status: int, headers: Mapping[str, str], body: bytes) -> UpstreamError:
    """A Bedrock error answer (reference §A6) → the error class that decides what happens next."""
    try:
        data = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        data = None
    message = ""
    if isinstance(data, dict):
        message = str(data.get("message") or data.get("Message") or "")
    return classify_exception(_error_name(headers, data), message, status, headers, body)


def classify_exception(name: str, message: str, status: int = 200, headers: Mapping[str, str] | None = None,
                       body: bytes | None = None) -> UpstreamError:
    """An exception by name (a JSON error's, or an in-stream ``exception`` frame's lowerCamel one)."""
    name = name[:1].upper() + name[1:]
    message = _clip(message) or f"Bedrock answered {name or status}"
    kwargs: dict[str, Any] = {"upstream_status": status, "body": body, "code": name or None}
    retry_after = retry_after_seconds(headers) if headers else None
    if name in ("ThrottlingException", "ModelNotReadyException") or (status == 429 and not name):
        return RateLimited(message, retry_after=retry_after, **kwargs)
    if name == "ServiceQuotaExceededException":
        quota = RateLimited(message, **kwargs)
        quota.retryable = False  # an account quota: another deployment, not a retry
        return quota
    if name in AUTH_ERRORS or (status in (401, 403) and not name):
        return UpstreamAuthError(message, **kwargs)
    if name == "ValidationException" or (status == 400 and not name):
        if CONTEXT.search(message):
            return ContextWindowExceeded(message, **{**kwargs, "code": None})  # the app sees context_length_exceeded
        rejected = UpstreamBadRequest(message, **kwargs)
        rejected.status = 400
        return rejected
    if name == "ResourceNotFoundException" or status == 404:
        missing = UpstreamServerError(message, **kwargs)  # a wrong model id or ARN: fail over
        missing.retryable = False
        return missing
    if name == "ModelTimeoutException" or status in (408, 504):
        return UpstreamTimeout(message, phase="upstream", **kwargs)
    if name in SERVER_ERRORS or status >= 500 or status == 424:
        return UpstreamServerError(message, retry_after=retry_after, **kwargs)
    if 400 <= status < 500 and status != 409:
        rejected = UpstreamBadRequest(message, **kwargs)
        rejected.status = status
        return rejected
    return UpstreamServerError(message, retry_after=retry_after, **kwargs)
