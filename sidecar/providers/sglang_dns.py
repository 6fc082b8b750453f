"""DNS discovery of SGLang replicas: every address behind a Kubernetes headless Service (dnspython, asyncio).

``replicas: dns`` resolves the ``api_base`` host:

- a plain name (``sglang.gpu.svc.cluster.local``): its A and AAAA records, each with the ``api_base`` port;
- an SRV name (``_http._tcp.sglang.gpu.svc.cluster.local``, the record Kubernetes publishes for a Service's
  named port): its targets, each with the port the record names, then the targets' A/AAAA records.

dnspython's asyncio resolver never blocks the loop (no getaddrinfo thread), has a per-lookup time limit and
reads the pod's ``/etc/resolv.conf`` (search domains, ndots) as glibc does; ``replica_dns_server`` points it at
one server instead. Each lookup asks the server again (no cache here): the refresh interval is the cache.
"""

from __future__ import annotations

import asyncio

import dns.asyncresolver
import dns.resolver


class Resolver:
    """The (address, port) pairs behind ``host``; ``resolve`` raises when the name has none."""

    def __init__(self, host: str, port: int, *, timeout: float, server: str | None = None) -> None:
        self.host = host
        self.port = port
        self.resolver = dns.asyncresolver.Resolver(configure=server is None)
        if server is not None:
            address, _, server_port = server.rpartition(":") if server.count(":") == 1 else (server, "", "")
            self.resolver.nameservers = [address]
            self.resolver.port = int(server_port) if server_port else 53
        self.resolver.lifetime = timeout
        self.resolver.timeout = timeout
        self.resolver.cache = None

    async def resolve(self) -> list[tuple[str, int]]:
        if self.host.startswith("_"):
            return await self._srv()
        return [(ip, self.port) for ip in await self._addresses(self.host)]

    async def _srv(self) -> list[tuple[str, int]]:
        answer = await self.resolver.resolve(self.host, "SRV")
        records = [(str(r.target).rstrip("."), int(r.port)) for r in answer]
        found = await asyncio.gather(*(self._addresses(target) for target, _ in records), return_exceptions=True)
        pairs = [(ip, port) for (_, port), ips in zip(records, found, strict=True)
                 if not isinstance(ips, BaseException) for ip in ips]
        if not pairs:
            raise dns.resolver.NoAnswer
        return pairs

    async def _addresses(self, name: str) -> list[str]:
        """A and AAAA together; a name with only one family is fine, one with neither is an error."""
        results = await asyncio.gather(*(self.resolver.resolve(name, kind) for kind in ("A", "AAAA")),
                                       return_exceptions=True)
        addresses = [r.address for result in results if not isinstance(result, BaseException) for r in result]
        if not addresses:
            errors = [r for r in results if isinstance(r, BaseException)]
            raise errors[0] if errors else dns.resolver.NoAnswer
        return addresses

    def close(self) -> None:
        """Nothing to release (each lookup opens and closes its own socket); kept for symmetry."""

