"""Egress against upstreams written byte by byte, through the real sidecar process (issue 12 points 2-6).

A name resolving to a silently dropped address first (a private hosts file: Debian's libnss-wrapper), a
connection closed while the upstream works on a request, compressed answers, answers llhttp refuses."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import gzip
import socket
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.integration.egress_servers import RawServer, completion, event, wants_stream
from tests.integration.procs import APP_KEY, Sidecar

STREAM_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
STREAM = event("hello") + event(" world") + event("", "stop") + b"data: [DONE]\n\n"


def whole(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\n\r\n%s" % (
        extra, len(body), body)


async def _plain(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while await server.read_request(reader) is not None:
        writer.write(whole(completion("via the live address")))


async def _restarting(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers its first request; the second it takes, works on for a second, then goes away (a pod restart)."""
    while await server.read_request(reader) is not None:
        if len(server.requests) == 2:
            await asyncio.sleep(1.0)
            return
        writer.write(whole(completion()))


async def _compressing(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Compresses whatever the request asked for (as a misconfigured upstream would)."""
    while (request := await server.read_request(reader)) is not None:
        if not wants_stream(request):
            writer.write(whole(gzip.compress(completion("unzipped")), b"Content-Encoding: gzip\r\n"))
            continue
        writer.write(STREAM_HEAD + b"Content-Encoding: deflate\r\n\r\n")
        z = zlib.compressobj()
        for piece in (event("unzipped"), event(" stream"), event("", "stop"), b"data: [DONE]\n\n"):
            data = z.compress(piece) + z.flush(zlib.Z_SYNC_FLUSH)  # each event out as it is made
            writer.write(b"%x\r\n%s\r\n" % (len(data), data))
            await writer.drain()
        tail = z.flush()
        writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(tail), tail))


MALFORMED = {
    b"bare-lf": b"HTTP/1.1 200 OK\nContent-Type: application/json\nContent-Length: 2\n\n{}",
    b"status-99": b"HTTP/1.1 099 Odd\r\nContent-Length: 2\r\n\r\n{}",
    b"control": b"HTTP/1.1 200 OK\r\nX-Trace: a\x01b\r\nContent-Length: 2\r\n\r\n{}",
    b"length-and-chunked": (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
                            b"2\r\n{}\r\n0\r\n\r\n"),
}


async def _malformed(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while (request := await server.read_request(reader)) is not None:
        kind = next(k for k in MALFORMED if k in request)
        writer.write(MALFORMED[kind])
        await asyncio.sleep(30)  # and then nothing: the old parser waited here for the deadline


@contextlib.contextmanager
def blackhole(port: int) -> Iterator[None]:
    """SYNs to [::1]:port dropped without an answer (a listener whose accept queue is full)."""
    listener = socket.socket(socket.AF_INET6)
    listener.bind(("::1", port))
    listener.listen(0)
    fillers = []
    for _ in range(3):
        filler = socket.socket(socket.AF_INET6)
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("::1", port))
        fillers.append(filler)
    try:
        yield
    finally:
        for s in [*fillers, listener]:
            s.close()


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, RawServer]]:
    made = {"plain": RawServer(_plain), "restarting": RawServer(_restarting),
            "compressing": RawServer(_compressing), "malformed": RawServer(_malformed)}
    with blackhole(made["plain"].port):
        yield made
    for server in made.values():
        server.stop()


def _group(name: str, api_base: str, **params: Any) -> dict[str, Any]:
    return {"model_name": name, "litellm_params": {"model": "openai/m", "api_base": api_base, "api_key": "sk-u",
                                                   **params}, "model_info": {"id": name}}


@pytest.fixture(scope="module")
def egress(workdir: Path, servers: dict[str, RawServer]) -> Iterator[Sidecar]:
    wrapper = glob.glob("/usr/lib/*/libnss_wrapper.so")
    if not wrapper:
        raise RuntimeError("libnss-wrapper is not installed: run `make test` (it installs it)")
    hosts = workdir / "egress-hosts"
    hosts.write_text("::1 dual.test\n127.0.0.1 dual.test\n")  # the dead address first, as getaddrinfo gives it
    config = {
        "model_list": [
            _group("dual", f"http://dual.test:{servers['plain'].port}/v1", timeout=8),
            _group("restarting", f"http://127.0.0.1:{servers['restarting'].port}/v1"),
            _group("compressing", f"http://127.0.0.1:{servers['compressing'].port}/v1"),
            _group("malformed", f"http://127.0.0.1:{servers['malformed'].port}/v1", timeout=20),
        ],
        "router_settings": {"num_retries": 0, "cooldown_time": 0, "timeout": 30},
    }
    env = {"LD_PRELOAD": wrapper[0], "NSS_WRAPPER_HOSTS": str(hosts), "NSS_WRAPPER_PASSWD": "/etc/passwd",
           "NSS_WRAPPER_GROUP": "/etc/group"}
    sidecar = Sidecar(config, workdir, "egress", env=env)
    yield sidecar
    sidecar.stop()


def _client(sidecar: Sidecar) -> openai.OpenAI:
    return openai.OpenAI(base_url=sidecar.base_url, api_key=APP_KEY, max_retries=0, timeout=40)




def test_a_dead_first_address_is_not_waited_on(egress: Sidecar) -> None:
    """Point 2: ``dual.test`` resolves to ::1 (SYNs dropped) then 127.0.0.1; the timeout is 8 s. Happy
    Eyeballs tries the second address 250 ms after the first — before, the request took the whole 8 s."""
    started = time.monotonic()
    answer = _client(egress).chat.completions.create(model="dual", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == "via the live address"
    assert time.monotonic() - started < 4


def test_a_request_the_upstream_took_is_not_sent_again(egress: Sidecar, servers: dict[str, RawServer]) -> None:
    """Point 3: a reused connection closed before the first byte of the answer — after the upstream had the
    request for a second — is a failed attempt for the retry policy (num_retries: 0 here), not a silent resend."""
    client = _client(egress)
    assert client.chat.completions.create(model="restarting", messages=[{"role": "user", "content": "1"}]).choices
    with pytest.raises(openai.APIStatusError) as failure:
        client.chat.completions.create(model="restarting", messages=[{"role": "user", "content": "2"}])
    assert failure.value.status_code == 503
    assert len(servers["restarting"].requests) == 2  # the second request reached the upstream exactly once
    assert failure.value.response.headers["x-sidecar-attempts"] == "1"
    line = egress.request_log(failure.value.response.headers["x-request-id"])
    assert line["failures"] == [{"deployment": "restarting", "error": "connection", "cause": "closed"}]


def test_compressed_answers_are_decoded(egress: Sidecar, servers: dict[str, RawServer]) -> None:
    """Point 4: the client asks for ``identity``; an upstream that compresses anyway is decoded, streams too."""
    client = _client(egress)
    answer = client.chat.completions.create(model="compressing", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == "unzipped"
    stream = client.chat.completions.create(model="compressing", messages=[{"role": "user", "content": "hi"}],
                                            stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "unzipped stream"
    assert all(b"\r\naccept-encoding: identity\r\n" in r.lower() for r in servers["compressing"].requests)


@pytest.mark.parametrize("kind", list(MALFORMED))
def test_malformed_answers_fail_at_once(egress: Sidecar, kind: bytes) -> None:
    """Point 6: each of these hung until the deadline, or was read as a good answer, before llhttp."""
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as failure:
        _client(egress).chat.completions.create(model="malformed",
                                                messages=[{"role": "user", "content": kind.decode()}])
    assert failure.value.status_code == 503 and time.monotonic() - started < 10
    line = egress.request_log(failure.value.response.headers["x-request-id"])
    assert line["failures"] == [{"deployment": "malformed", "error": "server_error", "cause": "bad_response"}]
