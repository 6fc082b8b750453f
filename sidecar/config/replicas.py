"""An ``sglang/`` deployment's replicas: a static list of base URLs, or ``dns`` (every address behind the
``api_base`` host, re-resolved on a timer), with the pool's polling and spill-over settings.

    litellm_params:
      model: sglang/my-model
      replicas: [http://10.0.0.5:30000/v1, http://10.0.0.6:30000/v1]   # or: replicas: dns (with api_base)
      replica_refresh_seconds: 10       # dns: how often the name is resolved again
      replica_dns_server: 10.96.0.10:53 # dns: ask this server (default: the pod's /etc/resolv.conf)
      replica_poll_seconds: 2           # each replica's /health and load poll (jittered ±20%)
      replica_poll_timeout_seconds: 3   # one poll's time limit (SGLang's /health takes about 1 s)
      replica_health_path: /health      # or /ready: a flag check that generates nothing (large fleets)
      max_queue_per_replica: 8          # above this (polled waiting + this pod's new in-flight): spill over
      replica_load_factor: 1.25         # a replica above factor x the mean load is passed over on the ring
      replica_keep_factor: 1.25         # a conversation leaves its replica above this x the mean (default: load)
      replica_spread: 1                 # a ring key's home set: the lighter of its first k replicas first
      replica_key: conversation         # or shared: a long system prompt (not the first user turn) is the key
      replica_share: redis              # the fleet agrees, through Redis, where each long shared prefix lives
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from sidecar.config.reader import Section


@dataclass(frozen=True, slots=True)
class ReplicaSettings:
    """Static ``urls`` (base URLs with their ``/v1``), or ``dns`` discovery of the ``api_base`` host."""

    urls: tuple[str, ...] = ()
    dns: bool = False
    refresh_seconds: float = 10.0
    poll_seconds: float = 2.0
    poll_timeout: float = 3.0
    max_queue: int = 8
    load_factor: float = 1.25
    dns_server: str | None = None  # "address[:port]"; None: the system's resolv.conf
    key: str = "conversation"  # or "shared": a long system prompt is the ring key (policy.ring.prefix_keys)
    health_path: str = "/health"  # SGLang's generating probe; "/ready" checks a flag and generates nothing
    keep_factor: float | None = None  # the bound for keeping a conversation on its replica; None: load_factor
    spread: int = 1  # a ring key's home set: its first ``spread`` replicas, the lighter first (policy.ring.choose)
    share: bool = False  # replica_share: redis — a long shared prefix's replicas are placed through Redis


def replica_settings(params: Section, provider: str | None) -> ReplicaSettings | None:
    """The deployment's replicas, or None when it has none (problems recorded with their locations)."""
    raw = params.get("replicas")
    tuning = {
        "refresh_seconds": params.number("replica_refresh_seconds", 10.0, minimum=0.1),
        "poll_seconds": params.number("replica_poll_seconds", 2.0, minimum=0.05),
        "poll_timeout": params.number("replica_poll_timeout_seconds", 3.0, minimum=0.01),
        "max_queue": params.integer("max_queue_per_replica", 8, minimum=0),
        "load_factor": params.number("replica_load_factor", 1.25, minimum=1.0),
        "dns_server": params.string("replica_dns_server", None),
        "key": params.string("replica_key", "conversation"),
        "health_path": params.string("replica_health_path", "/health"),
        "keep_factor": params.number("replica_keep_factor", None, minimum=1.0),
        "spread": params.integer("replica_spread", 1, minimum=1),
        "share": params.choice("replica_share", "none", ("none", "redis")) == "redis",
    }
    if not tuning["health_path"].startswith("/") or "?" in tuning["health_path"]:
        params.problem("replica_health_path", "expected a path such as /health or /ready")
        tuning["health_path"] = "/health"
    if tuning["key"] not in ("conversation", "shared"):
        params.problem("replica_key", "expected conversation or shared")
        tuning["key"] = "conversation"
    if raw is None:
        return None
    if provider != "sglang":
        params.problem("replicas", f"only sglang deployments have replicas (this one is '{provider}')")
        return None
    if raw == "dns":
        if not params.data.get("api_base"):
            params.problem("replicas", "dns resolves the api_base host: set api_base (a headless Service)")
            return None
        return ReplicaSettings(dns=True, **tuning)
    if not isinstance(raw, list) or not raw:
        params.problem("replicas", "expected a non-empty list of base URLs, or dns")
        return None
    urls = []
    for i, url in enumerate(raw):
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            params.problem(f"replicas[{i}]", "expected an http(s) base URL such as http://10.0.0.5:30000/v1")
            continue
        urls.append(url.rstrip("/"))
    if len(set(urls)) != len(urls):
        params.problem("replicas", "a replica is listed twice")
    return ReplicaSettings(urls=tuple(urls), **tuning) if urls else None
