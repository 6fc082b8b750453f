"""``sidecar_settings.rules`` and ``sidecar_settings.group_strategies``: request rules as validated values.

A rule is ``when`` (conditions, all of which must hold) and actions (``group``, ``require_tags``,
``exclude_tags``, ``strategy``). The rules are compiled into matchers by ``policy.rules``; here they are only
read and checked, each problem with its location (``sidecar_settings.rules[2].when.headers``).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Protocol

from sidecar.config.reader import Section, described
from sidecar.config.router import STRATEGIES

FEATURES = ("tools", "images", "json", "stream")
CONDITIONS = ("headers", "metadata", "user", "model", "min_input_tokens", "max_input_tokens", "features")
Values = tuple[str, ...]  # accepted values: exact strings or globs (``*``, ``?``, ``[...]``)


@dataclass(frozen=True, slots=True)
class Conditions:
    """What a request must look like for a rule to apply (every condition given must hold; none: any)."""

    headers: tuple[tuple[str, Values], ...] = ()  # lower-case header name → accepted values
    metadata: tuple[tuple[str, Values], ...] = ()  # the body's ``metadata`` key → accepted values
    user: Values | None = None  # the body's ``user``
    model: Values | None = None  # the model name the app asked for
    min_input_tokens: int | None = None  # estimated prompt tokens (``core.tokens``)
    max_input_tokens: int | None = None
    features: frozenset[str] = frozenset()  # every one of these is used (tools, images, json, stream)


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    where: str  # its location in the config, for messages
    when: Conditions
    group: str | None = None  # send the request to this model group
    require_tags: frozenset[str] = frozenset()  # only deployments carrying every one of these
    exclude_tags: frozenset[str] = frozenset()  # never deployments carrying any of these
    strategy: str | None = None  # the routing strategy for this request


def read_rules(s: Section) -> tuple[Rule, ...]:
    """Read ``sidecar_settings.rules`` (``s`` is sidecar_settings)."""
    out: list[Rule] = []
    names: set[str] = set()
    for i, item in enumerate(s.list("rules", sections=True)):
        entry = s.child(item, f"{s.where}.rules[{i}]")
        rule = _rule(entry, i)
        entry.finish()
        if rule.name in names:
            entry.problem("name", f"'{rule.name}' names another rule too")
        names.add(rule.name)
        out.append(rule)
    return tuple(out)


def _rule(entry: Section, index: int) -> Rule:
    name = entry.string("name", None) or f"rules[{index}]"
    when = _conditions(entry.section("when"))
    require = _tags(entry, "require_tags")
    exclude = _tags(entry, "exclude_tags")
    strategy = entry.get("strategy")
    if strategy is not None and strategy not in STRATEGIES:
        entry.problem("strategy", f"expected one of {', '.join(STRATEGIES)}, got {described(strategy)}")
        strategy = None
    group = entry.string("group", None)
    if require & exclude:
        entry.problem("exclude_tags", f"{sorted(require & exclude)} also required: no deployment could qualify")
    if group is None and not require and not exclude and strategy is None:
        entry.report(entry.where, "a rule needs an action: group, require_tags, exclude_tags or strategy")
    return Rule(name, entry.where, when, group, require, exclude, strategy)


def _conditions(s: Section) -> Conditions:
    headers = tuple((str(k).lower(), v) for k, v in _values_map(s, "headers").items())
    metadata = tuple(_values_map(s, "metadata").items())
    features = s.list("features")
    unknown = [f for f in features if f not in FEATURES]
    if unknown:
        s.problem("features", f"unknown {described(unknown)}: expected some of {', '.join(FEATURES)}")
    low, high = s.integer("min_input_tokens", None, minimum=0), s.integer("max_input_tokens", None, minimum=0)
    if low is not None and high is not None and low > high:
        s.problem("max_input_tokens", "is below min_input_tokens: the rule could never match")
    conditions = Conditions(headers, metadata, _values(s, "user"), _values(s, "model"), low, high,
                            frozenset(f for f in features if f in FEATURES))
    s.finish()
    return conditions


def _values(s: Section, key: str) -> Values | None:
    """A string or a list of strings."""
    value = s.get(key)
    if value is None:
        return None
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, str) for v in items):
        s.problem(key, f"expected a string or a list of strings, got {described(value)}")
        return None
    return tuple(items)


def _values_map(s: Section, key: str) -> dict[str, Values]:
    out: dict[str, Values] = {}
    inner = s.section(key)
    for name in list(inner.data):
        values = _values(inner, str(name))
        if values is not None:
            out[str(name)] = values
    inner.finish()
    return out


def _tags(s: Section, key: str) -> frozenset[str]:
    tags = s.list(key)
    if not all(isinstance(t, str) and t for t in tags):
        s.problem(key, "expected a list of tag names")
        return frozenset()
    return frozenset(tags)


@dataclass(frozen=True, slots=True)
class AffinitySettings:
    """``sidecar_settings.affinity``: the session key is this header, else this ``metadata`` key."""

    header: str | None = None  # lower-case
    metadata_key: str | None = None
    ttl_seconds: float = 3600.0  # a session's deployment is forgotten this long after its last answer
    max_sessions: int = 100_000  # sessions remembered (least recently used out first)
    groups: frozenset[str] = frozenset()  # only these model groups; empty: every group


def affinity_settings(s: Section) -> AffinitySettings | None:
    """None when ``sidecar_settings.affinity`` is not given (the request path then skips it)."""
    if s.raw("affinity") is None:
        return None
    inner = s.section("affinity")
    default = AffinitySettings()
    header, key = inner.string("header", None), inner.string("metadata_key", None)
    if header is None and key is None:
        inner.report(inner.where, "needs header or metadata_key: where the session key is")
    groups = inner.list("groups")
    if not all(isinstance(g, str) for g in groups):
        inner.problem("groups", "expected a list of model group names")
        groups = []
    settings = AffinitySettings(header.lower() if header else None, key,
                                inner.number("ttl_seconds", default.ttl_seconds, minimum=1),
                                inner.integer("max_sessions", default.max_sessions, minimum=1), frozenset(groups))
    inner.finish()
    return settings


@dataclass(frozen=True, slots=True)
class CascadeSettings:
    """``sidecar_settings.cascade.<group>``: the group's answer must pass these checks, else the request
    escalates to the next group of ``escalate`` (see ``policy.cascade``)."""

    escalate: tuple[str, ...]
    finish_reason: bool = True  # not cut at the token limit
    non_empty: bool = True
    refusal_patterns: tuple[str, ...] = ()  # regular expressions, case-insensitive
    json: bool = True  # valid JSON (and schema) when the request asked for JSON
    min_length: int = 0  # characters
    buffer_streams: bool = False  # cascade streamed requests too: answered as a stream once one passes


def cascades(s: Section) -> dict[str, CascadeSettings]:
    inner = s.section("cascade")
    out = {}
    for group in list(inner.data):
        entry = inner.section(str(group))
        escalate = entry.list("escalate")
        if not escalate or not all(isinstance(g, str) and g for g in escalate):
            entry.problem("escalate", "expected a list of model groups to escalate to, in order")
            escalate = []
        patterns = entry.list("refusal_patterns")
        for i, pattern in enumerate(patterns):
            try:
                re.compile(pattern)
            except (re.error, TypeError) as exc:
                entry.problem(f"refusal_patterns[{i}]", f"not a regular expression: {exc}")
        default = CascadeSettings(())
        out[str(group)] = CascadeSettings(
            tuple(escalate), finish_reason=bool(entry.boolean("finish_reason", default.finish_reason)),
            non_empty=bool(entry.boolean("non_empty", default.non_empty)),
            refusal_patterns=tuple(p for p in patterns if isinstance(p, str)),
            json=bool(entry.boolean("json", default.json)),
            min_length=entry.integer("min_length", default.min_length, minimum=0),
            buffer_streams=bool(entry.boolean("buffer_streams", default.buffer_streams)))
        entry.finish()
    inner.finish()
    return out


@dataclass(frozen=True, slots=True)
class ShadowSettings:
    """``sidecar_settings.shadow.<group>``: a ``share`` of the group's requests is copied to the group ``to``."""

    to: str
    share: float = 0.1
    max_in_flight: int = 32  # shadow requests under way at once; beyond it a copy is dropped (and counted)


