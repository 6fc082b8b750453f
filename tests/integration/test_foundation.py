"""The sidecar as an app sees it through the official openai SDK, against a fake upstream process."""

from __future__ import annotations

import socket
import time

import openai
import pytest
import requests

from tests.integration.procs import APP_KEY, PROVIDER_KEY, FakeProvider, Sidecar

MESSAGES = [{"role": "user", "content": "Say hello"}]


def test_plain_chat(client: openai.OpenAI, primary: FakeProvider) -> None:
    raw = client.chat.completions.with_raw_response.create(model="solo", messages=MESSAGES)
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello from primary."
    assert completion.model == "primary-model"  # the model that actually answered
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    assert raw.headers["x-sidecar-deployment"] == "openai/primary-model"
    assert raw.headers["x-sidecar-attempts"] == "1"
    assert raw.headers["x-request-id"]
    seen = primary.stats()["last_headers"]
    assert seen["authorization"] == f"Bearer {PROVIDER_KEY}"  # our key injected, the app's never forwarded
    assert APP_KEY not in str(seen)


def test_unknown_fields_pass_through(client: openai.OpenAI, primary: FakeProvider) -> None:
    client.chat.completions.create(model="solo", messages=MESSAGES, extra_body={"top_k": 7, "x_custom": {"a": 1}})
    body = primary.stats()["last_body"]
    assert body["top_k"] == 7 and body["x_custom"] == {"a": 1}
    assert body["model"] == "primary-model"


def test_request_id_echoed(solo: Sidecar) -> None:
    response = requests.post(f"{solo.base_url}/chat/completions", json={"model": "solo", "messages": MESSAGES},
                             headers={"x-request-id": "req-abc-123"}, timeout=10)
    assert response.headers["x-request-id"] == "req-abc-123"


def test_streamed_chat_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="solo", messages=MESSAGES, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from primary."
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    usage = chunks[-1].usage
    assert usage.completion_tokens > 0 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_stream_without_usage_request_gets_no_usage_chunk(client: openai.OpenAI, primary: FakeProvider) -> None:
    chunks = list(client.chat.completions.create(model="solo", messages=MESSAGES, stream=True))
    assert all(c.choices for c in chunks)
    # ...though the sidecar asked the upstream for usage, for its own accounting.
    assert primary.stats()["last_body"]["stream_options"] == {"include_usage": True}


def test_stream_headers(solo: Sidecar) -> None:
    with requests.post(f"{solo.base_url}/chat/completions", stream=True, timeout=10,
                       json={"model": "solo", "messages": MESSAGES, "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-sidecar-deployment"] == "openai/primary-model"
        body = response.content
    assert body.endswith(b"data: [DONE]\n\n")


def test_completions(client: openai.OpenAI) -> None:
    completion = client.completions.create(model="solo", prompt="Say hello")
    assert completion.choices[0].text == "Hello from primary."


def test_embeddings(client: openai.OpenAI) -> None:
    result = client.embeddings.create(model="embed", input=["one", "two"])
    assert len(result.data) == 2 and len(result.data[0].embedding) == 8


def test_models_list(client: openai.OpenAI) -> None:
    assert sorted(m.id for m in client.models.list()) == ["embed", "solo"]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b"{not json", 400, None),
        (b"[1, 2]", 400, None),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', 400, "model"),
        (b'{"model": "solo", "messages": "hi"}', 400, "messages"),
        (b'{"model": "solo", "messages": [{"role": "wizard", "content": "hi"}]}', 400, "messages[0].role"),
        (b'{"model": "solo", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}', 400,
         "temperature"),
        (b'{"model": "solo", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}', 400, "stream"),
        (b'{"model": "solo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -3}', 400,
         "max_tokens"),
        (b'{"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}', 404, "model"),
    ],
)
def test_bad_input_gets_a_clear_error(solo: Sidecar, body: bytes, status: int, param: str | None) -> None:
    response = requests.post(f"{solo.base_url}/chat/completions", data=body, timeout=10,
                             headers={"content-type": "application/json"})
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and error["message"]
    assert "Traceback" not in response.text
    # the process keeps serving
    ok = requests.post(f"{solo.base_url}/chat/completions", json={"model": "solo", "messages": MESSAGES},
                       timeout=10)
    assert ok.status_code == 200


