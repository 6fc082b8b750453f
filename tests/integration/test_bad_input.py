"""Bad input gets a 400 naming the field, never a 500 (issue 13, point 5): the cases a fuzzer found, the
low-level HTTP errors in our JSON shape, and a bounded hypothesis fuzz run over request bodies through the
real server, for every route and provider shape."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.procs import PROVIDER_KEY, FakeProvider, Sidecar

KEY = "sk-inbound-app-key-0001"
HEADERS = {"authorization": f"Bearer {KEY}"}
GROUPS = {"solo": ("openai", "/v1"), "claude": ("anthropic", ""), "gem": ("gemini", "")}


@pytest.fixture(scope="module")
def sidecar(workdir: Path, primary: FakeProvider) -> Iterator[Sidecar]:
    models = [{"model_name": group, "litellm_params": {"model": f"{prefix}/{group}-model", "api_key": PROVIDER_KEY,
                                                       "api_base": primary.url + suffix}}
              for group, (prefix, suffix) in GROUPS.items()]
    process = Sidecar({"model_list": models, "router_settings": {"num_retries": 0, "timeout": 10},
                       "sidecar_settings": {"inbound_api_keys": [KEY]}}, workdir, "bad-input")
    yield process
    process.stop()


def post(sidecar: Sidecar, path: str, body: Any, headers: dict[str, Any] | None = None) -> requests.Response:
    data = body if isinstance(body, bytes) else None
    return requests.post(f"{sidecar.url}{path}", json=None if data else body, data=data,
                         headers={**HEADERS, **(headers or {})}, timeout=15)


def nest(depth: int) -> str:
    return "[" * depth + "]" * depth


def assert_error(response: requests.Response, status: int, param: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type"}
    if param is not None:
        assert error.get("param", "") == param or param in error["message"], error
    return error  # type: ignore[no-any-return]


@pytest.mark.parametrize("role", [{}, [], ["user"], 5, None])
def test_a_role_that_is_not_a_string_is_a_400(sidecar: Sidecar, role: Any) -> None:
    body = {"model": "solo", "messages": [{"role": role, "content": "hi"}]}
    assert_error(post(sidecar, "/v1/chat/completions", body), 400, "messages[0].role")
    body = {"model": "claude", "max_tokens": 5, "messages": [{"role": role, "content": "hi"}]}
    assert post(sidecar, "/v1/messages", body).status_code == 400


@pytest.mark.parametrize("depth", [130, 256, 600, 1015])
@pytest.mark.parametrize("route", ["chat", "messages"])
def test_a_deeply_nested_field_is_a_400_naming_it(sidecar: Sidecar, depth: int, route: str) -> None:
    if route == "chat":
        raw = f'{{"model": "solo", "messages": [{{"role": "user", "content": "hi"}}], "metadata": {nest(depth)}}}'
        path, field = "/v1/chat/completions", "metadata"
    else:
        raw = f'{{"model": "claude", "max_tokens": 5, "messages": [{{"role": "user", "content": "hi"}}], ' \
              f'"tools": [{{"name": "t", "input_schema": {{"x": {nest(depth)}}}}}]}}'
        path, field = "/v1/messages", "tools[0].input_schema"
    error = assert_error(post(sidecar, path, raw.encode(), {"content-type": "application/json"}), 400)
    assert field in (error.get("param") or error["message"]) and "nested" in error["message"]


def test_authorization_header_not_utf8_is_a_400_naming_it(sidecar: Sidecar) -> None:
    body = {"model": "solo", "messages": [{"role": "user", "content": "hi"}]}
    response = post(sidecar, "/v1/chat/completions", body, {"authorization": b"Bearer \xff\xfe\xfd"})
    assert_error(response, 400, "authorization")
    response = post(sidecar, "/v1/chat/completions", body, {"authorization": b"", "x-api-key": b"\xc3\x28"})
    assert_error(response, 400, "x-api-key")


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_the_bearer_scheme_is_case_insensitive(sidecar: Sidecar, scheme: str) -> None:
    body = {"model": "solo", "messages": [{"role": "user", "content": "hi"}]}
    assert post(sidecar, "/v1/chat/completions", body, {"authorization": f"{scheme} {KEY}"}).status_code == 200


def test_an_unusable_request_id_is_replaced(sidecar: Sidecar) -> None:
    body = {"model": "solo", "messages": [{"role": "user", "content": "hi"}]}
    for bad in (b"\xff\xfe", b"x" * 500, "caf\u00e9".encode()):
        response = post(sidecar, "/v1/chat/completions", body, {"x-request-id": bad})
        assert response.status_code == 200
        rid = response.headers["x-request-id"]
        assert rid.isascii() and 0 < len(rid) <= 200


def test_a_tool_result_object_is_refused_not_lost(sidecar: Sidecar) -> None:
    body = {"model": "solo", "max_tokens": 5, "messages": [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": {"temp": 21}}]}]}
    assert_error(post(sidecar, "/v1/messages", body), 400, "messages.1.content.0.content")


def _raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


@pytest.mark.parametrize("data", [
    b"GARBAGE\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header Name: y\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
])
def test_low_level_http_errors_are_json_and_one_log_line(sidecar: Sidecar, data: bytes) -> None:
    before = sidecar.logs().count("\n")
    answer = _raw(sidecar.port, data)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b" 400 " in head.split(b"\r\n")[0]
    assert b'"error"' in body and b"aaaaaaaa" not in body
    lines = sidecar.logs().splitlines()[before:]
    assert len([line for line in lines if "malformed HTTP request" in line]) == 1
    assert not any("Traceback" in line for line in lines)


# ---- the fuzz run -----------------------------------------------------------------------------------

SCALARS = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | \
    st.text(max_size=12)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6),
                                                                                          inner, max_size=3),
                      max_leaves=12)
DEEP = st.integers(100, 1030).map(lambda n: f"\u0000DEEP{n}\u0000")  # nested arrays, spliced in by ``encode``
ANY = VALUES | DEEP
TEXT = st.text(max_size=20)
PARTS = st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": TEXT}), min_size=1, max_size=2)
TOOL = st.fixed_dictionaries({"type": st.just("function"), "function": st.fixed_dictionaries(
    {"name": st.sampled_from(["get_weather", "f"]), "parameters": st.just({"type": "object", "properties": {}})})})
CHAT = st.fixed_dictionaries(
    {"model": st.sampled_from(list(GROUPS)),
     "messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["system", "user"]), "content": TEXT | PARTS}),
                          min_size=1, max_size=3)},
    optional={"temperature": st.floats(0, 2), "max_tokens": st.integers(1, 50), "stop": st.lists(TEXT, max_size=2),
              "tools": st.lists(TOOL, min_size=1, max_size=2), "stream": st.booleans(), "seed": st.integers(0, 9),
              "stream_options": st.just({"include_usage": True}), "user": TEXT})
CHAT_PATHS = ["model", "messages", "messages.0", "messages.0.role", "messages.0.content", "messages.0.content.0",
              "messages.0.content.0.type", "messages.0.content.0.text",
              "messages.0.name", "messages.0.tool_calls", "temperature", "top_p", "max_tokens", "n", "stop", "tools",
              "tools.0", "tools.0.function", "tool_choice", "response_format", "stream", "stream_options", "seed",
              "logit_bias", "metadata"]
BLOCKS = PARTS  # Anthropic's text blocks have the same shape
MESSAGES_BODY = st.fixed_dictionaries(
    {"model": st.sampled_from(list(GROUPS)), "max_tokens": st.integers(1, 50),
     "messages": st.lists(st.fixed_dictionaries({"role": st.just("user"), "content": TEXT | BLOCKS}), min_size=1,
                          max_size=2)},
    optional={"system": TEXT | BLOCKS, "temperature": st.floats(0, 1), "stop_sequences": st.lists(TEXT, max_size=2),
              "stream": st.booleans(), "metadata": st.just({"user_id": "u1"}),
              "tools": st.just([{"name": "f", "input_schema": {"type": "object"}}])})
MESSAGES_PATHS = ["model", "max_tokens", "messages", "messages.0", "messages.0.role", "messages.0.content",
                  "messages.0.content.0", "messages.0.content.0.type", "messages.0.content.0.text",
                  "messages.0.content.0.content", "messages.0.content.0.source", "messages.0.content.0.input",
                  "system", "temperature", "top_k", "stop_sequences", "tools", "tools.0", "tools.0.input_schema",
                  "tool_choice", "metadata", "thinking", "stream"]
OTHER = st.fixed_dictionaries({"model": st.sampled_from(list(GROUPS)), "prompt": TEXT, "input": TEXT},
                              optional={"max_tokens": st.integers(1, 9)})
OTHER_PATHS = ["model", "prompt", "input", "max_tokens", "encoding_format"]
# A tool_use before a tool_result: the blocks a mutation of the Anthropic message can turn into
TOOL_TURN = [{"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
             {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}]}]


def mutated(bodies: st.SearchStrategy[dict[str, Any]], paths: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """A valid body with up to three of its fields (by dotted path) replaced by any JSON value."""
    return st.tuples(bodies, st.lists(st.tuples(st.sampled_from(paths), ANY), max_size=3)).map(_apply)


def _apply(case: tuple[dict[str, Any], list[tuple[str, Any]]]) -> dict[str, Any]:
    body, changes = case
    for path, value in changes:
        *parents, last = path.split(".")
        node: Any = body
        for part in parents:
            node = node[int(part)] if isinstance(node, list) and part.isdigit() and int(part) < len(node) else \
                node.get(part) if isinstance(node, dict) else None
            if node is None:
                break
        if isinstance(node, dict):
            node[last] = value
        elif isinstance(node, list) and last.isdigit() and int(last) < len(node):
            node[int(last)] = value
    return body


CASES = st.one_of(
    st.tuples(st.just("/v1/chat/completions"), mutated(CHAT, CHAT_PATHS)),
    st.tuples(st.just("/v1/messages"), mutated(MESSAGES_BODY, MESSAGES_PATHS)),
    st.tuples(st.just("/v1/messages"), mutated(MESSAGES_BODY.map(lambda b: {**b, "messages": TOOL_TURN}),
                                               [p.replace("messages.0", "messages.1") for p in MESSAGES_PATHS])),
    st.tuples(st.sampled_from(["/v1/completions", "/v1/embeddings"]), mutated(OTHER, OTHER_PATHS)))


def encode(body: Any) -> bytes:
    """JSON with each deep marker replaced by that many nested arrays (no encoder writes them that deep)."""
    text = json.dumps(body)
    for match in set(re.findall(r'"\\u0000DEEP(\d+)\\u0000"', text)):
        text = text.replace(f'"\\u0000DEEP{match}\\u0000"', nest(int(match)))
    return text.encode()


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=CASES)
def test_fuzzed_bodies_never_get_a_500(sidecar: Sidecar, primary: FakeProvider, case: tuple[str, Any]) -> None:
    path, body = case
    response = post(sidecar, path, encode(body), {"content-type": "application/json"})
    assert response.status_code != 500, (path, body, response.text)
    if response.status_code != 200:
        assert isinstance(response.json().get("error"), dict), response.text
    if response.status_code == 400 and path != "/v1/messages":
        assert response.json()["error"]["message"]


def test_the_fuzz_run_left_no_traceback(sidecar: Sidecar) -> None:
    assert "Traceback" not in sidecar.logs() and "unexpected error" not in sidecar.logs()


@pytest.mark.parametrize("group", list(GROUPS))
@pytest.mark.parametrize("text", [5, None, ["x"], {"a": 1}])
def test_a_text_part_whose_text_is_not_a_string_is_a_400(sidecar: Sidecar, group: str, text: Any) -> None:
    body = {"model": group, "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}]}
    assert_error(post(sidecar, "/v1/chat/completions", body), 400, "messages[0].content[0].text")


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/messages", "/v1/responses"])
def test_a_body_of_too_many_json_values_is_a_413_before_it_is_parsed(sidecar: Sidecar, route: str) -> None:
    """2 MB of ``{},`` would be 600,000 Python objects once parsed (the size cap allows 16 times that)."""
    many = b"[" + b"{}," * 600_000 + b"{}]"
    body = b'{"model": "solo", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], "metadata": ' + \
        many + b"}"
    assert_error(post(sidecar, route, body, {"content-type": "application/json"}), 413)
    assert post(sidecar, "/v1/chat/completions", {"model": "solo", "messages": [{"role": "user", "content": "hi"}]},
                ).status_code == 200
