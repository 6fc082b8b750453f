"""Token estimates from the request alone, for tpm limits and context-window checks before a call.

No tokenizer: a provider-neutral estimate of about four characters a token (OpenAI's rule of thumb for
English; it over-counts code and under-counts CJK), plus a few tokens of framing per message. Estimates
only ever gate or order deployments; the upstream's reported usage is what is billed and recorded.
"""

from __future__ import annotations

from typing import Any

from sidecar.core.types import ChatRequest, Endpoint

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4  # role and separators
TOKENS_PER_IMAGE = 85  # a low-detail image; high detail costs more, but we cannot know without decoding
DEFAULT_COMPLETION_TOKENS = 256  # when the app sets no max_tokens: a typical chat answer


def prompt_tokens(request: ChatRequest) -> int:
    """Estimated input tokens of a request."""
    body = request.body
    if request.endpoint is Endpoint.CHAT:
        total = sum(TOKENS_PER_MESSAGE + _content_tokens(m.get("content")) for m in body["messages"]
                    if isinstance(m, dict))
        tools = body.get("tools")
        if tools:
            total += len(str(tools)) // CHARS_PER_TOKEN
        return total
    text = body.get("prompt") if request.endpoint is Endpoint.COMPLETIONS else body.get("input")
    return _content_tokens(text)


def completion_tokens(request: ChatRequest) -> int:
    """The most output tokens the request may produce, as far as the request says."""
    if request.endpoint is Endpoint.EMBEDDINGS:
        return 0
    body = request.body
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    return limit if isinstance(limit, int) and limit > 0 else DEFAULT_COMPLETION_TOKENS


def total_tokens(request: ChatRequest) -> int:
    return prompt_tokens(request) + completion_tokens(request)


def _content_tokens(content: Any) -> int:
    if isinstance(content, str):
        return -(-len(content) // CHARS_PER_TOKEN)
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, dict):
                if part.get("type") in ("image_url", "image", "input_image"):
                    total += TOKENS_PER_IMAGE
                else:
                    total += _content_tokens(part.get("text"))
            elif isinstance(part, str | list):
                total += _content_tokens(part)
            elif isinstance(part, int):
                total += 1  # a pre-tokenised prompt: one id, one token
        return total
    return 0
