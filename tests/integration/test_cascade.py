"""Cascade as the app sees it: ``cheap`` (the primary fake) answers first; its answer is accepted only when the
checks pass, else the request escalates to ``strong`` (the backup fake). The fakes' answers are set per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import requests

from tests.integration.procs import APP_KEY, FakeProvider, Sidecar, deployment

MESSAGES = [{"role": "user", "content": "hello"}]
GOOD = "Here is a complete and useful answer."
CHEAP, STRONG = "openai/primary-model", "openai/backup-model"


@pytest.fixture(scope="module")
def cascaded(workdir: Path, primary: FakeProvider, backup: FakeProvider) -> Iterator[Sidecar]:
    checks = {"escalate": ["strong"], "refusal_patterns": ["I can(no|')t help"], "min_length": 12}
    config = {"model_list": [deployment("cheap", primary), deployment("strong", backup),
                             deployment("buffered", primary)],
              "router_settings": {"timeout": 10, "num_retries": 0},
              "sidecar_settings": {"cascade": {"cheap": checks,
                                               "buffered": {**checks, "buffer_streams": True}}}}
    sidecar = Sidecar(config, workdir, "cascade")
    yield sidecar
    sidecar.stop()


@pytest.fixture
def client(cascaded: Sidecar) -> openai.OpenAI:
    return openai.OpenAI(base_url=cascaded.base_url, api_key=APP_KEY, max_retries=0, timeout=20)


def test_a_passing_answer_is_accepted_from_the_cheap_group(client: openai.OpenAI, primary: FakeProvider,
                                                           backup: FakeProvider) -> None:
    primary.set(text=GOOD)
    raw = client.chat.completions.with_raw_response.create(model="cheap", messages=MESSAGES)
    assert raw.parse().choices[0].message.content == GOOD
    assert raw.headers["x-sidecar-deployment"] == CHEAP and "x-sidecar-fallback" not in raw.headers
    assert backup.stats()["requests"] == 0


@pytest.mark.parametrize(("faults", "extra"), [
    ({"text": "Sorry, I can't help with that."}, {}),  # refusal pattern
    ({"text": "Too short"}, {}),  # min_length
    ({"text": GOOD, "finish_reason": "length"}, {}),  # cut at the token limit
    ({"text": "Sure! city = Oslo, as you asked"}, {"response_format": {"type": "json_object"}}),  # not JSON
])
def test_a_failing_check_escalates(client: openai.OpenAI, primary: FakeProvider, backup: FakeProvider,
                                   faults: dict[str, str], extra: dict[str, object]) -> None:
    primary.set(**faults)
    backup.set(text='{"city": "Oslo", "country": "Norway"}')
    raw = client.chat.completions.with_raw_response.create(model="cheap", messages=MESSAGES, **extra)
    assert raw.headers["x-sidecar-deployment"] == STRONG
    assert raw.headers["x-sidecar-fallback"] == "strong" and raw.headers["x-sidecar-attempts"] == "2"
    assert raw.parse().choices[0].message.content == '{"city": "Oslo", "country": "Norway"}'
    assert primary.stats()["requests"] == 1 and backup.stats()["requests"] == 1


def test_valid_json_is_accepted(client: openai.OpenAI, primary: FakeProvider, backup: FakeProvider) -> None:
    primary.set(text='{"city": "Oslo", "ok": true}')
    raw = client.chat.completions.with_raw_response.create(model="cheap", messages=MESSAGES,
                                                           response_format={"type": "json_object"})
    assert raw.headers["x-sidecar-deployment"] == CHEAP and backup.stats()["requests"] == 0


def test_an_error_in_the_cheap_group_escalates(client: openai.OpenAI, primary: FakeProvider,
                                               backup: FakeProvider) -> None:
    primary.set(fail_next=1, error_status=500)
    backup.set(text=GOOD)
    raw = client.chat.completions.with_raw_response.create(model="cheap", messages=MESSAGES)
    assert raw.headers["x-sidecar-deployment"] == STRONG


def test_streams_are_not_cascaded_unless_buffered(client: openai.OpenAI, primary: FakeProvider,
                                                  backup: FakeProvider) -> None:
    primary.set(text="Too short")
    backup.set(text=GOOD)
    text = "".join(c.choices[0].delta.content or "" for c in
                   client.chat.completions.create(model="cheap", messages=MESSAGES, stream=True) if c.choices)
    assert text == "Too short" and backup.stats()["requests"] == 0  # streamed as it came, unchecked
    raw = client.chat.completions.with_raw_response.create(model="buffered", messages=MESSAGES, stream=True)
    assert raw.headers["x-sidecar-deployment"] == STRONG
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert text == GOOD and backup.stats()["requests"] == 1
    assert "stream" not in (primary.stats()["last_body"] or {})  # asked whole, checked, then streamed


def test_debug_route_names_the_cascade(cascaded: Sidecar) -> None:
    answer = requests.post(f"{cascaded.url}/debug/route", json={"model": "cheap", "messages": MESSAGES}, timeout=10)
    assert answer.status_code == 200
    assert answer.json()["cascade"] == ["strong"] and answer.json()["choice"] == CHEAP


def test_the_steps_share_the_requests_timeout(workdir: Path, primary: FakeProvider, backup: FakeProvider) -> None:
    """The cheap group hangs past the request's timeout: the request ends there (504), it does not begin the
    strong group with a timeout of its own (a cascade of N groups took N x timeout)."""
    config = {"model_list": [deployment("cheap", primary), deployment("strong", backup)],
              "router_settings": {"timeout": 1.5, "num_retries": 0},
              "sidecar_settings": {"cascade": {"cheap": {"escalate": ["strong"], "min_length": 12}}}}
    sidecar = Sidecar(config, workdir, "cascade-deadline")
    try:
        primary.set(hang=True)
        backup.set(text=GOOD)
        before = backup.stats()["requests"]
        client = openai.OpenAI(base_url=sidecar.base_url, api_key=APP_KEY, max_retries=0, timeout=20)
        with pytest.raises(openai.APIStatusError) as caught:
            client.chat.completions.create(model="cheap", messages=MESSAGES)
        assert caught.value.status_code == 504 and backup.stats()["requests"] == before
    finally:
        primary.set(hang=False)
        sidecar.stop()
