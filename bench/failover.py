#!/usr/bin/env python3
"""`make bench-failover`: what failing over costs a request, measured on the classic exercise.

The primary answers 429 to half of its requests (zero latency), the backup is healthy (zero latency); the
sidecar's group tries the primary first (``order: 1``), opens its breaker after 3 consecutive failures and
lets it back after a 1 s cooldown. The driver sends N requests at concurrency C and reports:

* the success rate seen by the app;
* latency p50 / p99 of requests answered at the first attempt, of requests that failed over, and of the same
  request sent straight to the backup (no sidecar) — the extra latency of a failover is the difference.

    python bench/failover.py [--requests 3000] [--concurrency 8]

Numbers only; nothing here is asserted. Standard library, aiohttp and the project's own fake provider.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as harness

BODY = json.dumps({"model": "classic", "messages": [{"role": "user", "content": "Say hello."}]}).encode()
HEADERS = {"content-type": "application/json"}


def config(primary: int, backup: int, cooldown: float) -> str:
    def entry(name: str, port: int, order: int) -> str:
        return (f"  - model_name: classic\n    litellm_params: {{model: openai/{name}, "
                f"api_base: 'http://127.0.0.1:{port}/v1', api_key: sk-bench, order: {order}}}\n")

    return ("model_list:\n" + entry("primary", primary, 1) + entry("backup", backup, 2)
            + f"router_settings: {{allowed_fails: 3, cooldown_time: {cooldown}, num_retries: 2, timeout: 30}}\n"
            + "sidecar_settings: {log_level: warning}\n")


async def load(url: str, total: int, concurrency: int) -> list[tuple[int, int, float]]:
    """(status, attempts, seconds) per request."""
    results: list[tuple[int, int, float]] = []
    numbers = iter(range(total))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def worker() -> None:
            for _ in numbers:
                started = time.perf_counter()
                async with session.post(url, data=BODY, headers=HEADERS) as response:
                    await response.read()
                    attempts = int(response.headers.get("x-sidecar-attempts", "1"))
                    results.append((response.status, attempts, time.perf_counter() - started))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


def percentiles(seconds: list[float]) -> tuple[float, float]:
    if len(seconds) < 2:
        return (seconds[0] * 1000, seconds[0] * 1000) if seconds else (0.0, 0.0)
    cuts = statistics.quantiles(seconds, n=100, method="inclusive")
    return statistics.median(seconds) * 1000, cuts[98] * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--cooldown", type=float, default=1.0,
                        help="breaker cooldown in seconds; shorter means more failovers in the sample")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="llm-sidecar-failover-"))
    procs = harness.Processes()
    try:
        ports = {name: harness.free_port() for name in ("primary", "backup")}
        for name, extra in (("primary", ["--error-rate", "0.5", "--error-status", "429", "--seed", "7"]),
                            ("backup", [])):
            child = procs.start([sys.executable, "-m", "sidecar", "fake-provider", "--port", str(ports[name]),
                                 "--name", name, *extra], workdir / f"{name}.log")
            harness.wait_until(lambda p=ports[name]: harness.http_status(p, "GET", "/_control") == 200, child,
                               workdir / f"{name}.log")
        path = workdir / "sidecar.yaml"
        path.write_text(config(ports["primary"], ports["backup"], args.cooldown))
        sidecar = harness.Sidecar(procs, path, workdir, None)  # type: ignore[arg-type]
        via = asyncio.run(load(f"http://127.0.0.1:{sidecar.port}/v1/chat/completions", args.requests,
                               args.concurrency))
        direct = asyncio.run(load(f"http://127.0.0.1:{ports['backup']}/v1/chat/completions", args.requests,
                                  args.concurrency))
    finally:
        procs.stop_all()
    ok = [r for r in via if r[0] == 200]
    first = [r[2] for r in ok if r[1] == 1]
    failed_over = [r[2] for r in ok if r[1] > 1]
    rows = {"direct to the backup": percentiles([r[2] for r in direct]),
            "sidecar, first attempt": percentiles(first),
            "sidecar, after failover": percentiles(failed_over)}
    print(f"\nclassic exercise: primary 50% 429, breaker after 3 consecutive failures, {args.cooldown:g} s "
          f"cooldown; backup healthy; zero-latency fakes; {len(via)} requests at concurrency {args.concurrency}")
    print(f"success rate seen by the app: {100.0 * len(ok) / max(1, len(via)):.2f}% "
          f"({len(failed_over)} answered after a failover)\n")
    print("| path | requests | p50 ms | p99 ms |\n|---|---:|---:|---:|")
    counts = {"direct to the backup": len(direct), "sidecar, first attempt": len(first),
              "sidecar, after failover": len(failed_over)}
    for name, (p50, p99) in rows.items():
        print(f"| {name} | {counts[name]} | {p50:.2f} | {p99:.2f} |")
    extra = rows["sidecar, after failover"]
    base = rows["direct to the backup"]
    print(f"\nextra latency of a failed-over request vs a direct call: p50 +{extra[0] - base[0]:.2f} ms, "
          f"p99 +{extra[1] - base[1]:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
