"""Replicas discovered by DNS (``replicas: dns``) from a real DNS server on loopback whose records change."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import time
from collections.abc import Iterator
from pathlib import Path

import dns.exception as dns_exception
import openai
import pytest

from sidecar.providers.sglang_dns import Resolver
from tests.integration.dns_server import DnsServer
from tests.integration.procs import APP_KEY, Sidecar
from tests.integration.sglang_procs import SGLangReplicas, free_ports

REFRESH = 0.3
HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")


@pytest.fixture(scope="module")
def dns(workdir: Path) -> Iterator[DnsServer]:
    server = DnsServer(workdir, srv=[("_sglang._tcp.pool.test", "r1.pool.test", 30001),
                                     ("_sglang._tcp.pool.test", "r2.pool.test", 30002)])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def replicas(workdir: Path) -> Iterator[list[SGLangReplicas]]:
    port = free_ports(1)
    procs = [SGLangReplicas(workdir, 1, name=f"dns-{i}", host=host, port=port) for i, host in enumerate(HOSTS)]
    yield procs
    for proc in procs:
        proc.stop()


def _used(sidecar: Sidecar, conversations: range) -> collections.Counter[str]:
    client = openai.OpenAI(base_url=sidecar.base_url, api_key=APP_KEY, max_retries=0, timeout=20)
    return collections.Counter(client.chat.completions.create(model="local", messages=[
        {"role": "user", "content": f"conversation {n}"}]).choices[0].message.content.split(":")[0]
        for n in conversations)


def test_replicas_come_and_go_with_the_dns_records(workdir: Path, dns: DnsServer,
                                                  replicas: list[SGLangReplicas]) -> None:
    dns.set_records([(HOSTS[0], "pool.test"), (HOSTS[1], "pool.test")])
    port = replicas[0].port
    sidecar = Sidecar({"model_list": [{"model_name": "local", "litellm_params": {
        "model": "sglang/my-model", "api_base": f"http://pool.test:{port}/v1", "replicas": "dns",
        "replica_refresh_seconds": REFRESH, "replica_dns_server": dns.address, "replica_poll_seconds": 0.2}}],
        "router_settings": {"timeout": 20}}, workdir, "sglang-dns")
    try:
        time.sleep(REFRESH * 3)
        assert set(_used(sidecar, range(20))) == {"dns-0", "dns-1"}
        # a request already on dns-0 when it leaves the records finishes there
        replicas[0].set(0, decode_per_token=0.25)
        client = openai.OpenAI(base_url=sidecar.base_url, api_key=APP_KEY, max_retries=0, timeout=20)
        home = next(n for n in range(100) if _used(sidecar, range(n, n + 1)).get("dns-0"))
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            slow = pool.submit(client.chat.completions.create, model="local",
                               messages=[{"role": "user", "content": f"conversation {home}"}])
            time.sleep(0.3)
            dns.set_records([(HOSTS[1], "pool.test"), (HOSTS[2], "pool.test")])  # dns-0 goes, dns-2 comes
            time.sleep(REFRESH * 4)
            assert slow.result().choices[0].message.content.startswith("dns-0:")
        used = _used(sidecar, range(100, 130))
        assert set(used) == {"dns-1", "dns-2"}, used
        assert "sglang replicas of sglang/my-model: 2 (+1 -1)" in sidecar.logs()
        pool_lines = [line for line in sidecar.logs().splitlines() if "sglang replica" in line]
        assert pool_lines and not any("127.0.0." in line for line in pool_lines)  # addresses stay out of logs
    finally:
        sidecar.stop()


def test_srv_records_name_each_replicas_port(dns: DnsServer) -> None:
    dns.set_records([("127.0.0.1", "r1.pool.test"), ("127.0.0.1", "r2.pool.test")])
    time.sleep(0.2)
    resolver = Resolver("_sglang._tcp.pool.test", 80, timeout=2, server=dns.address)
    assert sorted(asyncio.run(resolver.resolve())) == [("127.0.0.1", 30001), ("127.0.0.1", 30002)]
    plain = Resolver("r1.pool.test", 8080, timeout=2, server=dns.address)
    assert asyncio.run(plain.resolve()) == [("127.0.0.1", 8080)]
    missing = Resolver("nowhere.pool.test", 80, timeout=2, server=dns.address)
    with pytest.raises(dns_exception.DNSException):  # the pool keeps its last set (sglang_poll)
        asyncio.run(missing.resolve())
