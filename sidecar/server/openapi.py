"""The API contract as a document: OpenAPI 3.1 for every route the sidecar serves, on the admin port.

Written once, here, and served as bytes built at import. ``OPERATIONS`` lists each route with its request
body and answers; a ``/v1`` path is also documented without the prefix, as it is served. Adding a route
is one entry below (``tests/integration/test_openapi.py`` fails while a served route is missing from the
document, and runs schemathesis against the running sidecar from it).

The request schemas say what the sidecar checks before routing (the rest of a body passes through to the
upstream: ``additionalProperties`` is open, except on the Messages route, which refuses unknown fields as
Anthropic's API does). Errors are OpenAI's shape, Anthropic's on ``/v1/messages``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from sidecar import __version__

REF = "#/components/schemas/"
JSON_TYPE, SSE_TYPE = "application/json", "text/event-stream"
Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": REF + name}


def obj(required: list[str], properties: dict[str, Schema], *, closed: bool = False, **extra: Any) -> Schema:
    return {"type": "object", "required": required, "properties": properties,
            "additionalProperties": not closed, **extra}


STRINGS = {"type": "array", "items": {"type": "string"}}
NUMBER, POSITIVE = {"type": "number"}, {"type": "integer", "minimum": 1}
MODEL = {"type": "string", "minLength": 1, "description": "a model group of the sidecar's config",
         "examples": ["gpt-4o"]}
PART = obj(["type"], {"type": {"type": "string"}})

SCHEMAS: dict[str, Schema] = {
    "ChatMessage": obj(["role"], {
        "role": {"enum": ["system", "developer", "user", "assistant", "tool", "function"]},
        "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": PART}, {"type": "null"}],
                    "description": "required except on assistant messages with tool_calls"},
        "name": {"type": "string"}, "tool_call_id": {"type": "string"},
        "tool_calls": {"type": "array", "items": {"type": "object"}}}),
    "ChatCompletionRequest": obj(["model", "messages"], {
        "model": MODEL, "messages": {"type": "array", "minItems": 1, "items": ref("ChatMessage")},
        "stream": {"type": ["boolean", "null"]}, "stream_options": {"type": ["object", "null"]},
        "temperature": NUMBER, "top_p": NUMBER, "presence_penalty": NUMBER, "frequency_penalty": NUMBER,
        "max_tokens": POSITIVE, "max_completion_tokens": POSITIVE, "n": POSITIVE, "seed": {"type": "integer"},
        "stop": {"anyOf": [{"type": "string"}, STRINGS]},
        "tools": {"type": "array", "items": obj(["type"], {"type": {"type": "string"},
                                                           "function": obj(["name"], {"name": {"type": "string"}})})},
        "tool_choice": {"type": ["string", "object"]}, "response_format": {"type": "object"},
        "user": {"type": "string"}, "metadata": {"type": "object"}}),
    "CompletionRequest": obj(["model", "prompt"], {
        "model": MODEL, "prompt": {"anyOf": [{"type": "string"}, {"type": "array", "minItems": 1}]},
        "stream": {"type": ["boolean", "null"]}, "temperature": NUMBER, "max_tokens": POSITIVE, "n": POSITIVE}),
    "EmbeddingRequest": obj(["model", "input"], {
        "model": MODEL, "stream": {"const": False},
        "input": {"anyOf": [{"type": "string", "minLength": 1},
                            {"type": "array", "minItems": 1,
                             "items": {"type": ["string", "integer", "array"]}}]}}),
    "AnthropicMessage": obj(["role", "content"], {
        "role": {"enum": ["user", "assistant", "system"]},
        "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": PART}]}}),
    "AnthropicMessagesRequest": obj(["model", "max_tokens", "messages"], {
        "model": MODEL, "max_tokens": POSITIVE,
        "messages": {"type": "array", "minItems": 1, "items": ref("AnthropicMessage")},
        "system": {"anyOf": [{"type": "string"}, {"type": "array", "items": PART}]},
        "stop_sequences": STRINGS, "stream": {"type": "boolean"}, "temperature": NUMBER, "top_p": NUMBER,
        "top_k": NUMBER, "metadata": {"type": "object"},
        "tools": {"type": "array", "items": obj(["name"], {"name": {"type": "string"}})},
        "tool_choice": obj(["type"], {"type": {"enum": ["auto", "any", "tool", "none"]}}),
        **{name: {} for name in ("thinking", "output_config", "container", "mcp_servers", "context_management",
                                 "inference_geo", "speed", "service_tier", "cache_control")}}, closed=True),
    "ResponseInputItem": obj([], {"type": {"type": "string"}, "role": {"enum": ["user", "assistant", "system",
                                                                             "developer"]},
                                  "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": PART}]}}),
    "ResponsesRequest": obj(["model", "input"], {
        "model": MODEL, "instructions": {"type": "string"},
        "input": {"anyOf": [{"type": "string"}, {"type": "array", "minItems": 1, "items": ref("ResponseInputItem")}]},
        "stream": {"type": "boolean"}, "temperature": NUMBER, "top_p": NUMBER, "max_output_tokens": POSITIVE,
        "tools": {"type": "array", "items": obj(["type"], {"type": {"type": "string"}})},
        "tool_choice": {"type": ["string", "object"]}, "metadata": {"type": "object"}, "user": {"type": "string"},
        "store": {"const": False, "description": "stateful features need OpenAI's own Responses API upstream"},
        **{name: {} for name in ("include", "max_tool_calls", "parallel_tool_calls", "prompt_cache_key",
                                 "prompt_cache_retention", "reasoning", "safety_identifier", "service_tier",
                                 "stream_options", "text", "top_logprobs", "truncation")}}, closed=True),
    "Response": obj(["object", "output"], {"id": {"type": "string"}, "object": {"const": "response"},
                                           "status": {"type": "string"}, "output": {"type": "array"}}),
    "ChatCompletion": obj(["object", "choices"], {"id": {"type": "string"}, "object": {"type": "string"},
                                                  "model": {"type": "string"}, "choices": {"type": "array"},
                                                  "usage": {"type": ["object", "null"]}}),
    "EmbeddingList": obj(["data"], {"object": {"const": "list"}, "data": {"type": "array"}}),
    "AnthropicMessageResponse": obj(["type", "content"], {"id": {"type": "string"}, "type": {"const": "message"},
                                                          "role": {"const": "assistant"},
                                                          "content": {"type": "array"}}),
    "ModelList": obj(["object", "data"], {
        "object": {"const": "list"},
        "data": {"type": "array", "items": obj(["id", "object"], {"id": {"type": "string"},
                                                                  "object": {"const": "model"}})}}),
    "RouteDecision": obj(["model", "group", "rule", "plan", "groups", "choice"], {
        "model": {"type": "string"}, "group": {"type": "string", "description": "the model group routed to"},
        "rule": {"type": ["object", "null"], "description": "the request rule that matched (name, group, "
                                                            "require_tags, exclude_tags, strategy)"},
        "plan": {"type": "array", "items": {"type": "string"}, "description": "the group, then its fallbacks"},
        "estimated_input_tokens": {"type": ["integer", "null"]},
        "groups": {"type": "array", "items": obj(["group", "strategy", "candidates"], {
            "group": {"type": "string"}, "strategy": {"type": "string"}, "hedging": {"type": "boolean"},
            "candidates": {"type": "array", "items": obj(["deployment", "eligible", "skipped"], {
                "deployment": {"type": "string"}, "order": {"type": ["number", "null"]},
                "failing": {"type": "boolean"}, "score": {"type": ["number", "null"]},
                "eligible": {"type": "boolean"}, "skipped": {"type": ["string", "null"]},
                "session": {"type": "boolean", "description": "the request's session deployment (affinity)"}})}})},
        "choice": {"type": ["string", "null"], "description": "where the first attempt would go now"},
        "intent": {"type": "string", "description": "present for an intent group: not evaluated (no upstream call)"},
        "cascade": {"type": "array", "items": {"type": "string"},
                    "description": "for a cascade group: the groups tried when its answer fails the checks"}}),
    "Status": obj(["status"], {"status": {"type": "string"},
                               "model_groups": {"type": "array", "items": {"type": "string"}}}),
    "Error": obj(["error"], {"error": obj(["message", "type"], {
        "message": {"type": "string"}, "type": {"type": "string"},
        "param": {"type": ["string", "null"]}, "code": {"type": ["string", "integer", "null"]}})}),
    "AnthropicError": obj(["type", "error"], {"type": {"const": "error"}, "error": obj(["type", "message"], {
        "type": {"type": "string"}, "message": {"type": "string"}})}),
}

HEADERS: dict[str, Schema] = {
    "x-request-id": {"description": "echoed from the request, or generated", "schema": {"type": "string"}},
    "x-sidecar-deployment": {"description": "the deployment that answered", "schema": {"type": "string"}},
    "x-sidecar-attempts": {"description": "upstream calls made", "schema": {"type": "string", "pattern": "^[0-9]+$"}},
    "x-sidecar-fallback": {"description": "the model group that answered, when not the one asked for",
                           "schema": {"type": "string"}},
    "x-sidecar-cost": {"description": "the answer's cost in USD (prices known, not streamed)",
                       "schema": {"type": "string"}},
    "x-sidecar-cache": {"description": "hit, miss or coalesced (shared another request's call), where the "
                                       "response cache applies",
                        "schema": {"enum": ["hit", "miss", "coalesced", "semantic-hit"]}},
    "x-sidecar-cache-similarity": {"description": "a semantic cache hit's cosine similarity",
                                   "schema": {"type": "string"}},
    "retry-after": {"description": "seconds to wait (429)", "schema": {"type": "string"}},
}
REQUEST_HEADERS = [
    {"name": "x-request-id", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "the request's id, echoed (generated when absent)"},
    {"name": "cache-control", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "no-cache skips the response cache's lookup; no-store leaves the cache out"},
]
ERROR_STATUSES = {"400": "bad request (names the field)", "401": "inbound API key missing or wrong",
                  "404": "unknown model group", "413": "body too large", "429": "rate limited or budget spent",
                  "503": "no upstream could answer", "504": "out of time"}


@dataclass(frozen=True, slots=True)
class Operation:
    """One route: ``body`` and ``answer`` name schemas; ``anthropic`` errors use Anthropic's shape;
    ``stream`` answers may be an event stream; ``admin``: only on the admin port."""

    method: str
    path: str
    summary: str
    body: str | None = None
    answer: str | None = None
    anthropic: bool = False
    stream: bool = False
    guarded: bool = True  # subject to the inbound API keys
    admin: bool = False


OPERATIONS = (
    Operation("POST", "/v1/chat/completions", "Chat completion, whole or streamed", "ChatCompletionRequest",
              "ChatCompletion", stream=True),
    Operation("POST", "/v1/completions", "Legacy completion", "CompletionRequest", "ChatCompletion", stream=True),
    Operation("POST", "/v1/embeddings", "Embeddings", "EmbeddingRequest", "EmbeddingList"),
    Operation("POST", "/v1/responses", "OpenAI Responses API in and out, whole or streamed", "ResponsesRequest",
              "Response", stream=True),
    Operation("GET", "/v1/models", "The configured model groups", answer="ModelList"),
    Operation("POST", "/v1/messages", "Anthropic Messages format in and out", "AnthropicMessagesRequest",
              "AnthropicMessageResponse", anthropic=True, stream=True),
    Operation("POST", "/debug/route", "The routing decision for this body and these headers, without calling any "
              "upstream (loopback clients only)", "ChatCompletionRequest", "RouteDecision"),
    Operation("GET", "/healthz", "The process is alive", answer="Status", guarded=False),
    Operation("GET", "/readyz", "Config loaded and every model group has a deployment that can be tried",
              answer="Status", guarded=False),
    Operation("GET", "/metrics", "Prometheus text format", guarded=False),
    Operation("GET", "/openapi.json", "This document (admin port only)", guarded=False, admin=True),
)


def _responses(op: Operation) -> dict[str, Any]:
    error = {JSON_TYPE: {"schema": ref("AnthropicError" if op.anthropic else "Error")}}
    ok: dict[str, Any] = {"description": "OK",
                          "headers": {"x-request-id": {"$ref": "#/components/headers/x-request-id"}}}
    if op.answer is not None:
        ok["content"] = {JSON_TYPE: {"schema": ref(op.answer)}}
    elif op.path == "/metrics":
        ok["content"] = {"text/plain": {"schema": {"type": "string"}}}
    elif op.path == "/openapi.json":
        ok["content"] = {JSON_TYPE: {"schema": {"type": "object"}}}
    if op.stream:
        ok["content"][SSE_TYPE] = {"schema": {"description": "server-sent events: the dialect's chunks (OpenAI: "
                                                             "data: <chunk JSON>, then data: [DONE])"}}
    if op.body is not None:
        ok["headers"].update({name: {"$ref": f"#/components/headers/{name}"} for name in HEADERS
                              if name.startswith("x-sidecar-")})
    responses: dict[str, Any] = {"200": ok}
    if op.path == "/readyz":
        responses["503"] = {"description": "starting, draining, or a model group with nothing to try",
                            "content": {JSON_TYPE: {"schema": ref("Status")}}}
    statuses = ERROR_STATUSES if op.body is not None else {"401": ERROR_STATUSES["401"]} if op.guarded else {}
    for status, why in statuses.items():
        responses[status] = {"description": why, "content": error}
        if status == "429":
            responses[status]["headers"] = {"retry-after": {"$ref": "#/components/headers/retry-after"}}
    responses["405"] = {"description": "method not allowed", "content": error}
    return responses


def _operation(op: Operation, path: str) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": f"{op.method.lower()}_{path.strip('/').replace('/', '_').replace('.', '_')}",
        "summary": op.summary, "tags": ["admin" if op.admin or not op.guarded else "api"],
        "parameters": REQUEST_HEADERS if op.body is not None else [], "responses": _responses(op)}
    if op.body is not None:
        operation["requestBody"] = {"required": True, "content": {JSON_TYPE: {"schema": ref(op.body)}}}
    if op.guarded:
        operation["security"] = [{}, {"bearer": []}, {"apiKey": []}]  # keys only when configured
    return operation


def document() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for op in OPERATIONS:
        for path in (op.path, op.path.removeprefix("/v1")) if op.path.startswith("/v1/") else (op.path,):
            item = paths.setdefault(path, {})
            item[op.method.lower()] = _operation(op, path)
            if op.admin:
                item["servers"] = [{"url": "http://{host}:4001", "description": "the admin port",
                                    "variables": {"host": {"default": "127.0.0.1"}}}]
    return {
        "openapi": "3.1.0",
        "info": {"title": "llm-sidecar", "version": __version__,
                 "description": "OpenAI- and Anthropic-compatible LLM gateway sidecar. Every /v1 path is also "
                                "served without the prefix. /healthz, /readyz and /metrics are on both ports."},
        "servers": [{"url": "http://127.0.0.1:4000", "description": "the API port (loopback)"}],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS, "headers": HEADERS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"}}},
    }


BODY = orjson.dumps(document())


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=BODY, content_type=JSON_TYPE)