def shadows(s: Section) -> dict[str, ShadowSettings]:
    inner = s.section("shadow")
    out = {}
    for group in list(inner.data):
        entry = inner.section(str(group))
        to = entry.string("to", None, required=True)
        share = entry.number("share", ShadowSettings("").share, minimum=0)
        if share > 1:
            entry.problem("share", f"expected a share of requests in [0, 1], got {share:g}")
        out[str(group)] = ShadowSettings(to or "", min(share, 1.0),
                                         entry.integer("max_in_flight", ShadowSettings("").max_in_flight, minimum=1))
        entry.finish()
    inner.finish()
    return out


@dataclass(frozen=True, slots=True)
class IntentSettings:
    """``sidecar_settings.intent.<group>``: a request to the group goes to the target group whose example
    utterances its last user message is nearest to (by ``embeddings``), above ``threshold``; else ``default``."""

    embeddings: str  # the model group that embeds (any provider the sidecar speaks)
    default: str
    routes: tuple[tuple[str, tuple[str, ...]], ...]  # (target group, example utterances)
    threshold: float = 0.75  # cosine similarity
    timeout_seconds: float = 0.25  # the most an embedding may cost a request; then the default


def intents(s: Section) -> dict[str, IntentSettings]:
    inner = s.section("intent")
    out = {}
    for group in list(inner.data):
        entry = inner.section(str(group))
        routes = []
        raw = entry.section("routes", required=True)
        for target in list(raw.data):
            examples = raw.list(str(target))
            if not examples or not all(isinstance(e, str) and e.strip() for e in examples):
                raw.problem(str(target), "expected a list of example utterances")
                continue
            routes.append((str(target), tuple(examples)))
        raw.finish()
        threshold = entry.number("threshold", 0.75, minimum=-1)
        if threshold > 1:
            entry.problem("threshold", f"expected a cosine similarity in [-1, 1], got {threshold:g}")
        out[str(group)] = IntentSettings(entry.string("embeddings", None, required=True) or "",
                                         entry.string("default", None, required=True) or "", tuple(routes),
                                         threshold, entry.number("timeout_seconds", 0.25, minimum=0.001))
        entry.finish()
    inner.finish()
    return out


