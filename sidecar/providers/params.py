"""A deployment's request parameters around its adapter: LiteLLM's completion defaults and
``additional_drop_params`` before translation, and ``drop_params``: when the translator refuses a field the
app sent (a 400 naming it), that field is removed and the request translated again, and the fields dropped
ride on the ``UpstreamCall`` so the router notes them on the trace and the log line.

Bound only to deployments that set such parameters (``providers.bind``): every other request goes straight
to its adapter.
"""

from __future__ import annotations

from dataclasses import replace

from sidecar.config import RequestParams
from sidecar.core.errors import InvalidRequest
from sidecar.core.types import ChatRequest
from sidecar.formats import params as fields
from sidecar.providers.base import Adapter, UpstreamCall, WrappingAdapter

MAX_DROPS = 16  # a request has few top-level fields; a translator that keeps refusing is not looped on


class ParamsAdapter(WrappingAdapter):
    """``inner`` with ``params`` applied to each request it prepares."""

    def __init__(self, inner: Adapter, params: RequestParams) -> None:
        super().__init__(inner)
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
