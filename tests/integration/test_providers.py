"""Cross-dialect routing through the real SDKs: openai → Anthropic / Gemini / Vertex upstreams, anthropic →
OpenAI upstream, Anthropic passthrough, and failover from a failing OpenAI deployment to an Anthropic one."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.integration.procs import APP_KEY, PROVIDER_KEY, FakeProvider, Sidecar, fake_providers

MESSAGES = [{"role": "user", "content": "Say hello"}]
WEATHER = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                             "parameters": {"type": "object",
                                                            "properties": {"city": {"type": "string"}},
                                                            "required": ["city"]}}}]
CLAUDE_TOOLS = [{"name": "get_weather", "description": "Weather for a city",
                 "input_schema": WEATHER[0]["function"]["parameters"]}]


def entry(group: str, model: str, api_base: str, **params: Any) -> dict[str, Any]:
    return {"model_name": group, "litellm_params": {"model": model, "api_base": api_base, "api_key": PROVIDER_KEY,
                                                    **params}}


def service_account(path: Path, token_uri: str) -> Path:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    path.write_text(json.dumps({"type": "service_account", "project_id": "proj", "private_key_id": "k1",
                                "private_key": pem, "client_email": "sa@proj.iam.gserviceaccount.com",
                                "client_id": "1", "token_uri": token_uri}))
    return path


@pytest.fixture(scope="module")
def fakes(workdir: Path) -> Iterator[dict[str, FakeProvider]]:
    with fake_providers(workdir, "claude", "gem", "oai") as started:
        yield started


@pytest.fixture(autouse=True)
def _clean(fakes: dict[str, FakeProvider]) -> None:
    for fake in fakes.values():
        fake.clear()


@pytest.fixture(scope="module")
def sidecar(workdir: Path, fakes: dict[str, FakeProvider]) -> Iterator[Sidecar]:
    claude, gem, oai = fakes["claude"].url, fakes["gem"].url, fakes["oai"].url
    key_file = service_account(workdir / "vertex-sa.json", f"{gem}/token")
    vertex = {"model_name": "vertex", "litellm_params": {
        "model": "vertex_ai/gem-vertex", "api_base": gem, "vertex_project": "proj",
        "vertex_location": "europe-west4", "vertex_credentials": str(key_file)}}
    config = {
        "model_list": [
            entry("claude", "anthropic/claude-fake", claude),
            entry("gem", "gemini/gem-fake", gem),
            entry("oai", "openai/oai-model", f"{oai}/v1"),
            vertex,
            entry("mixed", "openai/oai-model", f"{oai}/v1", order=1),
            entry("mixed", "anthropic/claude-fake", claude, order=2),
            entry("cut", "openai/oai-model", f"{oai}/v1", order=1),  # its own breakers: see the cut test
            entry("cut", "anthropic/claude-fake", claude, order=2),
        ],
        "router_settings": {"timeout": 10, "num_retries": 0},
    }
    process = Sidecar(config, workdir, "providers")
    yield process
    process.stop()


@pytest.fixture
def oa(sidecar: Sidecar) -> openai.OpenAI:
    return openai.OpenAI(base_url=sidecar.base_url, api_key=APP_KEY, max_retries=0, timeout=20)


@pytest.fixture
def claude_client(sidecar: Sidecar) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=sidecar.url, api_key=APP_KEY, max_retries=0, timeout=20)


# ---- openai client → Anthropic and Gemini upstreams ------------------------------------------------


@pytest.mark.parametrize(("group", "fake"), [("claude", "claude"), ("gem", "gem")])
def test_openai_client_plain(oa: openai.OpenAI, fakes: dict[str, FakeProvider], group: str, fake: str) -> None:
    raw = oa.chat.completions.with_raw_response.create(
        model=group, messages=[{"role": "system", "content": "Be brief."}, *MESSAGES], max_tokens=50)
    completion = raw.parse()
    assert completion.choices[0].message.content == f"Hello from {fake}."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    seen = fakes[fake].stats()
    if fake == "claude":
        assert seen["last_headers"]["x-api-key"] == PROVIDER_KEY
        assert seen["last_headers"]["anthropic-version"] == "2023-06-01"
        assert seen["last_body"]["system"] == "Be brief." and seen["last_body"]["max_tokens"] == 50
    else:
        assert seen["last_headers"]["x-goog-api-key"] == PROVIDER_KEY
        assert seen["last_body"]["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert APP_KEY not in str(seen["last_headers"])


@pytest.mark.parametrize(("group", "fake"), [("claude", "claude"), ("gem", "gem")])
def test_openai_client_streamed(oa: openai.OpenAI, group: str, fake: str) -> None:
    chunks = list(oa.chat.completions.create(model=group, messages=MESSAGES, stream=True,
                                             stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == f"Hello from {fake}."
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


@pytest.mark.parametrize("group", ["claude", "gem"])
def test_openai_client_tool_call(oa: openai.OpenAI, group: str) -> None:
    completion = oa.chat.completions.create(model=group, messages=MESSAGES, tools=WEATHER)
    call = completion.choices[0].message.tool_calls[0]
    assert completion.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Oslo"}
    # the tool result goes back, translated, and the model answers in text
    history = [*MESSAGES, completion.choices[0].message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": "3°C"}]
    answer = oa.chat.completions.create(model=group, messages=history, tools=WEATHER)
    assert answer.choices[0].message.content and answer.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("group", ["claude", "gem"])
def test_openai_client_streamed_tool_call(oa: openai.OpenAI, group: str) -> None:
    chunks = list(oa.chat.completions.create(model=group, messages=MESSAGES, tools=WEATHER, stream=True))
    calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or ()]
    assert calls[0].function.name == "get_weather" and calls[0].id
    assert json.loads("".join(tc.function.arguments or "" for tc in calls)) == {"city": "Oslo"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_untranslatable_field_is_a_400_naming_it(oa: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        oa.chat.completions.create(model="claude", messages=MESSAGES, n=2)
    assert caught.value.body["param"] == "n"  # type: ignore[index]


def test_upstream_errors_are_classified(oa: openai.OpenAI, fakes: dict[str, FakeProvider]) -> None:
    fakes["claude"].set(fail_next=1, error_status=529)
    with pytest.raises(openai.APIStatusError) as caught:
        oa.chat.completions.create(model="claude", messages=MESSAGES)
    assert caught.value.status_code in (429, 503)
    fakes["gem"].set(fail_next=1, error_status=429, retry_after=3)
    with pytest.raises(openai.RateLimitError) as limited:
        oa.chat.completions.create(model="gem", messages=MESSAGES)
    assert limited.value.response.headers.get("retry-after") == "3"


def test_vertex_with_service_account_token(oa: openai.OpenAI, fakes: dict[str, FakeProvider]) -> None:
    deadline = time.monotonic() + 10
    while True:  # the first token is minted in the background right after startup
        try:
            completion = oa.chat.completions.create(model="vertex", messages=MESSAGES)
            break
        except openai.APIStatusError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    assert completion.choices[0].message.content == "Hello from gem."
    headers = fakes["gem"].stats()["last_headers"]
    assert headers["authorization"].startswith("Bearer ya29.fake-")


# ---- anthropic client → OpenAI upstream, and passthrough --------------------------------------------


def test_anthropic_client_plain(claude_client: anthropic.Anthropic, fakes: dict[str, FakeProvider]) -> None:
    message = claude_client.messages.create(model="oai", max_tokens=64, system="Be brief.",
                                            messages=[{"role": "user", "content": "Say hello"}])
    assert message.content[0].type == "text" and message.content[0].text == "Hello from oai."
    assert message.stop_reason == "end_turn" and message.usage.output_tokens > 0
    body = fakes["oai"].stats()["last_body"]
    assert body["messages"][0] == {"role": "system", "content": "Be brief."} and body["max_tokens"] == 64


def test_anthropic_client_streamed(claude_client: anthropic.Anthropic) -> None:
    with claude_client.messages.stream(model="oai", max_tokens=64,
                                       messages=[{"role": "user", "content": "Say hello"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Hello from oai."
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0


def test_anthropic_client_raw_event_sequence(claude_client: anthropic.Anthropic) -> None:
    events = list(claude_client.messages.create(model="oai", max_tokens=64, stream=True,
                                                messages=[{"role": "user", "content": "Say hello"}]))
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds[1:3] == ["content_block_start", "content_block_delta"]
    assert kinds.count("content_block_start") == kinds.count("content_block_stop") == 1


def test_anthropic_client_tool_use(claude_client: anthropic.Anthropic, fakes: dict[str, FakeProvider]) -> None:
    fakes["oai"].set(text="")  # the OpenAI fake has no tool scenario: drive it through the sidecar translation
    message = claude_client.messages.create(
        model="claude", max_tokens=64, tools=CLAUDE_TOOLS, messages=[{"role": "user", "content": "Weather?"}])
    tool = next(b for b in message.content if b.type == "tool_use")
    assert message.stop_reason == "tool_use" and tool.input == {"city": "Oslo"}
    follow_up = [{"role": "user", "content": "Weather?"}, {"role": "assistant", "content": message.content},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool.id, "content": "3°C"}]}]
    answer = claude_client.messages.create(model="oai", max_tokens=64, tools=CLAUDE_TOOLS, messages=follow_up)
    assert answer.content[0].text == "Hello from oai."
    sent = fakes["oai"].stats()["last_body"]["messages"]
    assert sent[1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert sent[2] == {"role": "tool", "tool_call_id": tool.id, "content": "3°C"}


def test_anthropic_client_streamed_tool_use_passthrough(claude_client: anthropic.Anthropic,
                                                        fakes: dict[str, FakeProvider]) -> None:
    with claude_client.messages.stream(model="claude", max_tokens=64, tools=CLAUDE_TOOLS,
                                       messages=[{"role": "user", "content": "Weather?"}]) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use" and final.content[0].input == {"city": "Oslo"}
    body = fakes["claude"].stats()["last_body"]
    assert body["model"] == "claude-fake" and body["tools"] == CLAUDE_TOOLS  # the app's own body, model replaced


def test_anthropic_passthrough_keeps_native_only_fields(claude_client: anthropic.Anthropic,
                                                        fakes: dict[str, FakeProvider]) -> None:
    claude_client.messages.create(model="claude", max_tokens=2048, messages=MESSAGES,
                                  thinking={"type": "enabled", "budget_tokens": 1024})
    assert fakes["claude"].stats()["last_body"]["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    with pytest.raises(anthropic.BadRequestError) as caught:  # an OpenAI upstream has no containers: 400, named
        claude_client.messages.create(model="oai", max_tokens=2048, messages=MESSAGES,
                                      extra_body={"container": "container_1"})
    assert "container" in caught.value.message
    claude_client.messages.create(model="oai", max_tokens=2048, messages=MESSAGES,  # no reasoning: dropped
                                  thinking={"type": "enabled", "budget_tokens": 1024})
    assert "thinking" not in fakes["oai"].stats()["last_body"]


def test_anthropic_errors_have_anthropic_shape(sidecar: Sidecar, claude_client: anthropic.Anthropic) -> None:
    response = requests.post(f"{sidecar.url}/v1/messages", json={"model": "oai", "messages": MESSAGES},
                             timeout=10)
    assert response.status_code == 400
    assert response.json() == {"type": "error", "error": {"type": "invalid_request_error",
                                                          "message": "max_tokens: a positive integer is required"}}
    with pytest.raises(anthropic.NotFoundError):
        claude_client.messages.create(model="nope", max_tokens=5, messages=MESSAGES)


# ---- failover across dialects -----------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 429])
def test_failing_openai_deployment_fails_over_to_anthropic(oa: openai.OpenAI, fakes: dict[str, FakeProvider],
                                                           status: int) -> None:
    fakes["oai"].set(fail_next=1, error_status=status)
    raw = oa.chat.completions.with_raw_response.create(model="mixed", messages=MESSAGES)
    assert raw.parse().choices[0].message.content == "Hello from claude."
    assert raw.headers["x-sidecar-deployment"].startswith("anthropic/claude-fake")
    assert raw.headers["x-sidecar-attempts"] == "2"


def test_failover_streamed_for_an_anthropic_client(claude_client: anthropic.Anthropic,
                                                   fakes: dict[str, FakeProvider]) -> None:
    fakes["oai"].set(fail_next=1, error_status=500)
    with claude_client.messages.stream(model="mixed", max_tokens=64, messages=MESSAGES) as stream:
        assert "".join(stream.text_stream) == "Hello from claude."


def test_anthropic_client_stream_cut_midway_is_continued_elsewhere(claude_client: anthropic.Anthropic,
                                                                   fakes: dict[str, FakeProvider]) -> None:
    """The Anthropic ingress keeps issue 3's promise too: a stream cut after the app has text is continued on
    the next deployment (here an Anthropic one, by prefill) and the app reads one complete answer."""
    text = "The quick brown fox jumps over the lazy dog."
    fakes["oai"].set(text=text, chunks=8, drop_after=4)
    fakes["claude"].set(text=text, chunks=8)
    with claude_client.messages.stream(model="cut", max_tokens=64, messages=MESSAGES) as stream:
        assert "".join(stream.text_stream) == text
        assert stream.get_final_message().stop_reason == "end_turn"
    assert fakes["oai"].stats()["requests"] == 1  # the first deployment did start the answer
    continued = fakes["claude"].stats()["last_body"]["messages"][-1]
    assert continued["role"] == "assistant"  # the partial answer went as a prefill