def group_strategies(s: Section) -> dict[str, str]:
    """``sidecar_settings.group_strategies``: model group → its own routing strategy."""
    inner = s.section("group_strategies")
    out = {str(name): inner.choice(str(name), "simple-shuffle", STRATEGIES) for name in list(inner.data)}
    inner.finish()
    return out


class Routing(Protocol):
    """The parts of ``SidecarSettings`` this module reads and checks."""

    @property
    def rules(self) -> tuple[Rule, ...]: ...

    @property
    def group_strategies(self) -> Mapping[str, str]: ...

    @property
    def affinity(self) -> AffinitySettings | None: ...

    @property
    def cascade(self) -> Mapping[str, CascadeSettings]: ...

    @property
    def shadow(self) -> Mapping[str, ShadowSettings]: ...

    @property
    def intent(self) -> Mapping[str, IntentSettings]: ...


def check_rules(settings: Routing, groups: Collection[str], tag_sets: Collection[frozenset[str]],
                problems: list[str]) -> None:
    """Cross-checks once the model list is read: ``groups`` are the model groups' names, ``tag_sets`` every
    deployment's ``model_info.tags``. A rule whose tags no deployment satisfies is a typo, not a policy."""
    rules, strategies, affinity = settings.rules, settings.group_strategies, settings.affinity
    cascade_groups, shadow_groups, intent_groups = settings.cascade, settings.shadow, settings.intent
    for name in strategies:
        if name not in groups:
            problems.append(f"sidecar_settings.group_strategies.{name}: unknown model group")
    for name, intent in intent_groups.items():
        problems.extend(f"sidecar_settings.intent.{name}: unknown model group '{g}'"
                        for g in (name, intent.embeddings, intent.default, *(t for t, _ in intent.routes))
                        if g and g not in groups)
    for name, shadow in shadow_groups.items():
        problems.extend(f"sidecar_settings.shadow.{name}: unknown model group '{g}'"
                        for g in (name, shadow.to) if g and g not in groups)
    for name, cascade in cascade_groups.items():
        problems.extend(f"sidecar_settings.cascade.{name}: unknown model group '{g}'"
                        for g in (name, *cascade.escalate) if g not in groups)
    problems.extend(f"sidecar_settings.affinity.groups: unknown model group '{name}'"
                    for name in sorted(affinity.groups if affinity is not None else ()) if name not in groups)
    for rule in rules:
        if rule.group is not None and rule.group not in groups:
            problems.append(f"{rule.where}.group: unknown model group '{rule.group}'")
        if rule.require_tags and not any(rule.require_tags <= tags and not rule.exclude_tags & tags
                                         for tags in tag_sets):
            problems.append(f"{rule.where}.require_tags: no deployment carries {sorted(rule.require_tags)}"
                            + (f" without {sorted(rule.exclude_tags)}" if rule.exclude_tags else ""))
