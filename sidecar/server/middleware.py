"""Request id, inbound auth and error rendering: every failure leaves as a well-formed error body."""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
import os
import re
from collections.abc import Awaitable, Callable

from aiohttp import web

from sidecar.config import Secret
from sidecar.config.shared import KeyOwner
from sidecar.core.errors import BodyTooLarge, InboundAuthError, InvalidRequest, SidecarError
from sidecar.core.redact import Redactor
from sidecar.formats import anthropic_ingress
from sidecar.formats import openai as openai_format
from sidecar.state.budgets import INBOUND_KEY
from sidecar.telemetry.logs import REDACT

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
log = logging.getLogger("sidecar.server")
REQUEST_ID = "x-request-id"
MAX_REQUEST_ID = 200
CODE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")  # an error code the app may see: identifier-shaped
OUTCOME_HEADERS = web.RequestKey("outcome_headers", dict)  # x-sidecar-* headers for an error answer
REQUEST_ID_KEY = web.RequestKey("request_id", str)  # the request's id (the app's x-request-id, or ours)
# Generated ids: 32 hex digits like a uuid4's — a random per-process prefix and a counter, unique without
# asking the OS for randomness on every request (uuid4 was ~2% of the CPU per request under load).
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count(int.from_bytes(os.urandom(4), "big") << 16)


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFFFFFFFFFF:016x}"


def request_id_of(request: web.Request) -> str:
    return request.get(REQUEST_ID_KEY) or ""


def public_fields(error: SidecarError, redact: Redactor = REDACT) -> tuple[str, str | None, str | None]:
    """The message, ``param`` and ``code`` of ``error`` as the app may see them.

    Upstream text (a passed-through 4xx, an in-band stream error) can echo our key or an internal URL:
    every error leaves through here (error bodies, ``error`` stream events), so all of it is redacted the
    way log lines are. A code that is not identifier-shaped is dropped.
    """
    code = error.code
    if code is not None and not CODE.fullmatch(code):
        code = None
    return (redact(error.message), redact(error.param) if error.param else error.param,
            redact(code) if code else code)


def error_response(error: SidecarError, request_id: str, *, anthropic: bool = False) -> web.Response:
    """The error body in the app's dialect: OpenAI's, or Anthropic's on the Messages routes."""
    status = error.status
    headers = {REQUEST_ID: request_id}
    retry_after = getattr(error, "retry_after", None)
    if status == 429 and retry_after:
        headers["retry-after"] = str(max(1, round(retry_after)))
    message, param, code = public_fields(error)
    if anthropic:
        body = anthropic_ingress.error_body(status, message)
    else:
        body = openai_format.error_body(message, error.type, param, code)
    return web.Response(body=body, status=status, headers=headers, content_type="application/json")


class InboundKeys:
    """The inbound API keys the routes check: one holder shared by the route table, whose ``secrets`` a
    config reload replaces (the routes themselves are fixed when the server starts)."""

    __slots__ = ("owners", "secrets")

    def __init__(self, secrets: tuple[Secret, ...] = (), owners: tuple[KeyOwner, ...] = ()) -> None:
        self.secrets = secrets
        self.owners = owners  # by position: who each key belongs to (budgets per key and team)


def guarded(handler: Handler, *, anthropic: bool = False, keys: InboundKeys | None = None) -> Handler:
    """``handler`` with the request id in and out, inbound auth when ``keys`` are set, and every exception
    rendered as an error body in the app's dialect (Anthropic's when ``anthropic``), never a stack trace.

    A wrapper per route rather than an aiohttp middleware: with any middleware, aiohttp looks up (or
    builds) a chain of partials and runs two more coroutine layers on every request. Unknown paths and
    methods reach ``not_found`` / ``method_not_allowed`` routes wrapped the same way (see ``routes``).
    """

    async def guarded_handler(request: web.Request) -> web.StreamResponse:
        request_id = request.headers.get(REQUEST_ID)
        if not (request_id and len(request_id) <= MAX_REQUEST_ID and request_id.isascii() and request_id.isprintable()):
            request_id = new_request_id()  # ours, when the app's is missing or could not be echoed and logged
        request[REQUEST_ID_KEY] = request_id
        try:
            if keys is not None and keys.secrets:
                index = check_key(request, keys.secrets)
                INBOUND_KEY.set(keys.owners[index] if index < len(keys.owners) else None)
            elif INBOUND_KEY.get() is not None:  # keep-alive requests share a context; keys were reloaded away
                INBOUND_KEY.set(None)
            response = await handler(request)
        except ConnectionResetError:  # the app hung up while its answer was being written: nobody to answer
            raise asyncio.CancelledError from None
        except Exception as exc:
            error = _as_error(exc, request_id)
            response = error_response(error, request_id, anthropic=anthropic)
            response.headers.update(request.get(OUTCOME_HEADERS) or {})
            return response
        if not response.prepared:
            response.headers[REQUEST_ID] = request_id
        return response

    return guarded_handler


def _as_error(exc: Exception, request_id: str) -> SidecarError:
    """Any exception out of a handler as the error the app gets (a 3xx ``HTTPException`` is re-raised)."""
    if isinstance(exc, SidecarError):
        return exc
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return BodyTooLarge("the request body is too large")
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        error = SidecarError(exc.reason)
        error.status, error.type = exc.status, "invalid_request_error"
        return error
    log.exception("unexpected error handling request %s", request_id)
    return SidecarError("internal error in the sidecar")


def check_key(request: web.Request, keys: tuple[Secret, ...]) -> int:
    """Require one of the configured keys (``Authorization: Bearer``, any case, or ``x-api-key``); the
    position of the one offered."""
    name = "x-api-key"
    offered = request.headers.get(name)
    if not offered:
        name, offered = "authorization", request.headers.get("authorization", "")
        scheme, _, token = offered.strip().partition(" ")
        if scheme.lower() == "bearer":
            offered = token
    try:
        offered_bytes = offered.strip().encode()
    except UnicodeEncodeError:  # aiohttp keeps undecodable header bytes as surrogates
        raise InvalidRequest(f"the {name} header is not valid UTF-8", param=name) from None
    matched = -1
    for i, key in enumerate(keys):  # every key compared, in constant time each
        if hmac.compare_digest(offered_bytes, key.value.encode()) and matched < 0:
            matched = i
    if matched < 0:
        raise InboundAuthError("a valid API key for the sidecar is required")
    return matched


async def not_found(request: web.Request) -> web.StreamResponse:
    raise web.HTTPNotFound()


async def method_not_allowed(request: web.Request) -> web.StreamResponse:
    raise web.HTTPMethodNotAllowed(request.method, [])
