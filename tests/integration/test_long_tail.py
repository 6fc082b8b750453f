"""The OpenAI-compatible long tail: one request per row through the real sidecar, each row's default api_base
replaced by the fake provider; what the host received shows its quirks applied."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from sidecar.config import PROVIDERS
from tests.integration.procs import APP_KEY, PROVIDER_KEY, FakeProvider, Sidecar

ROWS = {  # prefix → (model as configured, model the host must receive, the row needs a key)
    "mistral": ("mistral-small-latest", "mistral-small-latest", True),
    "deepseek": ("deepseek-chat", "deepseek-chat", True),
    "xai": ("grok-3", "grok-3", True),
    "openrouter": ("anthropic/claude-3.5-sonnet", "anthropic/claude-3.5-sonnet", True),
    "cerebras": ("llama3.1-8b", "llama3.1-8b", True),
    "perplexity": ("sonar", "sonar", True),
    "deepinfra": ("meta-llama/Meta-Llama-3.1-8B-Instruct", "meta-llama/Meta-Llama-3.1-8B-Instruct", True),
    "huggingface": ("together/deepseek-ai/DeepSeek-R1", "deepseek-ai/DeepSeek-R1:together", True),
    "lm_studio": ("qwen2.5-7b-instruct", "qwen2.5-7b-instruct", False),
    "llamafile": ("LLaMA_CPP", "LLaMA_CPP", False),
}


@pytest.fixture(scope="module")
def sidecar(workdir: Path, primary: FakeProvider) -> Iterator[Sidecar]:
    entries = []
    for prefix, (model, _, keyed) in ROWS.items():
        params = {"model": f"{prefix}/{model}", "api_base": primary.api_base}
        if keyed:
            params["api_key"] = PROVIDER_KEY
        entries.append({"model_name": prefix, "litellm_params": params})
    process = Sidecar({"model_list": entries, "router_settings": {"num_retries": 0}}, workdir, "long-tail")
    yield process
    process.stop()


@pytest.fixture
def oa(sidecar: Sidecar) -> openai.OpenAI:
    return openai.OpenAI(base_url=sidecar.base_url, api_key=APP_KEY, max_retries=0, timeout=20)


@pytest.mark.parametrize("prefix", list(ROWS))
def test_one_request_per_row(oa: openai.OpenAI, primary: FakeProvider, prefix: str) -> None:
    assert PROVIDERS[prefix]  # every row has its own default base, replaced here by the fake
    completion = oa.chat.completions.create(model=prefix, max_completion_tokens=20, seed=7, messages=[
        {"role": "user", "content": "Say hello", "name": "ann"}])
    assert completion.choices[0].message.content == "Hello from primary."
    seen = primary.stats()
    body, headers = seen["last_body"], seen["last_headers"]
    assert body["model"] == ROWS[prefix][1]
    assert headers.get("authorization") == (f"Bearer {PROVIDER_KEY}" if ROWS[prefix][2] else None)
    renamed = prefix in ("mistral", "deepseek", "xai")  # they take max_tokens, not max_completion_tokens
    assert body.get("max_tokens" if renamed else "max_completion_tokens") == 20
    assert ("name" in body["messages"][0]) is (prefix not in ("mistral", "xai"))
    assert ("random_seed" in body) is (prefix == "mistral")


def test_streams_and_refusals_follow_the_row(oa: openai.OpenAI, primary: FakeProvider) -> None:
    chunks = list(oa.chat.completions.create(model="mistral", stream=True, messages=[
        {"role": "user", "content": "Say hello"}], tools=[{"type": "function", "function": {"name": "f"}}],
        tool_choice="required"))
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    body = primary.stats()["last_body"]
    assert "stream_options" not in body and body["tool_choice"] == "any"  # Mistral's words
    with pytest.raises(openai.BadRequestError) as caught:  # Perplexity has no tool calling: refused, named
        oa.chat.completions.create(model="perplexity", messages=[{"role": "user", "content": "Hi"}],
                                   tools=[{"type": "function", "function": {"name": "f"}}])
    assert caught.value.param == "tools"  # type: ignore[attr-defined]
