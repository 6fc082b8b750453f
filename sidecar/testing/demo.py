"""``llm-sidecar demo``: the sidecar in front of two local fake providers, one of them failing.

Starts a primary that answers 429 to half its requests and a healthy backup, then the real sidecar
process, sends a few hundred requests through it and prints what the app saw. No key, no network.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import BinaryIO

import aiohttp
import orjson
import yaml

ERROR_RATE = 0.5
LATENCY = 0.04  # each fake answer takes this long, so the run spans several breaker cooldowns


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _start(args: list[str], ready_url: str, log: BinaryIO) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "sidecar", *args,
                                                   stdout=log, stderr=asyncio.subprocess.STDOUT)
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            if process.returncode is not None:
                raise RuntimeError(f"{args[0]} exited early; see {log.name}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(ready_url) as response:
                    if response.status == 200:
                        return process
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{args[0]} did not become ready; see {log.name}")


def _config(primary: int, backup: int) -> dict[str, object]:
    def deployment(name: str, port: int, order: int) -> dict[str, object]:
        return {"model_name": "gpt-4o", "litellm_params": {
            "model": f"openai/{name}", "api_base": f"http://127.0.0.1:{port}/v1", "api_key": "demo-key",
            "order": order}}

    return {
        "model_list": [deployment("primary-gpt-4o", primary, 1), deployment("backup-gpt-4o", backup, 2)],
        "router_settings": {"timeout": 10, "num_retries": 1, "allowed_fails": 3, "cooldown_time": 0.25},
        "sidecar_settings": {"log_level": "warning"},
    }


async def _send(session: aiohttp.ClientSession, url: str, i: int) -> tuple[int, str, int, float]:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": f"request {i}"}]}
    started = time.perf_counter()
    async with session.post(url, data=orjson.dumps(body), headers={"content-type": "application/json"}) as r:
        await r.read()
        elapsed = time.perf_counter() - started
        return r.status, r.headers.get("x-sidecar-deployment", "-"), int(r.headers.get("x-sidecar-attempts", 0)), \
            elapsed


async def _load(url: str, total: int, concurrency: int) -> list[tuple[int, str, int, float]]:
    results: list[tuple[int, str, int, float]] = []
    queue = iter(range(total))

    async def worker(session: aiohttp.ClientSession) -> None:
        for i in queue:
            results.append(await _send(session, url, i))

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return results


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def _report(results: list[tuple[int, str, int, float]], primary_stats: dict[str, object], log: str) -> bool:
    ok = [r for r in results if r[0] == 200]
    by_deployment = Counter(r[1] for r in ok)
    failovers = sum(1 for r in ok if r[2] > 1)
    latencies = [r[3] * 1000 for r in results]
    print("\nllm-sidecar demo: primary fails 50% with 429, backup healthy\n")
    print(f"  requests sent          {len(results)}")
    print(f"  succeeded              {len(ok)} ({100.0 * len(ok) / max(1, len(results)):.1f}%)")
    print(f"  errors seen by the app {len(results) - len(ok)}  {dict(Counter(r[0] for r in results if r[0] != 200))}")
    for deployment, n in sorted(by_deployment.items()):
        print(f"  answered by {deployment:<22} {n}")
    print(f"  answered after failover {failovers}")
    print(f"  primary: saw {primary_stats['requests']} requests, injected {primary_stats['errors_injected']} 429s")
    print(f"  latency p50 {_percentile(latencies, 0.5):.1f} ms, p99 {_percentile(latencies, 0.99):.1f} ms")
    transitions = Counter(line.split("breaker ", 1)[1].split(" (")[0] for line in log.splitlines()
                          if "breaker " in line and " -> " in line)
    print("  primary's circuit breaker:")
    for transition, n in sorted(transitions.items()):
        print(f"    {transition:<48} x{n}")
    print()
    return len(ok) == len(results)


async def run_demo(total: int = 300, concurrency: int = 8) -> int:
    workdir, ports = _prepare()
    config_path = workdir / "config.yaml"
    logs = {name: (workdir / f"{name}.log").open("wb") for name in ("primary", "backup", "sidecar")}
    processes = []
    try:
        processes.append(await _start(
            ["fake-provider", "--port", str(ports["primary"]), "--name", "primary", "--error-rate",
             str(ERROR_RATE), "--error-status", "429", "--seed", "7", "--latency", str(LATENCY)],
            f"http://127.0.0.1:{ports['primary']}/_control", logs["primary"]))
        processes.append(await _start(["fake-provider", "--port", str(ports["backup"]), "--name", "backup",
                                       "--latency", str(LATENCY)],
                                      f"http://127.0.0.1:{ports['backup']}/_control", logs["backup"]))
        processes.append(await _start(
            ["serve", "--config", str(config_path), "--port", str(ports["api"]), "--admin-host", "127.0.0.1",
             "--admin-port", str(ports["admin"])], f"http://127.0.0.1:{ports['admin']}/readyz",
            logs["sidecar"]))
        results = await _load(f"http://127.0.0.1:{ports['api']}/v1/chat/completions", total, concurrency)
        async with aiohttp.ClientSession() as session, session.get(
                f"http://127.0.0.1:{ports['primary']}/_control") as r:
            primary_stats = (await r.json())["stats"]
        for log in logs.values():
            log.flush()
        all_ok = _report(results, primary_stats, (workdir / "sidecar.log").read_text())
        print(f"  logs and config in {workdir}")
        return 0 if all_ok else 1
    finally:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
        for process in processes:
            await process.wait()
        for log in logs.values():
            log.close()


def _prepare() -> tuple[Path, dict[str, int]]:
    """A work folder with the config in it, and free ports for the four servers."""
    workdir = Path(tempfile.mkdtemp(prefix="llm-sidecar-demo-"))
    ports = {name: _free_port() for name in ("primary", "backup", "api", "admin")}
    (workdir / "config.yaml").write_text(yaml.safe_dump(_config(ports["primary"], ports["backup"])))
    return workdir, ports
