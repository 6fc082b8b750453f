"""Configuration: YAML → validated, immutable typed objects, resolved once at load.

Accepts LiteLLM's proxy config (``model_list``, ``router_settings``, ``litellm_settings``,
``general_settings``, ``environment_variables``, ``credential_list``) and our own extensions under
``sidecar_settings``. What each LiteLLM key does here is the table in ``config.litellm``: a key that has no
meaning in a sidecar is a warning (``Config.warnings``), never a reason not to load; ``sidecar_settings`` is
strict. Every problem is collected with its location, so one run of ``llm-sidecar check-config`` reports
them all. ``os.environ/NAME`` is resolved in every string value first (``config.environ``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import yaml

from sidecar.config import deployments
from sidecar.config import environ as environment
from sidecar.config.aws import AwsSettings, bedrock_settings
from sidecar.config.deployments import BetaRules
from sidecar.config.egress import ProxySettings, check_egress, proxy_settings
from sidecar.config.limits import LimitSettings, ListenerSettings, limit_settings, listener_settings
from sidecar.config.params import RequestParams, request_params, shared_defaults
from sidecar.config.reader import ConfigError, Secret, SecretResolver, Section, Warnings, described, is_number
from sidecar.config.references import WILDCARD, default_base, root_base, unique_id
from sidecar.config.replicas import ReplicaSettings, replica_settings
from sidecar.config.resilience import BreakerSettings, StallSettings, breaker_settings, stall_settings
from sidecar.config.router import RouterSettings, resolve_groups, router_settings
from sidecar.config.rules import (
    AffinitySettings,
    CascadeSettings,
    IntentSettings,
    Rule,
    ShadowSettings,
    affinity_settings,
    cascades,
    check_rules,
    group_strategies,
    intents,
    read_rules,
    shadows,
)
from sidecar.config.shared import KeyOwner, SharedSettings, inbound_keys, shared_settings
from sidecar.config.wildcards import Wildcard, compile_pattern, ordered

LOG_LEVELS = ("debug", "info", "warning", "error")
MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """Prices, limits and capability flags (LiteLLM's ``supports_*``: None when the config does not say)."""

    input_cost_per_token: float | None = None
    output_cost_per_token: float | None = None
    cache_read_input_token_cost: float | None = None
    max_input_tokens: int | None = None
    max_output_tokens: int | None = None
    capabilities: Mapping[str, bool] = field(default_factory=dict)  # every supports_* flag given
    tags: frozenset[str] = frozenset()  # what request rules select on (``eu``, ``self-hosted``, ``no-retention``)

    @property
    def supports_function_calling(self) -> bool | None:
        return self.capabilities.get("supports_function_calling")

    @property
    def supports_vision(self) -> bool | None:
        return self.capabilities.get("supports_vision")

    @property
    def supports_response_schema(self) -> bool | None:
        return self.capabilities.get("supports_response_schema")


@dataclass(frozen=True, slots=True)
class Deployment:
    """One upstream: a provider model at an address with a key. ``id`` names it in headers and traces."""

    id: str
    model_name: str
    provider: str
    model: str
    api_base: str
    api_key: Secret | None = None
    api_version: str | None = None
    timeout: float | None = None
    stream_timeout: float | None = None
    rpm: int | None = None
    tpm: int | None = None
    weight: float = 1.0
    order: int | None = None
    supports_prefill: bool | None = None
    extra_headers: tuple[tuple[str, str], ...] = ()
    vertex_project: str | None = None
    vertex_location: str | None = None
    vertex_credentials: str | None = None
    propagate_trace: bool = True  # send the attempt's W3C traceparent to this upstream
    aws: AwsSettings | None = None  # bedrock deployments only
    model_info: ModelInfo = field(default_factory=ModelInfo)
    params: RequestParams | None = None  # completion defaults, extra_body, drop_params (None: none set)
    proxy: str | None = None  # None: the environment's proxy (HTTPS_PROXY, ...); a URL; or "none" to go direct
    max_sse_event_bytes: int = 4 * MIB  # from sidecar_settings.limits.upstream_sse_event_mb
    anthropic_betas: BetaRules | None = None  # which app anthropic-beta flags pass (None: all of them)
    replicas: ReplicaSettings | None = None  # sglang: the replicas behind this deployment (config.replicas)


@dataclass(frozen=True, slots=True)
class ModelGroup:
    name: str
    deployments: tuple[Deployment, ...]


@dataclass(frozen=True, slots=True)
class CatchAll:
    """The last resort when every deployment and fallback failed (non-streaming and streaming alike)."""

    static_response: str | None = None  # a fixed answer, e.g. "The assistant is unavailable right now."
    last_good: bool = False  # answer with the last good answer to the identical request
    max_entries: int = 1024

    @property
    def enabled(self) -> bool:
        return self.static_response is not None or self.last_good


@dataclass(frozen=True, slots=True)
class Hedging:
    """Start the next candidate when the first has not produced a first byte after ``after`` seconds
    (a number, or ``None`` for the deployment's observed p95 time to first byte)."""

    after: float | None = None
    fallback_after: float = 2.0  # used with p95 until enough samples exist


@dataclass(frozen=True, slots=True)
class TelemetrySettings:
    """``sidecar_settings.telemetry``: prompt and completion text on spans only when opted in (truncated)."""

    capture_content: bool = False
    content_max_chars: int = 1024


@dataclass(frozen=True, slots=True)
class SidecarSettings:
    max_body_size_mb: float = 32.0
    shutdown_grace_seconds: float = 30.0
    inbound_api_keys: tuple[Secret, ...] = ()
    key_owners: tuple[KeyOwner, ...] = ()  # each inbound key's name and team (for budgets), by position
    log_level: str = "info"
    access_log: bool = False
    max_connections_per_host: int = 256
    retry_after_cap_seconds: float = 60.0
    stream_idle_timeout: float | None = None  # None: a third of the request's timeout, at most 30 s
    stream_stall: StallSettings | None = field(default_factory=StallSettings)  # None: the idle limit only
    breaker: BreakerSettings = field(default_factory=BreakerSettings)
    connect_timeout_seconds: float = 10.0  # DNS, TCP (every address, Happy Eyeballs), proxy tunnel and TLS
    proxies: ProxySettings = field(default_factory=ProxySettings)  # from HTTPS_PROXY, HTTP_PROXY, NO_PROXY
    catch_all: CatchAll = field(default_factory=CatchAll)
    hedging: Mapping[str, Hedging] = field(default_factory=dict)
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    shared: SharedSettings = field(default_factory=SharedSettings)  # cache, budgets and their Redis
    limits: LimitSettings = field(default_factory=LimitSettings)  # sidecar_settings.limits
    listeners: ListenerSettings = field(default_factory=ListenerSettings)  # sidecar_settings.listeners
    rules: tuple[Rule, ...] = ()  # sidecar_settings.rules, in order: the first that matches decides
    group_strategies: Mapping[str, str] = field(default_factory=dict)  # model group → its routing strategy
    affinity: AffinitySettings | None = None  # session affinity (None: off)
    cascade: Mapping[str, CascadeSettings] = field(default_factory=dict)  # model group → its cascade
    shadow: Mapping[str, ShadowSettings] = field(default_factory=dict)  # model group → where its copies go
    intent: Mapping[str, IntentSettings] = field(default_factory=dict)  # model group → its intent routes

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_size_mb * MIB)


