#!/usr/bin/env python3
"""`make bench`: the sidecar against a fast upstream, measured next to a direct baseline in one run.

    python bench/run.py [--duration 10] [--concurrency 1,8,64] [--upstream auto|nginx|fake]
    python bench/run.py --soak [N]          # N requests (default 1,000,000); RSS at start and end
    python bench/run.py --tracing           # plus plain requests with tracing on (always-on, OTLP/HTTP)

The upstream is nginx answering a fixed chat.completion (``/plain/v1``) and a fixed SSE stream
(``/stream/v1``) — see ``bench/nginx.conf.template`` — or, when nginx is absent, the project's fake
provider. The sidecar is pinned to one core (``taskset -c 0``); wrk, nginx and this driver share the
other. For each concurrency it runs wrk directly against the upstream and then through the sidecar, and
reads the sidecar's CPU time (``/proc/PID/stat``) around each run. Streaming time to first token is
measured by a small asyncio client at concurrency 1, alternating direct and sidecar requests.

Plain requests are also sent through ``bench/bare.py``, a bare aiohttp pass-through on the sidecar's core:
the floor of a Python proxy, measured in the same run (``--no-floor`` skips it). With ``--tracing`` a
second sidecar exports every request's spans (``OTEL_TRACES_SAMPLER=always_on``) over OTLP/HTTP to a sink
in this driver (on the load core) that accepts ``POST /v1/traces`` and answers 200; its plain rows are
measured right after the untraced sidecar's.

Prints a table and writes JSON to ``bench-results/``. Every process it starts is stopped on exit,
Ctrl-C and errors included. Standard library only (plus the project's venv for the sidecar itself).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
RESULTS = ROOT / "bench-results"
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024

# The fixed answers nginx serves. Realistic sizes: one short completion; a stream of a role chunk, eight
# content chunks, a finish chunk and the usage chunk an upstream sends for stream_options.include_usage.
CHAT_BODY = json.dumps({
    "id": "chatcmpl-bench0000000000000000000000", "object": "chat.completion", "created": 1735689600,
    "model": "bench-model", "system_fingerprint": "fp_bench",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello! How can I help you today?",
                                         "refusal": None}, "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 19, "completion_tokens": 9, "total_tokens": 28,
              "prompt_tokens_details": {"cached_tokens": 0}},
}, separators=(",", ":"))
STREAM_PIECES = ["Hello", "!", " How", " can", " I", " help", " you", " today?"]


def _chunk(delta: dict[str, Any], finish: str | None, usage: dict[str, int] | None = None) -> str:
    choices = [] if usage else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
    data = {"id": "chatcmpl-bench0000000000000000000000", "object": "chat.completion.chunk",
            "created": 1735689600, "model": "bench-model", "system_fingerprint": "fp_bench",
            "choices": choices}
    if usage:
        data["usage"] = usage
    return "data: " + json.dumps(data, separators=(",", ":")) + "\n\n"


STREAM_BODY = (
    _chunk({"role": "assistant", "content": ""}, None)
    + "".join(_chunk({"content": p}, None) for p in STREAM_PIECES)
    + _chunk({}, "stop")
    + _chunk({}, None, {"prompt_tokens": 19, "completion_tokens": 8, "total_tokens": 27})
    + "data: [DONE]\n\n"
)
REQUEST_BODY = ('{"model":"%s","messages":[{"role":"system","content":"You are terse."},'
                '{"role":"user","content":"Say hello in one word."}],"max_tokens":16,"temperature":0%s}')


# ---- processes ---------------------------------------------------------------------------------------


class Processes:
    """Every child the run starts; ``stop_all`` ends them (SIGTERM, then SIGKILL) in reverse order."""

    def __init__(self) -> None:
        self.children: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], log: Path, cpu: int | None = None,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        if cpu is not None and shutil.which("taskset") and (os.cpu_count() or 1) > cpu:
            argv = ["taskset", "-c", str(cpu), *argv]  # taskset execs: the pid is the program's
        with log.open("ab") as out:
            child = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     cwd=ROOT, env=env, start_new_session=True)
        self.children.append(child)
        return child

    def stop(self, child: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    child.kill()
                child.wait()
        with contextlib.suppress(ValueError):
            self.children.remove(child)

    def stop_all(self) -> None:
        for child in reversed(list(self.children)):
            self.stop(child)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_status(port: int, method: str, path: str, body: bytes | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request(method, path, body=body, headers={"content-type": "application/json"})
        response = conn.getresponse()
        response.read()
        return response.status
    except OSError:
        return 0
    finally:
        conn.close()


def wait_until(ready: Any, child: subprocess.Popen[bytes], log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise RuntimeError(f"{child.args} exited with {child.returncode}:\n{log.read_text()[-3000:]}")
        if ready():
            return
        time.sleep(0.002)
    raise RuntimeError(f"{child.args} not ready in {timeout:g}s:\n{log.read_text()[-3000:]}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds (clock-tick resolution)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# ---- upstream and sidecar ----------------------------------------------------------------------------


class Upstream:
    """nginx (preferred) or the fake provider; ``plain_base`` / ``stream_base`` are OpenAI api_base URLs."""

    def __init__(self, procs: Processes, workdir: Path, kind: str, cpu: int) -> None:
        self.port = free_port()
        self.kind = "nginx" if kind == "nginx" or (kind == "auto" and shutil.which("nginx")) else "fake"
        log = workdir / f"{self.kind}.log"
        if self.kind == "nginx":
            nginx = shutil.which("nginx")
            if nginx is None:
                raise SystemExit("nginx is not installed (apt-get install -y nginx), or use --upstream fake")
            conf = workdir / "nginx.conf"
            conf.write_text(
                (BENCH / "nginx.conf.template").read_text()
                .replace("@PREFIX@", str(workdir)).replace("@PORT@", str(self.port))
                .replace("@CHAT_BODY@", _nginx_string(CHAT_BODY))
                .replace("@STREAM_BODY@", _nginx_string(STREAM_BODY))
            )
            argv = [nginx, "-p", str(workdir), "-e", str(workdir / "nginx-error.log"), "-c", str(conf)]
            self.plain_base = f"http://127.0.0.1:{self.port}/plain/v1"
            self.stream_base = f"http://127.0.0.1:{self.port}/stream/v1"
        else:
            argv = [sys.executable, "-m", "sidecar", "fake-provider", "--port", str(self.port), "--chunks", "8"]
            self.plain_base = self.stream_base = f"http://127.0.0.1:{self.port}/v1"
        self.process = procs.start(argv, log, cpu)
        probe = (REQUEST_BODY % ("bench-plain", "")).encode()
        path = self.plain_base.split(str(self.port), 1)[1] + "/chat/completions"
        wait_until(lambda: http_status(self.port, "POST", path, probe) == 200, self.process, log)


def _nginx_string(text: str) -> str:
    """Text → the inside of a single-quoted nginx string (its parser knows \\n, \\\\ and \\')."""
    return text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")


def sidecar_config(upstream: Upstream, workdir: Path) -> Path:
    path = workdir / "sidecar.yaml"
    path.write_text(
        "model_list:\n"
        "  - model_name: bench-plain\n"
        f"    litellm_params: {{model: openai/bench-model, api_base: '{upstream.plain_base}', api_key: sk-bench}}\n"
        "  - model_name: bench-stream\n"
        f"    litellm_params: {{model: openai/bench-model, api_base: '{upstream.stream_base}', api_key: sk-bench}}\n"
    )
    return path


class TraceSink:
    """An OTLP/HTTP collector that only counts: ``POST /v1/traces`` → 200, body read and dropped."""

    def __init__(self) -> None:
        self.batches = 0
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like a real collector

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                sink.batches += 1
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def env(self) -> dict[str, str]:
        # Traces only: an endpoint alone would turn OTLP metrics export on too, which is measured apart.
        return {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{self.port}",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_TRACES_SAMPLER": "always_on",
                "OTEL_METRICS_EXPORTER": "none"}

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Floor:
    """``bench/bare.py`` in front of the upstream's plain route, pinned like the sidecar."""

    def __init__(self, procs: Processes, upstream_url: str, workdir: Path, cpu: int) -> None:
        self.procs = procs
        self.port = free_port()
        log = workdir / "bare.log"
        self.process = procs.start([sys.executable, str(BENCH / "bare.py"), upstream_url, str(self.port)], log, cpu)
        wait_until(lambda: http_status(self.port, "POST", "/v1/chat/completions",
                                       (REQUEST_BODY % ("bench-plain", "")).encode()) == 200, self.process, log)
        self.pid = self.process.pid

    def stop(self) -> None:
        self.procs.stop(self.process, timeout=10.0)


class Sidecar:
    def __init__(self, procs: Processes, config: Path, workdir: Path, cpu: int,
                 env: dict[str, str] | None = None) -> None:
        self.procs = procs
        self.port, self.admin_port = free_port(), free_port()
        log = workdir / "sidecar.log"
        argv = [sys.executable, "-m", "sidecar", "serve", "--config", str(config), "--port", str(self.port),
                "--admin-host", "127.0.0.1", "--admin-port", str(self.admin_port)]
        started = time.monotonic()
        self.process = procs.start(argv, log, cpu, env)
        wait_until(lambda: http_status(self.admin_port, "GET", "/readyz") == 200, self.process, log)
        self.ready_seconds = time.monotonic() - started
        self.pid = self.process.pid

    def stop(self) -> None:
        self.procs.stop(self.process, timeout=40.0)


# ---- wrk ---------------------------------------------------------------------------------------------

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()  # type: ignore[union-attr]
    return float(number) * UNITS[unit]


def run_wrk(url: str, script: str, model: str, connections: int, duration: float, cpu: int) -> dict[str, Any]:
    argv = ["wrk", "-t", "1", "-c", str(connections), "-d", f"{max(1, round(duration))}s", "--latency",
            "--timeout", "10s", "-s", str(BENCH / script), url]
    if shutil.which("taskset") and (os.cpu_count() or 1) > cpu:
        argv = ["taskset", "-c", str(cpu), *argv]
    env = {**os.environ, "BENCH_MODEL": model}
    out = subprocess.run(argv, capture_output=True, text=True, env=env, check=False, timeout=duration + 60)
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr or out.stdout}")
    text = out.stdout
    percentiles = {f"p{p}": _ms(v) for p, v in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)$", text, re.M)}
    total = re.search(r"(\d+) requests in ([\d.]+)(\w+)", text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    return {
        "requests": int(total.group(1)) if total else 0,
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),  # type: ignore[union-attr]
        **{k: round(v, 4) for k, v in percentiles.items()},
        "errors": (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, sockets.groups())) if sockets else 0),
    }


