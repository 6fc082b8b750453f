"""Which of an app's ``anthropic-beta`` flags an Anthropic deployment receives (pure; compiled at config load).

An Anthropic app (Claude Code above all) sends the beta flags its request needs — ``context-management-…``,
``effort-…``, ``interleaved-thinking-…`` — in one comma-separated ``anthropic-beta`` header; without them the
real API refuses the fields they gate with a 400. The sidecar forwards them to Anthropic deployments only, and
an operator who must pin betas sets ``litellm_params.anthropic_betas`` on the deployment:

- ``allow``: only these flags pass (an entry ending in ``*`` matches by prefix: ``context-management-*``);
- ``deny``: these flags never pass (the same patterns), whatever ``allow`` says.

``BetaPolicy.compile`` turns the lists into sets and prefixes once; ``header`` filters one request's value.
A deployment's own ``extra_headers: {anthropic-beta: …}`` flags are always sent, before the app's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sidecar.config import Deployment

MAX_FLAGS = 64  # an app's header holds a handful; more is not a header we pass on whole
MAX_REMEMBERED = 32  # distinct header values remembered per policy (an app sends the same one every time)


@dataclass(frozen=True, slots=True)
class _Patterns:
    exact: frozenset[str]
    prefixes: tuple[str, ...]

    @classmethod
    def of(cls, names: Iterable[str]) -> _Patterns:
        names = [n.strip().lower() for n in names if n.strip()]
        return cls(frozenset(n for n in names if not n.endswith("*")),
                   tuple(n[:-1] for n in names if n.endswith("*")))

    def match(self, flag: str) -> bool:
        return flag in self.exact or any(flag.startswith(p) for p in self.prefixes)


class BetaPolicy:
    """A deployment's rule for the app's ``anthropic-beta`` flags, plus the flags it always sends."""

    __slots__ = ("allow", "deny", "fixed", "remembered")

    def __init__(self, allow: _Patterns | None, deny: _Patterns, fixed: tuple[str, ...]) -> None:
        self.allow = allow
        self.deny = deny
        self.fixed = fixed
        self.remembered: dict[str, str | None] = {}

    @classmethod
    def compile(cls, allow: Iterable[str] | None = None, deny: Iterable[str] = (), fixed: str | None = None
                ) -> BetaPolicy:
        """``allow`` None: every flag not denied passes. ``fixed``: the deployment's own header value."""
        return cls(None if allow is None else _Patterns.of(allow), _Patterns.of(deny), tuple(_flags(fixed or "")))

    def permits(self, flag: str) -> bool:
        flag = flag.lower()
        return not self.deny.match(flag) and (self.allow is None or self.allow.match(flag))

    def header(self, app_value: str | None) -> str | None:
        """The ``anthropic-beta`` value to send for the app's ``app_value`` (None: send no header)."""
        if not app_value:
            return ",".join(self.fixed) or None
        if app_value in self.remembered:
            return self.remembered[app_value]
        flags = list(self.fixed)
        for flag in _flags(app_value)[:MAX_FLAGS]:
            if flag not in flags and self.permits(flag):
                flags.append(flag)
        value = ",".join(flags) or None
        if len(self.remembered) >= MAX_REMEMBERED:
            self.remembered.clear()
        self.remembered[app_value] = value
        return value


def _flags(value: str) -> list[str]:
    return [flag.strip() for flag in value.split(",") if flag.strip()]


#: Every flag passes (a deployment that sets no ``anthropic_betas`` and no fixed flags).
OPEN = BetaPolicy.compile()
#: What Claude on Bedrock is sent by default (``additionalModelRequestFields.anthropic_beta``): the flags of
#: features Bedrock serves. Anthropic-API-only flags (``claude-code-…``, ``advanced-tool-use-…``, MCP, files)
#: would make Bedrock refuse the request; ``anthropic_betas`` on the deployment replaces this list.
BEDROCK_ALLOW = ("interleaved-thinking-*", "context-management-*", "effort-*", "token-efficient-tools-*",
                 "fine-grained-tool-streaming-*", "output-128k-*", "context-1m-*", "computer-use-*",
                 "tool-search-tool-*")
BEDROCK = BetaPolicy.compile(BEDROCK_ALLOW)


def for_deployment(deployment: Deployment) -> BetaPolicy:
    """The deployment's policy: its ``anthropic_betas`` (else every flag for Anthropic, ``BEDROCK_ALLOW`` for
    Bedrock), with an Anthropic deployment's own ``extra_headers`` flags always sent first."""
    rules = deployment.anthropic_betas
    bedrock = deployment.provider == "bedrock"
    fixed = None if bedrock else next((v for k, v in deployment.extra_headers if k.lower() == "anthropic-beta"), None)
    if rules is None and fixed is None:
        return BEDROCK if bedrock else OPEN
    allow = rules.allow if rules is not None else BEDROCK_ALLOW if bedrock else None
    return BetaPolicy.compile(allow, rules.deny if rules is not None else (), fixed)
