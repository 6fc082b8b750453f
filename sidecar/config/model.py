"""Configuration: YAML → validated, immutable typed objects, resolved once at load.

Accepts LiteLLM's proxy keys where the features overlap (``model_list``, ``router_settings``,
``litellm_settings``, ``general_settings.master_key``, ``environment_variables``) and our own extensions
under ``sidecar_settings``. Every problem is collected with its location — unknown keys included — so one
run of ``llm-sidecar check-config`` reports them all.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from sidecar.config.aws import AwsSettings, bedrock_settings
from sidecar.config.egress import ProxySettings, check_egress, proxy_settings
from sidecar.config.limits import LimitSettings, ListenerSettings, limit_settings, listener_settings
from sidecar.config.reader import ConfigError, Secret, SecretResolver, Section, described, is_number
from sidecar.config.resilience import BreakerSettings, StallSettings, breaker_settings, stall_settings
from sidecar.config.shared import SharedSettings, shared_settings

PROVIDERS: Mapping[str, str | None] = {
    # provider prefix → default api_base (None: must be configured)
    "openai": "https://api.openai.com/v1",
    "azure": None,
    "anthropic": "https://api.anthropic.com",
    "gemini": "https://generativelanguage.googleapis.com",
    "vertex_ai": None,
    "groq": "https://api.groq.com/openai/v1",
    "together_ai": "https://api.together.xyz/v1",
    "fireworks_ai": "https://api.fireworks.ai/inference/v1",
    "ollama": "http://localhost:11434/v1",
    "hosted_vllm": None,
    "sglang": "http://localhost:30000/v1",
    "bedrock": None,  # https://bedrock-runtime.<region>.amazonaws.com, from the region (config/aws.py)
    "mistral": "https://api.mistral.ai/v1",
    "deepseek": "https://api.deepseek.com/beta",
    "xai": "https://api.x.ai/v1",
    "openrouter": "https://openrouter.ai/api/v1",
    "cerebras": "https://api.cerebras.ai/v1",
    "perplexity": "https://api.perplexity.ai",
    "deepinfra": "https://api.deepinfra.com/v1/openai",
    "huggingface": "https://router.huggingface.co/v1",
    "lm_studio": "http://localhost:1234/v1",
    "llamafile": "http://127.0.0.1:8080/v1",
}
STRATEGIES = ("simple-shuffle", "least-busy", "latency-based-routing", "usage-based-routing",
              "cost-based-routing")
RETRY_POLICY_KEYS = ("RateLimitErrorRetries", "TimeoutErrorRetries", "InternalServerErrorRetries",
                     "AuthenticationErrorRetries", "BadRequestErrorRetries",
                     "ContentPolicyViolationErrorRetries")
LOG_LEVELS = ("debug", "info", "warning", "error")
MIB = 1024 * 1024
MAX_ECHOED = 32  # a provider name longer than this is not echoed in a problem: it may be a pasted key


@dataclass(frozen=True, slots=True)
class ModelInfo:
    input_cost_per_token: float | None = None
    output_cost_per_token: float | None = None
    cache_read_input_token_cost: float | None = None
    max_input_tokens: int | None = None
    max_output_tokens: int | None = None


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
    proxy: str | None = None  # None: the environment's proxy (HTTPS_PROXY, ...); a URL; or "none" to go direct
    max_sse_event_bytes: int = 4 * MIB  # from sidecar_settings.limits.upstream_sse_event_mb


@dataclass(frozen=True, slots=True)
class ModelGroup:
    name: str
    deployments: tuple[Deployment, ...]


@dataclass(frozen=True, slots=True)
class RouterSettings:
    routing_strategy: str = "simple-shuffle"
    num_retries: int = 2
    retry_policy: Mapping[str, int] = field(default_factory=dict)
    timeout: float = 600.0
    stream_timeout: float | None = None
    allowed_fails: int = 3
    cooldown_time: float = 10.0
    fallbacks: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    context_window_fallbacks: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    content_policy_fallbacks: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


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

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_size_mb * MIB)


@dataclass(frozen=True, slots=True)
class Config:
    groups: Mapping[str, ModelGroup]
    router: RouterSettings
    sidecar: SidecarSettings
    warnings: tuple[str, ...] = ()  # not problems: check-config prints them, serve logs them

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
    root = Section(data if data is not None else {}, "", problems)
    env = dict(os.environ if environ is None else environ)
    extra_env = root.mapping("environment_variables")
    env.update({str(k): str(v) for k, v in extra_env.items()})
    warnings: list[str] = []
    secrets = SecretResolver(env, problems, enabled=resolve_secrets, warnings=warnings)

    litellm = root.section("litellm_settings")
    general = root.section("general_settings")
    router = _router_settings(root.section("router_settings"), litellm)
    sidecar = _sidecar_settings(root.section("sidecar_settings"), general, litellm, secrets, env)
    groups = _model_list(root.list("model_list"), secrets, problems, sidecar.limits)
    for section in (litellm, general):
        section.finish()
    root.finish()
    _check_fallbacks(router, groups, problems)
    for key, named in (("hedging", sidecar.hedging), ("breaker.groups", sidecar.breaker.groups)):
        problems.extend(f"sidecar_settings.{key}.{name}: unknown model group" for name in named
                        if groups and name not in groups)
    problems.extend(f"sidecar_settings.budgets: budget '{b.name}': unknown model group '{m}'"
                    for b in sidecar.shared.budgets for m in b.models if groups and m not in groups)
    if not groups and not problems:
        problems.append("model_list: at least one deployment is required")
    if problems:
        raise ConfigError(problems)
    return Config(groups, router, sidecar, tuple(warnings))


# ---- sections ------------------------------------------------------------------------------------


def _router_settings(s: Section, litellm: Section) -> RouterSettings:
    default = RouterSettings()
    retries = litellm.integer("num_retries", default.num_retries, minimum=0)
    timeout = litellm.number("request_timeout", default.timeout, minimum=0.001)
    fallbacks = {k: litellm.fallbacks(k) for k in
                 ("fallbacks", "context_window_fallbacks", "content_policy_fallbacks")}
    policy = s.section("retry_policy")
    retry_policy = {k: policy.integer(k, None, minimum=0) for k in RETRY_POLICY_KEYS}
    policy.finish()
    settings = RouterSettings(
        routing_strategy=s.choice("routing_strategy", default.routing_strategy, STRATEGIES),
        num_retries=s.integer("num_retries", retries, minimum=0),
        retry_policy={k: v for k, v in retry_policy.items() if v is not None},
        timeout=s.number("timeout", timeout, minimum=0.001),
        stream_timeout=s.number("stream_timeout", None, minimum=0.001),
        allowed_fails=s.integer("allowed_fails", default.allowed_fails, minimum=1),
        cooldown_time=s.number("cooldown_time", default.cooldown_time, minimum=0),
        fallbacks=s.fallbacks("fallbacks") or fallbacks["fallbacks"],
        context_window_fallbacks=s.fallbacks("context_window_fallbacks")
        or fallbacks["context_window_fallbacks"],
        content_policy_fallbacks=s.fallbacks("content_policy_fallbacks")
        or fallbacks["content_policy_fallbacks"],
    )
    s.finish()
    return settings


def _sidecar_settings(s: Section, general: Section, litellm: Section, secrets: SecretResolver,
                      env: Mapping[str, str]) -> SidecarSettings:
    default = SidecarSettings()
    keys: list[Secret] = []
    master = general.get("master_key")
    if master is not None:
        keys.extend(secrets.resolve_all([master], f"{general.where}.master_key"))
    raw_keys = s.get("inbound_api_keys")
    if raw_keys is not None:
        if isinstance(raw_keys, list):
            keys.extend(secrets.resolve_all(raw_keys, f"{s.where}.inbound_api_keys"))
        else:
            s.problem("inbound_api_keys", "expected a list of keys")
    settings = SidecarSettings(
        max_body_size_mb=s.number("max_body_size_mb", default.max_body_size_mb, minimum=0.001),
        shutdown_grace_seconds=s.number("shutdown_grace_seconds", default.shutdown_grace_seconds, minimum=0),
        inbound_api_keys=tuple(keys),
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
        shared=shared_settings(s, litellm, secrets, env),
        limits=limit_settings(s.section("limits")),
        listeners=listener_settings(s.section("listeners")),
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


def _model_list(items: list[Any], secrets: SecretResolver, problems: list[str],
                limits: LimitSettings) -> dict[str, ModelGroup]:
    members: dict[str, list[Deployment]] = {}
    seen_ids: set[str] = set()
    for i, item in enumerate(items):
        entry = Section(item, f"model_list[{i}]", problems)
        deployment = _deployment(entry, secrets, seen_ids, int(limits.upstream_sse_event_mb * MIB))
        entry.finish()
        if deployment is not None:
            seen_ids.add(deployment.id)
            members.setdefault(deployment.model_name, []).append(deployment)
    return {name: ModelGroup(name, tuple(deps)) for name, deps in members.items()}


def _deployment(entry: Section, secrets: SecretResolver, seen_ids: set[str], sse_event: int) -> Deployment | None:
    name = entry.string("model_name", None, required=True)
    params = entry.section("litellm_params", required=True)
    info = entry.section("model_info")
    model_ref = params.string("model", None, required=True)
    provider, model = _split_model(model_ref, params)
    base_default = PROVIDERS.get(provider) if provider else None
    aws, api_key = None, None
    if provider == "bedrock" and model is not None:
        aws, model, base_default, api_key = bedrock_settings(params, secrets, model)
    api_base = secrets.plain(params.string("api_base", base_default), f"{params.where}.api_base")
    if provider and not api_base and provider != "vertex_ai":  # Vertex builds its regional host
        params.problem("api_base", f"required for provider '{provider}'")
    key_ref = params.get("api_key")
    api_key = secrets.resolve(key_ref, f"{params.where}.api_key") if key_ref is not None else api_key
    headers = params.mapping("extra_headers")
    proxy = check_egress(params, api_base, headers)
    deployment_id = info.string("id", None) or _unique_id(model_ref or "", seen_ids)
    deployment = Deployment(
        id=deployment_id,
        model_name=name or "",
        provider=provider or "",
        model=model or "",
        api_base=(api_base or "").rstrip("/"),
        api_key=api_key,
        api_version=secrets.plain(params.string("api_version", None), f"{params.where}.api_version"),
        timeout=params.number("timeout", None, minimum=0.001),
        stream_timeout=params.number("stream_timeout", None, minimum=0.001),
        rpm=params.integer("rpm", None, minimum=1),
        tpm=params.integer("tpm", None, minimum=1),
        weight=params.number("weight", 1.0, minimum=0) or 0.0,
        order=params.integer("order", None, minimum=0),
        supports_prefill=params.boolean("supports_prefill", None),
        extra_headers=tuple((str(k), str(v)) for k, v in headers.items()),
        vertex_project=params.string("vertex_project", None),
        vertex_location=params.string("vertex_location", None),
        vertex_credentials=params.string("vertex_credentials", None),
        propagate_trace=bool(params.boolean("propagate_trace", True)),
        aws=aws,
        model_info=_model_info(info),
        proxy=proxy,
        max_sse_event_bytes=sse_event,
    )
    params.finish()
    info.finish()
    if name is None or provider is None or model is None or (not api_base and provider != "vertex_ai"):
        return None
    return deployment


def _model_info(s: Section) -> ModelInfo:
    return ModelInfo(
        input_cost_per_token=s.number("input_cost_per_token", None, minimum=0),
        output_cost_per_token=s.number("output_cost_per_token", None, minimum=0),
        cache_read_input_token_cost=s.number("cache_read_input_token_cost", None, minimum=0),
        max_input_tokens=s.integer("max_input_tokens", None, minimum=1),
        max_output_tokens=s.integer("max_output_tokens", None, minimum=1),
    )


def _split_model(ref: str | None, params: Section) -> tuple[str | None, str | None]:
    if ref is None:
        return None, None
    provider, sep, model = ref.partition("/")
    if not sep or not model:
        params.problem("model", f"expected '<provider>/<model>', got {described(ref)}")
        return None, None
    if provider not in PROVIDERS:
        shown = f"'{provider}'" if len(provider) <= MAX_ECHOED else described(provider)
        params.problem("model", f"unknown provider {shown} (known: {', '.join(PROVIDERS)})")
        return None, None
    return provider, model


def _unique_id(base: str, seen: set[str]) -> str:
    candidate, n = base, 2
    while candidate in seen:
        candidate, n = f"{base}#{n}", n + 1
    return candidate


def _check_fallbacks(router: RouterSettings, groups: Mapping[str, ModelGroup], problems: list[str]) -> None:
    if not groups:
        return
    for key in ("fallbacks", "context_window_fallbacks", "content_policy_fallbacks"):
        for source, targets in getattr(router, key).items():
            for name in (source, *targets):
                if name not in groups:
                    problems.append(f"router_settings.{key}: unknown model group '{name}'")