def measure(sidecar: Sidecar, url: str, script: str, model: str, conns: int, duration: float,
            cpu: int) -> dict[str, Any]:
    """One wrk run through the sidecar, with the sidecar's CPU time per answered request."""
    before = cpu_seconds(sidecar.pid)
    result = run_wrk(url, script, model, conns, duration, cpu)
    used = cpu_seconds(sidecar.pid) - before
    result["cpu_us_per_request"] = round(used / max(1, result["requests"]) * 1e6, 1)
    result["cpu_utilisation"] = round(used / duration, 3)
    return result


# ---- streaming time to first token -------------------------------------------------------------------


class RawClient:
    """A keep-alive HTTP/1.1 client on asyncio streams: the least client overhead for TTFT timing."""

    def __init__(self, port: int, path: str, body: bytes) -> None:
        self.port = port
        self.request = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()

    async def stream_once(self) -> tuple[float, float, int]:
        """(time to first ``data:`` byte, time to end of stream, data events) of one streaming request."""
        assert self.reader is not None and self.writer is not None
        started = time.perf_counter()
        self.writer.write(self.request)
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            buffer += await self._read()
        head, _, body = buffer.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status != 200:
            raise RuntimeError(f"stream answered {status}: {body[:300]!r}")
        headers = head.lower()
        chunked = b"transfer-encoding: chunked" in headers
        length = int(re.search(rb"content-length: (\d+)", headers).group(1)) if not chunked else 0  # type: ignore[union-attr]
        while b"data:" not in body:
            body += await self._read()
        first = time.perf_counter() - started
        while not (body.endswith(b"\r\n0\r\n\r\n") if chunked else len(body) >= length):
            body += await self._read()
        return first, time.perf_counter() - started, body.count(b"data: ") - body.count(b"data: [DONE]")

    async def _read(self) -> bytes:
        assert self.reader is not None
        data = await self.reader.read(65536)
        if not data:
            raise RuntimeError("the connection closed mid-answer")
        return data


