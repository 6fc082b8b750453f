"""A deployment's own request parameters, applied to the app's request before translation (pure).

LiteLLM passes a deployment's ``litellm_params`` to the completion call under the request's own values, so a
deployment may set defaults (``temperature``, ``max_tokens``, ``reasoning_effort``…); ``additional_drop_params``
removes fields from every request to it; with ``drop_params`` a field the provider cannot take is removed
instead of refused. Each function returns a new request: the app's (shared by every attempt) is never touched.

When the app spoke another dialect (``ChatRequest.source``, forwarded as is to a same-dialect upstream), the
defaults that dialect has under its own name are applied to the source too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sidecar.core.types import ChatRequest, WireFormat

#: One limit under two names: a default for either does not apply when the app set the other.
SAME_FIELD = {"max_tokens": "max_completion_tokens", "max_completion_tokens": "max_tokens"}
#: Defaults the app's own dialect has, under its name there.
NATIVE_NAMES: Mapping[WireFormat, Mapping[str, str]] = {
    WireFormat.ANTHROPIC: {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
                           "max_tokens": "max_tokens", "max_completion_tokens": "max_tokens"},
    WireFormat.RESPONSES: {"temperature": "temperature", "top_p": "top_p", "max_tokens": "max_output_tokens",
                           "max_completion_tokens": "max_output_tokens", "service_tier": "service_tier",
                           "store": "store", "metadata": "metadata", "parallel_tool_calls": "parallel_tool_calls"},
}
#: What a request is: never dropped, whatever a provider says about it.
ESSENTIAL = frozenset({"model", "messages", "prompt", "input", "stream"})


def with_defaults(request: ChatRequest, defaults: Mapping[str, Any]) -> ChatRequest:
    """``request`` with each default the app did not set itself."""
    body = _merged(request.body, defaults)
    source = request.source
    names = NATIVE_NAMES.get(request.wire)
    if source is not None and names:
        source = _merged(source, {names[k]: v for k, v in defaults.items() if k in names})
    return _changed(request, body, source, request.native_only)


def _merged(body: dict[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    missing = {k: v for k, v in defaults.items() if k not in body and SAME_FIELD.get(k) not in body}
    return {**missing, **body} if missing else body


def without(request: ChatRequest, names: frozenset[str]) -> ChatRequest:
    """``request`` without the top-level fields ``names`` (in its body, its source and ``native_only``)."""
    if not any(n in request.body for n in names) and not (request.source and any(n in request.source for n in names)):
        return request
    source = request.source
    if source is not None:
        source = {k: v for k, v in source.items() if k not in names}
    return _changed(request, {k: v for k, v in request.body.items() if k not in names}, source,
                    tuple(n for n in request.native_only if n not in names))


def _changed(request: ChatRequest, body: dict[str, Any], source: dict[str, Any] | None,
             native_only: tuple[str, ...]) -> ChatRequest:
    """``request`` with another body (built field by field: ``dataclasses.replace`` costs several times more,
    and this runs per request on deployments with parameters)."""
    return ChatRequest(request.model, body, request.endpoint, request.stream, request.include_usage, request.wire,
                       source, native_only, request.continuation, request.extras)


def droppable(name: str | None, request: ChatRequest) -> bool:
    """May ``drop_params`` remove the field a translator refused? Only a top-level field the app sent, and
    never one that makes the request what it is."""
    if name is None or name in ESSENTIAL:
        return False
    return name in request.body or (request.source is not None and name in request.native_only
                                    and name in request.source)
