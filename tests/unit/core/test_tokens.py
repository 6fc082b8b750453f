from __future__ import annotations

from sidecar.core import tokens
from sidecar.core.types import ChatRequest, Endpoint


def chat(**body: object) -> ChatRequest:
    return ChatRequest("m", {"model": "m", **body})


def test_chat_estimate_counts_text_parts_and_images() -> None:
    request = chat(messages=[{"role": "system", "content": "x" * 40},
                             {"role": "user", "content": [{"type": "text", "text": "y" * 8},
                                                          {"type": "image_url", "image_url": {"url": "u"}}]}])
    assert tokens.prompt_tokens(request) == (4 + 10) + (4 + 2 + tokens.TOKENS_PER_IMAGE)


def test_completion_budget_from_the_request() -> None:
    assert tokens.completion_tokens(chat(messages=[], max_tokens=50)) == 50
    assert tokens.completion_tokens(chat(messages=[], max_completion_tokens=70, max_tokens=5)) == 70
    assert tokens.completion_tokens(chat(messages=[])) == tokens.DEFAULT_COMPLETION_TOKENS
    assert tokens.total_tokens(chat(messages=[{"role": "user", "content": "abcd"}], max_tokens=1)) == 4 + 1 + 1


def test_completions_and_embeddings() -> None:
    assert tokens.prompt_tokens(ChatRequest("m", {"prompt": "a" * 9}, Endpoint.COMPLETIONS)) == 3
    embed = ChatRequest("m", {"input": ["abcd", [1, 2, 3]]}, Endpoint.EMBEDDINGS)
    assert tokens.prompt_tokens(embed) == 1 + 3
    assert tokens.completion_tokens(embed) == 0
