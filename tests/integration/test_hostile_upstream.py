"""Upstreams that send what no reader expects, through the real sidecar: an event of the wrong shape, keep-alive
bytes with no token, an event that would end early and smuggle in one of its own, an event a reader chokes on.
Each is a broken upstream: skipped or failed over like a 5xx — never the sidecar's 500, never a stream that
stops like a success, never upstream text the app was not meant to see."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
import requests

from tests.integration.procs import APP_KEY, PROVIDER_KEY, FakeProvider, Sidecar, fake_providers

SECRET = "sk-provider-SECRET-4242"
TEXT = "The quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="module")
def fakes(workdir: Path) -> Iterator[dict[str, FakeProvider]]:
    with fake_providers(workdir, "odd", "good") as started:
        yield started


@pytest.fixture(autouse=True)
def _clean(fakes: dict[str, FakeProvider]) -> None:
    for fake in fakes.values():
        fake.clear()


def _entry(group: str, model: str, api_base: str, order: int, **params: Any) -> dict[str, Any]:
    return {"model_name": group, "litellm_params": {"model": model, "api_base": api_base, "api_key": PROVIDER_KEY,
                                                    "order": order, **params}}


@pytest.fixture(scope="module")
def sidecar(workdir: Path, fakes: dict[str, FakeProvider]) -> Iterator[Sidecar]:
    odd, good = fakes["odd"].url, fakes["good"].url
    config = {
        "model_list": [
            _entry("chat", "openai/odd-model", f"{odd}/v1", 1, stream_timeout=1),
            _entry("chat", "openai/good-model", f"{good}/v1", 2),
            _entry("claude", "anthropic/claude-odd", odd, 1),
            _entry("claude", "anthropic/claude-good", good, 2),
            _entry("gpt", "openai/gpt-odd", f"{odd}/v1", 1),
            _entry("gpt", "openai/gpt-good", f"{good}/v1", 2),
        ],
        "router_settings": {"timeout": 6, "num_retries": 0, "cooldown_time": 0},
    }
    process = Sidecar(config, workdir, "hostile-upstream")
    yield process
    process.stop()


def _oa(sidecar: Sidecar) -> openai.OpenAI:
    return openai.OpenAI(base_url=sidecar.base_url, api_key=APP_KEY, max_retries=0, timeout=20)


@pytest.mark.parametrize("odd", ['data: {"choices": 5}\n\n', 'data: {"choices": ["x"]}\n\n',
                                 'data: {"choices": [{"index": 0, "delta": "x"}]}\n\n',
                                 'data: {"choices": [{"index": 0, "delta": {"tool_calls": 5}}]}\n\n',
                                 'data: {"choices": [], "usage": 5}\n\n'])
def test_an_event_of_the_wrong_shape_is_skipped(sidecar: Sidecar, fakes: dict[str, FakeProvider], odd: str) -> None:
    fakes["odd"].set(text=TEXT, chunks=6, malformed_event_at=2, odd_event=odd)
    stream = _oa(sidecar).chat.completions.create(model="chat", stream=True,
                                                  messages=[{"role": "user", "content": "Hi"}])
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == TEXT
    messages = anthropic.Anthropic(base_url=sidecar.url, api_key=APP_KEY, max_retries=0)  # translated per chunk
    with messages.messages.stream(model="chat", max_tokens=50, messages=[{"role": "user", "content": "Hi"}]) as s:
        assert s.get_final_text() == TEXT


def test_keep_alive_bytes_do_not_stop_the_time_to_first_token_limit(sidecar: Sidecar,
                                                                    fakes: dict[str, FakeProvider]) -> None:
    """Comments every 0.2 s and no token for 5 s: past stream_timeout (1 s) the next deployment answers."""
    fakes["odd"].set(ttft=5, ping_every=0.2)
    raw = _oa(sidecar).chat.completions.with_raw_response.create(
        model="chat", stream=True, messages=[{"role": "user", "content": "Hi"}])
    assert raw.headers["x-sidecar-deployment"] == "openai/good-model"
    assert "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)


def test_an_upstream_event_cannot_smuggle_events_into_a_native_stream(sidecar: Sidecar,
                                                                      fakes: dict[str, FakeProvider]) -> None:
    """An event whose data lines hold a blank line and an error event of the upstream's making (with a key and
    an address in it): not JSON, so skipped — the app neither sees it nor takes it for an error."""
    smuggled = ("event: ping\ndata: x\ndata:\ndata: event: error\ndata: data: "
                + json.dumps({"type": "error", "error": {"type": "api_error",
                                                        "message": f"upstream 10.1.2.3 key={SECRET}"}}) + "\n\n")
    fakes["odd"].set(malformed_event_at=2, odd_event=smuggled)
    response = requests.post(f"{sidecar.url}/v1/messages", headers={"x-api-key": APP_KEY},
                             json={"model": "claude", "max_tokens": 50, "stream": True,
                                   "messages": [{"role": "user", "content": "Hi"}]}, timeout=20)
    assert response.status_code == 200 and response.headers["x-sidecar-deployment"] == "anthropic/claude-odd"
    assert SECRET not in response.text and "10.1.2.3" not in response.text
    events = [line[7:] for line in response.text.splitlines() if line.startswith("event: ")]
    assert "error" not in events and events[-1] == "message_stop"


def test_an_event_a_reader_chokes_on_is_a_broken_upstream(sidecar: Sidecar, fakes: dict[str, FakeProvider]) -> None:
    """A Responses stream's response.failed whose response is a string: the reader's own exception becomes a
    failed attempt (failed over, or an error event once the app has part of the answer), never a stream that
    just stops."""
    fakes["odd"].set(malformed_event_at=0, odd_event='event: response.failed\ndata: '
                                                      '{"type": "response.failed", "response": "boom"}\n\n')
    response = requests.post(f"{sidecar.base_url}/responses", headers={"authorization": f"Bearer {APP_KEY}"},
                             json={"model": "gpt", "input": "Hi", "stream": True}, timeout=20)
    assert response.status_code == 200, response.text
    kinds = [json.loads(block.split("data: ", 1)[1])["type"] for block in response.text.split("\n\n")
             if "data: " in block]
    assert kinds[-1] == "response.completed" and response.headers["x-sidecar-deployment"] == "openai/gpt-good"
    assert "Traceback" not in sidecar.logs()