async def measure_ttft(direct: RawClient, sidecar: RawClient, requests: int) -> dict[str, Any]:
    """Alternate direct and sidecar requests at concurrency 1, so drift hits both alike."""
    await direct.connect()
    await sidecar.connect()
    try:
        for _ in range(min(200, requests)):  # warm-up: pools, caches, branch predictors
            await direct.stream_once()
            await sidecar.stream_once()
        samples: dict[str, list[tuple[float, float, int]]] = {"direct": [], "sidecar": []}
        for _ in range(requests):
            samples["direct"].append(await direct.stream_once())
            samples["sidecar"].append(await sidecar.stream_once())
    finally:
        await direct.close()
        await sidecar.close()
    out: dict[str, Any] = {"requests": requests}
    for name, rows in samples.items():
        ttft = sorted(r[0] * 1e3 for r in rows)
        total = sum(r[1] for r in rows)
        out[name] = {"ttft_p50": round(_pct(ttft, 50), 4), "ttft_p90": round(_pct(ttft, 90), 4),
                     "ttft_p99": round(_pct(ttft, 99), 4), "events_per_stream": rows[-1][2],
                     "stream_ms_p50": round(statistics.median(r[1] * 1e3 for r in rows), 4),
                     "chunks_per_s_c1": round(sum(r[2] for r in rows) / total)}
    out["added_ttft_p50"] = round(out["sidecar"]["ttft_p50"] - out["direct"]["ttft_p50"], 4)
    return out


