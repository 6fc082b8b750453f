"""Claude Code's request shape through the real sidecar, driven by the ``anthropic`` SDK: beta flags and the API
version forwarded to Anthropic deployments only (and filtered by ``anthropic_betas``), a mid-conversation system
message, and the translation to OpenAI-format upstreams (effort, dropped server features, user, max_tokens,
tool round trips, reasoning text as thinking blocks). The emulators refuse beta-gated fields without their flag.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import orjson
import pytest

from sidecar.testing import fake_aws
from tests.integration.procs import APP_KEY, PROVIDER_KEY, FakeProvider, Sidecar, fake_providers

BETAS = ("claude-code-20250219,interleaved-thinking-2025-05-14,context-management-2025-06-27,"
         "advanced-tool-use-2025-11-20,effort-2025-11-24")
READ_TOOL = {"name": "Read", "description": "Read a file", "cache_control": {"type": "ephemeral"},
             "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}},
                              "required": ["file_path"]}}
LATER_TOOL = {"name": "Later", "description": "loaded on demand", "defer_loading": True,
              "input_schema": {"type": "object", "properties": {}}}


def claude_code_body(**changes: Any) -> dict[str, Any]:
    """What Claude Code 2.1.332 sends (abridged): see the module docstring of formats/anthropic_extras.py."""
    body = {
        "model": "cc", "max_tokens": 64000, "stream": True,
        "system": [{"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.332;"},
                   {"type": "text", "text": "You are a Claude agent.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "say hi", "cache_control": {"type": "ephemeral"}}]},
            {"role": "system", "content": [{"type": "text", "text": "# Environment\nPlatform: linux"}]},
        ],
        "tools": [READ_TOOL, LATER_TOOL],
        "metadata": {"user_id": '{"device_id":"d1","session_id":"s1"}'},
        "thinking": {"type": "adaptive"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "medium"},
    }
    return {**body, **changes}


@pytest.fixture(scope="module")
def fakes(workdir: Path) -> Iterator[dict[str, FakeProvider]]:
    with fake_providers(workdir, "ccclaude", "ccoai", "ccbed") as started:
        yield started


@pytest.fixture(autouse=True)
def _clean(fakes: dict[str, FakeProvider]) -> None:
    for fake in fakes.values():
        fake.clear()
        fake.set(tool_call="")


def _entry(group: str, model: str, api_base: str, info: dict[str, Any] | None = None, **params: Any) -> dict:
    return {"model_name": group, "litellm_params": {"model": model, "api_base": api_base, "api_key": PROVIDER_KEY,
                                                    **params}, "model_info": info or {}}


@pytest.fixture(scope="module")
def sidecar(workdir: Path, fakes: dict[str, FakeProvider]) -> Iterator[Sidecar]:
    claude, oai = fakes["ccclaude"].url, f"{fakes['ccoai'].url}/v1"
    config = {
        "model_list": [
            _entry("cc", "anthropic/claude-fake", claude),
            _entry("cc-pinned", "anthropic/claude-fake", claude, api_version="2023-06-01",
                   anthropic_betas={"allow": ["claude-code-*", "effort-2025-11-24"]},
                   extra_headers={"anthropic-beta": "operator-flag-1"}),
            _entry("cc-deny", "anthropic/claude-fake", claude, anthropic_betas={"deny": ["context-management-*"]}),
            _entry("cc-fast", "openai/small", oai, {"max_output_tokens": 8192}),
            _entry("cc-think", "sglang/thinker", oai, {"supports_reasoning": True}),
            {**_entry("cc-bedrock", "bedrock/us.anthropic.claude-sonnet-4-5-v1:0", fakes["ccbed"].url,
                      {"max_output_tokens": 32000}), "litellm_params": {
                "model": "bedrock/us.anthropic.claude-sonnet-4-5-v1:0", "api_base": fakes["ccbed"].url,
                "api_key": fake_aws.BEARER_KEY}},
            {**_entry("cc-bedrock-pinned", "bedrock/us.anthropic.claude-sonnet-4-5-v1:0", fakes["ccbed"].url),
             "litellm_params": {"model": "bedrock/us.anthropic.claude-sonnet-4-5-v1:0", "api_base": fakes["ccbed"].url,
                                "api_key": fake_aws.BEARER_KEY, "anthropic_betas": {"deny": ["effort-*"]}}},
            _entry("cc-gemini", "gemini/gemini-fake", fakes["ccoai"].url, {"supports_reasoning": True,
                                                                           "max_output_tokens": 16000}),
            {**_entry("cc-nova", "bedrock/amazon.nova-lite-v1:0", fakes["ccbed"].url), "litellm_params": {
                "model": "bedrock/amazon.nova-lite-v1:0", "api_base": fakes["ccbed"].url,
                "api_key": fake_aws.BEARER_KEY}},
        ],
        "router_settings": {"timeout": 10, "num_retries": 0},
    }
    process = Sidecar(config, workdir, "coding-agents")
    yield process
    process.stop()


@pytest.fixture
def client(sidecar: Sidecar) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=sidecar.url, api_key=APP_KEY, max_retries=0, timeout=20)


def post(client: anthropic.Anthropic, body: dict[str, Any], betas: str | None = BETAS, version: str = "2023-06-01"):
    headers = {"anthropic-version": version, **({"anthropic-beta": betas} if betas else {})}
    return client.post("/v1/messages?beta=true", cast_to=object, body=body, options={"headers": headers},
                       stream=bool(body.get("stream")), stream_cls=anthropic.Stream[object])


def events(stream: Any) -> list[dict[str, Any]]:
    return [event if isinstance(event, dict) else event.model_dump() for event in stream]


def text_of(events_: list[dict[str, Any]]) -> str:
    return "".join(e["delta"].get("text", "") for e in events_ if e["type"] == "content_block_delta")


def logged(sidecar: Sidecar, field: str, value: object, timeout: float = 10.0) -> bool:
    """Whether a request log line has ``field`` == ``value`` (lines are flushed on a short timer)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [orjson.loads(line) for line in sidecar.logs().splitlines() if f'"{field}":' in line]
        if any(line.get(field) == value for line in lines):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


