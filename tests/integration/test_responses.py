"""The Responses API ingress through the real sidecar: ``client.responses.create`` and ``client.responses.stream``
in front of a Chat (OpenAI-shaped) upstream, Anthropic, Bedrock, and OpenAI's own Responses API (passthrough);
the raw event sequence checked against the reference; tools, images, JSON schema output, reasoning effort;
stateful features refused unless the deployment is OpenAI; failover; a stream failing after it started."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import requests

from sidecar.testing import fake_aws
from tests.integration.procs import APP_KEY, PROVIDER_KEY, FakeProvider, Sidecar, fake_providers

WEATHER = [{"type": "function", "name": "get_weather", "description": "Weather for a city", "strict": True,
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                           "additionalProperties": False}}]
PNG = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJ"
       "RU5ErkJggg==")
GROUPS = {"compat": "oai", "claude": "claude", "bedrock": "bed", "gpt": "oai"}  # model group → the fake serving it
TEXT_EVENTS = ["response.created", "response.in_progress", "response.output_item.added",
               "response.content_part.added", "response.output_text.delta", "response.output_text.done",
               "response.content_part.done", "response.output_item.done", "response.completed"]


def entry(group: str, model: str, api_base: str, **params: Any) -> dict[str, Any]:
    return {"model_name": group, "litellm_params": {"model": model, "api_base": api_base, "api_key": PROVIDER_KEY,
                                                    **params}}


@pytest.fixture(scope="module")
def fakes(workdir: Path) -> Iterator[dict[str, FakeProvider]]:
    with fake_providers(workdir, "oai", "claude", "bed") as started:
        yield started


@pytest.fixture(autouse=True)
def _clean(fakes: dict[str, FakeProvider]) -> None:
    for fake in fakes.values():
        fake.clear()


@pytest.fixture(scope="module")
def sidecar(workdir: Path, fakes: dict[str, FakeProvider]) -> Iterator[Sidecar]:
    oai, claude, bed = fakes["oai"].url, fakes["claude"].url, fakes["bed"].url
    bedrock = {"model_name": "bedrock", "litellm_params": {
        "model": "bedrock/us.anthropic.claude-3-7-sonnet-20250219-v1:0", "aws_region_name": "us-east-1",
        "aws_bedrock_runtime_endpoint": bed, "aws_access_key_id": fake_aws.ACCESS_KEY,
        "aws_secret_access_key": fake_aws.SECRET_KEY}}
    config = {
        "model_list": [
            entry("compat", "hosted_vllm/oai-model", f"{oai}/v1"),
            entry("claude", "anthropic/claude-fake", claude),
            bedrock,
            entry("gpt", "openai/gpt-fake", f"{oai}/v1"),
            entry("mixed", "hosted_vllm/oai-model", f"{oai}/v1", order=1),
            entry("mixed", "anthropic/claude-fake", claude, order=2),
        ],
        "router_settings": {"timeout": 10, "num_retries": 0, "cooldown_time": 0},
    }
    process = Sidecar(config, workdir, "responses")
    yield process
    process.stop()


@pytest.fixture
def oa(sidecar: Sidecar) -> openai.OpenAI:
    return openai.OpenAI(base_url=sidecar.base_url, api_key=APP_KEY, max_retries=0, timeout=20)


@pytest.mark.parametrize("group", list(GROUPS))
def test_create_plain(oa: openai.OpenAI, fakes: dict[str, FakeProvider], group: str) -> None:
    raw = oa.responses.with_raw_response.create(model=group, input="Say hello", instructions="Be brief.",
                                                max_output_tokens=64)
    response = raw.parse()
    assert response.output_text == f"Hello from {GROUPS[group]}."
    assert response.status == "completed" and response.id.startswith("resp_")
    assert response.usage is not None and response.usage.output_tokens > 0
    assert raw.headers["x-sidecar-attempts"] == "1"
    sent = fakes[GROUPS[group]].stats()["last_body"]
    if group == "gpt":  # OpenAI itself: the app's own body, model replaced
        assert sent == {"model": "gpt-fake", "input": "Say hello", "instructions": "Be brief.",
                        "max_output_tokens": 64}
    elif group == "compat":
        assert sent["messages"] == [{"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": "Say hello"}] and sent["max_tokens"] == 64


@pytest.mark.parametrize("group", list(GROUPS))
def test_raw_event_sequence(oa: openai.OpenAI, group: str) -> None:
    events = list(oa.responses.create(model=group, input="Say hello", stream=True))
    kinds = [e.type for e in events]
    collapsed = [k for i, k in enumerate(kinds) if i == 0 or k != kinds[i - 1]]  # deltas collapsed to one
    assert collapsed == TEXT_EVENTS
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == \
        f"Hello from {GROUPS[group]}."
    final = events[-1].response
    assert final.id == events[0].response.id and final.output_text == f"Hello from {GROUPS[group]}."
    assert final.usage is not None and final.usage.total_tokens > 0


@pytest.mark.parametrize("group", list(GROUPS))
def test_stream_helper_function_call_round_trip(oa: openai.OpenAI, fakes: dict[str, FakeProvider],
                                                group: str) -> None:
    with oa.responses.stream(model=group, input="Weather in Oslo?", tools=WEATHER) as stream:
        final = stream.get_final_response()
    call = next(item for item in final.output if item.type == "function_call")
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Oslo"} and call.call_id
    follow_up = [{"role": "user", "content": "Weather in Oslo?"}, *[i.model_dump(exclude_none=True)
                                                                   for i in final.output],
                 {"type": "function_call_output", "call_id": call.call_id, "output": "3°C"}]
    answer = oa.responses.create(model=group, input=follow_up, tools=WEATHER)
    assert answer.output_text == f"Hello from {GROUPS[group]}."
    sent = fakes[GROUPS[group]].stats()["last_body"]
    if group == "compat":
        assert sent["messages"][1]["tool_calls"][0]["id"] == call.call_id
        assert sent["messages"][2] == {"role": "tool", "tool_call_id": call.call_id, "content": "3°C"}
    elif group == "claude":
        assert sent["messages"][2]["content"][0] == {"type": "tool_result", "tool_use_id": call.call_id,
                                                     "content": "3°C"}


@pytest.mark.parametrize("group", ["claude", "bedrock", "compat"])
def test_images_json_schema_and_reasoning_effort(oa: openai.OpenAI, fakes: dict[str, FakeProvider],
                                                 group: str) -> None:
    schema = {"type": "object", "properties": {"animal": {"type": "string"}}, "required": ["animal"],
              "additionalProperties": False}
    oa.responses.create(model=group, max_output_tokens=2048, reasoning={"effort": "low"},
                        text={"format": {"type": "json_schema", "name": "animal", "schema": schema, "strict": True}},
                        input=[{"role": "user", "content": [{"type": "input_text", "text": "What is this?"},
                                                            {"type": "input_image", "image_url": PNG,
                                                             "detail": "auto"}]}])
    sent = fakes[GROUPS[group]].stats()["last_body"]
    if group == "claude":
        assert sent["messages"][0]["content"][1]["source"]["media_type"] == "image/png"
        assert sent["output_config"]["format"]["schema"] == schema
        assert sent["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    elif group == "bedrock":
        assert sent["messages"][0]["content"][1]["image"]["format"] == "png"
        assert json.loads(sent["outputConfig"]["textFormat"]["structure"]["jsonSchema"]["schema"]) == schema
        assert sent["additionalModelRequestFields"]["thinking"]["budget_tokens"] == 1024
    else:
        assert sent["messages"][0]["content"][1] == {"type": "image_url", "image_url": {"url": PNG, "detail": "auto"}}
        assert sent["response_format"] == {"type": "json_schema", "json_schema": {
            "name": "animal", "schema": schema, "strict": True}}
        assert sent["reasoning_effort"] == "low"


def test_stateful_features_only_for_openai(oa: openai.OpenAI, fakes: dict[str, FakeProvider]) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        oa.responses.create(model="claude", input="And then?", previous_response_id="resp_abc")
    assert caught.value.code == "previous_response_not_found" and caught.value.param == "previous_response_id"
    with pytest.raises(openai.BadRequestError) as stored:
        oa.responses.create(model="compat", input="Hi", store=True)
    assert stored.value.param == "store"
    with pytest.raises(openai.BadRequestError) as tool:
        oa.responses.create(model="bedrock", input="News?", tools=[{"type": "web_search"}])
    assert tool.value.param == "tools[0]"
    assert fakes["claude"].stats()["requests"] == fakes["bed"].stats()["requests"] == 0  # refused before any call
    response = oa.responses.create(model="gpt", input="And then?", previous_response_id="resp_abc", store=True,
                                   tools=[{"type": "web_search"}])
    assert response.previous_response_id == "resp_abc" and response.output_text == "Hello from oai."
    sent = fakes["oai"].stats()["last_body"]
    assert sent["previous_response_id"] == "resp_abc" and sent["tools"] == [{"type": "web_search"}]


@pytest.mark.parametrize("stream", [False, True])
def test_failover(oa: openai.OpenAI, fakes: dict[str, FakeProvider], stream: bool) -> None:
    fakes["oai"].set(fail_next=1, error_status=500)
    if stream:
        with oa.responses.stream(model="mixed", input="Say hello") as events:
            assert events.get_final_response().output_text == "Hello from claude."
        return
    raw = oa.responses.with_raw_response.create(model="mixed", input="Say hello")
    assert raw.parse().output_text == "Hello from claude." and raw.headers["x-sidecar-attempts"] == "2"


def sse_events(response: requests.Response) -> list[dict[str, Any]]:
    blocks = [b for b in response.text.split("\n\n") if b.strip()]
    return [json.loads(b.split("data: ", 1)[1]) for b in blocks]


def test_failure_after_the_stream_started(sidecar: Sidecar, fakes: dict[str, FakeProvider]) -> None:
    """No deployment can continue: the dual-shape error event, then response.failed (the SDK raises)."""
    fakes["oai"].set(text="The quick brown fox jumps over the lazy dog.", chunks=8, drop_after=4)
    response = requests.post(f"{sidecar.base_url}/responses", json={"model": "compat", "input": "Hi",
                                                                     "stream": True}, timeout=20)
    events = sse_events(response)
    assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
    error = events[-2]
    assert error["code"] == error["error"]["code"] and error["message"] == error["error"]["message"]
    assert events[-1]["response"]["status"] == "failed" and events[-1]["response"]["error"]["code"]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    with pytest.raises(openai.APIError):
        client = openai.OpenAI(base_url=sidecar.base_url, api_key=APP_KEY, max_retries=0, timeout=20)
        list(client.responses.create(model="compat", input="Hi", stream=True))
