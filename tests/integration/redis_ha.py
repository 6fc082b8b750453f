"""Highly available Redis for the tests: a 3-node Redis Cluster (``redis-cli --cluster create``) and a
Sentinel setup (a primary, a replica and one sentinel — ``redis-server --sentinel``, the same binary Debian's
redis-sentinel package runs), all real processes on free ports."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis

from tests.integration.procs import RedisServer, free_port


def _server(workdir: Path, name: str, *args: str) -> subprocess.Popen[bytes]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed: run `make test` (it installs it)")
    log = (workdir / f"{name}.log").open("wb")
    return subprocess.Popen([exe, *args], stdout=log, stderr=subprocess.STDOUT)


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too (and so at most 55535)."""
    import socket

    while True:
        port = free_port()
        if port > 55535:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def _until(check: object, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():  # type: ignore[operator]
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready in {timeout:g} s")
        time.sleep(0.1)


class RedisClusterProcs:
    """Three cluster-enabled masters joined by ``redis-cli --cluster create`` (no replicas)."""

    def __init__(self, workdir: Path, name: str = "cluster") -> None:
        self.ports = [_cluster_port() for _ in range(3)]
        folder = workdir / f"{name}-{self.ports[0]}"
        folder.mkdir()
        self.processes = [
            _server(folder, f"node-{port}", "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                    "--cluster-config-file", f"nodes-{port}.conf", "--save", "", "--appendonly", "no",
                    "--dir", str(folder))
            for port in self.ports]
        for port in self.ports:
            _until(lambda p=port: redis.Redis(port=p, socket_timeout=1).ping(), f"cluster node {port}")
        subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                        "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=60)
        _until(lambda: all(redis.Redis(port=p, socket_timeout=1).cluster("info")["cluster_state"] == "ok"
                           for p in self.ports), "the cluster")

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def keys_per_node(self) -> list[int]:
        return [int(redis.Redis(port=p, socket_timeout=2).dbsize()) for p in self.ports]

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait(10)


class SentinelProcs:
    """A primary, its replica and one sentinel watching them as ``mymaster`` (quorum 1, fast failover)."""

    def __init__(self, workdir: Path, name: str = "sentinel") -> None:
        self.primary = RedisServer(workdir, f"{name}-primary")
        self.replica_port = free_port()
        self.replica = _server(workdir, f"{name}-replica", "--port", str(self.replica_port), "--bind", "127.0.0.1",
                               "--replicaof", "127.0.0.1", str(self.primary.port), "--save", "",
                               "--appendonly", "no", "--dir", str(workdir))
        _until(lambda: redis.Redis(port=self.replica_port, socket_timeout=1).info("replication")
               ["master_link_status"] == "up", "the replica")
        self.port = free_port()
        conf = workdir / f"{name}-{self.port}.conf"
        conf.write_text(f"port {self.port}\nbind 127.0.0.1\ndir {workdir}\n"
                        f"sentinel monitor mymaster 127.0.0.1 {self.primary.port} 1\n"
                        "sentinel down-after-milliseconds mymaster 1000\n"
                        "sentinel failover-timeout mymaster 5000\n")
        self.sentinel = _server(workdir, f"{name}-sentinel", str(conf), "--sentinel")
        _until(lambda: self.sentinel_client().sentinel_masters().get("mymaster"), "the sentinel")
        _until(lambda: int(self.sentinel_client().sentinel_masters()["mymaster"]["num-slaves"]) >= 1,
               "the sentinel's view of the replica")

    def sentinel_client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=1)

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/mymaster"

    def primary_port(self) -> int:
        return int(self.sentinel_client().sentinel_get_master_addr_by_name("mymaster")[1])

    def fail_primary(self) -> None:
        """Kill the primary; return once the sentinel has promoted the replica."""
        self.primary.stop()
        _until(lambda: self.primary_port() == self.replica_port, "the failover", timeout=30)
        _until(lambda: redis.Redis(port=self.replica_port, socket_timeout=1).info("replication")["role"]
               == "master", "the promoted replica")

    def stop(self) -> None:
        for process in (self.sentinel, self.replica):
            if process.poll() is None:
                process.kill()
                process.wait(10)
        self.primary.stop()
