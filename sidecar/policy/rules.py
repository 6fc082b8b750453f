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
    """One request as the rules see it; features and the token estimate are worked out on first use."""

    __slots__ = ("_features", "_tokens", "body", "headers", "request")

    def __init__(self, request: ChatRequest, headers: Mapping[str, str]) -> None:
        self.request = request
        self.body = request.body
        self.headers = headers
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


def _matcher(values: Values) -> Callable[[object], bool]:
    """Exact values as a set lookup; globs (``eu-*``) as one anchored regular expression."""
    exact = frozenset(v for v in values if not any(c in v for c in "*?["))
    globs = [v for v in values if v not in exact]
    pattern = re.compile("|".join(fnmatch.translate(g) for g in globs)) if globs else None
    if pattern is None:
        return lambda value: value in exact
    return lambda value: isinstance(value, str) and (value in exact or pattern.match(value) is not None)


def _compile(rule: Rule) -> tuple[Test, ...]:
    when, tests = rule.when, []
    for name, values in when.headers:
        accepts = _matcher(values)
        tests.append(lambda p, name=name, accepts=accepts: accepts(p.headers.get(name)))
    for key, values in when.metadata:
        accepts = _matcher(values)
        tests.append(lambda p, key=key, accepts=accepts: accepts(_metadata(p.body).get(key)))
    if when.user is not None:
        accepts = _matcher(when.user)
        tests.append(lambda p, accepts=accepts: accepts(p.body.get("user")))
    if when.model is not None:
        accepts = _matcher(when.model)
        tests.append(lambda p, accepts=accepts: accepts(p.request.model))
    if when.features:
        needed = when.features
        tests.append(lambda p: needed <= p.features)
    if when.min_input_tokens is not None:
        low = when.min_input_tokens
        tests.append(lambda p: p.input_tokens >= low)
    if when.max_input_tokens is not None:
        high = when.max_input_tokens
        tests.append(lambda p: p.input_tokens <= high)
    return tuple(tests)


def _metadata(body: Mapping[str, Any]) -> Mapping[str, Any]:
    metadata = body.get("metadata")
    return metadata if isinstance(metadata, dict) else {}


class RuleSet:
    """The compiled rules, in config order."""

    __slots__ = ("compiled",)

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.compiled = tuple((_compile(r), RuleDecision(r.name, r.group, r.require_tags, r.exclude_tags, r.strategy))
                              for r in rules)

    def __bool__(self) -> bool:
        return bool(self.compiled)

    def decide(self, request: ChatRequest, headers: Mapping[str, str]) -> RuleDecision | None:
        """The first matching rule's decision; None when no rule matches."""
        probe = Probe(request, headers)
        for tests, decision in self.compiled:
            for test in tests:
                if not test(probe):
                    break
            else:
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
