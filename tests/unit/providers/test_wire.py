"""The wire client against real local servers: exact byte sequences (asyncio servers) and aiohttp.

Errors are checked through ``providers.http.send``, the seam the router calls, so the mapping is tested too.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import socket
import ssl
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.core.errors import UpstreamConnectionError, UpstreamServerError, UpstreamTimeout
from sidecar.providers import http, wire
from sidecar.providers.base import UpstreamCall
from tests.unit.providers.local_servers import OK, Server, answering, in_pieces, reset, serving


async def send(session: aiohttp.ClientSession, url: str, body: bytes = b'{"a":1}', seconds: float = 5.0) -> http.Answer:
    deadline = asyncio.get_running_loop().time() + seconds
    return await http.send(session, UpstreamCall(url, {"content-type": "application/json"}, body), deadline)


# ---- bodies ---------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=2000), st.booleans(), st.lists(st.integers(min_value=1, max_value=300), max_size=10))
def test_any_split_across_tcp_writes(body: bytes, use_chunked: bool, sizes: list[int]) -> None:
    if use_chunked:
        pieces = [body[i:i + 700] for i in range(0, len(body), 700)]
        wire_body = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces)
        response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + wire_body + b"0\r\nt: 1\r\n\r\n"
    else:
        response = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    async def scenario() -> None:
        async with serving(in_pieces(response, sizes)) as (server, url):
            pool = wire.Pool(limit=2, user_agent="t")
            for _ in range(2):
                answer = await pool.post(UpstreamCall(url, {}, b"x"))
                assert (answer.status, answer.body) == (200, body)
            assert server.accepted == 1
            await pool.close()

    asyncio.run(scenario())


async def test_against_aiohttp_server_headers_and_chunked(session: aiohttp.ClientSession) -> None:
    seen: list[dict[str, str]] = []

    async def chat(request: web.Request) -> web.StreamResponse:
        seen.append({k.lower(): v for k, v in request.headers.items()})
        seen[-1]["traceparents"] = ",".join(request.headers.getall("traceparent", []))
        body = await request.read()
        if request.query.get("chunked"):
            response = web.StreamResponse(status=201)
            response.enable_chunked_encoding()
            await response.prepare(request)
            for _ in range(100):
                await response.write(body)
            await response.write_eof()
            return response
        return web.json_response({"echo": body.decode()}, headers={"Retry-After": "3"})

    app = web.Application()
    app.router.add_post("/v1/chat", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        answer = await send(session, f"http://127.0.0.1:{port}/v1/chat")
        assert (answer.status, answer.body, answer.headers["retry-after"]) == (200, b'{"echo": "{\\"a\\":1}"}', "3")
        answer = await send(session, f"http://127.0.0.1:{port}/v1/chat?chunked=1", body=b"0123456789" * 100)
        assert (answer.status, answer.body) == (201, b"0123456789" * 10000)
        assert seen[0]["host"] == f"127.0.0.1:{port}" and seen[0]["user-agent"] == "llm-sidecar/test"
        assert seen[0]["content-length"] == "7" and seen[0]["content-type"] == "application/json"
        assert seen[0]["accept-encoding"] == "identity"  # no field would allow any coding (RFC 9110 §12.5.3)
        http.TRACE_HEADERS.set(http.trace_fields({"traceparent": "00-abc-def-01"}))
        await send(session, f"http://127.0.0.1:{port}/v1/chat")
        assert seen[-1]["traceparent"] == "00-abc-def-01"
        configured = {"content-type": "application/json", "traceparent": "configured", "x-team": "a"}
        deadline = asyncio.get_running_loop().time() + 5
        await http.send(session, UpstreamCall(f"http://127.0.0.1:{port}/v1/chat", configured, b"{}"), deadline)
        assert (seen[-1]["traceparents"], seen[-1]["x-team"]) == ("00-abc-def-01", "a")  # the attempt's context wins
        assert http.pool_of(session).connections() == 1
    finally:
        http.TRACE_HEADERS.set(b"")
        await runner.cleanup()


# ---- the pool -------------------------------------------------------------------------------------


async def test_keep_alive_reuses_one_connection(session: aiohttp.ClientSession) -> None:
    async with serving(answering(OK)) as (server, url):
        for _ in range(20):
            assert (await send(session, url)).body == b"ok"
        assert server.accepted == 1 and len(server.requests) == 20
        assert (http.pool_of(session).connections(), http.pool_of(session).idle_connections()) == (1, 1)


async def test_pool_cap_under_concurrency_and_no_leaks(session: aiohttp.ClientSession) -> None:
    async def slow(server: Server, n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await server.read_request(reader) is not None:
            await asyncio.sleep(0.002)
            writer.write(OK)

    async with serving(slow) as (server, url):
        answers = await asyncio.gather(*(send(session, url) for _ in range(200)))
        assert all(a.body == b"ok" for a in answers)
        assert server.most_open <= 4 and server.accepted == 4
        assert http.pool_of(session).connections() == http.pool_of(session).idle_connections() == 4
        await http.pool_of(session).close()
        await asyncio.sleep(0.05)
        assert http.pool_of(session).connections() == 0 and server.open == 0


async def test_idle_connections_expire() -> None:
    pool = wire.Pool(limit=2, user_agent="t", keepalive=0.05)
    async with serving(answering(OK)) as (server, url):
        await pool.post(UpstreamCall(url, {}, b""))
        assert pool.idle_connections() == 1
        await asyncio.sleep(0.3)
        assert pool.connections() == 0 and server.open == 0
    await pool.close()


async def test_a_close_after_the_request_was_written_is_not_resent(session: aiohttp.ClientSession) -> None:
    """Issue 12 point 3: the upstream may be working on it — a second POST could bill twice."""
    async def handler(server: Server, n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(OK)
        await server.read_request(reader)
        await asyncio.sleep(0.2)  # works on it a while, then goes away (a pod restart)

    async with serving(handler) as (server, url):
        await send(session, url)
        with pytest.raises(UpstreamConnectionError) as failure:
            await send(session, url)
        assert failure.value.cause == "closed"
        assert server.accepted == 1 and len(server.requests) == 2  # the second request arrived exactly once
        assert http.pool_of(session).connections() == 0


async def test_a_connection_found_closed_before_writing_is_replaced(session: aiohttp.ClientSession) -> None:
    async with serving(answering(OK)) as (server, url):
        await send(session, url)
        pool = http.pool_of(session)
        [host] = [h for h in pool._hosts.values() if h.idle]
        host.idle[0].transport.close()  # closing, but not yet noticed as lost: the write is refused
        assert (await send(session, url)).body == b"ok"
        assert server.accepted == 2 and len(server.requests) == 2 and pool.connections() == 1


async def test_no_retry_after_a_byte_of_the_answer(session: aiohttp.ClientSession) -> None:
    async def handler(server: Server, n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(OK)
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Le")

    async with serving(handler) as (server, url):
        await send(session, url)
        with pytest.raises(UpstreamServerError, match="cut off"):
            await send(session, url)
        assert server.accepted == 1


# ---- failures -------------------------------------------------------------------------------------


async def test_refused(session: aiohttp.ClientSession) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UpstreamConnectionError, match="could not connect"):
        await send(session, f"http://127.0.0.1:{port}/")
    assert http.pool_of(session).connections() == 0


async def test_reset_before_any_byte(session: aiohttp.ClientSession) -> None:
    async def handler(server: Server, n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        reset(writer)

    async with serving(handler) as (server, url):
        with pytest.raises(UpstreamConnectionError):
            await send(session, url)
        assert server.accepted == 1 and http.pool_of(session).connections() == 0


@pytest.mark.parametrize("partial", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123",
    b"HTTP/1.1 200 OK\r\nContent-",
])
@pytest.mark.parametrize("close", ["fin", "rst"])
async def test_cut_mid_answer(session: aiohttp.ClientSession, partial: bytes, close: str) -> None:
    async def handler(server: Server, n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(partial)
        await writer.drain()
        await asyncio.sleep(0.02)
        if close == "rst":
            reset(writer)

    async with serving(handler) as (_, url):
        with pytest.raises(UpstreamServerError, match="cut off"):
            await send(session, url)
        assert http.pool_of(session).connections() == 0


@pytest.mark.parametrize("response", [b"HTTP/1.1 2xx OK\r\n\r\n", b"SSH-2.0-OpenSSH\r\n\r\n",
                                      b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n"])
async def test_invalid_answers(session: aiohttp.ClientSession, response: bytes) -> None:
    async with serving(answering(response)) as (_, url):
        with pytest.raises(UpstreamServerError, match=r"invalid|too large"):
            await send(session, url)
        assert http.pool_of(session).connections() == 0


async def test_slow_server_times_out_at_the_deadline(session: aiohttp.ClientSession) -> None:
    async def handler(server: Server, n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nslow")
        await asyncio.sleep(10)

    async with serving(handler) as (_, url):
        with pytest.raises(UpstreamTimeout) as caught:
            await send(session, url, seconds=0.1)
        assert caught.value.phase == "total"
        assert http.pool_of(session).connections() == 0


async def test_connection_close_and_http10_are_not_reused(session: aiohttp.ClientSession) -> None:
    close = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
    old = b"HTTP/1.0 200 OK\r\n\r\nuntil close"
    for response, body in ((close, b"ok"), (old, b"until close")):
        async with serving(answering(response, then_close=True)) as (server, url):
            for _ in range(3):
                assert (await send(session, url)).body == body
            assert server.accepted == 3
            await asyncio.sleep(0.02)
            assert http.pool_of(session).connections() == 0


async def test_cancellation_closes_the_connection(session: aiohttp.ClientSession) -> None:
    closed = asyncio.Event()

    async def handler(server: Server, n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhal")
        await reader.read()  # until the client closes
        closed.set()

    async with serving(handler) as (_, url):
        task = asyncio.create_task(send(session, url))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert http.pool_of(session).connections() == 0
        await asyncio.wait_for(closed.wait(), 2)


# ---- TLS ------------------------------------------------------------------------------------------


def certificates(tmp: Path) -> tuple[bytes, Path, Path]:
    """A CA and a localhost certificate it signed: (CA PEM, cert file, key file)."""
    now = dt.datetime.now(dt.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    (tmp / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))
    return ca.public_bytes(serialization.Encoding.PEM), tmp / "cert.pem", tmp / "key.pem"


async def test_tls_with_sni(tmp_path: Path) -> None:
    ca, cert, key = certificates(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    names: list[str | None] = []
    server_ctx.sni_callback = lambda sock, name, ctx: names.append(name)  # type: ignore[assignment]

    async with serving(answering(OK), tls=server_ctx) as (server, url):
        session = aiohttp.ClientSession()
        http.attach_pool(session, wire.Pool(limit=2, user_agent="t", ssl_context=ssl.create_default_context(
            cadata=ca.decode())))
        try:
            for _ in range(3):
                assert (await send(session, url)).body == b"ok"
            assert names == ["localhost"] and server.accepted == 1
        finally:
            await http.close(session)
        # Without the test CA the handshake fails: a connection error, as with aiohttp.
        session = aiohttp.ClientSession()
        http.attach_pool(session, wire.Pool(limit=2, user_agent="t"))
        try:
            with pytest.raises(UpstreamConnectionError, match="could not connect"):
                await send(session, url)
        finally:
            await http.close(session)
