"""The adapter seam: what every provider module provides, and the values that cross it.

An adapter is bound to one deployment when the router is built, so URLs and static headers are computed
once; per request it only builds the body. Adapters translate and classify — they never decide where a
request goes next, and they never touch the network (``providers.http`` does).
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from sidecar.config import Deployment
from sidecar.core.errors import UpstreamError
from sidecar.core.types import ChatRequest, ChatResponse, StreamChunk, Usage


@dataclass(frozen=True, slots=True)
class UpstreamCall:
    """One HTTP request to an upstream, ready to send. ``dropped``: fields removed because the provider cannot
    take them (``drop_params``), for the trace and the log line."""

    url: str
    headers: Mapping[str, str]
    body: bytes
    proxy: str | None = None  # the deployment's proxy override (a URL, or "none"); None: the environment's
    dropped: tuple[str, ...] = ()


class StreamReader(Protocol):
    """Turns an upstream's body bytes into OpenAI stream chunks, incrementally.

    An event that cannot be parsed is skipped and counted in ``skipped`` (one bad event must not kill a
    healthy stream); an in-band error event raises ``UpstreamError``. ``done`` is True once the upstream's
    end marker arrived; ``usage`` is the last usage the upstream reported.
    """

    done: bool
    skipped: int
    usage: Usage | None

    def feed(self, data: bytes) -> list[StreamChunk]: ...

    def finish(self) -> list[StreamChunk]: ...


class Adapter(Protocol):
    """A provider adapter bound to one deployment."""

    deployment: Deployment

    def prepare(self, request: ChatRequest) -> UpstreamCall: ...

    def read_response(self, request: ChatRequest, body: bytes) -> ChatResponse: ...

    def stream_reader(self, request: ChatRequest) -> StreamReader: ...

    def classify_error(self, status: int, headers: Mapping[str, str], body: bytes) -> UpstreamError: ...

    def refresh_credentials(self) -> None: ...


class WrappingAdapter:
    """Base of adapters that change how ``inner`` prepares a call (parameters, the replica it goes to) and
    leave reading the answer to it."""

    def __init__(self, inner: Adapter) -> None:
        self.inner = inner
        self.deployment: Deployment = inner.deployment

    def prepare(self, request: ChatRequest) -> UpstreamCall:
        return self.inner.prepare(request)

    def read_response(self, request: ChatRequest, body: bytes) -> ChatResponse:
        return self.inner.read_response(request, body)

    def stream_reader(self, request: ChatRequest) -> StreamReader:
        return self.inner.stream_reader(request)

    def classify_error(self, status: int, headers: Mapping[str, str], body: bytes) -> UpstreamError:
        return self.inner.classify_error(status, headers, body)

    def refresh_credentials(self) -> None:
        self.inner.refresh_credentials()


class StreamTranslator(Protocol):
    """What a formats/ stream translator exposes about its progress."""

    done: bool
    skipped: int
    usage: Usage | None


def with_partial(error: UpstreamError, chunks: list[StreamChunk]) -> UpstreamError:
    """A stream's failure carrying the chunks decoded from the same read before it: the app gets those first
    (the stream is then continued elsewhere from there, not from the read before)."""
    error.partial = chunks
    return error


class TranslatingReader:
    """Base of stream readers that wrap a formats/ translator: progress is the translator's own."""

    __slots__ = ("translator",)

    def __init__(self, translator: StreamTranslator) -> None:
        self.translator = translator

    @property
    def done(self) -> bool:
        return self.translator.done

    @property
    def skipped(self) -> int:
        return self.translator.skipped

    @property
    def usage(self) -> Usage | None:
        return self.translator.usage


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """``retry-after-ms`` (milliseconds) or ``retry-after`` (seconds or an HTTP date) → seconds."""
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