def test_unknown_model_through_sdk(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-nope", messages=MESSAGES)
    assert info.value.code == "model_not_found"


def test_oversized_body_is_413(solo: Sidecar) -> None:
    big = "x" * (1024 * 1024 + 10)
    response = requests.post(f"{solo.base_url}/chat/completions", timeout=10,
                             json={"model": "solo", "messages": [{"role": "user", "content": big}]})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_oversized_chunked_body_is_413(solo: Sidecar) -> None:
    def chunks():  # no content-length: the limit must hold while reading
        yield b'{"model": "solo", "messages": [{"role": "user", "content": "'
        for _ in range(20):
            yield b"y" * 65536
        yield b'"}]}'

    response = requests.post(f"{solo.base_url}/chat/completions", data=chunks(), timeout=10)
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_upstream_400_passed_through(client: openai.OpenAI, primary: FakeProvider) -> None:
    primary.set(fail_next=1, error_status=400)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="solo", messages=MESSAGES)
    assert info.value.status_code == 400
    assert primary.stats()["requests"] == 1  # not retried


def test_upstream_422_passed_through(client: openai.OpenAI, primary: FakeProvider) -> None:
    primary.set(fail_next=1, error_status=422)
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model="solo", messages=MESSAGES)


def test_upstream_500_on_the_only_deployment_is_503(client: openai.OpenAI, primary: FakeProvider) -> None:
    primary.set(error_rate=1.0, error_status=500)
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="solo", messages=MESSAGES)
    assert info.value.status_code == 503
    assert primary.api_base not in str(info.value.body) and "127.0.0.1" not in str(info.value.body)
    assert info.value.response.headers["x-sidecar-attempts"] == "1"  # error answers say what was tried too
    assert "x-sidecar-deployment" not in info.value.response.headers


def test_upstream_429_on_the_only_deployment_is_429(client: openai.OpenAI, primary: FakeProvider) -> None:
    primary.set(error_rate=1.0, error_status=429, retry_after=0.5)
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="solo", messages=MESSAGES)
    assert int(info.value.response.headers["retry-after"]) >= 1


def test_malformed_upstream_body_is_an_error_not_a_crash(client: openai.OpenAI, primary: FakeProvider) -> None:
    primary.set(malformed=True)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="solo", messages=MESSAGES)
    assert info.value.status_code in (502, 503)
    primary.set(malformed=False)
    assert client.chat.completions.create(model="solo", messages=MESSAGES).choices


def test_provider_key_never_leaks(client: openai.OpenAI, primary: FakeProvider, solo: Sidecar) -> None:
    primary.set(require_key="a-different-key")  # the upstream rejects our key: 401
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="solo", messages=MESSAGES)
    assert PROVIDER_KEY not in str(info.value.body)
    assert PROVIDER_KEY not in info.value.response.text
    assert PROVIDER_KEY not in solo.logs()


def test_client_disconnect_cancels_upstream(solo: Sidecar, primary: FakeProvider) -> None:
    primary.set(chunks=50, chunk_delay=0.1)
    with socket.create_connection(("127.0.0.1", solo.port)) as sock:
        body = b'{"model": "solo", "stream": true, "messages": [{"role": "user", "content": "hi"}]}'
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        received = b""
        while received.count(b"data: ") < 3:
            received += sock.recv(65536)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and primary.stats()["disconnects"] == 0:
        time.sleep(0.05)
    stats = primary.stats()
    assert stats["disconnects"] == 1 and stats["completed"] == 0


def test_metrics_on_admin_port(solo: Sidecar, client: openai.OpenAI) -> None:
    client.chat.completions.create(model="solo", messages=MESSAGES)
    text = requests.get(f"{solo.admin_url}/metrics", timeout=5).text
    assert 'llm_sidecar_requests_total{model_group="solo",deployment="openai/primary-model",outcome="success"}' \
        in text
    assert requests.get(f"{solo.admin_url}/healthz", timeout=5).status_code == 200
    assert requests.get(f"{solo.url}/readyz", timeout=5).status_code == 200
