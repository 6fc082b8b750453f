"""AWS Bedrock through the real sidecar: the openai and anthropic SDKs in front of the Bedrock emulator, which
checks every SigV4 signature with botocore. Plain, streamed, tools, images, usage; the default credential
chain, an assumed role and an API key; expired or wrong credentials classified as auth; throttling and context
errors; a stream cut mid-frame continued elsewhere; failover from Bedrock to OpenAI and back."""

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

from sidecar.testing import fake_aws
from tests.integration.procs import APP_KEY, PROVIDER_KEY, FakeProvider, Sidecar, fake_providers

CLAUDE = "bedrock/us.anthropic.claude-3-7-sonnet-20250219-v1:0"
MESSAGES = [{"role": "user", "content": "Say hello"}]
WEATHER = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                             "parameters": {"type": "object",
                                                            "properties": {"city": {"type": "string"}}}}}]
PNG = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJ"
       "RU5ErkJggg==")
ENV = {"AWS_ACCESS_KEY_ID": fake_aws.TEMP_KEY, "AWS_SECRET_ACCESS_KEY": fake_aws.TEMP_SECRET,
       "AWS_SESSION_TOKEN": fake_aws.TEMP_TOKEN, "AWS_EC2_METADATA_DISABLED": "true",
       "AWS_CONFIG_FILE": "/nonexistent/aws-config", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials"}


def bedrock(group: str, fake: FakeProvider, model: str = CLAUDE, **params: Any) -> dict[str, Any]:
    keys = {"aws_access_key_id": fake_aws.ACCESS_KEY, "aws_secret_access_key": fake_aws.SECRET_KEY}
    return {"model_name": group, "litellm_params": {"model": model, "aws_region_name": "us-east-1",
                                                    "aws_bedrock_runtime_endpoint": fake.url, **keys, **params}}


def openai_entry(group: str, fake: FakeProvider, **params: Any) -> dict[str, Any]:
    return {"model_name": group, "litellm_params": {"model": "openai/oai-model", "api_base": fake.api_base,
                                                    "api_key": PROVIDER_KEY, **params}}


@pytest.fixture(scope="module")
def fakes(workdir: Path) -> Iterator[dict[str, FakeProvider]]:
    with fake_providers(workdir, "bed", "oai") as started:
        yield started


@pytest.fixture(autouse=True)
def _clean(fakes: dict[str, FakeProvider]) -> None:
    for fake in fakes.values():
        fake.clear()


@pytest.fixture(scope="module")
def sidecar(workdir: Path, fakes: dict[str, FakeProvider]) -> Iterator[Sidecar]:
    bed, oai = fakes["bed"], fakes["oai"]
    no_keys = {"aws_access_key_id": None, "aws_secret_access_key": None}

    def chain(group: str, **params: Any) -> dict[str, Any]:  # credentials from the default chain
        entry = bedrock(group, bed, **params)
        entry["litellm_params"] = {k: v for k, v in entry["litellm_params"].items() if k not in no_keys}
        return entry

    config = {
        "model_list": [
            bedrock("claude", bed),
            bedrock("profile-arn", bed, model="bedrock/arn:aws:bedrock:us-east-1:123456789012:"
                                              "application-inference-profile/abc123"),
            {"model_name": "nova", "litellm_params": {"model": "bedrock/amazon.nova-lite-v1:0",
                                                      "api_base": bed.url, "api_key": fake_aws.BEARER_KEY}},
            chain("env"),
            chain("role", aws_role_name="arn:aws:iam::123456789012:role/gateway", aws_session_name="gw",
                  aws_sts_endpoint=bed.url),
            bedrock("expired", bed, aws_access_key_id=fake_aws.TEMP_KEY, aws_secret_access_key=fake_aws.TEMP_SECRET,
                    aws_session_token=fake_aws.EXPIRED_TOKEN),
            bedrock("wrong", bed, aws_secret_access_key="not-the-secret"),
            {**bedrock("b2o", bed), "litellm_params": {**bedrock("b2o", bed)["litellm_params"], "order": 1}},
            openai_entry("b2o", oai, order=2),
            openai_entry("o2b", oai, order=1),
            {**bedrock("o2b", bed), "litellm_params": {**bedrock("o2b", bed)["litellm_params"], "order": 2}},
        ],
        "router_settings": {"timeout": 10, "num_retries": 0, "cooldown_time": 0},
        "sidecar_settings": {"retry_after_cap_seconds": 0},
    }
    process = Sidecar(config, workdir, "bedrock", env=ENV)
    yield process
    process.stop()


@pytest.fixture
def oa(sidecar: Sidecar) -> openai.OpenAI:
    return openai.OpenAI(base_url=sidecar.base_url, api_key=APP_KEY, max_retries=0, timeout=20)


@pytest.fixture
def claude_client(sidecar: Sidecar) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=sidecar.url, api_key=APP_KEY, max_retries=0, timeout=20)


