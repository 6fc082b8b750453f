"""The upstream's own rate-limit headers, as buckets the router checks before a call (pure; time passed in).

Providers say how much of their quota is left on every answer: OpenAI, Azure and the OpenAI-compatible hosts
with ``x-ratelimit-remaining-requests`` / ``-tokens`` (and ``x-ratelimit-limit-*``, ``x-ratelimit-reset-*``:
Go-style durations until the bucket is full again), Anthropic with ``anthropic-ratelimit-requests-*`` and
``-tokens-*`` (or ``-input-tokens-*``; resets as RFC 3339 times). ``Quota.observe`` sets a token bucket per
kind from them — level = remaining, refilling at (limit - remaining) / reset — and ``Quota.admit`` charges a
request against it before the call, so a deployment whose quota is spent is passed over (``upstream_rpm`` /
``upstream_tpm``) until the bucket has refilled, instead of being sent requests that come back 429. Between
answers the local charges stand in for the calls the upstream has not reported yet.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from sidecar.policy.limits import TokenBucket

DEFAULT_RESET = 60.0  # seconds to a full bucket when the upstream gives a remainder but no reset (Azure)
MAX_NUMBER = 1e15  # a remainder or limit past this is not a quota (nor is inf): the header is ignored
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True, slots=True)
class Reading:
    """One kind of quota as an answer reported it: what is left, of how much, full again in how long."""

    remaining: float
    limit: float | None = None
    full_in: float | None = None  # seconds


def duration(text: str) -> float | None:
    """Seconds of a Go-style duration (``20ms``, ``1s``, ``6m0s``, ``1h2m3.5s``) or a bare number of seconds."""
    text = text.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * _UNITS[u] for n, u in parts)


def _until(stamp: str, wall: float) -> float | None:
    """Seconds from ``wall`` (Unix time) to an RFC 3339 time."""
    try:
        return max(0.0, datetime.fromisoformat(stamp.strip().replace("Z", "+00:00")).timestamp() - wall)
    except ValueError:
        return None


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    # Azure's -1: "not known", as if absent; inf, NaN or an absurd number: not a quota either
    return number if 0 <= number <= MAX_NUMBER else None


def readings(headers: Mapping[str, str], wall: float,
             longest: float = DEFAULT_RESET) -> tuple[Reading | None, Reading | None]:
    """(requests, tokens) from an answer's headers (lower-case names); None for a kind it does not report.
    A reset further off than ``longest`` seconds (the router's ``retry_after_cap_seconds``) counts as
    ``longest``: as with Retry-After, no upstream says how long a deployment is left out beyond the cap."""
    out: list[Reading | None] = []
    for openai_kind, anthropic_kinds in (("requests", ("requests",)), ("tokens", ("tokens", "input-tokens"))):
        remaining = _number(headers.get(f"x-ratelimit-remaining-{openai_kind}"))
        if remaining is not None:
            reset = headers.get(f"x-ratelimit-reset-{openai_kind}")
            out.append(Reading(remaining, _number(headers.get(f"x-ratelimit-limit-{openai_kind}")),
                               _capped(duration(reset) if reset else None, longest)))
            continue
        for kind in anthropic_kinds:
            remaining = _number(headers.get(f"anthropic-ratelimit-{kind}-remaining"))
            if remaining is not None:
                reset = headers.get(f"anthropic-ratelimit-{kind}-reset")
                out.append(Reading(remaining, _number(headers.get(f"anthropic-ratelimit-{kind}-limit")),
                                   _capped(_until(reset, wall) if reset else None, longest)))
                break
        else:
            out.append(None)
    return out[0], out[1]


def _capped(seconds: float | None, longest: float) -> float | None:
    return None if seconds is None or not math.isfinite(seconds) else min(seconds, longest)


def _bucket(reading: Reading, previous: TokenBucket | None, now: float) -> TokenBucket:
    limit = max(reading.limit or 0.0, reading.remaining, 1.0)
    full_in = reading.full_in if reading.full_in else DEFAULT_RESET
    missing = limit - reading.remaining
    per_second = missing / full_in if missing > 0 else limit / DEFAULT_RESET
    bucket = previous if previous is not None else TokenBucket(per_second * 60.0, burst=limit)
    bucket.per_second, bucket.burst = per_second, limit
    bucket.consume(bucket.available(now) - reading.remaining, now)  # level := remaining
    return bucket


class Quota:
    """A deployment's upstream quota, from the last answer that reported it (None per kind: not reported)."""

    __slots__ = ("requests", "tokens")

    def __init__(self) -> None:
        self.requests: TokenBucket | None = None
        self.tokens: TokenBucket | None = None

    def observe(self, requests: Reading | None, tokens: Reading | None, now: float) -> None:
        if requests is not None:
            self.requests = _bucket(requests, self.requests, now)
        if tokens is not None:
            self.tokens = _bucket(tokens, self.tokens, now)

    def admit(self, tokens: int | None, now: float) -> str | None:
        """Charge one request of ``tokens`` (estimated; None: unknown) if the upstream has room for it; else
        the reason to pass the deployment over (nothing charged)."""
        reason = self.ready(tokens, now)
        if reason is not None:
            return reason
        requests, budget = self.requests, self.tokens
        if requests is not None:
            requests.consume(1, now)
        if budget is not None and tokens:
            budget.consume(tokens, now)
        return None

    def ready(self, tokens: int | None, now: float) -> str | None:
        """``admit`` without the charge (for ``/debug/route``)."""
        if self.requests is not None and self.requests.available(now) < 1:
            return "upstream_rpm"
        if self.tokens is not None and tokens and self.tokens.available(now) < min(tokens, self.tokens.burst):
            return "upstream_tpm"
        return None