@dataclass(frozen=True, slots=True)
class Config:
    groups: Mapping[str, ModelGroup]
    router: RouterSettings
    sidecar: SidecarSettings
    wildcards: tuple[Wildcard, ...] = ()  # model groups named with a '*', most specific first
    warnings: tuple[str, ...] = ()  # what the config asks for that the sidecar ignores (config.litellm)

    @property
    def deployments(self) -> tuple[Deployment, ...]:
        return tuple(d for g in self.groups.values() for d in g.deployments)


def load(path: str, *, resolve_secrets: bool = True) -> Config:
    """Read and validate a config file. Raises ``ConfigError`` listing every problem."""
    try:
        with open(path, "rb") as handle:
            text = handle.read()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    return parse_yaml(text, path, resolve_secrets=resolve_secrets)


def parse_yaml(text: bytes, path: str, *, resolve_secrets: bool = True) -> Config:
    """Validate a config file's bytes (``path`` names it in problems). Raises ``ConfigError``."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML: {exc}"]) from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise ConfigError([f"{path}: not valid YAML: nested too deeply"]) from None
    return parse(data, resolve_secrets=resolve_secrets)


def parse(data: object, *, resolve_secrets: bool = True, environ: Mapping[str, str] | None = None) -> Config:
    problems: list[str] = []
    warnings = Warnings()
    env = dict(os.environ if environ is None else environ)
    extra_env = data.get("environment_variables") if isinstance(data, dict) else None
    if isinstance(extra_env, dict):
        env.update({str(k): str(v) for k, v in extra_env.items()})
    data = environment.resolve(data if data is not None else {}, env)
    root = Section(data, "", problems, warnings=warnings, policy="(top level)", require_env=resolve_secrets)
    root.mapping("environment_variables")
    key_file_warnings: list[str] = []
    secrets = SecretResolver(env, problems, enabled=resolve_secrets, warnings=key_file_warnings)

    litellm = root.section("litellm_settings", policy="litellm_settings")
    general = root.section("general_settings", policy="general_settings")
    router_section = root.section("router_settings", policy="router_settings")
    router = router_settings(router_section, litellm)
    sidecar = _sidecar_settings(root.section("sidecar_settings"), general, litellm, router_section, secrets, env)
    context = deployments.Context(secrets, env, shared_defaults(router_section),
                                  bool(litellm.boolean("drop_params", False)), deployments.credentials(root))
    groups, patterns = _model_list(root, context, sidecar.limits)
    for section in (litellm, general, router_section):
        section.finish()
    root.finish()
    if groups or patterns:
        router = resolve_groups(router, groups, patterns, problems)
    if sidecar.shared.redis is None:
        problems.extend(f"deployment '{d.id}': replica_share: redis needs a Redis (sidecar_settings.redis, or the "
                        "cache's)" for g in groups.values() for d in g.deployments if d.replicas and d.replicas.share)
    for key, named in (("hedging", sidecar.hedging), ("breaker.groups", sidecar.breaker.groups)):
        problems.extend(f"sidecar_settings.{key}.{name}: unknown model group" for name in named
                        if groups and name not in groups)
    problems.extend(f"sidecar_settings.budgets: budget '{b.name}': unknown model group '{m}'"
                    for b in sidecar.shared.budgets for m in b.models
                    if groups and m not in groups and m not in patterns)
    if groups:
        check_rules(sidecar, groups,
                    [d.model_info.tags for g in (*groups.values(), *patterns.values()) for d in g.deployments],
                    problems)
    if not groups and not patterns and not problems:
        problems.append("model_list: at least one deployment is required")
    if problems:
        raise ConfigError(problems, warnings.lines() + tuple(key_file_warnings))
    keys, bases = context.wildcard_keys(), context.wildcard_bases()
    wildcards = ordered(Wildcard(name, compile_pattern(name), group.deployments, keys, bases)
                        for name, group in patterns.items())
    return Config(groups, router, sidecar, wildcards, warnings.lines() + tuple(key_file_warnings))


# ---- sections ------------------------------------------------------------------------------------


def _sidecar_settings(s: Section, general: Section, litellm: Section, router: Section, secrets: SecretResolver,
                      env: Mapping[str, str]) -> SidecarSettings:
    default = SidecarSettings()
    keys: list[Secret] = []
    master = general.get("master_key")
    if master is not None:
        keys.extend(secrets.resolve_all([master], f"{general.where}.master_key"))
    owners = [KeyOwner("master_key")] * len(keys)
    raw_keys = s.get("inbound_api_keys")
    if raw_keys is not None:
        if isinstance(raw_keys, list):
            for key, owner in inbound_keys(raw_keys, f"{s.where}.inbound_api_keys", secrets, s.problems):
                keys.append(key)
                owners.append(owner)
        else:
            s.problem("inbound_api_keys", "expected a list of keys")
    max_body = general.number("max_request_size_mb", default.max_body_size_mb, minimum=0.001)
    settings = SidecarSettings(
        max_body_size_mb=s.number("max_body_size_mb", max_body, minimum=0.001),
        shutdown_grace_seconds=s.number("shutdown_grace_seconds", default.shutdown_grace_seconds, minimum=0),
        inbound_api_keys=tuple(keys),
        key_owners=tuple(owners),
        log_level=s.choice("log_level", default.log_level, LOG_LEVELS),
        access_log=s.boolean("access_log", default.access_log),
        max_connections_per_host=s.integer("max_connections_per_host", default.max_connections_per_host,
                                           minimum=1),
        retry_after_cap_seconds=s.number("retry_after_cap_seconds", default.retry_after_cap_seconds,
                                         minimum=0),
        stream_idle_timeout=s.number("stream_idle_timeout", default.stream_idle_timeout, minimum=0.001),
        stream_stall=stall_settings(s.section("stream_stall")),
        breaker=breaker_settings(s.section("breaker")),
        connect_timeout_seconds=s.number("connect_timeout_seconds", default.connect_timeout_seconds,
                                         minimum=0.001),
        proxies=proxy_settings(env, s.problems),
        catch_all=_catch_all(s.section("catch_all")),
        hedging=_hedging(s.section("hedging")),
        telemetry=_telemetry(s.section("telemetry")),
        shared=shared_settings(s, litellm, router, secrets, env),
        limits=limit_settings(s.section("limits")),
        listeners=listener_settings(s.section("listeners")),
        rules=read_rules(s),
        group_strategies=group_strategies(s),
        affinity=affinity_settings(s),
        cascade=cascades(s),
        shadow=shadows(s),
        intent=intents(s),
    )
    s.finish()
    return settings


def _telemetry(s: Section) -> TelemetrySettings:
    default = TelemetrySettings()
    settings = TelemetrySettings(
        capture_content=bool(s.boolean("capture_content", default.capture_content)),
        content_max_chars=s.integer("content_max_chars", default.content_max_chars, minimum=0),
    )
    s.finish()
    return settings


def _catch_all(s: Section) -> CatchAll:
    default = CatchAll()
    settings = CatchAll(
        static_response=s.string("static_response", None),
        last_good=s.boolean("last_good", default.last_good),
        max_entries=s.integer("max_entries", default.max_entries, minimum=1),
    )
    s.finish()
    return settings


def _hedging(s: Section) -> dict[str, Hedging]:
    out: dict[str, Hedging] = {}
    for group in list(s.data):
        entry = s.section(str(group))
        after = entry.get("after")
        if after is not None and after != "p95" and not (is_number(after) and after > 0):
            entry.problem("after", f"expected a number of seconds > 0 or 'p95', got {described(after)}")
            after = None
        out[str(group)] = Hedging(
            after=float(after) if is_number(after) else None,
            fallback_after=entry.number("fallback_after", Hedging().fallback_after, minimum=0.001),
        )
        entry.finish()
    return out


def _model_list(root: Section, context: deployments.Context,
                limits: LimitSettings) -> tuple[dict[str, ModelGroup], dict[str, ModelGroup]]:
    """(model groups, wildcard groups: those whose model_name has a '*')."""
    members: dict[str, list[Deployment]] = {}
    seen_ids: set[str] = set()
    for i, item in enumerate(root.list("model_list", sections=True)):
        entry = root.child(item, f"model_list[{i}]", policy="model_list[]")
        deployment = _deployment(entry, context, seen_ids, int(limits.upstream_sse_event_mb * MIB))
        entry.finish()
        if deployment is not None:
            seen_ids.add(deployment.id)
            members.setdefault(deployment.model_name, []).append(deployment)
    groups = {name: ModelGroup(name, tuple(deps)) for name, deps in members.items()}
    patterns = {name: group for name, group in groups.items() if WILDCARD in name}
    return {name: group for name, group in groups.items() if name not in patterns}, patterns


def _deployment(entry: Section, context: deployments.Context, seen_ids: set[str],
                sse_event: int) -> Deployment | None:
    name = entry.string("model_name", None, required=True)
    params = deployments.params_section(entry, context)
    info = entry.section("model_info", policy="model_list[].model_info")
    ref = deployments.reference(params, name)
    provider, model = (ref.provider, ref.model) if ref is not None else (None, None)
    base_default = default_base(provider, context.env) if provider else None
    aws, api_key = None, None
    if provider == "bedrock" and model is not None:
        aws, model, base_default, api_key = bedrock_settings(params, context.secrets, model)
    pool = replica_settings(params, provider)
    if pool is not None and name is not None and WILDCARD in name:
        # a wildcard entry becomes one deployment per model name asked for, each a pool nobody polls
        params.problem("replicas", "a wildcard model_name cannot have replicas: give each served model its own "
                                   "model_list entry")
        pool = None
    if pool is not None and pool.urls:
        base_default = pool.urls[0]  # the static replicas are used instead of api_base
    api_base = params.string("api_base", base_default)
    reachable = bool(api_base) or provider in ("vertex_ai", "")  # Vertex builds its host; '*' the provider's
    if provider and not reachable:
        params.problem("api_base", f"required for provider '{provider}'")
    api_key = deployments.api_key(params, provider or "", context) or api_key
    headers = deployments.headers(params, provider or "")
    proxy = check_egress(params, api_base, {**params.mapping("headers"), **params.mapping("extra_headers")})
    raw_ref = str(params.data.get("model"))
    canonical = raw_ref if not provider or raw_ref.startswith(f"{provider}/") else f"{provider}/{model}"
    deployment = Deployment(
        id=info.string("id", None) or unique_id(canonical, seen_ids),
        model_name=name or "",
        provider=provider or "",
        model=model or "",
        api_base=root_base(provider or "", api_base or "").rstrip("/"),
        api_key=api_key,
        api_version=params.string("api_version", None),
        timeout=params.number("timeout", None, minimum=0.001),
        stream_timeout=params.number("stream_timeout", None, minimum=0.001),
        rpm=params.integer("rpm", None, minimum=1),
        tpm=params.integer("tpm", None, minimum=1),
        weight=params.number("weight", 1.0, minimum=0) or 0.0,
        order=params.integer("order", None, minimum=0),
        supports_prefill=params.boolean("supports_prefill", None),
        extra_headers=headers,
        vertex_project=params.string("vertex_project", None),
        vertex_location=params.string("vertex_location", None),
        vertex_credentials=params.string("vertex_credentials", None),
        propagate_trace=bool(params.boolean("propagate_trace", True)),
        aws=aws,
        model_info=ModelInfo(**deployments.model_info_values(info, params)),
        params=request_params(params, context.defaults, context.drop_params),
        proxy=proxy,
        max_sse_event_bytes=sse_event,
        anthropic_betas=deployments.beta_rules(params, provider or ""),
        replicas=pool,
    )
    params.finish()
    info.finish()
    if name is None or ref is None or model is None or not reachable:
        return None
    return deployment
