"""Configuration of the state sidecars may share: the response cache, spend budgets and their Redis.

``sidecar_settings.cache``, ``sidecar_settings.budgets`` and ``sidecar_settings.redis`` are our own keys;
LiteLLM's ``litellm_settings.cache`` + ``cache_params``, ``litellm_settings.max_budget`` + ``budget_duration``
and ``router_settings.redis_*`` are read into the same values, so a LiteLLM config works unchanged. As in
LiteLLM, a Redis field its LiteLLM section leaves out comes from ``REDIS_HOST``, ``REDIS_PORT``,
``REDIS_PASSWORD`` (or ``REDIS_URL``). Problems are collected with their locations like the rest of ``config``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from sidecar.config.environ import EnvString, unresolved
from sidecar.config.reader import Secret, SecretResolver, Section, described, is_number

CACHE_TYPES = ("local", "redis")
REDIS_FIELDS = ("host", "port", "password", "db", "ssl")
CACHE_MODES = ("deterministic", "all")
DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w|mo)\s*$")
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "mo": 30 * 86400}


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """Where a Redis is. ``address`` names it in logs without credentials."""

    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: Secret | None = None
    ssl: bool = False
    mode: str = "standalone"  # or sentinel (host/port: the first sentinel) or cluster (host/port: a seed node)
    nodes: tuple[tuple[str, int], ...] = ()  # sentinel: every sentinel; cluster: the seed nodes
    service: str | None = None  # sentinel: the monitored primary's name

    @property
    def address(self) -> str:
        if self.mode == "sentinel":
            return f"sentinel {self.service} via {self.host}:{self.port}/{self.db}"
        if self.mode == "cluster":
            return f"cluster via {self.host}:{self.port}"
        return f"{self.host}:{self.port}/{self.db}"


@dataclass(frozen=True, slots=True)
class CacheSettings:
    """``sidecar_settings.cache``: answers kept for ``ttl`` seconds, in memory or in a shared Redis."""

    type: str = "local"
    ttl: float = 600.0
    max_size: int = 1024  # entries, local type only
    namespace: str = "llm-sidecar"
    mode: str = "deterministic"  # or "all": cache sampled answers too
    redis: RedisSettings | None = None  # the type redis's server
    coalesce: bool = True  # identical cacheable requests in flight share one upstream call
    fleet_lock_ms: int = 3000  # with redis and coalesce: the cross-pod lock's lease (0: pods do not wait)


BUDGET_SCOPES = ("team", "key", "user")


@dataclass(frozen=True, slots=True)
class KeyOwner:
    """Who an inbound key belongs to: its name (never the key) and its team, for budgets."""

    name: str
    team: str | None = None


@dataclass(frozen=True, slots=True)
class BudgetSettings:
    """A spend limit in USD per fixed window of ``period`` seconds (aligned to the UTC epoch).

    ``models``, ``teams``, ``keys`` and ``users`` narrow the requests it covers (empty: any); ``per`` splits
    it into one limit per team, key or user (each with its own spend); ``soft_budget_usd`` is the spend at
    which a warning is logged and counted, before the limit refuses."""

    name: str
    max_budget_usd: float
    period: float
    period_text: str
    models: tuple[str, ...] = ()  # model groups covered; empty: all
    teams: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()  # inbound key names
    users: tuple[str, ...] = ()
    per: str | None = None  # team, key or user: a separate limit for each
    soft_budget_usd: float | None = None

    @property
    def scoped(self) -> bool:
        """Does this budget look at who asked (not only at the model group)?"""
        return bool(self.teams or self.keys or self.users or self.per)


@dataclass(frozen=True, slots=True)
class FleetSettings:
    """``sidecar_settings.fleet_rate_limits``: the deployments whose rpm/tpm every pod shares through Redis,
    and how many pods share them (each pod's share while Redis is away: ``limit / expected_pods``)."""

    deployments: tuple[str, ...]
    expected_pods: int = 1


@dataclass(frozen=True, slots=True)
class SemanticSettings:
    """``sidecar_settings.semantic_cache``: answers found by meaning for the model groups that opt in."""

    embedding_model: str  # a model group of this config that serves embeddings
    groups: tuple[str, ...]
    threshold: float = 0.95  # cosine similarity a hit needs
    max_entries: int = 2000
    ttl: float = 600.0
    timeout: float = 0.2  # seconds the embedding may take; slower is a plain miss
    tools: bool = False  # also requests with tools
    sampled: bool = False  # also requests with a non-zero (or default) temperature
    shared: bool = True  # with a Redis (sidecar_settings.redis, or the cache's): entries shared by every pod


@dataclass(frozen=True, slots=True)
class SharedSettings:
    cache: CacheSettings | None = None
    budgets: tuple[BudgetSettings, ...] = ()
    redis: RedisSettings | None = None  # budgets' Redis: sidecar_settings.redis, else the cache's
    namespace: str = "llm-sidecar"
    fleet: FleetSettings | None = None
    semantic: SemanticSettings | None = None


def parse_duration(value: object) -> float | None:
    """Seconds from ``30s``, ``15m``, ``1h``, ``1d``, ``7d``, ``2w``, ``1mo`` (30 days) or a number; None if bad."""
    if is_number(value):
        return float(value) if value > 0 else None  # type: ignore[operator]
    if not isinstance(value, str):
        return None
    match = DURATION.match(value)
    if match is None or float(match.group(1)) <= 0:
        return None
    return float(match.group(1)) * DURATION_UNITS[match.group(2)]


def shared_settings(s: Section, litellm: Section, router: Section, secrets: SecretResolver,
                    env: Mapping[str, str]) -> SharedSettings:
    """Read ``sidecar_settings.{redis,cache,budgets}`` (from ``s``) and LiteLLM's equivalents."""
    redis, namespace = None, None
    if s.get("redis") is not None:
        section = s.section("redis")
        redis = _redis(section, secrets, url_key="url")
        namespace = section.string("namespace", None)  # the prefix of budget keys (default the cache's)
        section.finish()
    elif any(router.data.get(f"redis_{k}") is not None for k in (*REDIS_FIELDS, "url")):
        redis = _redis(router, secrets, url_key="redis_url", prefix="redis_", env=env)
    cache = _cache(s.section("cache"), secrets, redis, env) if s.get("cache") is not None else None
    litellm_cache = _litellm_cache(litellm, secrets, redis, env)
    if litellm_cache is not None:
        if cache is not None:
            s.problem("cache", "set either sidecar_settings.cache or litellm_settings.cache, not both")
        cache = litellm_cache
    budgets = _budgets(s, litellm)
    if redis is None and cache is not None:
        redis = cache.redis
    if namespace is None:
        namespace = cache.namespace if cache is not None else SharedSettings().namespace
    fleet = _fleet(s.section("fleet_rate_limits"), redis) if s.get("fleet_rate_limits") is not None else None
    semantic = _semantic(s.section("semantic_cache")) if s.get("semantic_cache") is not None else None
    return SharedSettings(cache, budgets, redis, namespace, fleet, semantic)


def _semantic(s: Section) -> SemanticSettings | None:
    default = SemanticSettings("", ())
    model = s.string("embedding_model", None, required=True)
    groups = s.list("groups")
    if not groups or not all(isinstance(g, str) and g for g in groups):
        s.problem("groups", "expected a list of the model groups that use the semantic cache")
    threshold = s.number("threshold", default.threshold, minimum=0.0)
    if threshold is not None and threshold > 1:
        s.problem("threshold", "a cosine similarity is at most 1")
    settings = SemanticSettings(
        embedding_model=model or "", groups=tuple(g for g in groups if isinstance(g, str)),
        threshold=threshold, max_entries=s.integer("max_entries", default.max_entries, minimum=1),
        ttl=s.number("ttl", default.ttl, minimum=0.001),
        timeout=s.number("timeout_ms", default.timeout * 1000, minimum=1) / 1000,
        tools=bool(s.boolean("tools", default.tools)), sampled=bool(s.boolean("sampled", default.sampled)),
        shared=bool(s.boolean("shared", default.shared)))
    s.finish()
    return settings if model and groups else None


def _fleet(s: Section, redis: RedisSettings | None) -> FleetSettings | None:
    deployments = s.list("deployments")
    if not deployments or not all(isinstance(d, str) and d for d in deployments):
        s.problem("deployments", "expected a list of deployment ids (model_info.id, or provider/model)")
    pods = s.integer("expected_pods", None, minimum=1)
    if pods is None and s.data.get("expected_pods") is None:
        s.problem("expected_pods", "is required: each pod's share of a limit while Redis is away")
    if redis is None:
        s.problem("deployments", "fleet rate limits need a Redis (sidecar_settings.redis, or the cache's)")
    s.finish()
    if pods is None or not deployments:
        return None
    return FleetSettings(tuple(deployments), pods)


def _redis(s: Section, secrets: SecretResolver, *, url_key: str, prefix: str = "",
           env: Mapping[str, str] | None = None) -> RedisSettings:
    """``url`` (``redis://[user:password@]host[:port][/db]``, ``rediss://`` for TLS; ``redis+sentinel://`` and
    ``redis+cluster://`` for a highly available Redis) or host/port/password/db (named ``{prefix}host``…).
    With ``env`` (LiteLLM's sections), what is left out comes from ``REDIS_*``."""
    settings = RedisSettings()
    env = env or {}
    url_ref = s.get(url_key)
    if url_ref is None and env.get("REDIS_URL") and not any(s.data.get(prefix + k) for k in ("host", "port")):
        url_ref = env["REDIS_URL"]
    if url_ref is not None:
        url = secrets.resolve(url_ref, s._at(url_key))
        if url is not None and url.value:
            settings = _from_url(url.value, s, url_key) or settings
    password_ref = s.get(prefix + "password") or env.get("REDIS_PASSWORD")
    password = secrets.resolve(password_ref, s._at(prefix + "password")) if password_ref else None
    port = _port(s, prefix + "port", env.get("REDIS_PORT"))
    settings = RedisSettings(
        host=s.string(prefix + "host", None) or env.get("REDIS_HOST") or settings.host,
        port=port or settings.port,
        db=s.integer(prefix + "db", settings.db, minimum=0),
        username=settings.username,
        password=password if password is not None else settings.password,
        ssl=bool(s.boolean(prefix + "ssl", settings.ssl)),
        mode=settings.mode, nodes=settings.nodes, service=settings.service,
    )
    return settings


def _port(s: Section, key: str, fallback: str | None) -> int | None:
    port = s.get(key)
    if port is None:
        port = fallback
    if unresolved(port):
        return None  # os.environ/ not resolved (check-config --skip-secrets)
    if isinstance(port, str) and port.strip().isdigit():  # LiteLLM configs often quote it, or take it from the env
        port = int(port)
    if port is not None and not (isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536):
        shown = port.describe() if isinstance(port, EnvString) else described(port)
        s.problem(key, f"expected a port number, got {shown}")
        return None
    return port


HA_SCHEMES = {"redis+sentinel": "sentinel", "rediss+sentinel": "sentinel", "redis+cluster": "cluster",
              "rediss+cluster": "cluster"}
HA_FORMS = ("redis+sentinel://[user:password@]host:port[,host:port...]/service[/db] or "
            "redis+cluster://[user:password@]host:port[,host:port...] (rediss+... for TLS)")


def _ha_from_url(url: str, s: Section, key: str) -> RedisSettings | None:
    """Sentinel and Cluster URLs: several ``host:port`` in the netloc, which ``urlsplit`` cannot read."""
    scheme, _, rest = url.partition("://")
    netloc, _, path = rest.partition("/")
    credentials, _, hosts = netloc.rpartition("@")
    nodes: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            s.problem(key, f"expected {HA_FORMS}")  # never echo it: it may hold a password
            return None
        nodes.append((host.strip("[]"), int(port)))
    mode = HA_SCHEMES[scheme]
    parts = [p for p in path.split("/") if p]
    service, db = None, "0"
    if mode == "sentinel":
        if not parts:
            s.problem(key, "a Sentinel URL names the primary's service after the hosts: .../mymaster")
            return None
        service, db = parts[0], parts[1] if len(parts) > 1 else "0"
    elif parts:
        s.problem(key, "a Redis Cluster URL has no path (a cluster has one database)")
        return None
    if not db.isdigit():
        s.problem(key, "the database in the URL path must be a number")
        return None
    user, _, password = credentials.partition(":")
    return RedisSettings(host=nodes[0][0], port=nodes[0][1], db=int(db), username=unquote(user) or None,
                         password=Secret(unquote(password)) if password else None, ssl=scheme.startswith("rediss"),
                         mode=mode, nodes=tuple(nodes), service=service)


def _from_url(url: str, s: Section, key: str) -> RedisSettings | None:
    if url.partition("://")[0] in HA_SCHEMES:
        return _ha_from_url(url, s, key)
    try:
        parts = urlsplit(url)
        port = parts.port or 6379
    except ValueError:
        parts, port = None, 0
    if parts is None or parts.scheme not in ("redis", "rediss") or not parts.hostname:
        s.problem(key, "expected redis://[user:password@]host[:port][/db] or rediss://...")  # never echo it
        return None
    path = parts.path.strip("/")
    if path and not path.isdigit():
        s.problem(key, "the database in the URL path must be a number")
        return None
    return RedisSettings(host=parts.hostname, port=port, db=int(path or 0),
                         username=unquote(parts.username) if parts.username else None,
                         password=Secret(unquote(parts.password)) if parts.password else None,
                         ssl=parts.scheme == "rediss")


def _redis_from_env(env: Mapping[str, str]) -> RedisSettings | None:
    """LiteLLM's fallback for a Redis cache without an address: REDIS_URL, else REDIS_HOST/PORT/PASSWORD."""
    if env.get("REDIS_URL"):
        problems: list[str] = []
        return _from_url(env["REDIS_URL"], Section({}, "REDIS_URL", problems), "(environment)") or None
    if env.get("REDIS_HOST"):
        port = env.get("REDIS_PORT", "6379")
        password = env.get("REDIS_PASSWORD")
        return RedisSettings(host=env["REDIS_HOST"], port=int(port) if port.isdigit() else 6379,
                             password=Secret(password) if password else None)
    return None


def _cache(s: Section, secrets: SecretResolver, shared: RedisSettings | None,
           env: Mapping[str, str]) -> CacheSettings:
    default = CacheSettings()
    kind = s.choice("type", default.type, CACHE_TYPES)
    has_address = any(s.data.get(k) is not None for k in ("redis_url", "host", "port", "password"))
    redis = _redis(s, secrets, url_key="redis_url") if has_address else None
    settings = CacheSettings(
        type=kind,
        ttl=s.number("ttl", default.ttl, minimum=0.001),
        max_size=s.integer("max_size", default.max_size, minimum=1),
        namespace=s.string("namespace", default.namespace) or default.namespace,
        mode=s.choice("mode", default.mode, CACHE_MODES),
        coalesce=s.boolean("coalesce", default.coalesce),
        fleet_lock_ms=s.integer("fleet_lock_ms", default.fleet_lock_ms, minimum=0),
        redis=_cache_redis(redis, shared, env, s, secrets) if kind == "redis" else None,
    )
    if kind != "redis" and has_address:
        s.problem("type", "a Redis address is set but type is not redis")
    s.finish()
    return settings


def _cache_redis(own: RedisSettings | None, shared: RedisSettings | None, env: Mapping[str, str],
                 s: Section, secrets: SecretResolver) -> RedisSettings | None:
    redis = own or shared or _redis_from_env(env)
    if redis is None and not secrets.enabled:
        return RedisSettings()  # check-config --skip-secrets: the address comes from the environment at run time
    if redis is None:
        s.problem("type", "a redis cache needs redis_url or host (or sidecar_settings.redis, or REDIS_HOST)")
    return redis


def _litellm_cache(litellm: Section, secrets: SecretResolver, shared: RedisSettings | None,
                   env: Mapping[str, str]) -> CacheSettings | None:
    """LiteLLM's ``cache: true`` with ``cache_params: {type, host, port, password, ttl, namespace}``."""
    enabled = litellm.boolean("cache", False)
    params = litellm.section("cache_params", policy="litellm_settings.cache_params")
    if not enabled or not _litellm_cache_on(params):
        params.seen.update(params.data)  # LiteLLM ignores cache_params while cache is off; so do we
        return None
    kind = params.choice("type", "redis", CACHE_TYPES)  # LiteLLM's default cache type is Redis
    has_address = any(params.data.get(k) is not None for k in ("host", "port", "password", "url"))
    redis = _redis(params, secrets, url_key="url", env=env) if has_address else None
    default = CacheSettings()
    settings = CacheSettings(
        type=kind,
        ttl=params.number("ttl", default.ttl, minimum=0.001),
        namespace=params.string("namespace", default.namespace) or default.namespace,
        redis=_cache_redis(redis, shared, env, params, secrets) if kind == "redis" else None,
    )
    params.finish()
    return settings


def _litellm_cache_on(params: Section) -> bool:
    """False, with a warning, for what LiteLLM caches and we cannot: another store, or opt-in caching."""
    kind, mode = params.data.get("type", "redis"), params.data.get("mode")
    if kind not in CACHE_TYPES:
        params.warn("type", f"cache type '{kind}' is not supported (local or redis): the cache stays off")
        return False
    if mode == "default_off":
        params.warn("mode", "default_off (caching only on request) is not supported: the cache stays off")
        return False
    params.get("mode")
    return True


def _budgets(s: Section, litellm: Section) -> tuple[BudgetSettings, ...]:
    out: list[BudgetSettings] = []
    for i, item in enumerate(s.list("budgets", sections=True)):
        entry = s.child(item, f"{s._at('budgets')}[{i}]")
        budget = _budget(entry)
        entry.finish()
        if budget is not None:
            if any(b.name == budget.name for b in out):
                entry.problem("name", f"budget '{budget.name}' is defined twice")
            out.append(budget)
    max_budget = litellm.number("max_budget", None, minimum=0.000001)
    duration = litellm.get("budget_duration")
    if max_budget is not None:
        period = parse_duration(duration)
        if period is None:
            litellm.problem("budget_duration", "a duration like 1h, 1d, 30d is required with max_budget "
                                               "(budgets reset every fixed window)")
        elif any(b.name == "global" for b in out):
            litellm.problem("max_budget", "a budget named 'global' is already in sidecar_settings.budgets")
        else:
            out.append(BudgetSettings("global", max_budget, period, str(duration)))
    return tuple(out)


def _budget(entry: Section) -> BudgetSettings | None:
    name = entry.string("name", None, required=True)
    limit = entry.number("max_budget_usd", None, minimum=0.000001)
    if limit is None and entry.data.get("max_budget_usd") is None:
        entry.problem("max_budget_usd", "is required")
    raw_period = entry.get("period")
    period = parse_duration(raw_period)
    if period is None:
        entry.problem("period", f"expected a duration like 1h, 1d, 7d, 30d, got {described(raw_period)}")
    models = entry.list("models")
    if not all(isinstance(m, str) for m in models):
        entry.problem("models", "expected a list of model group names")
        models = []
    chosen: dict[str, tuple[str, ...]] = {}
    for field in ("teams", "keys", "users"):
        single = entry.string(field[:-1], None)  # team: a, or teams: [a, b]
        values = [single] if single is not None else entry.list(field)
        if not all(isinstance(v, str) and v for v in values):
            entry.problem(field, "expected a list of names")
            values = []
        chosen[field] = tuple(values)
    per = entry.choice("per", None, BUDGET_SCOPES)
    soft = entry.number("soft_budget_usd", None, minimum=0.000001)
    if soft is not None and limit is not None and soft >= limit:
        entry.problem("soft_budget_usd", "must be below max_budget_usd")
    if name is None or limit is None or period is None:
        return None
    return BudgetSettings(name, limit, period, str(raw_period), tuple(models), per=per, soft_budget_usd=soft,
                          **chosen)


def inbound_keys(refs: list[Any], where: str, secrets: SecretResolver,
                 problems: list[str]) -> list[tuple[Secret, KeyOwner]]:
    """``inbound_api_keys`` items: a key (``os.environ/``, ``file:`` or literal), or ``{key, name, team}``
    naming its owner for budgets. A key without a name is named by its position (never by its value)."""
    out: list[tuple[Secret, KeyOwner]] = []
    for i, ref in enumerate(refs):
        at = f"{where}[{i}]"
        if isinstance(ref, dict):
            entry = Section(ref, at, problems)
            secret = secrets.resolve(entry.get("key"), f"{at}.key")
            owner = KeyOwner(entry.string("name", None) or f"key-{i}", entry.string("team", None))
            entry.finish()
        else:
            secret, owner = secrets.resolve(ref, at), KeyOwner(f"key-{i}")
        if secret is not None:
            out.append((secret, owner))
    return out
