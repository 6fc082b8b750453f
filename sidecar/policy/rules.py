"""Request rules and capability checks: which deployments may serve a request (pure; no I/O).

``RuleSet`` compiles ``sidecar_settings.rules`` once at config load: each condition becomes a small test
(exact values as a frozenset, globs as one regular expression), each rule's actions one ``RuleDecision`` value
made ahead, so deciding a request is a walk over the tests and returns a value that already exists. The
first rule whose conditions all hold decides; none: ``None`` and the request routes as before.

A decision's tags are hard: the router filters every group it walks — the asked-for group, its fallbacks,
a hedge's second candidate, a panic choice — through ``RuleDecision.allows`` before any call, and a restricted
request neither reads nor feeds the catch-all's remembered answers (they may come from other deployments).

``needs`` and ``capability_skip`` are the capability check: a deployment whose ``model_info`` says it
cannot serve what the request uses (tools, images, a response schema, more output tokens than it can make)
is skipped with the reason, before any call. A flag the config does not give is taken as "can".
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sidecar.config import Deployment
from sidecar.config.rules import Rule, Values
from sidecar.core import tokens
from sidecar.core.types import ChatRequest, WireFormat

IMAGE_PARTS = frozenset({"image_url", "image", "input_image"})
JSON_FORMATS = frozenset({"json_object", "json_schema"})


@dataclass(frozen=True, slots=True)
class RuleDecision:
    """What a rule decided for a request: the trail's first value, the route span's ``sidecar.routing.rule``."""

    rule: str
    group: str | None = None
    require: frozenset[str] = frozenset()
    exclude: frozenset[str] = frozenset()
    strategy: str | None = None
    restricted: bool = field(init=False, compare=False)  # does it limit the deployments (a compliance rule)?

    def __post_init__(self) -> None:
        object.__setattr__(self, "restricted", bool(self.require or self.exclude))  # read on every attempt

    def allows(self, deployment: Deployment) -> bool:
        tags = deployment.model_info.tags
        return self.require <= tags and not self.exclude & tags

    def describe(self) -> str:
        parts = [f"require tags {sorted(self.require)}"] if self.require else []
        if self.exclude:
            parts.append(f"exclude tags {sorted(self.exclude)}")
        return " and ".join(parts)


class Probe:
    """What rules may ask of a request's messages: features and the token estimate, worked out on first use."""

    __slots__ = ("_features", "_tokens", "request")

    def __init__(self, request: ChatRequest) -> None:
        self.request = request
        self._features: frozenset[str] | None = None
        self._tokens: int | None = None

    @property
    def features(self) -> frozenset[str]:
        if self._features is None:
            self._features = features(self.request)
        return self._features

    @property
    def input_tokens(self) -> int:
        if self._tokens is None:
            self._tokens = tokens.prompt_tokens(self.request)
        return self._tokens


Test = Callable[[Probe], bool]
ABSENT = "\x00"  # the value of a field the request does not have: no config value or glob matches it


class _Field:
    """One field some rules name, compiled across all rules: for a value, the rules (as bits of an int, rule
    ``i`` is bit ``i``) whose condition on this field holds — those without one, those listing the value
    exactly (one dict lookup), and those with a glob that matches (each distinct glob tried once, only when
    it could add a rule still in play)."""

    __slots__ = ("default", "exact", "globs", "key", "kind")

    def __init__(self, kind: str, key: str, conditions: Sequence[Values | None]) -> None:
        self.kind, self.key = kind, key
        self.default = sum(1 << i for i, values in enumerate(conditions) if values is None)
        exact: dict[str, int] = {}
        globs: dict[str, int] = {}
        for i, values in enumerate(conditions):
            for value in values or ():
                table = globs if any(c in value for c in "*?[") else exact
                table[value] = table.get(value, 0) | 1 << i
        self.exact = exact
        self.globs = tuple((re.compile(fnmatch.translate(g)).match, bits) for g, bits in globs.items())


