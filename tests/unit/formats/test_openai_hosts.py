"""Host quirks of the OpenAI-compatible long tail: applied without mutating the request; refusals named."""

from __future__ import annotations

import copy

import orjson
import pytest

from sidecar.config import Deployment
from sidecar.core.errors import InvalidRequest, UpstreamAuthError
from sidecar.core.types import ChatRequest
from sidecar.formats import openai_hosts
from sidecar.formats.openai_hosts import QUIRKS
from sidecar.providers.openai_compatible import OpenAICompatibleAdapter, classify_openai_error

BODY = {"model": "m", "max_completion_tokens": 5, "seed": 1, "stream_options": {"include_usage": True},
        "tool_choice": "required", "messages": [{"role": "user", "content": "Hi", "name": "ann", "refusal": None}],
        "tools": [{"type": "function", "function": {"name": "f", "strict": True}}]}


def test_quirks_never_mutate_the_request() -> None:
    before = copy.deepcopy(BODY)
    mistral = openai_hosts.apply(QUIRKS["mistral"], BODY, "mistral")
    assert mistral["max_tokens"] == 5 and mistral["random_seed"] == 1 and mistral["tool_choice"] == "any"
    assert "stream_options" not in mistral and mistral["messages"] == [{"role": "user", "content": "Hi"}]
    xai = openai_hosts.apply(QUIRKS["xai"], BODY, "xai")
    assert xai["tools"] == [{"type": "function", "function": {"name": "f"}}] and "name" not in xai["messages"][0]
    assert before == BODY


@pytest.mark.parametrize(("prefix", "field", "value"), [("perplexity", "tools", []), ("cerebras", "logit_bias", {}),
                                                        ("mistral", "logprobs", True), ("perplexity", "n", 2)])
def test_what_a_host_cannot_honour_is_a_400(prefix: str, field: str, value: object) -> None:
    with pytest.raises(InvalidRequest) as caught:
        plain = {k: v for k, v in BODY.items() if k not in ("tools", "tool_choice")}
        openai_hosts.apply(QUIRKS[prefix], {**plain, field: value}, prefix)
    assert caught.value.param == field and prefix in caught.value.message


def test_empty_finish_reason_and_hugging_face_models() -> None:
    adapter = OpenAICompatibleAdapter(Deployment("x", "g", "xai", "grok-3", "http://h/v1"))
    answer = {"id": "1", "object": "chat.completion", "created": 1, "model": "grok-3", "choices": [
        {"index": 0, "finish_reason": "", "message": {"role": "assistant", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}}]}
    request = ChatRequest("g", {"model": "g", "messages": []})
    assert adapter.read_response(request, orjson.dumps(answer)).data["choices"][0]["finish_reason"] == "tool_calls"
    reader = adapter.stream_reader(ChatRequest("g", {"model": "g", "messages": []}, stream=True))
    chunks = reader.feed(b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c"}]}}]}\n\n'
                         b'data: {"choices":[{"index":0,"delta":{},"finish_reason":""}]}\n\n')
    assert orjson.loads(chunks[-1].raw)["choices"][0]["finish_reason"] == "tool_calls"
    hf = openai_hosts.upstream_model("huggingface", "novita/meta-llama/Llama-3.1-8B")
    assert hf == "meta-llama/Llama-3.1-8B:novita"
    assert openai_hosts.upstream_model("huggingface", "meta-llama/Llama-3.1-8B") == "meta-llama/Llama-3.1-8B"


def test_payment_required_is_an_auth_class_failure() -> None:
    error = classify_openai_error(402, {}, b'{"error":{"message":"Insufficient credits","code":402}}')
    assert isinstance(error, UpstreamAuthError) and not error.retryable  # fail over, never retry