def _pct(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(len(values) * p / 100))]


# ---- the run -----------------------------------------------------------------------------------------


def bench(args: argparse.Namespace, procs: Processes, workdir: Path) -> dict[str, Any]:
    upstream = Upstream(procs, workdir, args.upstream, args.load_cpu)
    config = sidecar_config(upstream, workdir)
    ready = []
    for _ in range(args.ready_runs - 1):  # extra cold starts for a steadier ready time
        extra = Sidecar(procs, config, workdir, args.sidecar_cpu)
        ready.append(extra.ready_seconds)
        extra.stop()
    sidecar = Sidecar(procs, config, workdir, args.sidecar_cpu)
    ready.append(sidecar.ready_seconds)
    floor = None if args.no_floor else Floor(procs, upstream.plain_base + "/chat/completions", workdir,
                                              args.sidecar_cpu)
    sink = TraceSink() if args.tracing else None
    traced = None if sink is None else Sidecar(procs, config, workdir, args.sidecar_cpu, sink.env())
    time.sleep(1.0)
    result: dict[str, Any] = {
        "meta": _meta(args, upstream.kind),
        "ready_seconds": round(statistics.median(ready), 3), "ready_samples": [round(r, 3) for r in ready],
        "rss_idle_mib": round(rss_mib(sidecar.pid), 1),
    }
    side = f"http://127.0.0.1:{sidecar.port}/v1/chat/completions"
    kinds = [("plain", "post.lua", "bench-plain", upstream.plain_base)]
    if not args.no_stream:
        kinds.append(("stream", "stream.lua", "bench-stream", upstream.stream_base))
    for proxy in (sidecar, floor, traced):  # warm-up: connection pools, caches
        if proxy is not None:
            run_wrk(f"http://127.0.0.1:{proxy.port}/v1/chat/completions", "post.lua", "bench-plain", 8, 2,
                    args.load_cpu)
    for kind, script, model, base in kinds:
        rows = []
        for conns in args.concurrency:
            direct = run_wrk(base + "/chat/completions", script, model, conns, args.duration, args.load_cpu)
            through = measure(sidecar, side, script, model, conns, args.duration, args.load_cpu)
            row = {"concurrency": conns, "direct": direct, "sidecar": through,
                   "added_p50_ms": round(through["p50"] - direct["p50"], 4),
                   "added_p99_ms": round(through["p99"] - direct["p99"], 4)}
            for name, proxy in (("floor", floor), ("traced", traced)):
                if kind == "plain" and proxy is not None:
                    row[name] = measure(proxy, f"http://127.0.0.1:{proxy.port}/v1/chat/completions", script, model,
                                        conns, args.duration, args.load_cpu)
            rows.append(row)
            _progress(kind, rows[-1])
        result[kind] = rows
    if not args.no_stream:
        body = (REQUEST_BODY % ("bench-stream", ',"stream":true')).encode()
        stream_path = upstream.stream_base.split(str(upstream.port), 1)[1] + "/chat/completions"
        ttft = asyncio.run(measure_ttft(RawClient(upstream.port, stream_path, body),
                                        RawClient(sidecar.port, "/v1/chat/completions", body), args.ttft_requests))
        for row in result["stream"]:
            for name in ("direct", "sidecar"):
                row[name]["chunks_per_s"] = round(row[name]["rps"] * ttft[name]["events_per_stream"])
        result["ttft"] = ttft
    result["rss_after_load_mib"] = round(rss_mib(sidecar.pid), 1)
    sidecar.stop()
    if floor is not None:
        floor.stop()
    if traced is not None and sink is not None:
        result["traced_rss_after_load_mib"] = round(rss_mib(traced.pid), 1)
        traced.stop()
        result["trace_batches"] = sink.batches
        sink.stop()
    return result