class RuleSet:
    """The compiled rules, in config order; the first whose conditions all hold decides.

    Deciding a request reads each field some rule names — a header, a ``metadata`` key, ``user``, the model —
    once, and narrows the set of rules still in play (an int of bits) by what that field allows: a few dict
    lookups and bit operations per field, however many rules there are. Features and the token estimate,
    which cost a look at the messages, are worked out only for a rule still in play that asks for them.
    """

    __slots__ = ("all", "decisions", "fields", "slow")

    def __init__(self, rules: Sequence[Rule]) -> None:
        named: dict[tuple[str, str], list[Values | None]] = {}
        for i, rule in enumerate(rules):
            when = rule.when
            conditions = [(("header", n), v) for n, v in when.headers]
            conditions += [(("metadata", k), v) for k, v in when.metadata]
            if when.user is not None:
                conditions.append((("user", ""), when.user))
            if when.model is not None:
                conditions.append((("model", ""), when.model))
            for name, values in conditions:
                named.setdefault(name, [None] * len(rules))[i] = values
        self.fields = tuple(_Field(kind, key, conditions) for (kind, key), conditions in named.items())
        self.slow = tuple(self._slow(rule) for rule in rules)
        self.decisions = tuple(RuleDecision(r.name, r.group, r.require_tags, r.exclude_tags, r.strategy)
                               for r in rules)
        self.all = (1 << len(rules)) - 1

    def __bool__(self) -> bool:
        return bool(self.decisions)

    @staticmethod
    def _slow(rule: Rule) -> tuple[Test, ...]:
        when, slow = rule.when, []
        if when.features:
            needed = when.features
            slow.append(lambda p: needed <= p.features)
        if when.min_input_tokens is not None:
            low = when.min_input_tokens
            slow.append(lambda p: p.input_tokens >= low)
        if when.max_input_tokens is not None:
            high = when.max_input_tokens
            slow.append(lambda p: p.input_tokens <= high)
        return tuple(slow)

    def decide(self, request: ChatRequest, headers: Mapping[str, str]) -> RuleDecision | None:
        """The first matching rule's decision; None when no rule matches."""
        mask = self.all
        body = request.body
        metadata = body.get("metadata")
        for spec in self.fields:
            kind = spec.kind
            if kind == "header":
                value = headers.get(spec.key, ABSENT)
            elif kind == "metadata":
                value = metadata.get(spec.key, ABSENT) if isinstance(metadata, dict) else ABSENT
            elif kind == "user":
                value = body.get("user", ABSENT)
            else:
                value = request.model
            if value.__class__ is not str:
                value = ABSENT
            allowed = spec.default | spec.exact.get(value, 0)
            if value is not ABSENT:
                for match, bits in spec.globs:
                    if bits & mask & ~allowed and match(value) is not None:
                        allowed |= bits
            mask &= allowed
            if not mask:
                return None
        probe: Probe | None = None
        while mask:
            lowest = mask & -mask
            index = lowest.bit_length() - 1
            slow = self.slow[index]
            if not slow:
                return self.decisions[index]
            if probe is None:
                probe = Probe(request)
            if all(test(probe) for test in slow):
                return self.decisions[index]
            mask ^= lowest
        return None


# ---- what a request uses, and what a deployment can serve -------------------------------------------


def features(request: ChatRequest) -> frozenset[str]:
    """Which of tools, images, json, stream the request uses."""
    body = request.body
    found = []
    if body.get("tools") or body.get("functions"):
        found.append("tools")
    if _json_format(body) is not None:
        found.append("json")
    if request.stream:
        found.append("stream")
    if _has_image(body.get("messages")):
        found.append("images")
    return frozenset(found)


def _json_format(body: Mapping[str, Any]) -> str | None:
    fmt = body.get("response_format")
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    return kind if kind in JSON_FORMATS else None


def _has_image(messages: object) -> bool:
    if not isinstance(messages, list):
        return False
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list) and any(isinstance(p, dict) and p.get("type") in IMAGE_PARTS for p in content):
            return True
    return False


@dataclass(frozen=True, slots=True)
class Needs:
    """What a request asks of a deployment, for the capability check."""

    tools: bool = False
    images: bool = False
    schema: bool = False  # response_format json_schema
    output_tokens: int | None = None  # max_completion_tokens or max_tokens, when the app set one


def needs(request: ChatRequest) -> Needs:
    """An Anthropic app's ``max_tokens`` is a required ceiling, often the model's maximum (Claude Code sends
    64,000 or more): the adapters cap it at a deployment's ``max_output_tokens`` rather than skip the deployment."""
    body = request.body
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if request.wire is WireFormat.ANTHROPIC:
        limit = None
    return Needs(tools=bool(body.get("tools") or body.get("functions")), images=_has_image(body.get("messages")),
                 schema=_json_format(body) == "json_schema",
                 output_tokens=limit if isinstance(limit, int) and not isinstance(limit, bool) else None)


def capability_skip(deployment: Deployment, need: Needs) -> str | None:
    """Why ``deployment`` cannot serve a request with ``need`` (a skip reason); None when it can."""
    info = deployment.model_info
    if need.tools and info.supports_function_calling is False:
        return "no_function_calling"
    if need.images and info.supports_vision is False:
        return "no_vision"
    if need.schema and info.supports_response_schema is False:
        return "no_response_schema"
    limit = info.max_output_tokens
    if need.output_tokens is not None and limit is not None and need.output_tokens > limit:
        return "max_output_tokens"
    return None


def checks_capabilities(deployments: Sequence[Deployment]) -> bool:
    """Does any deployment say it cannot do something? (Else the capability check is skipped per request.)"""
    return any(False in d.model_info.capabilities.values() or d.model_info.max_output_tokens is not None
               for d in deployments)
