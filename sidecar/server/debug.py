"""``POST /debug/route``: the routing decision for a request body (and the request's own headers), made now
and returned as JSON, without calling any upstream (``routing.explain``). On the API port only, behind the
inbound keys when they are on, and only to loopback clients: it shows the deployments, tags and health of
the pod, which is nothing for a caller outside it."""

from __future__ import annotations

import ipaddress

import orjson
from aiohttp import web

from sidecar.core.types import Endpoint
from sidecar.formats import openai as openai_format
from sidecar.routing.explain import explain
from sidecar.server.handlers import JSON, read_body
from sidecar.server.keys import STATE


def is_loopback(remote: str | None) -> bool:
    try:
        address = ipaddress.ip_address(remote or "")
    except ValueError:  # a unix socket's peer, or no peer: not a loopback TCP client
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # 127.0.0.1 on a dual-stack socket
    return (mapped or address).is_loopback


async def debug_route(request: web.Request) -> web.Response:
    if not is_loopback(request.remote):
        raise web.HTTPForbidden(reason="/debug/route answers only loopback clients")
    state = request.app[STATE]
    chat = openai_format.parse_request(await read_body(request, state), Endpoint.CHAT)
    pipeline, router = state.pipeline, state.router
    assert pipeline is not None and router is not None
    decision = pipeline.decide(chat, request.headers)
    session = None if pipeline.affinity is None else pipeline.session(chat, request.headers)
    answer = explain(router, chat, decision, session)
    if pipeline.intents is not None and answer["group"] in pipeline.intents.settings:
        # choosing would take an embeddings call, which this endpoint never makes
        answer["intent"] = "not evaluated: intent routing would choose among its routes first"
    if pipeline.cascades is not None and answer["group"] in pipeline.cascades:
        answer["cascade"] = list(pipeline.cascades[answer["group"]][0].escalate)  # tried after this group's answer
    return web.Response(body=orjson.dumps(answer), content_type=JSON)
