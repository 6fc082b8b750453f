"""Real servers for the egress tests: a forward proxy (Debian's tinyproxy), and upstreams written byte by byte
(plain or TLS with a CA made in the test) that run on their own event loop in a thread of the test process."""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import trustme

from tests.integration.procs import free_port

Handler = Callable[["RawServer", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """``handler(server, reader, writer)`` per connection, on a loop in a thread; ``requests`` are the heads
    and bodies read by ``read_request``."""

    def __init__(self, handler: Handler, tls: ssl.SSLContext | None = None, host: str = "127.0.0.1") -> None:
        self.handler = handler
        self.requests: list[bytes] = []
        self.accepted = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.loop = asyncio.new_event_loop()
        self.port = 0
        started = threading.Event()

        async def serve() -> None:
            server = await asyncio.start_server(self._serve, host, 0, ssl=tls)
            self.port = server.sockets[0].getsockname()[1]
            self._server = server
            started.set()

        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(serve(), self.loop)
        if not started.wait(10):
            raise RuntimeError("the test upstream did not start")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        try:
            await self.handler(self, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)  # type: ignore[arg-type]
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        request = head + await reader.readexactly(length)
        self.requests.append(request)
        return request

    def stop(self) -> None:
        async def close() -> None:
            self._server.close()
            for task in list(self._tasks):  # handlers still waiting (a hang on purpose) end now
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await asyncio.sleep(0)

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def completion(text: str = "hello") -> bytes:
    return (b'{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,'
            b'"message":{"role":"assistant","content":"%s"},"finish_reason":"stop"}],'
            b'"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}' % text.encode())


def event(text: str, finish: str | None = None) -> bytes:
    delta = b'{"content":"%s"}' % text.encode() if finish is None else b"{}"
    reason = b'"%s"' % finish.encode() if finish else b"null"
    return (b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":'
            b'[{"index":0,"delta":%s,"finish_reason":%s}]}\n\n' % (delta, reason))


def wants_stream(request: bytes) -> bool:
    return b'"stream":true' in request.replace(b" ", b"")


class CA:
    """A certificate authority made for the test, and a server certificate for localhost and 127.0.0.1."""

    def __init__(self, workdir: Path) -> None:
        self.ca = trustme.CA()
        self.cert = self.ca.issue_cert("localhost", "127.0.0.1")
        self.ca_file = workdir / "egress-ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.cert.configure_cert(context)
        return context


class Tinyproxy:
    """Debian's tinyproxy on a free port of loopback; with ``user``/``password``, Basic proxy authentication."""

    def __init__(self, workdir: Path, user: str | None = None, password: str | None = None) -> None:
        exe = shutil.which("tinyproxy")
        if exe is None:
            raise RuntimeError("tinyproxy is not installed: run `make test` (it installs it) or "
                               "`apt-get install -y tinyproxy`")
        self.port = free_port()
        self.log = workdir / f"tinyproxy-{self.port}.log"
        conf = workdir / f"tinyproxy-{self.port}.conf"
        lines = [f"Port {self.port}", "Listen 127.0.0.1", "Timeout 60", f'LogFile "{self.log}"', "LogLevel Info",
                 "MaxClients 200", "Allow 127.0.0.1", "DisableViaHeader Yes"]
        if user is not None:
            lines.append(f"BasicAuth {user} {password}")
        conf.write_text("\n".join(lines) + "\n")
        self.process = subprocess.Popen([exe, "-d", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("tinyproxy did not start") from None
                time.sleep(0.05)

    def url(self, user: str | None = None, password: str | None = None) -> str:
        auth = f"{user}:{password}@" if user is not None else ""
        return f"http://{auth}127.0.0.1:{self.port}"

    def lines(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