# ---- Anthropic deployments: betas and version forwarded ---------------------------------------------


def test_betas_and_version_reach_anthropic_untouched(client, fakes) -> None:
    fakes["ccclaude"].set(text="hi from claude")
    answer = events(post(client, claude_code_body(), version="2026-10-21"))
    assert text_of(answer) == "hi from claude"
    seen = fakes["ccclaude"].stats()
    assert seen["last_headers"]["anthropic-beta"] == BETAS
    assert seen["last_headers"]["anthropic-version"] == "2026-10-21"
    assert seen["last_headers"]["x-api-key"] == PROVIDER_KEY
    sent = seen["last_body"]
    assert sent["messages"][1]["role"] == "system" and sent["context_management"]  # passed through untouched
    assert sent["model"] == "claude-fake"


def test_without_the_beta_flags_the_emulator_refuses_as_the_api_does(client, fakes) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        post(client, claude_code_body(stream=False), betas=None)
    assert "context_management" in str(caught.value)


def test_deployment_allow_list_pins_the_flags_and_version(sidecar, client, fakes) -> None:
    body = claude_code_body(model="cc-pinned", stream=False, context_management=None, tools=[READ_TOOL])
    answer = post(client, body, version="2026-10-21")
    assert answer["type"] == "message"
    headers = fakes["ccclaude"].stats()["last_headers"]
    assert headers["anthropic-beta"] == "operator-flag-1,claude-code-20250219,effort-2025-11-24"
    assert headers["anthropic-version"] == "2023-06-01"  # the deployment's api_version wins


def test_deployment_deny_list_strips_a_flag(client, fakes) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        post(client, claude_code_body(model="cc-deny", stream=False))
    assert "context_management" in str(caught.value)
    assert "context-management" not in fakes["ccclaude"].stats()["last_headers"]["anthropic-beta"]


