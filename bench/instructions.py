#!/usr/bin/env python3
"""`make bench-instructions`: user-space instructions per request, counted by callgrind.

    python bench/instructions.py [--requests 2000] [--concurrency 8] [--config extra.yaml] [--tracing]
                                 [--unique] [--keep-dumps DIR]

Seconds on a shared 2-core VM move ±20% between runs; instruction counts of the same code and inputs do
not. The sidecar runs under ``valgrind --tool=callgrind`` in front of the same upstream as ``make bench``
(nginx with fixed answers, or the fake provider). For each kind of request (plain, stream) it warms up,
zeroes the counters (``callgrind_control --zero``), sends N requests at the given concurrency, dumps the
counters and divides: instructions per request, the number to compare before and after a change.

``--config`` merges extra YAML into the sidecar's config (e.g. 20 rules, a cache) to price a feature; the
bench model groups stay ``bench-plain`` and ``bench-stream``.

``--bedrock`` (with ``--upstream fake``) adds an AWS Bedrock deployment on the fake provider's Bedrock surface
and measures its answers and streams too: SigV4 signing per request, Converse translation and the binary
event stream (the same text in the same number of pieces as the OpenAI stream). Only the sidecar process runs
under callgrind, so the fake's own signature checks do not count.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import (
    REQUEST_BODY,
    Processes,
    TraceSink,
    Upstream,
    free_port,
    http_status,
    sidecar_config,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[1]
SEEDS = itertools.count()  # --unique: a body no request of this run had


async def _send(port: int, model: str, stream: bool, requests: int, concurrency: int,
                cache_control: str | None = None, unique: bool = False) -> None:
    """``requests`` POSTs over ``concurrency`` keep-alive connections; every answer read to its end.
    ``unique``: each body differs (a ``seed``), so a response cache misses every time."""
    extra = ',"stream":true' if stream else ""
    directive = f"cache-control: {cache_control}\r\n" if cache_control else ""

    def head(n: int) -> bytes:
        body = (REQUEST_BODY % (model, extra + (f',"seed":{next(SEEDS)}' if unique else ""))).encode()
        return (f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                f"{directive}content-length: {len(body)}\r\n\r\n").encode() + body

    fixed = None if unique else head(0)
    left = [requests]

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while left[0] > 0:
            left[0] -= 1
            writer.write(fixed or head(left[0]))
            status = await reader.readline()
            if b" 200 " not in status:
                raise RuntimeError(f"unexpected answer: {status!r}")
            length, chunked = None, False
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
                elif name.lower() == "transfer-encoding" and "chunked" in value:
                    chunked = True
            if length is not None:
                await reader.readexactly(length)
            elif chunked:
                while True:
                    size = int((await reader.readline()).split(b";")[0], 16)
                    await reader.readexactly(size + 2)
                    if size == 0:
                        break
        writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def _totals(path: Path) -> int:
    for line in path.read_text().splitlines():
        if line.startswith(("totals:", "summary:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {path}")


def count(pid: int, workdir: Path, label: str, send: object, keep: Path | None = None) -> int:
    subprocess.run(["callgrind_control", "--zero", str(pid)], check=True, capture_output=True)
    asyncio.run(send)  # type: ignore[arg-type]
    subprocess.run(["callgrind_control", f"--dump={label}", str(pid)], check=True, capture_output=True)
    time.sleep(0.5)
    dumps = sorted(workdir.glob("callgrind.out.*"), key=lambda p: p.stat().st_mtime)
    for dump in reversed(dumps):
        if label in dump.read_text(errors="replace")[:4000]:
            if keep is not None:
                keep.mkdir(parents=True, exist_ok=True)
                shutil.copy(dump, keep / f"callgrind.{label}")
            return _totals(dump)
    raise RuntimeError(f"callgrind wrote no dump labelled {label}")


def _bedrock_group(port: int) -> str:
    from sidecar.testing import fake_aws

    return ("  - model_name: bench-bedrock\n"
            "    litellm_params: {model: 'bedrock/us.anthropic.claude-3-7-sonnet-20250219-v1:0', "
            f"aws_region_name: us-east-1, aws_bedrock_runtime_endpoint: 'http://127.0.0.1:{port}', "
            f"aws_access_key_id: '{fake_aws.ACCESS_KEY}', aws_secret_access_key: '{fake_aws.SECRET_KEY}'}}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--upstream", choices=("auto", "nginx", "fake"), default="auto")
    parser.add_argument("--config", type=Path, help="YAML appended to the bench config (extra settings)")
    parser.add_argument("--tracing", action="store_true", help="always-on tracing, OTLP/HTTP to a local sink")
    parser.add_argument("--no-stream", action="store_true")
    parser.add_argument("--bedrock", action="store_true", help="also a Bedrock deployment (needs --upstream fake)")
    parser.add_argument("--cache-control", help="the requests' Cache-Control (with a cache in --config: no-cache "
                        "skips the lookup, no-store the cache)")
    parser.add_argument("--unique", action="store_true", help="every request's body differs: with a cache in "
                        "--config, every request a miss (without it, every one after the first a hit)")
    parser.add_argument("--keep-dumps", type=Path, metavar="DIR", help="copy each measured callgrind dump to DIR "
                        "(callgrind.measure-plain, …), for callgrind_annotate")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install -y valgrind)")
    procs = Processes()
    sink = TraceSink() if args.tracing else None
    with tempfile.TemporaryDirectory(prefix="sidecar-callgrind-") as tmp:
        workdir = Path(tmp)
        try:
            upstream = Upstream(procs, workdir, args.upstream, cpu=None)  # type: ignore[arg-type]
            config = sidecar_config(upstream, workdir)
            if args.config is not None:
                config.write_text(config.read_text() + "\n" + args.config.read_text())
            if args.bedrock:
                if upstream.kind != "fake":
                    raise SystemExit("--bedrock needs --upstream fake (nginx cannot answer an event stream)")
                config.write_text(config.read_text() + _bedrock_group(upstream.port))
            port, admin = free_port(), free_port()
            env = sink.env() if sink is not None else dict(os.environ)
            argv_ = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={workdir}/callgrind.out.%p",
                     sys.executable, "-m", "sidecar", "serve", "--config", str(config), "--port", str(port),
                     "--admin-host", "127.0.0.1", "--admin-port", str(admin)]
            log = workdir / "sidecar.log"
            child = procs.start(argv_, log, None, env)
            wait_until(lambda: http_status(admin, "GET", "/readyz") == 200, child, log, timeout=180)
            results = {}
            kinds = [("plain", "bench-plain", False)] + ([] if args.no_stream else [("stream", "bench-stream", True)])
            if args.bedrock:
                kinds += [("bedrock-plain", "bench-bedrock", False), ("bedrock-stream", "bench-bedrock", True)]
            for name, model, stream in kinds:
                options = (args.cache_control, args.unique)
                asyncio.run(_send(port, model, stream, 200, args.concurrency, *options))  # warm-up
                total = count(child.pid, workdir, f"measure-{name}",
                              _send(port, model, stream, args.requests, args.concurrency, *options),
                              args.keep_dumps)
                results[name] = total / args.requests
            procs.stop(child, timeout=60)
        finally:
            procs.stop_all()
            if sink is not None:
                sink.stop()
    for name, per in results.items():
        print(f"{name:>14}: {per / 1000:,.0f}k instructions/request "
              f"({args.requests} requests, concurrency {args.concurrency}{', tracing' if args.tracing else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