def soak(args: argparse.Namespace, procs: Processes, workdir: Path) -> dict[str, Any]:
    upstream = Upstream(procs, workdir, args.upstream, args.load_cpu)
    sidecar = Sidecar(procs, sidecar_config(upstream, workdir), workdir, args.sidecar_cpu)
    time.sleep(1.0)
    side = f"http://127.0.0.1:{sidecar.port}/v1/chat/completions"
    samples = [{"requests": 0, "rss_mib": round(rss_mib(sidecar.pid), 1), "seconds": 0.0}]
    started, done, rate, errors = time.monotonic(), 0, 2000.0, 0
    while done < args.soak:
        seconds = min(30.0, max(1.0, (args.soak - done) / rate))
        run = run_wrk(side, "post.lua", "bench-plain", args.soak_concurrency, seconds, args.load_cpu)
        done += run["requests"]
        errors += run["errors"]
        rate = max(100.0, run["rps"])
        samples.append({"requests": done, "rss_mib": round(rss_mib(sidecar.pid), 1),
                        "seconds": round(time.monotonic() - started, 1)})
        print(f"  soak: {done:>10,} requests  RSS {samples[-1]['rss_mib']:.1f} MiB  ({run['rps']:,.0f} req/s)",
              flush=True)
    warm = samples[1]["rss_mib"]
    result = {"meta": _meta(args, upstream.kind), "requests": done, "errors": errors,
              "rss_start_mib": samples[0]["rss_mib"], "rss_warm_mib": warm, "rss_end_mib": samples[-1]["rss_mib"],
              "growth_from_warm_pct": round((samples[-1]["rss_mib"] - warm) / warm * 100, 2),
              "samples": samples}
    sidecar.stop()
    return result


def _meta(args: argparse.Namespace, upstream: str) -> dict[str, Any]:
    commit = os.environ.get("BENCH_COMMIT") or subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT, check=False).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "sidecar"], capture_output=True, text=True,
                           cwd=ROOT, check=False).stdout.strip()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    return {"when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "commit": commit + ("+" if dirty else ""),
            "upstream": upstream, "duration_s": args.duration, "python": platform.python_version(),
            "cpu": cpu, "cpus": os.cpu_count(), "sidecar_cpu": args.sidecar_cpu, "load_cpu": args.load_cpu,
            "tracing_rows": bool(getattr(args, "tracing", False))}


def _progress(kind: str, row: dict[str, Any]) -> None:
    d, s = row["direct"], row["sidecar"]
    line = (f"  {kind:6} c={row['concurrency']:<3} direct {d['rps']:>9,.0f} req/s p50 {d['p50']:.3f} ms | "
            f"sidecar {s['rps']:>8,.0f} req/s p50 {s['p50']:.3f} p99 {s['p99']:.3f} ms, "
            f"{s['cpu_us_per_request']:.0f} µs CPU/req")
    for name in ("floor", "traced"):
        if name in row:
            line += f" | {name} {row[name]['rps']:,.0f} req/s, {row[name]['cpu_us_per_request']:.0f} µs CPU/req"
    print(line, flush=True)