# ---- OpenAI-format deployments: Claude Code's shape translated ----------------------------------------


def test_claude_code_request_to_an_openai_upstream(sidecar, client, fakes) -> None:
    fakes["ccoai"].set(text="hi from the small model")
    answer = events(post(client, claude_code_body(model="cc-fast")))
    assert text_of(answer) == "hi from the small model"
    assert [e["type"] for e in answer][-1] == "message_stop"
    seen = fakes["ccoai"].stats()
    assert "anthropic-beta" not in seen["last_headers"] and "anthropic-version" not in seen["last_headers"]
    sent = seen["last_body"]
    for name in ("thinking", "context_management", "output_config", "reasoning_effort", "cache_control"):
        assert name not in sent
    assert sent["max_tokens"] == 8192  # capped at model_info.max_output_tokens
    assert sent["user"] == '{"device_id":"d1","session_id":"s1"}'
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "system"]  # the system message in place
    assert sent["messages"][2]["content"] == "# Environment\nPlatform: linux"
    assert [t["function"]["name"] for t in sent["tools"]] == ["Read", "Later"]
    assert logged(sidecar, "dropped_params", ["context_management", "cache_control", "thinking",
                                              "output_config.effort"])


def test_effort_and_reasoning_text_on_a_reasoning_upstream(client, fakes) -> None:
    fakes["ccoai"].set(text="the answer", reasoning="Let me think. Yes.")
    body = claude_code_body(model="cc-think", thinking={"type": "enabled", "budget_tokens": 10000},
                            output_config=None)
    answer = events(post(client, body))
    assert fakes["ccoai"].stats()["last_body"]["reasoning_effort"] == "high"
    starts = [e["content_block"]["type"] for e in answer if e["type"] == "content_block_start"]
    assert starts == ["thinking", "text"]
    thinking = "".join(e["delta"].get("thinking", "") for e in answer if e["type"] == "content_block_delta")
    assert thinking == "Let me think. Yes." and text_of(answer) == "the answer"
    whole = post(client, {**body, "stream": False})
    assert [b["type"] for b in whole["content"]] == ["thinking", "text"]
    assert whole["content"][0]["thinking"] == "Let me think. Yes."


def test_reasoning_text_left_out_when_thinking_is_not_shown(client, fakes) -> None:
    fakes["ccoai"].set(text="the answer", reasoning="hidden")
    body = claude_code_body(model="cc-think", thinking={"type": "adaptive", "display": "omitted"}, stream=False)
    whole = post(client, body)
    assert [b["type"] for b in whole["content"]] == ["text"]
    assert fakes["ccoai"].stats()["last_body"]["reasoning_effort"] == "medium"  # output_config.effort


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_tool_use_and_tool_result_round_trip(client, fakes, stream: bool) -> None:
    arguments = '{"file_path":"/scratch/notes.txt","limit":5}'
    fakes["ccoai"].set(tool_call="Read", tool_arguments=arguments, text="the file says 42")
    first = post(client, claude_code_body(model="cc-fast", stream=stream))
    if stream:
        answer = events(first)
        start = next(e for e in answer if e["type"] == "content_block_start")["content_block"]
        partial = "".join(e["delta"].get("partial_json", "") for e in answer if e["type"] == "content_block_delta")
        call = {**start, "input": orjson.loads(partial)}
        assert next(e for e in answer if e["type"] == "message_delta")["delta"]["stop_reason"] == "tool_use"
    else:
        call = first["content"][0]
        assert first["stop_reason"] == "tool_use"
    assert call["type"] == "tool_use" and call["name"] == "Read" and call["id"] == "call_fake1"
    assert call["input"] == {"file_path": "/scratch/notes.txt", "limit": 5}
    result = [{"type": "text", "text": "     1\tsecret content 42"}, {"type": "tool_reference", "tool_name": "Later"},
              {"kind": "custom", "n": 1}]
    turns = [*claude_code_body()["messages"],
             {"role": "assistant", "content": [{"type": "thinking", "thinking": "t", "signature": "s"}, call]},
             {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call["id"], "content": result}]}]
    second = post(client, claude_code_body(model="cc-fast", stream=stream, messages=turns))
    assert (text_of(events(second)) if stream else second["content"][0]["text"]) == "the file says 42"
    sent = fakes["ccoai"].stats()["last_body"]["messages"]
    (tool_call,) = sent[-2]["tool_calls"]
    assert (tool_call["id"], tool_call["function"]["name"]) == ("call_fake1", "Read")
    assert orjson.loads(tool_call["function"]["arguments"]) == orjson.loads(arguments)
    assert sent[-1] == {"role": "tool", "tool_call_id": "call_fake1",
                        "content": '     1\tsecret content 42\nLater\n{"kind":"custom","n":1}'}