def test_plain_answer_signed_with_sigv4(oa: openai.OpenAI, fakes: dict[str, FakeProvider]) -> None:
    raw = oa.chat.completions.with_raw_response.create(
        model="claude", messages=[{"role": "system", "content": "Be brief."}, *MESSAGES], max_tokens=50,
        temperature=1.5, stop=["END"])
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello from bed."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens == 5
    assert raw.headers["x-sidecar-deployment"] == CLAUDE
    seen = fakes["bed"].stats()
    assert seen["last_headers"]["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={fake_aws.ACCESS_KEY}/")
    assert APP_KEY not in str(seen["last_headers"])
    assert seen["last_body"] == {"system": [{"text": "Be brief."}],
                                 "messages": [{"role": "user", "content": [{"text": "Say hello"}]}],
                                 "inferenceConfig": {"maxTokens": 50, "temperature": 1.0, "stopSequences": ["END"]}}


def test_streamed_answer_with_usage(oa: openai.OpenAI) -> None:
    chunks = list(oa.chat.completions.create(model="claude", messages=MESSAGES, stream=True,
                                             stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from bed."
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5


@pytest.mark.parametrize("stream", [False, True])
def test_tool_call_and_result(oa: openai.OpenAI, fakes: dict[str, FakeProvider], stream: bool) -> None:
    if stream:
        chunks = list(oa.chat.completions.create(model="claude", messages=MESSAGES, tools=WEATHER, stream=True))
        calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or ()]
        assert calls[0].function.name == "get_weather" and calls[0].id == "tooluse_fakeAbCdEfGhIjKlMnOpQr"
        assert json.loads("".join(tc.function.arguments or "" for tc in calls)) == {"city": "Oslo"}
        assert chunks[-1].choices[0].finish_reason == "tool_calls"
        return
    completion = oa.chat.completions.create(model="claude", messages=MESSAGES, tools=WEATHER)
    call = completion.choices[0].message.tool_calls[0]
    assert completion.choices[0].finish_reason == "tool_calls" and json.loads(call.function.arguments) == {
        "city": "Oslo"}
    history = [*MESSAGES, completion.choices[0].message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": "3°C"}]
    answer = oa.chat.completions.create(model="claude", messages=history, tools=WEATHER)
    assert answer.choices[0].message.content == "Hello from bed."
    sent = fakes["bed"].stats()["last_body"]["messages"]
    assert sent[2] == {"role": "user", "content": [{"toolResult": {"toolUseId": call.id,
                                                                   "content": [{"text": "3°C"}]}}]}


def test_image_input(oa: openai.OpenAI, fakes: dict[str, FakeProvider]) -> None:
    oa.chat.completions.create(model="claude", messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": PNG}}]}])
    image = fakes["bed"].stats()["last_body"]["messages"][0]["content"][1]["image"]
    assert image["format"] == "png" and image["source"]["bytes"] == PNG.split(",", 1)[1]
    with pytest.raises(openai.BadRequestError) as caught:  # a link would have to be fetched: refused, named
        oa.chat.completions.create(model="claude", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}])
    assert caught.value.body["param"] == "messages[0].content[0].image_url.url"  # type: ignore[index]


def test_arn_model_id_travels_encoded(oa: openai.OpenAI) -> None:
    assert oa.chat.completions.create(model="profile-arn", messages=MESSAGES).choices[0].message.content


def test_api_key_as_bearer(oa: openai.OpenAI, fakes: dict[str, FakeProvider]) -> None:
    assert oa.chat.completions.create(model="nova", messages=MESSAGES).choices[0].message.content
    assert fakes["bed"].stats()["last_headers"]["authorization"] == f"Bearer {fake_aws.BEARER_KEY}"


def eventually(call: Any) -> Any:
    """Credentials from the chain or STS are resolved in the background after start: retry briefly."""
    deadline = time.monotonic() + 15
    while True:
        try:
            return call()
        except openai.APIStatusError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_default_chain_and_assumed_role(oa: openai.OpenAI, fakes: dict[str, FakeProvider]) -> None:
    eventually(lambda: oa.chat.completions.create(model="env", messages=MESSAGES))
    headers = fakes["bed"].stats()["last_headers"]
    assert f"Credential={fake_aws.TEMP_KEY}/" in headers["authorization"]
    assert headers["x-amz-security-token"] == fake_aws.TEMP_TOKEN
    eventually(lambda: oa.chat.completions.create(model="role", messages=MESSAGES))
    seen = fakes["bed"].stats()
    assert f"Credential={fake_aws.ROLE_KEY}/" in seen["last_headers"]["authorization"]
    assert seen["last_headers"]["x-amz-security-token"].startswith(fake_aws.ROLE_TOKEN_PREFIX)


def failed_attempts(sidecar: Sidecar, group: str, error_class: str) -> float:
    for line in requests.get(f"{sidecar.admin_url}/metrics", timeout=5).text.splitlines():
        if line.startswith("llm_sidecar_failed_attempts_total{") and f'model_group="{group}"' in line \
                and f'error_class="{error_class}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.parametrize("group", ["expired", "wrong"])
def test_expired_or_wrong_credentials_are_auth_failures(oa: openai.OpenAI, sidecar: Sidecar,
                                                        fakes: dict[str, FakeProvider], group: str) -> None:
    before = failed_attempts(sidecar, group, "auth")
    with pytest.raises(openai.APIStatusError) as caught:
        oa.chat.completions.create(model=group, messages=MESSAGES)
    assert caught.value.status_code == 503
    assert failed_attempts(sidecar, group, "auth") == before + 1
    assert fakes["bed"].stats()["by_status"] == {"403": 1}
    assert fake_aws.SECRET_KEY not in sidecar.logs() and "not-the-secret" not in sidecar.logs()


def test_throttling_and_context_errors(oa: openai.OpenAI, fakes: dict[str, FakeProvider]) -> None:
    fakes["bed"].set(fail_next=1, error_status=429, retry_after=3)
    with pytest.raises(openai.RateLimitError) as limited:
        oa.chat.completions.create(model="claude", messages=MESSAGES)
    assert limited.value.response.headers.get("retry-after")  # capped to 1 s here (retry_after_cap_seconds: 0)
    fakes["bed"].set(fail_next=1, error_status=400, error_code="context")
    with pytest.raises(openai.BadRequestError) as too_long:
        oa.chat.completions.create(model="claude", messages=MESSAGES)
    assert too_long.value.code == "context_length_exceeded"
    assert "Input is too long" in too_long.value.message


@pytest.mark.parametrize(("first", "second", "group"), [("bed", "oai", "b2o"), ("oai", "bed", "o2b")])
def test_failover_between_bedrock_and_openai(oa: openai.OpenAI, fakes: dict[str, FakeProvider], first: str,
                                            second: str, group: str) -> None:
    fakes[first].set(fail_next=1, error_status=503)
    raw = oa.chat.completions.with_raw_response.create(model=group, messages=MESSAGES)
    assert raw.parse().choices[0].message.content == f"Hello from {second}."
    assert raw.headers["x-sidecar-attempts"] == "2"


@pytest.mark.parametrize(("first", "group"), [("bed", "b2o"), ("oai", "o2b")])
def test_stream_cut_midway_is_continued(oa: openai.OpenAI, fakes: dict[str, FakeProvider], first: str,
                                        group: str) -> None:
    """Bedrock cut mid-frame → the OpenAI deployment's answer spliced on; OpenAI cut → Bedrock continues the
    partial answer sent as an assistant prefill."""
    text = "The quick brown fox jumps over the lazy dog."
    for fake in fakes.values():
        fake.set(text=text, chunks=8)
    fakes[first].set(drop_after=4)
    chunks = list(oa.chat.completions.create(model=group, messages=MESSAGES, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    if first == "oai":
        continued = fakes["bed"].stats()["last_body"]["messages"][-1]
        assert continued["role"] == "assistant" and text.startswith(continued["content"][0]["text"])


def test_in_stream_exception_before_text_fails_over(oa: openai.OpenAI, fakes: dict[str, FakeProvider]) -> None:
    fakes["bed"].set(drop_after=1, stream_exception="throttlingException")
    chunks = list(oa.chat.completions.create(model="b2o", messages=MESSAGES, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from oai."


# ---- Anthropic apps in front of Bedrock: no OpenAI round trip ------------------------------------------


def test_anthropic_client_plain_keeps_thinking_and_cache_points(claude_client: anthropic.Anthropic,
                                                               fakes: dict[str, FakeProvider]) -> None:
    message = claude_client.messages.create(
        model="claude", max_tokens=2048, thinking={"type": "enabled", "budget_tokens": 1024},
        system=[{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}],
        messages=MESSAGES)
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[0].signature == "sig-fake-1" and message.content[1].text == "Hello from bed."
    assert message.usage.cache_read_input_tokens == 7 and message.stop_reason == "end_turn"
    body = fakes["bed"].stats()["last_body"]
    assert body["system"] == [{"text": "You are terse."}, {"cachePoint": {"type": "default"}}]
    assert body["additionalModelRequestFields"] == {"thinking": {"type": "enabled", "budget_tokens": 1024}}


def test_anthropic_client_stream_event_sequence(claude_client: anthropic.Anthropic) -> None:
    events = list(claude_client.messages.create(model="claude", max_tokens=64, stream=True, messages=MESSAGES,
                                                thinking={"type": "enabled", "budget_tokens": 1024}))
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    starts = [e.content_block.type for e in events if e.type == "content_block_start"]
    assert starts == ["thinking", "text"] and kinds.count("content_block_stop") == 2
    deltas = [e.delta.type for e in events if e.type == "content_block_delta"]
    assert deltas[:3] == ["thinking_delta", "thinking_delta", "signature_delta"]
    with claude_client.messages.stream(model="claude", max_tokens=64, messages=MESSAGES) as stream:
        assert "".join(stream.text_stream) == "Hello from bed."
        final = stream.get_final_message()
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 5


def test_anthropic_client_tool_use_round_trip(claude_client: anthropic.Anthropic,
                                              fakes: dict[str, FakeProvider]) -> None:
    tools = [{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object"}}]
    with claude_client.messages.stream(model="claude", max_tokens=64, tools=tools,
                                       messages=[{"role": "user", "content": "Weather?"}]) as stream:
        first = stream.get_final_message()
    use = first.content[0]
    assert first.stop_reason == "tool_use" and use.type == "tool_use" and use.input == {"city": "Oslo"}
    answer = claude_client.messages.create(model="claude", max_tokens=64, tools=tools, messages=[
        {"role": "user", "content": "Weather?"}, {"role": "assistant", "content": first.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "3°C",
                                      "is_error": False}]}])
    assert answer.content[0].text == "Hello from bed."
    sent = fakes["bed"].stats()["last_body"]["messages"]
    assert sent[1]["content"][0]["toolUse"]["toolUseId"] == use.id
    assert sent[2]["content"][0]["toolResult"] == {"toolUseId": use.id, "content": [{"text": "3°C"}]}