def render(result: dict[str, Any]) -> str:
    meta = result["meta"]
    lines = [f"llm-sidecar bench — commit {meta['commit']}, upstream {meta['upstream']}, {meta['duration_s']:g} s "
             f"per point, sidecar on CPU {meta['sidecar_cpu']}, load on CPU {meta['load_cpu']} ({meta['cpu']}), "
             "tracing off (a traced sidecar's rows are marked)", ""]
    for kind, title in (("plain", "chat.completion"), ("stream", "streaming chat.completion")):
        if kind not in result:
            continue
        lines += [f"{title}: requests/s, latency ms (wrk), sidecar CPU per request",
                  "| conc | direct req/s | sidecar req/s | direct p50 / p90 / p99 | sidecar p50 / p90 / p99 "
                  "| added p50 | sidecar CPU/req | errors |" + (" chunks/s (direct / sidecar) |" if kind == "stream"
                                                                   else ""),
                  "|---:|---:|---:|---|---|---:|---:|---:|" + ("---:|" if kind == "stream" else "")]
        if kind == "plain" and "floor" in result[kind][0]:
            lines[-3] += " (floor: bench/bare.py, a bare aiohttp pass-through on the same core)"
        for row in result[kind]:
            d, s = row["direct"], row["sidecar"]
            line = (f"| {row['concurrency']} | {d['rps']:,.0f} | {s['rps']:,.0f} | "
                    f"{d['p50']:.3f} / {d['p90']:.3f} / {d['p99']:.3f} | {s['p50']:.3f} / {s['p90']:.3f} / "
                    f"{s['p99']:.3f} | {row['added_p50_ms']:+.3f} | {s['cpu_us_per_request']:.0f} µs | "
                    f"{d['errors'] + s['errors']} |")
            if kind == "stream":
                line += f" {d['chunks_per_s']:,} / {s['chunks_per_s']:,} |"
            lines.append(line)
        for name, label in (("floor", "floor"), ("traced", "sidecar, tracing on")):
            for row in result[kind]:
                if name in row:
                    f = row[name]
                    lines.append(f"| {row['concurrency']} ({label}) | | {f['rps']:,.0f} | | {f['p50']:.3f} / "
                                 f"{f['p90']:.3f} / {f['p99']:.3f} | {f['p50'] - row['direct']['p50']:+.3f} | "
                                 f"{f['cpu_us_per_request']:.0f} µs | {f['errors']} |")
        lines.append("")
    if "ttft" in result:
        t = result["ttft"]
        lines.append(f"streaming TTFT at c=1 ({t['requests']} each, alternating): direct p50 "
                     f"{t['direct']['ttft_p50']:.3f} ms, sidecar p50 {t['sidecar']['ttft_p50']:.3f} / p99 "
                     f"{t['sidecar']['ttft_p99']:.3f} ms → added {t['added_ttft_p50']:+.3f} ms; "
                     f"{t['sidecar']['events_per_stream']} events per stream")
    lines.append(f"ready after start: {result['ready_seconds']:.3f} s (median of {result['ready_samples']}); "
                 f"RSS idle {result['rss_idle_mib']:.1f} MiB → after load {result['rss_after_load_mib']:.1f} MiB")
    return "\n".join(lines)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run (default 10)")
    parser.add_argument("--concurrency", default="1,8,64", help="comma-separated connection counts")
    parser.add_argument("--upstream", choices=("auto", "nginx", "fake"), default="auto")
    parser.add_argument("--no-stream", action="store_true", help="skip the streaming runs")
    parser.add_argument("--ttft-requests", type=int, default=2000, help="streaming requests per side for TTFT")
    parser.add_argument("--ready-runs", type=int, default=3, help="cold starts timed for 'ready after start'")
    parser.add_argument("--sidecar-cpu", type=int, default=0)
    parser.add_argument("--load-cpu", type=int, default=1, help="core for wrk, the upstream and this driver")
    parser.add_argument("--soak", type=int, nargs="?", const=1_000_000, default=None, metavar="N",
                        help="soak mode: send N requests (default 1,000,000) and report RSS growth")
    parser.add_argument("--soak-concurrency", type=int, default=8)
    parser.add_argument("--tracing", action="store_true",
                        help="also measure plain requests with tracing on (always-on sampling, OTLP/HTTP to a sink)")
    parser.add_argument("--no-floor", action="store_true", help="skip the bare aiohttp pass-through baseline")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where the JSON goes (default bench-results/)")
    args = parser.parse_args(argv)
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the run like Ctrl-C: every child is stopped on the way out


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install -y wrk (make bench does it)", file=sys.stderr)
        return 2
    if (os.cpu_count() or 1) > args.load_cpu:
        os.sched_setaffinity(0, {args.load_cpu})  # keep this driver off the sidecar's core
    signal.signal(signal.SIGTERM, _interrupt)
    procs = Processes()
    workdir = Path(tempfile.mkdtemp(prefix="sidecar-bench-"))
    try:
        result = soak(args, procs, workdir) if args.soak else bench(args, procs, workdir)
    except KeyboardInterrupt:
        print("interrupted; stopping everything", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"bench failed: {exc}\n(logs kept in {workdir})", file=sys.stderr)
        return 1
    finally:
        procs.stop_all()
    shutil.rmtree(workdir, ignore_errors=True)
    args.output.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.output / f"{'soak' if args.soak else 'bench'}-{stamp}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    if args.soak:
        print(f"soak: {result['requests']:,} requests, {result['errors']} errors; RSS start "
              f"{result['rss_start_mib']} MiB, warm {result['rss_warm_mib']} MiB, end {result['rss_end_mib']} MiB "
              f"({result['growth_from_warm_pct']:+.2f}% from warm)")
    else:
        print("\n" + render(result))
    print(f"\nresults: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