# ---- Bedrock deployments: Claude takes the fields natively, other models drop them -------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_claude_code_request_to_claude_on_bedrock(client, fakes, stream: bool) -> None:
    fakes["ccbed"].set(text="hi from bedrock")
    answer = post(client, claude_code_body(model="cc-bedrock", stream=stream))
    text = text_of(events(answer)) if stream else "".join(b.get("text", "") for b in answer["content"])
    assert text.endswith("hi from bedrock")
    sent = fakes["ccbed"].stats()["last_body"]
    extra = sent["additionalModelRequestFields"]
    assert extra["thinking"] == {"type": "adaptive"} and extra["context_management"]["edits"]
    assert extra["anthropic_beta"] == ["interleaved-thinking-2025-05-14", "context-management-2025-06-27",
                                       "effort-2025-11-24"]  # Anthropic-API-only flags stay behind
    assert sent["outputConfig"]["effort"] == "medium"
    assert sent["inferenceConfig"]["maxTokens"] == 32000  # capped at max_output_tokens
    assert [m["role"] for m in sent["messages"]] == ["user"]  # the system message joined the system prompt
    assert sent["system"][-1] == {"text": "# Environment\nPlatform: linux"}
    assert "anthropic-beta" not in fakes["ccbed"].stats()["last_headers"]


def test_bedrock_deployment_beta_rules(client, fakes) -> None:
    post(client, claude_code_body(model="cc-bedrock-pinned", stream=False))
    extra = fakes["ccbed"].stats()["last_body"]["additionalModelRequestFields"]
    assert extra["anthropic_beta"] == ["claude-code-20250219", "interleaved-thinking-2025-05-14",
                                       "context-management-2025-06-27", "advanced-tool-use-2025-11-20"]


def test_claude_code_request_to_another_model_on_bedrock(sidecar, client, fakes) -> None:
    fakes["ccbed"].set(text="hi from nova")
    answer = post(client, claude_code_body(model="cc-nova", stream=False))
    assert answer["content"][-1]["text"] == "hi from nova"
    sent = fakes["ccbed"].stats()["last_body"]
    assert "thinking" not in sent.get("additionalModelRequestFields", {})
    assert "context_management" not in sent.get("additionalModelRequestFields", {})
    assert "effort" not in sent.get("outputConfig", {})
    assert logged(sidecar, "dropped_params", ["thinking", "context_management", "output_config.effort"])


def test_claude_code_request_to_gemini(sidecar, client, fakes) -> None:
    fakes["ccoai"].set(text="hi from gemini")
    answer = post(client, claude_code_body(model="cc-gemini", stream=False))
    assert answer["content"][-1]["text"] == "hi from gemini"
    sent = fakes["ccoai"].stats()["last_body"]
    assert sent["generationConfig"]["maxOutputTokens"] == 16000
    assert sent["generationConfig"]["thinkingConfig"]["thinkingBudget"] == 8192  # effort medium
    assert logged(sidecar, "dropped_params", ["context_management", "cache_control", "metadata.user_id"])
