"""The route table, and nothing else: every API path with and without the /v1 prefix."""

from __future__ import annotations

from aiohttp import web

from sidecar.core.types import Endpoint
from sidecar.server import handlers, health, messages

HEALTH_ROUTES = [
    web.get("/healthz", health.healthz),
    web.get("/readyz", health.readyz),
    web.get("/metrics", health.metrics),
]


def api_routes() -> list[web.RouteDef]:
    routes = []
    for prefix in ("/v1", ""):
        routes += [
            web.post(f"{prefix}/chat/completions", handlers.openai_handler(Endpoint.CHAT)),
            web.post(f"{prefix}/completions", handlers.openai_handler(Endpoint.COMPLETIONS)),
            web.post(f"{prefix}/embeddings", handlers.openai_handler(Endpoint.EMBEDDINGS)),
            web.get(f"{prefix}/models", handlers.list_models),
            web.post(f"{prefix}/messages", messages.messages_handler),
        ]
    return routes + HEALTH_ROUTES
