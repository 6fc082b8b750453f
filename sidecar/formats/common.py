"""Pieces every non-OpenAI translator shares: OpenAI chunk/completion builders, data URLs, tool arguments.

Translators build OpenAI dicts with these so every dialect produces the same shapes the OpenAI SDK parses.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import orjson

from sidecar.core.errors import InvalidRequest
from sidecar.core.types import ChatRequest, Usage, WireFormat

T = TypeVar("T")
R = TypeVar("R")

DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?:;[\w=.+-]+)*;base64,(?P<data>.*)$", re.DOTALL)
DEFAULT_MAX_TOKENS = 4096  # Anthropic requires max_tokens; used when neither the app nor model_info gives one

#: OpenAI fields that change nothing about the answer itself; dropped when the target has no counterpart.
HINT_FIELDS = frozenset({"stream", "stream_options", "model", "messages", "store", "service_tier", "metadata",
                         "prompt_cache_key", "prompt_cache_retention", "safety_identifier"})


def parse_data_url(url: str) -> tuple[str, str] | None:
    """``data:image/png;base64,XXX`` → ("image/png", "XXX"); None for any other URL."""
    match = DATA_URL.match(url)
    if match is None:
        return None
    return match.group("mime") or "application/octet-stream", match.group("data")


def tool_arguments(arguments: object, where: str) -> dict[str, Any]:
    """An OpenAI ``function.arguments`` JSON string → the object other providers want."""
    if arguments in (None, ""):
        return {}
    if isinstance(arguments, dict):
        return arguments
    try:
        value = orjson.loads(arguments) if isinstance(arguments, str | bytes) else None
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise InvalidRequest(f"'{where}' must be a JSON object encoded as a string", param=where)
    return value


def text_of(content: object, where: str) -> str:
    """A string or a list of text parts → one string; other part types are a 400 naming them."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content if isinstance(content, list) else ()):
        if not isinstance(part, dict) or part.get("type") not in ("text", "refusal"):
            raise InvalidRequest(f"only text parts are supported in '{where}'", param=f"{where}[{j}]")
        texts.append(str(part.get("text") or part.get("refusal") or ""))
    return "".join(texts)


def functions(tools: list[Any], provider: str) -> list[tuple[str, str | None, dict[str, Any] | None]]:
    """(name, description, parameters) of each OpenAI function tool; any other kind of tool is a 400."""
    out = []
    for i, tool in enumerate(tools):
        if tool.get("type") != "function":
            raise InvalidRequest(f"only function tools can be translated for {provider} upstreams",
                                 param=f"tools[{i}]")
        function = tool["function"]
        out.append((function["name"], function.get("description") or None, function.get("parameters") or None))
    return out


def append_turn(turns: list[dict[str, Any]], role: str, key: str, items: list[dict[str, Any]]) -> None:
    """Add ``items`` as a turn of ``role``, merged into the last turn when that has the same role: Anthropic and
    Gemini alternate roles, and one user turn carries every tool result of the turn before."""
    if turns and turns[-1]["role"] == role:
        turns[-1][key].extend(items)
    else:
        turns.append({"role": role, key: items})


def stop_list(stop: object) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else [str(s) for s in stop]  # type: ignore[union-attr]


def max_tokens_of(body: dict[str, Any]) -> int | None:
    value = body.get("max_completion_tokens") or body.get("max_tokens")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def reject(body: dict[str, Any], fields: dict[str, object], provider: str) -> None:
    """400 for each field present with a value other than its harmless default (None means: any value)."""
    for name, harmless in fields.items():
        if name in body and body[name] is not None and body[name] != harmless:
            raise InvalidRequest(f"'{name}' cannot be translated for {provider} upstreams", param=name)


#: Claude's extended-thinking budgets for ``reasoning_effort`` (LiteLLM's values for low/medium/high).
THINKING_BUDGETS = {"low": 1024, "medium": 2048, "high": 4096, "xhigh": 8192, "max": 16384}
MIN_THINKING_BUDGET = 1024


def thinking_budget(body: dict[str, Any], provider: str) -> int | None:
    """``reasoning_effort`` → a Claude thinking budget (None: no thinking). The budget counts against max_tokens,
    so it shrinks to fit; sampling settings and forced tool use cannot go with thinking (as OpenAI's reasoning
    models refuse ``temperature``): a 400 naming them."""
    effort = body.get("reasoning_effort")
    if effort is None or effort in ("none", "minimal"):
        return None
    budget = THINKING_BUDGETS.get(str(effort))
    if budget is None:
        raise InvalidRequest(f"reasoning_effort '{effort}' cannot be translated for {provider} upstreams",
                             param="reasoning_effort")
    for name in ("temperature", "top_k"):
        if body.get(name) is not None:
            raise InvalidRequest(f"'{name}' cannot be combined with reasoning_effort for {provider} upstreams",
                                 param=name)
    choice = body.get("tool_choice")
    if choice == "required" or isinstance(choice, dict):
        raise InvalidRequest(f"a forced tool_choice cannot be combined with reasoning_effort for {provider} "
                             "upstreams", param="tool_choice")
    limit = max_tokens_of(body)
    if limit is not None and limit <= budget:
        budget = limit - 1
    return budget if budget >= MIN_THINKING_BUDGET else None


def refuse_native_only(request: ChatRequest, provider: str) -> InvalidRequest:
    """The 400 for a request whose dialect-only features (``native_only``) this upstream cannot serve."""
    name = request.native_only[0]
    if request.wire is WireFormat.RESPONSES:
        code = "previous_response_not_found" if name == "previous_response_id" else None
        return InvalidRequest(f"'{name}' needs what only OpenAI's own Responses API keeps or runs; this model "
                              f"group answered from {provider}, which cannot serve it", param=name, code=code)
    return InvalidRequest(f"'{name}' cannot be translated for {provider} upstreams", param=name)


# ---- OpenAI shapes ----------------------------------------------------------------------------------


def usage_dict(usage: Usage) -> dict[str, Any]:
    data: dict[str, Any] = {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                            "total_tokens": usage.total_tokens}
    if usage.cached_tokens:
        data["prompt_tokens_details"] = {"cached_tokens": usage.cached_tokens}
    return data


def completion(id_: str, model: str, created: int, message: dict[str, Any], finish: str | None,
               usage: Usage | None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": id_, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
    }
    if usage is not None:
        data["usage"] = usage_dict(usage)
    return data


def chunk(id_: str, model: str, created: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": id_, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}


def usage_chunk(id_: str, model: str, created: int, usage: Usage) -> dict[str, Any]:
    return {"id": id_, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [],
            "usage": usage_dict(usage)}


class StreamErrorEvent(Exception):
    """An in-band error event in a provider's stream; ``payload`` is its JSON, classified by the adapter;
    ``partial``: what the events before it in the same read translated to (the app still gets those)."""

    def __init__(self, payload: dict[str, Any]) -> None:
        super().__init__("the upstream reported an error mid-stream")
        self.payload = payload
        self.partial: list[Any] = []


def translate_each(events: Iterable[T], translate: Callable[[T], R]) -> list[R]:
    """``translate`` applied to each event; an error event keeps the translations before it on the error."""
    out: list[R] = []
    for event in events:
        try:
            out.append(translate(event))
        except StreamErrorEvent as exc:
            exc.partial = out
            raise
    return out
