"""``router_settings`` (with the ``litellm_settings`` keys it falls back on): strategy, retries, timeouts,
breakers' thresholds, fallbacks, model group aliases. After the model list is read, ``resolve_groups``
checks every group these name and gives ``default_fallbacks`` to each group without fallbacks of its own.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace

from sidecar.config.reader import Section

STRATEGIES = ("simple-shuffle", "least-busy", "latency-based-routing", "usage-based-routing",
              "cost-based-routing", "least-tokens")
RETRY_POLICY_KEYS = ("RateLimitErrorRetries", "TimeoutErrorRetries", "InternalServerErrorRetries",
                     "AuthenticationErrorRetries", "BadRequestErrorRetries",
                     "ContentPolicyViolationErrorRetries")
FALLBACK_KEYS = ("fallbacks", "context_window_fallbacks", "content_policy_fallbacks")


@dataclass(frozen=True, slots=True)
class RouterSettings:
    routing_strategy: str = "simple-shuffle"
    num_retries: int = 2
    retry_policy: Mapping[str, int] = field(default_factory=dict)
    retry_after: float = 0.0  # the shortest wait before a retry when the upstream gives no Retry-After
    timeout: float = 600.0
    stream_timeout: float | None = None
    allowed_fails: int = 3
    cooldown_time: float = 10.0
    fallbacks: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    context_window_fallbacks: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    content_policy_fallbacks: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    default_fallbacks: tuple[str, ...] = ()
    aliases: Mapping[str, str] = field(default_factory=dict)  # model_group_alias: another name → a group


def router_settings(s: Section, litellm: Section) -> RouterSettings:
    default = RouterSettings()
    retries = litellm.integer("num_retries", default.num_retries, minimum=0)
    timeout = litellm.number("request_timeout", default.timeout, minimum=0.001)
    inherited = {k: litellm.fallbacks(k) for k in FALLBACK_KEYS}
    policy = s.section("retry_policy", policy="router_settings.retry_policy")
    retry_policy = {k: policy.integer(k, None, minimum=0) for k in RETRY_POLICY_KEYS}
    policy.finish()
    for key in ("enable_pre_call_checks", "enable_pre_call_check"):
        s.boolean(key, None)  # always on: context windows are checked whenever max_input_tokens is known
    settings = RouterSettings(
        routing_strategy=s.choice("routing_strategy", default.routing_strategy, STRATEGIES),
        num_retries=s.integer("num_retries", retries, minimum=0),
        retry_policy={k: v for k, v in retry_policy.items() if v is not None},
        retry_after=s.number("retry_after", default.retry_after, minimum=0),
        timeout=s.number("timeout", timeout, minimum=0.001),
        stream_timeout=s.number("stream_timeout", None, minimum=0.001),
        allowed_fails=s.integer("allowed_fails", default.allowed_fails, minimum=1),
        cooldown_time=s.number("cooldown_time", default.cooldown_time, minimum=0),
        **{k: s.fallbacks(k) or inherited[k] for k in FALLBACK_KEYS},  # type: ignore[arg-type]
        default_fallbacks=_default_fallbacks(s, litellm),
        aliases=_aliases(s),
    )
    return settings


def _default_fallbacks(s: Section, litellm: Section) -> tuple[str, ...]:
    for section in (s, litellm):
        value = section.get("default_fallbacks")
        if value is None:
            continue
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            section.problem("default_fallbacks", "expected a list of model groups")
            return ()
        return tuple(value)
    return ()


def _aliases(s: Section) -> dict[str, str]:
    """``model_group_alias``: ``{alias: group}`` or ``{alias: {model: group, hidden: true}}``."""
    out = {}
    for alias, target in s.mapping("model_group_alias").items():
        if isinstance(target, dict):
            target = target.get("model")
        if not isinstance(target, str) or not target:
            s.report(f"{s._at('model_group_alias')}.{alias}", "expected a model group name (or {model: group})")
            continue
        out[str(alias)] = target
    return out


def resolve_groups(router: RouterSettings, groups: Collection[str], patterns: Collection[str],
                   problems: list[str]) -> RouterSettings:
    """Check the groups ``router`` names; give ``default_fallbacks`` to every group without fallbacks."""
    known = set(groups)
    for key in FALLBACK_KEYS:
        for source, targets in getattr(router, key).items():
            problems.extend(f"router_settings.{key}: unknown model group '{name}'" for name in (source, *targets)
                            if name not in known and not (name == source and name in patterns))
    problems.extend(f"router_settings.default_fallbacks: unknown model group '{name}'"
                    for name in router.default_fallbacks if name not in known)
    for alias, target in router.aliases.items():
        if target not in known:
            problems.append(f"router_settings.model_group_alias.{alias}: unknown model group '{target}'")
        elif alias in known:
            problems.append(f"router_settings.model_group_alias.{alias}: '{alias}' is already a model group")
    if not router.default_fallbacks:
        return router
    fallbacks = dict(router.fallbacks)
    for group in (*groups, *patterns):
        if group not in fallbacks:
            fallbacks[group] = tuple(g for g in router.default_fallbacks if g != group)
    return replace(router, fallbacks=fallbacks)
