"""Canonical request, response and stream values that every format translates to and from.

The canonical request *is* the OpenAI Chat Completions body, validated once at ingress and never mutated
afterwards: OpenAI's shape is the superset every other provider maps onto (see the translation table in
the provider reference), and keeping it as the parsed dict lets an OpenAI-to-OpenAI call forward fields we
do not know untouched and costs no per-request object building on the hot path. Translators for other
providers read it and build their own bodies; a retry on another provider re-translates from the same value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Endpoint(StrEnum):
    """The OpenAI operation a request asks for; selects the upstream path and the validation rules."""

    CHAT = "chat"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"


class WireFormat(StrEnum):
    """The dialect the app spoke; errors and answers go back in it."""

    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    RESPONSES = "responses"  # OpenAI's Responses API (POST /v1/responses)


@dataclass(frozen=True, slots=True)
class AnthropicExtras:
    """What an Anthropic app's request says beyond its OpenAI-shaped body (None for every other request).

    ``beta`` and ``version``: the app's ``anthropic-beta`` and ``anthropic-version`` headers, for Anthropic
    deployments only. ``effort``: the ``reasoning_effort`` its ``thinking`` / ``output_config.effort`` ask
    for, sent only to deployments whose ``model_info`` says ``supports_reasoning`` (``effort_from`` names the
    app's fields, recorded as dropped elsewhere). ``left_out``: Anthropic server features translation leaves
    out (``context_management``, ``cache_control``), recorded as dropped on the span and the log line.
    ``thinking``: the app asked to see thinking, so reasoning text comes back as ``thinking`` blocks.
    """

    beta: str | None = None
    version: str | None = None
    effort: str | None = None
    effort_from: tuple[str, ...] = ()
    left_out: tuple[str, ...] = ()
    thinking: bool = False


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One validated request from the app.

    ``body`` is OpenAI-shaped and read-only by convention. ``source`` keeps the app's own body when it spoke
    another dialect, so a same-dialect upstream can receive it without a lossy round trip; ``native_only``
    names the fields of ``source`` that have no OpenAI counterpart, which an upstream of another dialect
    must refuse (a 400 naming them) rather than drop.
    """

    model: str
    body: dict[str, Any]
    endpoint: Endpoint = Endpoint.CHAT
    stream: bool = False
    include_usage: bool = False
    wire: WireFormat = WireFormat.OPENAI
    source: dict[str, Any] | None = None
    native_only: tuple[str, ...] = ()
    continuation: bool = False  # the last message is our own partial answer, to be continued (prefill)
    extras: AnthropicExtras | None = None  # an Anthropic app's headers and translation hints


MAX_TOKENS = 100_000_000  # tokens one answer may claim; an upstream saying more (or less than 0) is not believed


def token_count(value: object) -> int:
    """A token count an upstream reported: an int from 0 to ``MAX_TOKENS``; anything else reads 0 (a negative or
    absurd count would run costs, budgets and metrics backwards or to the moon)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKENS:
        return value
    return 0


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one answer (from the parsers' ``token_count``); cached tokens are part of the prompt."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class ChatResponse:
    """A complete upstream answer in OpenAI shape.

    ``raw`` holds the upstream's bytes when they are already valid OpenAI JSON and can be forwarded as they
    came; ``data`` is the parsed form for translation and accounting. ``native`` holds the upstream's own
    body when it speaks the app's dialect (``ChatRequest.source`` was passed through), to be returned as is.
    """

    data: dict[str, Any]
    raw: bytes | None = None
    usage: Usage | None = None
    native: bytes | None = None

    @property
    def model(self) -> str:
        model = self.data.get("model")
        return model if isinstance(model, str) else ""


@dataclass(slots=True)
class StreamChunk:
    """One OpenAI ``chat.completion.chunk`` event: ``raw`` is its JSON payload, ready to forward.

    ``native`` carries the upstream's own SSE event bytes when it speaks the app's dialect; a sink for that
    dialect forwards them verbatim and ignores chunks without them (an event that maps to no OpenAI chunk
    still arrives, as a chunk with empty ``data`` and ``raw``).
    """

    raw: bytes
    data: dict[str, Any] = field(default_factory=dict)
    usage: Usage | None = None
    native: bytes | None = None
