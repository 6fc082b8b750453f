"""What OpenAI-compatible hosts do differently, as data: field names, fields they refuse, fields to drop.

A field a host cannot honour and that changes the answer is a 400 naming it (``refuses``), never a silent loss;
a hint that changes nothing about the answer and that the host rejects (``strips``) is dropped. Applied per
request only for the rows that have quirks; the body is never mutated (a retry elsewhere re-reads it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sidecar.formats import common

#: The Hugging Face router's inference providers, as LiteLLM users name them in ``huggingface/<provider>/<model>``.
HF_PROVIDERS = frozenset({"cerebras", "cohere", "featherless-ai", "fireworks-ai", "groq", "hf-inference",
                          "hyperbolic", "nebius", "novita", "nscale", "openai", "ovhcloud", "publicai",
                          "replicate", "sambanova", "scaleway", "together", "zai-org"})


@dataclass(frozen=True, slots=True)
class Quirks:
    renames: Mapping[str, str] = field(default_factory=dict)  # our field name → the host's
    refuses: Mapping[str, object] = field(default_factory=dict)  # field → its harmless value (None: any is refused)
    strips: frozenset[str] = frozenset()  # hints the host rejects
    message_names: bool = False  # the host rejects ``messages[].name``
    nulls_in_messages: bool = False  # the host rejects null-valued message fields ("extra_forbidden")
    tool_strict: bool = False  # the host rejects ``tools[].function.strict``
    required_choice: str | None = None  # the host's word for ``tool_choice: "required"``
    empty_finish: bool = False  # the host reports "" as the finish reason of a tool call


def apply(quirks: Quirks, body: dict[str, Any], host: str) -> dict[str, Any]:
    """``body`` as this host accepts it (a new dict), or ``InvalidRequest`` naming what it cannot honour."""
    common.reject(body, dict(quirks.refuses), host)
    out = {quirks.renames.get(k, k): v for k, v in body.items() if k not in quirks.strips}
    if quirks.message_names or quirks.nulls_in_messages:
        out["messages"] = [_message(m, quirks) for m in out["messages"]]
    if quirks.tool_strict and out.get("tools"):
        out["tools"] = [{**t, "function": {k: v for k, v in t["function"].items() if k != "strict"}}
                        if isinstance(t.get("function"), dict) else t for t in out["tools"]]
    if quirks.required_choice and out.get("tool_choice") == "required":
        out["tool_choice"] = quirks.required_choice
    return out


def _message(message: dict[str, Any], quirks: Quirks) -> dict[str, Any]:
    return {k: v for k, v in message.items()
            if not (quirks.message_names and k == "name") and not (quirks.nulls_in_messages and v is None)}


def fix_finish(data: dict[str, Any], *, tools_seen: bool = False) -> bool:
    """An empty finish reason → ``tool_calls`` when the answer (or, streamed, an earlier chunk: ``tools_seen``)
    has tool calls, else ``stop``; True when ``data`` changed."""
    changed = False
    for choice in data.get("choices") or ():
        if isinstance(choice, dict) and choice.get("finish_reason") == "":
            message = choice.get("message") or choice.get("delta") or {}
            calls = tools_seen or bool(isinstance(message, dict) and message.get("tool_calls"))
            choice["finish_reason"] = "tool_calls" if calls else "stop"
            changed = True
    return changed


def upstream_model(provider: str, model: str) -> str:
    """The model name the host expects: ``huggingface/<provider>/<org>/<model>`` → ``<org>/<model>:<provider>``."""
    if provider == "huggingface":
        first, _, rest = model.partition("/")
        if first in HF_PROVIDERS and "/" in rest:
            return f"{rest}:{first}"
    return model


MAX_TOKENS = {"max_completion_tokens": "max_tokens"}
QUIRKS: Mapping[str, Quirks] = {
    "mistral": Quirks(renames={**MAX_TOKENS, "seed": "random_seed"},
                      refuses={"logit_bias": None, "logprobs": False, "top_logprobs": None},
                      strips=frozenset({"stream_options", "user", "store", "metadata", "service_tier"}),
                      message_names=True, nulls_in_messages=True, required_choice="any"),
    "deepseek": Quirks(renames=MAX_TOKENS),
    "xai": Quirks(renames=MAX_TOKENS, message_names=True, tool_strict=True, empty_finish=True),
    "cerebras": Quirks(refuses={"frequency_penalty": None, "presence_penalty": None, "logit_bias": None}),
    "perplexity": Quirks(refuses={"tools": None, "tool_choice": None, "functions": None, "function_call": None,
                                  "logit_bias": None, "logprobs": False, "top_logprobs": None, "n": 1},
                         strips=frozenset({"stream_options", "user", "store", "metadata", "service_tier",
                                           "parallel_tool_calls"})),
}
