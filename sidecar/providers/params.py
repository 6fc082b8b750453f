"""A deployment's request parameters around its adapter: LiteLLM's completion defaults and
``additional_drop_params`` before translation, and ``drop_params``: when the translator refuses a field the
app sent (a 400 naming it), that field is removed and the request translated again, and the fields dropped
ride on the ``UpstreamCall`` so the router notes them on the trace and the log line.

Bound only to deployments that set such parameters (``providers.bind``): every other request goes straight
to its adapter.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from sidecar.config import Deployment, RequestParams
from sidecar.core.errors import InvalidRequest, UpstreamError
from sidecar.core.types import ChatRequest, ChatResponse
from sidecar.formats import params as fields
from sidecar.providers.base import Adapter, StreamReader, UpstreamCall

MAX_DROPS = 16  # a request has few top-level fields; a translator that keeps refusing is not looped on


class ParamsAdapter:
    """``inner`` with ``params`` applied to each request it prepares."""

    def __init__(self, inner: Adapter, params: RequestParams) -> None:
        self.inner = inner
        self.deployment: Deployment = inner.deployment
        self.defaults = params.defaults
        self.drop = params.drop
        self.drop_unsupported = params.drop_unsupported

    def prepare(self, request: ChatRequest) -> UpstreamCall:
        if self.defaults:
            request = fields.with_defaults(request, self.defaults)
        if self.drop:
            request = fields.without(request, self.drop)
        if not self.drop_unsupported:
            return self.inner.prepare(request)
        dropped: list[str] = []
        while True:
            try:
                call = self.inner.prepare(request)
            except InvalidRequest as error:
                if len(dropped) >= MAX_DROPS or not fields.droppable(error.param, request):
                    raise
                dropped.append(error.param)  # type: ignore[arg-type]
                request = fields.without(request, frozenset({error.param}))  # type: ignore[arg-type]
                continue
            return replace(call, dropped=call.dropped + tuple(dropped)) if dropped else call

    def read_response(self, request: ChatRequest, body: bytes) -> ChatResponse:
        return self.inner.read_response(request, body)

    def stream_reader(self, request: ChatRequest) -> StreamReader:
        return self.inner.stream_reader(request)

    def classify_error(self, status: int, headers: Mapping[str, str], body: bytes) -> UpstreamError:
        return self.inner.classify_error(status, headers, body)

    def refresh_credentials(self) -> None:
        self.inner.refresh_credentials()
