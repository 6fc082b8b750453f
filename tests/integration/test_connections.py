"""No client connection can pin the sidecar (issue 13, point 2): slow heads, slow bodies and idle keep-alive
connections are closed after their timeouts on both ports while good requests keep succeeding, and filling
the admin port's connection cap with idle connections leaves the API and ``/healthz`` serving."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import requests

from tests.integration.procs import APP_KEY, FakeProvider, Sidecar, deployment

MESSAGES = [{"role": "user", "content": "hi"}]
LISTENERS = {"header_timeout": 1.0, "body_timeout": 1.0, "idle_timeout": 2.0, "max_connections": 64,
             "admin_max_connections": 6}


@pytest.fixture(scope="module")
def sidecar(workdir: Path, primary: FakeProvider) -> Iterator[Sidecar]:
    process = Sidecar({"model_list": [deployment("solo", primary)], "sidecar_settings": {"listeners": LISTENERS}},
                      workdir, "connections")
    yield process
    process.stop()


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.settimeout(10)
    return sock


def _closed_after(sock: socket.socket, started: float) -> tuple[float, bytes]:
    """Read until the server closes; the seconds it took and what it sent."""
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return time.monotonic() - started, received


def _good_request(sidecar: Sidecar) -> None:
    client = openai.OpenAI(base_url=sidecar.base_url, api_key=APP_KEY, max_retries=0, timeout=10)
    assert client.chat.completions.create(model="solo", messages=MESSAGES).choices[0].message.content
    assert requests.get(f"{sidecar.admin_url}/healthz", timeout=5).status_code == 200


@pytest.mark.parametrize("port", ["api", "admin"])
def test_a_slow_head_is_cut_with_408(sidecar: Sidecar, port: str) -> None:
    sock = _connect(sidecar.port if port == "api" else sidecar.admin_port)
    started = time.monotonic()
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    try:
        for i in range(20):  # a header line every 0.25 s: never finishing
            time.sleep(0.25)
            sock.sendall(f"X-Slow-{i}: y\r\n".encode())
    except OSError:
        pass  # closed under us: what we want
    seconds, received = _closed_after(sock, started)
    assert seconds < 4.5  # the 1 s head timeout (the idle timeout of 2 s would also bound it)
    assert received.startswith(b"HTTP/1.1 408") and b'"request_timeout"' in received
    _good_request(sidecar)


def test_a_slow_body_is_cut_with_408(sidecar: Sidecar) -> None:
    sock = _connect(sidecar.port)
    started = time.monotonic()
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 1000\r\n\r\n{\"model\": ")
    seconds, received = _closed_after(sock, started)
    assert seconds < 6  # 1 s body timeout, then at most 2 s of lingering
    assert received.startswith(b"HTTP/1.1 408") and b'"request_timeout"' in received
    _good_request(sidecar)


@pytest.mark.parametrize("port", ["api", "admin"])
def test_idle_connections_are_closed(sidecar: Sidecar, port: str) -> None:
    number = sidecar.port if port == "api" else sidecar.admin_port
    silent, used = _connect(number), _connect(number)
    started = time.monotonic()
    used.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # one request, then idle keep-alive
    for sock in (silent, used):
        seconds, received = _closed_after(sock, started)
        assert seconds < 6  # the 2 s idle timeout (the silent one: the 1 s head timeout, from its opening)
        assert received in (b"",) or received.startswith((b"HTTP/1.1 200", b"HTTP/1.1 408"))


def test_connections_that_only_sit_there_cannot_keep_the_probes_out(sidecar: Sidecar) -> None:
    """40 silent connections to the admin port (cap 6): each new one closes the oldest idle one, so the
    kubelet's probe still gets through, and so does the API."""
    held = [_connect(sidecar.admin_port) for _ in range(40)]
    try:
        assert requests.get(f"{sidecar.admin_url}/healthz", timeout=5).status_code == 200
        assert requests.get(f"{sidecar.url}/healthz", timeout=5).status_code == 200
        _good_request_api_only(sidecar)
        evicted = [_closed_after(sock, time.monotonic())[1] for sock in held[:30]]
        assert evicted == [b""] * 30  # closed to make room: nothing was asked, nothing is answered
    finally:
        for sock in held:
            sock.close()


def _good_request_api_only(sidecar: Sidecar) -> None:
    client = openai.OpenAI(base_url=sidecar.base_url, api_key=APP_KEY, max_retries=0, timeout=10)
    assert client.chat.completions.create(model="solo", messages=MESSAGES).choices[0].message.content


def test_the_open_file_limit_is_raised(sidecar: Sidecar) -> None:
    limits = Path(f"/proc/{sidecar.process.pid}/limits").read_text()
    line = next(x for x in limits.splitlines() if x.startswith("Max open files"))
    soft, hard = line.split()[3:5]
    assert soft == hard


def test_body_bytes_after_the_head_start_no_head_timer(sidecar: Sidecar) -> None:
    """A body that comes after its head is the handler's to time: the connection, once answered, stays a
    healthy keep-alive connection past the head timeout."""
    body = b'{"model": "solo", "messages": [{"role": "user", "content": "hi"}]}'
    sock = _connect(sidecar.port)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body))
    time.sleep(0.3)
    sock.sendall(body)
    assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    time.sleep(1.4)  # past the 1 s head timeout, within the 2 s idle timeout
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    sock.close()
