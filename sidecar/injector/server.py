"""The injector's HTTPS server: ``POST /mutate/pod`` and ``/mutate/namespace`` (the two webhooks of the chart's
MutatingWebhookConfiguration), ``GET /healthz`` and ``/readyz`` for the kubelet.

The certificate, key and template are files (a Secret and a ConfigMap mounted by the chart); they are
re-read when they change — a renewed certificate applies to the next handshake, without a restart. The
decision itself is pure (``review.respond``); a review that is not one gets a 400 with a JSON message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl
from dataclasses import dataclass
from time import perf_counter

import orjson
from aiohttp import web

from sidecar.injector.review import InvalidReview, respond
from sidecar.injector.template import Template, TemplateError, parse_template

log = logging.getLogger("sidecar.injector")
MAX_REVIEW_BYTES = 2 * 1024 * 1024  # a Pod is at most ~1.5 MiB in etcd; a review carries one
MAX_REVIEW_VALUES = 200_000  # JSON values a review may hold: parsed, each is a Python object of 30-70 bytes
WATCH_SECONDS = 5.0


@dataclass(slots=True)
class Files:
    template: str
    cert: str
    key: str


class Injector:
    """The template in force and the TLS context, both refreshed from their files."""

    def __init__(self, files: Files) -> None:
        self.files = files
        self.template = self._read_template()
        self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.tls.minimum_version = ssl.TLSVersion.TLSv1_2
        self.tls.load_cert_chain(files.cert, files.key)
        self._stamps = self._stat()

    def _read_template(self) -> Template:
        with open(self.files.template, "rb") as handle:
            return parse_template(handle.read())

    def _stat(self) -> list[tuple[int, int, int] | None]:
        stamps: list[tuple[int, int, int] | None] = []
        for path in (self.files.template, self.files.cert, self.files.key):
            try:
                st = os.stat(path)
                stamps.append((st.st_ino, st.st_mtime_ns, st.st_size))
            except OSError:
                stamps.append(None)
        return stamps

    def refresh(self) -> None:
        """Re-read what changed (blocking: runs in a worker thread). A bad file keeps the last good one."""
        stamps = self._stat()
        if stamps == self._stamps:
            return
        try:
            template = self._read_template()
            self.tls.load_cert_chain(self.files.cert, self.files.key)  # the next handshakes use it
        except (OSError, TemplateError, ssl.SSLError) as error:
            log.error("injector files changed but cannot be used (%s); keeping the previous ones", error)
            return
        self.template, self._stamps = template, stamps
        log.info("injector: template and certificate re-read")

    async def watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            await loop.run_in_executor(None, self.refresh)


def create_injector_app(injector: Injector) -> web.Application:
    app = web.Application(client_max_size=MAX_REVIEW_BYTES)

    def mutate(namespace_opted_in: bool):  # type: ignore[no-untyped-def]
        async def handler(request: web.Request) -> web.Response:
            started = perf_counter()
            try:
                body = await request.read()
                if body.count(b",") + body.count(b"[") + body.count(b"{") > MAX_REVIEW_VALUES:  # before parsing
                    return web.json_response({"error": f"the review holds more than {MAX_REVIEW_VALUES:,} JSON values"},
                                             status=413)
                verdict = respond(body, injector.template, namespace_opted_in=namespace_opted_in)
            except InvalidReview as error:
                log.warning("injector: refused a malformed review: %s", error)
                return web.json_response({"error": str(error)}, status=400)
            except web.HTTPRequestEntityTooLarge:
                return web.json_response({"error": f"the review is larger than {MAX_REVIEW_BYTES >> 20} MiB"},
                                         status=413)
            except Exception:  # a bug here must not take the process down: the API server applies failurePolicy
                log.exception("injector: unexpected error")
                return web.json_response({"error": "internal error in the injector"}, status=500)
            log.info("injector: %s (%s) in %.2f ms", verdict.response["response"]["uid"], verdict.reason,
                     (perf_counter() - started) * 1000)
            return web.Response(body=orjson.dumps(verdict.response), content_type="application/json")

        return handler

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app.add_routes([web.post("/mutate/pod", mutate(False)), web.post("/mutate/namespace", mutate(True)),
                    web.get("/healthz", ok), web.get("/readyz", ok)])
    return app


async def serve(files: Files, host: str, port: int) -> None:
    """Serve until SIGTERM/SIGINT."""
    injector = Injector(files)
    runner = web.AppRunner(create_injector_app(injector), handle_signals=False, shutdown_timeout=5.0,
                           access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, ssl_context=injector.tls).start()
    log.info("injector serving on https://%s:%d", host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watcher = asyncio.create_task(injector.watch())
    try:
        await stop.wait()
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await runner.cleanup()
