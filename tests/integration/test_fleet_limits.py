"""Fleet-wide rate limits with a real Redis: two sidecars share one deployment's rpm, counted at the fake
upstream; Redis killed mid-run costs no request (each pod falls back to its share) and leasing resumes
when it is back. Requests past the limit go to an unlimited second deployment (``order``), so none fail."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import openai
import requests

from tests.integration.procs import APP_KEY, FakeProvider, RedisServer, Sidecar, deployment

RPM = 600  # burst: a minute's worth, then 10 a second


def config(primary: FakeProvider, backup: FakeProvider, redis_server: RedisServer, namespace: str) -> dict[str, Any]:
    limited = deployment("f", primary, rpm=RPM, order=1)
    limited["model_info"] = {"id": "limited"}
    spare = deployment("f", backup, order=2)
    return {"model_list": [limited, spare],
            "router_settings": {"timeout": 10, "num_retries": 0},
            "sidecar_settings": {"redis": {"url": redis_server.url, "namespace": namespace},
                                 "fleet_rate_limits": {"deployments": ["limited"], "expected_pods": 2}}}


async def burst(sidecars: list[Sidecar], per_sidecar: int) -> list[Any]:
    clients = [openai.AsyncOpenAI(base_url=s.base_url, api_key=APP_KEY, max_retries=0, timeout=20)
               for s in sidecars]
    gate = asyncio.Semaphore(16)

    async def one(client: openai.AsyncOpenAI, i: int) -> Any:
        async with gate:
            return await client.chat.completions.create(model="f", messages=[{"role": "user", "content": f"q{i}"}])

    try:
        return await asyncio.gather(*(one(c, i) for c in clients for i in range(per_sidecar)),
                                    return_exceptions=True)
    finally:
        for c in clients:
            await c.close()


def metric(sidecar: Sidecar, name: str) -> float:
    text = requests.get(f"{sidecar.admin_url}/metrics", timeout=5).text
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    assert match, name
    return float(match.group(1))


def test_two_sidecars_share_a_fleet_rpm_and_survive_redis_going_away(
        workdir: Path, primary: FakeProvider, backup: FakeProvider) -> None:
    server = RedisServer(workdir, "redis-fleet")
    namespace = f"fleet{time.time_ns()}"
    sidecars = [Sidecar(config(primary, backup, server, namespace), workdir, f"fleet-{i}") for i in range(2)]
    try:
        started = time.monotonic()
        results = asyncio.run(burst(sidecars, 500))
        elapsed = time.monotonic() - started
        assert not [r for r in results if isinstance(r, Exception)]
        upstream = primary.stats()["requests"]
        assert upstream <= RPM + RPM / 60 * elapsed  # the fleet's limit: a minute's burst and the refill
        assert upstream >= RPM * 0.8  # and the limit was used, not wasted in unspent leases
        leases = sum(metric(s, "llm_sidecar_fleet_leases_total") for s in sidecars)
        print(f"fleet: {upstream} upstream of 1000 requests in {elapsed:.1f} s, {leases:.0f} leases "
              f"({leases / 1000 * 1000:.0f} per 1,000 requests)")
        assert leases <= 1000 / 10  # batches, not a Redis call per request

        server.stop()  # Redis goes away mid-run: each pod's share (300 a minute) decides, no request fails
        for _ in range(5):  # a pod that still holds leased capacity asks Redis (and falls back) only once it ran low
            results = asyncio.run(burst(sidecars, 100))
            assert not [r for r in results if isinstance(r, Exception)]
            if all(metric(s, "llm_sidecar_fleet_fallbacks_total") >= 1 for s in sidecars):
                break
        assert all(metric(s, "llm_sidecar_fleet_fallbacks_total") >= 1 for s in sidecars)

        server = RedisServer(workdir, "redis-fleet-back", port=server.port)  # back where the pods expect it
        time.sleep(5.5)  # the gate's backoff: then one probe lease, and leasing again
        leases_before = sum(metric(s, "llm_sidecar_fleet_leases_total") for s in sidecars)
        results = asyncio.run(burst(sidecars, 50))
        assert not [r for r in results if isinstance(r, Exception)]
        assert sum(metric(s, "llm_sidecar_fleet_leases_total") for s in sidecars) > leases_before
        assert server.keys() >= 1  # the fleet bucket is in the new Redis
        logs = sidecars[0].logs()
        assert "redis is back for the fleet rate limits" in logs
    finally:
        for s in sidecars:
            s.stop()
        server.stop()
