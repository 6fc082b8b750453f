"""Nothing secret reaches the app through upstream text (issue 13, point 1): an upstream error whose message
echoes our key, a URL, an internal host and private addresses is passed on with those masked and the rest
kept — for every provider shape, both ingresses, whole answers, streams refused up front, and in-band
errors in the middle of a stream."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
import requests

from tests.integration.procs import APP_KEY, PROVIDER_KEY, FakeProvider, Sidecar

USEFUL = "Invalid value for temperature"
INTERNAL_URL = "http://internal-llm.svc.cluster.local:8000/v1/chat/completions"
# The dialects the fake serves on one port: the group name, the provider prefix, the api_base suffix.
SHAPES = {"oa": ("openai", "/v1"), "an": ("anthropic", ""), "ge": ("gemini", "")}
MESSAGES = [{"role": "user", "content": "hi"}]


def echo(fake: FakeProvider) -> str:
    """An upstream error message that echoes everything it should not."""
    return (f"{USEFUL}: key {PROVIDER_KEY} sent as Bearer {PROVIDER_KEY} from {INTERNAL_URL} via "
            f"internal-llm.svc.cluster.local:8000, 10.1.2.3:9000 and [fd00::17]:80 to 127.0.0.1:{fake.port} "
            f"(authorization: Basic dXNlcjpwYXNzd29yZA==)")


def leaked(text: str, fake: FakeProvider) -> list[str]:
    needles = [PROVIDER_KEY, "SECRET-4242", "internal-llm", "10.1.2.3", "fd00::17", "127.0.0.1", str(fake.port),
               "http://", "dXNlcjpwYXNzd29yZA"]
    return [n for n in needles if n in text]


@pytest.fixture(scope="module")
def sidecar(workdir: Path, primary: FakeProvider) -> Iterator[Sidecar]:
    models = [{"model_name": group, "litellm_params": {"model": f"{prefix}/{group}-model", "api_key": PROVIDER_KEY,
                                                       "api_base": primary.url + suffix}}
              for group, (prefix, suffix) in SHAPES.items()]
    process = Sidecar({"model_list": models, "router_settings": {"num_retries": 0, "timeout": 20, "cooldown_time": 0}},
                      workdir, "leaks")
    yield process
    process.stop()


def _openai(sidecar: Sidecar) -> openai.OpenAI:
    return openai.OpenAI(base_url=sidecar.base_url, api_key=APP_KEY, max_retries=0, timeout=20)


def _anthropic(sidecar: Sidecar) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=sidecar.url, api_key=APP_KEY, max_retries=0, timeout=20)


def _stream_text(sidecar: Sidecar, path: str, body: dict[str, Any]) -> tuple[int, str]:
    response = requests.post(f"{sidecar.url}{path}", json={**body, "stream": True}, timeout=20)
    return response.status_code, response.text


@pytest.mark.parametrize("group", SHAPES)
@pytest.mark.parametrize("status", [400, 422])
def test_passed_through_rejection_is_redacted_openai_ingress(sidecar: Sidecar, primary: FakeProvider, group: str,
                                                             status: int) -> None:
    primary.set(fail_next=2, error_status=status, error_message=echo(primary), error_param=f"key={PROVIDER_KEY}")
    with pytest.raises(openai.APIStatusError) as caught:
        _openai(sidecar).chat.completions.create(model=group, messages=MESSAGES)
    text = caught.value.response.text
    assert caught.value.status_code == status
    assert USEFUL in text and "[url]" in text and "[REDACTED]" in text
    assert leaked(text, primary) == []
    status_code, streamed = _stream_text(sidecar, "/v1/chat/completions", {"model": group, "messages": MESSAGES})
    assert status_code == status and USEFUL in streamed
    assert leaked(streamed, primary) == []


@pytest.mark.parametrize("group", SHAPES)
def test_passed_through_rejection_is_redacted_anthropic_ingress(sidecar: Sidecar, primary: FakeProvider,
                                                                group: str) -> None:
    primary.set(fail_next=2, error_status=400, error_message=echo(primary))
    with pytest.raises(anthropic.BadRequestError) as caught:
        _anthropic(sidecar).messages.create(model=group, max_tokens=50, messages=MESSAGES)
    text = caught.value.response.text
    assert caught.value.response.json()["type"] == "error"
    assert USEFUL in text and leaked(text, primary) == []
    status_code, streamed = _stream_text(sidecar, "/v1/messages", {"model": group, "max_tokens": 50,
                                                                   "messages": MESSAGES})
    assert status_code == 400 and USEFUL in streamed
    assert leaked(streamed, primary) == []


@pytest.mark.parametrize("group", SHAPES)
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
def test_in_band_stream_error_is_redacted(sidecar: Sidecar, primary: FakeProvider, group: str, path: str) -> None:
    """An in-band error event before the first token: Gemini's carries a status, and its 400 reaches the app as
    the error answer with the upstream's message; the others fail the attempt (the app gets our own message).
    In the middle of a stream, the stream ends with an error event. None carries what the upstream echoed."""
    body = {"model": group, "max_tokens": 50, "messages": MESSAGES}
    primary.set(error_event_at=0, error_status=400, error_message=echo(primary))
    status, streamed = _stream_text(sidecar, path, body)
    assert (status, USEFUL in streamed) == ((400, True) if group == "ge" else (503, False))
    assert leaked(streamed, primary) == []
    primary.set(error_event_at=3, chunks=4, chunk_delay=0.05)
    status, streamed = _stream_text(sidecar, path, body)
    assert status == 200 and "error" in streamed.rsplit("\n\n", 2)[-2]
    assert leaked(streamed, primary) == []


@pytest.mark.parametrize("group", SHAPES)
def test_the_responses_ingress_redacts_too(sidecar: Sidecar, primary: FakeProvider, group: str) -> None:
    """The Responses API ingress renders errors its own way (a body, a ``response.failed`` event): the same
    redaction applies. (An OpenAI upstream serves the Responses API itself: its stream has no injected error.)"""
    primary.set(fail_next=1, error_status=400, error_message=echo(primary))
    response = requests.post(f"{sidecar.url}/v1/responses", json={"model": group, "input": "hi"}, timeout=20)
    assert response.status_code == 400 and USEFUL in response.text
    assert leaked(response.text, primary) == []
    primary.set(error_event_at=3, error_status=400, error_message=echo(primary), chunks=4, chunk_delay=0.05)
    status, streamed = _stream_text(sidecar, "/v1/responses", {"model": group, "input": "hi"})
    assert status == 200 and ("response.failed" in streamed) == (group != "oa")
    assert leaked(streamed, primary) == []
