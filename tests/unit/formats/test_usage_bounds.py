"""Token counts from upstreams are bounded: a negative, absurd or non-integer count reads as 0 in every dialect,
and cached tokens never exceed the prompt — costs, budgets and metrics never run backwards or to the moon."""

from __future__ import annotations

import pytest

from sidecar.core.types import MAX_TOKENS, Usage, token_count
from sidecar.formats import anthropic, bedrock, gemini, openai, responses_upstream

ODD = [-1, -(10**9), MAX_TOKENS + 1, 10**15, 1.5, "12", True, None, [1], {"a": 1}]


@pytest.mark.parametrize("odd", ODD)
def test_an_odd_count_reads_zero_in_every_dialect(odd: object) -> None:
    assert token_count(odd) == 0
    assert openai.usage_from({"prompt_tokens": odd, "completion_tokens": odd}) == Usage()
    assert anthropic.usage_of({"input_tokens": odd, "output_tokens": odd}) == Usage()
    assert bedrock.usage_of({"inputTokens": odd, "outputTokens": odd, "cacheReadInputTokens": odd}) == Usage()
    assert gemini.usage_of({"promptTokenCount": odd, "candidatesTokenCount": odd}) == Usage()
    chat = responses_upstream.chat_usage({"input_tokens": odd, "output_tokens": odd,
                                          "input_tokens_details": {"cached_tokens": odd}})
    assert chat is not None and (chat["prompt_tokens"], chat["completion_tokens"], chat["total_tokens"]) == (0, 0, 0)


def test_plausible_counts_pass_and_cached_never_exceeds_the_prompt() -> None:
    assert token_count(0) == 0 and token_count(MAX_TOKENS) == MAX_TOKENS
    details = {"cached_tokens": 99}
    assert openai.usage_from({"prompt_tokens": 10, "completion_tokens": 4, "prompt_tokens_details": details}) == \
        Usage(10, 4, 10)
    assert gemini.usage_of({"promptTokenCount": 5, "cachedContentTokenCount": 9}) == Usage(5, 0, 5)
    assert anthropic.usage_of({"input_tokens": 3, "cache_read_input_tokens": 7, "output_tokens": 2}) == Usage(10, 2, 7)
