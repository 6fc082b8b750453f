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
from dataclasses import dataclass
from typing import Any

from sidecar.config import Deployment
from sidecar.config.rules import Rule, Values
from sidecar.core import tokens
from sidecar.core.types import ChatRequest

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

    @property
    def restricted(self) -> bool:
        """Does the rule limit which deployments may serve the request (a compliance rule)?"""
        return bool(self.require or self.exclude)

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
Field = tuple[str, str]  # ("header", name) | ("metadata", key) | ("user", "") | ("model", "")
ABSENT = "\x00"  # the value of a field the request does not have: no config value or glob matches it


def _matcher(values: Values) -> Callable[[str], object]:
    """A C-level test of one string: exact values as a frozenset's ``__contains__``, with globs (``eu-*``) one
    anchored regular expression's ``match`` (which refuses ``ABSENT``)."""
    exact = frozenset(v for v in values if not any(c in v for c in "*?["))
    if len(exact) == len(values):
        return exact.__contains__
    branches = [re.escape(v) for v in exact] + [fnmatch.translate(v) for v in values if v not in exact]
    return re.compile("(?!\x00)(?:" + "|".join(branches) + ")").match


class RuleSet:
    """The compiled rules, in config order.

    Deciding a request reads each field some rule names — a header, a ``metadata`` key, ``user``, the model —
    once, into a list of strings; each rule is then a few C calls (set membership or a regular expression's
    match) on that list. Features and the token estimate, which cost a look at the messages, are worked out
    only when a rule whose other conditions hold asks for them.
    """

    __slots__ = ("compiled", "fields")

    def __init__(self, rules: Sequence[Rule]) -> None:
        fields: dict[Field, int] = {}
        compiled = []
        for rule in rules:
            fast, slow = self._compile(rule, fields)
            compiled.append((fast, slow, RuleDecision(rule.name, rule.group, rule.require_tags, rule.exclude_tags,
                                                      rule.strategy)))
        self.fields = tuple(fields)
        self.compiled = tuple(compiled)

    def __bool__(self) -> bool:
        return bool(self.compiled)

    @staticmethod
    def _compile(rule: Rule, fields: dict[Field, int]) -> tuple[tuple[tuple[int, Callable[[str], object]], ...],
                                                                tuple[Test, ...]]:
        when = rule.when
        named: list[tuple[Field, Values]] = [(("header", name), values) for name, values in when.headers]
        named += [(("metadata", key), values) for key, values in when.metadata]
        if when.user is not None:
            named.append((("user", ""), when.user))
        if when.model is not None:
            named.append((("model", ""), when.model))
        fast = tuple((fields.setdefault(field, len(fields)), _matcher(values)) for field, values in named)
        slow: list[Test] = []
        if when.features:
            needed = when.features
            slow.append(lambda p: needed <= p.features)
        if when.min_input_tokens is not None:
            low = when.min_input_tokens
            slow.append(lambda p: p.input_tokens >= low)
        if when.max_input_tokens is not None:
            high = when.max_input_tokens
            slow.append(lambda p: p.input_tokens <= high)
        return fast, tuple(slow)

    def _values(self, request: ChatRequest, headers: Mapping[str, str]) -> list[str]:
        body = request.body
        metadata = body.get("metadata")
        if not isinstance(metadata, dict):
            metadata = {}
        values = []
        for kind, key in self.fields:
            if kind == "header":
                value = headers.get(key, ABSENT)
            elif kind == "metadata":
                value = metadata.get(key, ABSENT)
            elif kind == "user":
                value = body.get("user", ABSENT)
            else:
                value = request.model
            values.append(value if isinstance(value, str) else ABSENT)
        return values

    def decide(self, request: ChatRequest, headers: Mapping[str, str]) -> RuleDecision | None:
        """The first matching rule's decision; None when no rule matches."""
        values = self._values(request, headers)
        probe: Probe | None = None
        for fast, slow, decision in self.compiled:
            for index, accepts in fast:
                if not accepts(values[index]):
                    break
            else:
                if not slow:
                    return decision
                if probe is None:
                    probe = Probe(request)
                if all(test(probe) for test in slow):
                    return decision
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
    body = request.body
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
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
