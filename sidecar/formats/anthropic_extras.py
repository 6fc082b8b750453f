"""What an Anthropic app (Claude Code above all) asks for beyond the OpenAI-shaped body, and how each
non-Anthropic deployment takes it (pure).

Claude Code's requests carry ``thinking: {type: adaptive}``, ``output_config: {effort}``,
``context_management: {edits: [...]}``, ``cache_control`` on system, message and tool blocks, and a
``max_tokens`` (64,000 or more) larger than most self-hosted models allow. ``extras_of`` reads these once at
ingress into ``AnthropicExtras``; ``for_openai`` applies them to one OpenAI-format deployment's body:

- ``thinking`` / ``output_config.effort`` → ``reasoning_effort`` when the deployment's ``model_info`` says
  ``supports_reasoning: true``; otherwise dropped (named in the dropped list);
- ``context_management`` and ``cache_control`` (Anthropic server features) are never sent; always named;
- ``max_tokens`` is capped at the deployment's ``max_output_tokens``.

The dropped names go on the attempt's ``UpstreamCall`` (the span's ``sidecar.request.dropped_params`` and the
log line's ``dropped_params``), as ``drop_params`` does.
"""

from __future__ import annotations

from typing import Any

from sidecar.core.types import AnthropicExtras

EFFORTS = ("low", "medium", "high", "xhigh", "max")
DEFAULT_EFFORT = "high"  # Anthropic's own default effort
#: A thinking budget (``budget_tokens``) → the effort it is closest to: below 2,048 low, below 8,192 medium.
BUDGET_EFFORTS = ((2048, "low"), (8192, "medium"))


def extras_of(source: dict[str, Any], beta: str | None, version: str | None) -> AnthropicExtras:
    """An Anthropic app's body and headers → what the translation needs to know of them."""
    thinking = source.get("thinking")
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    config = source.get("output_config")
    asked = config.get("effort") if isinstance(config, dict) else None
    effort_from: list[str] = []
    effort = None
    if kind in ("enabled", "adaptive"):
        effort_from.append("thinking")
        effort = _budget_effort(thinking.get("budget_tokens")) if kind == "enabled" else DEFAULT_EFFORT  # type: ignore[union-attr]
    if isinstance(asked, str) and asked in EFFORTS:
        effort_from.append("output_config.effort")
        effort = asked
    left_out = []
    if source.get("context_management") is not None:
        left_out.append("context_management")
    if _has_cache_control(source):
        left_out.append("cache_control")
    shown = kind in ("enabled", "adaptive") and thinking.get("display") != "omitted"  # type: ignore[union-attr]
    return AnthropicExtras(beta=beta, version=version, effort=effort, effort_from=tuple(effort_from),
                           left_out=tuple(left_out), thinking=shown)


def _budget_effort(budget: object) -> str:
    if not isinstance(budget, int) or isinstance(budget, bool):
        return DEFAULT_EFFORT
    for below, effort in BUDGET_EFFORTS:
        if budget < below:
            return effort
    return "high"


def _has_cache_control(source: dict[str, Any]) -> bool:
    """``cache_control`` at the top, or on any system, tool, message or nested tool-result block."""
    if source.get("cache_control") is not None:
        return True
    blocks: list[Any] = []
    for name in ("system", "tools"):
        if isinstance(source.get(name), list):
            blocks += source[name]
    for message in source.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            blocks += content
            blocks += [c for b in content if isinstance(b, dict) and isinstance(b.get("content"), list)
                       for c in b["content"]]
    return any(isinstance(b, dict) and b.get("cache_control") is not None for b in blocks)


def for_openai(body: dict[str, Any], extras: AnthropicExtras, *, supports_reasoning: bool | None,
               max_output_tokens: int | None) -> tuple[str, ...]:
    """Apply ``extras`` to ``body`` (a fresh copy the caller owns) for an OpenAI-format deployment; returns
    the app's fields that were dropped."""
    dropped = extras.left_out
    if extras.effort is not None:
        if supports_reasoning:
            body["reasoning_effort"] = extras.effort
        else:
            dropped += extras.effort_from
    limit = body.get("max_tokens")
    if max_output_tokens is not None and isinstance(limit, int) and limit > max_output_tokens:
        body["max_tokens"] = max_output_tokens
    return dropped
