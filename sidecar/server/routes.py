"""The route table, and nothing else: every API path with and without the /v1 prefix.

Each handler is wrapped by ``middleware.guarded`` (request id, inbound auth, error bodies); each path also
gets a ``*`` route answering 405, and a last catch-all answers 404, so unknown paths and methods get the
same JSON error bodies without an aiohttp middleware on every request.
"""

from __future__ import annotations

from aiohttp import web

from sidecar.core.types import Endpoint
from sidecar.server import debug, handlers, health, messages, openapi, responses
from sidecar.server.middleware import Handler, InboundKeys, guarded, method_not_allowed, not_found

HEALTH = [
    ("GET", "/healthz", health.healthz),
    ("GET", "/readyz", health.readyz),
    ("GET", "/metrics", health.metrics),
]
ANTHROPIC_PATHS = frozenset({"/v1/messages", "/messages"})  # errors there use Anthropic's shape


def _table(entries: list[tuple[str, str, Handler]], keys: InboundKeys | None) -> list[web.RouteDef]:
    routes = []
    for method, path, handler in entries:
        anthropic = path in ANTHROPIC_PATHS
        routes += [web.route(method, path, guarded(handler, anthropic=anthropic, keys=keys)),
                   web.route("*", path, guarded(method_not_allowed, anthropic=anthropic, keys=keys))]
    return routes


def catch_all(keys: InboundKeys | None = None) -> web.RouteDef:
    """Last in a table: any other path is a 404 with an error body."""
    return web.route("*", "/{tail:.*}", guarded(not_found, keys=keys))


def api_routes(keys: InboundKeys | None = None) -> list[web.RouteDef]:
    """The API port's routes; ``keys`` (inbound API keys) guard all but the probes and /metrics."""
    entries: list[tuple[str, str, Handler]] = []
    for prefix in ("/v1", ""):
        entries += [
            ("POST", f"{prefix}/chat/completions", handlers.openai_handler(Endpoint.CHAT)),
            ("POST", f"{prefix}/completions", handlers.openai_handler(Endpoint.COMPLETIONS)),
            ("POST", f"{prefix}/embeddings", handlers.openai_handler(Endpoint.EMBEDDINGS)),
            ("GET", f"{prefix}/models", handlers.list_models),
            ("POST", f"{prefix}/messages", messages.messages_handler),
            ("POST", f"{prefix}/responses", responses.responses_handler),
        ]
    entries.append(("POST", "/debug/route", debug.debug_route))
    return [*health_routes(), *_table(entries, keys), catch_all(keys)]


def health_routes() -> list[web.RouteDef]:
    """/healthz, /readyz and /metrics: open on both ports (kubelet and Prometheus carry no key)."""
    return _table(HEALTH, None)


def admin_routes() -> list[web.RouteDef]:
    """The admin port: the probes, /metrics and /openapi.json (the API's contract)."""
    return [*health_routes(), *_table([("GET", "/openapi.json", openapi.openapi_json)], None), catch_all()]
