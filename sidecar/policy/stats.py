"""Per-deployment running statistics for routing: latency, TTFT, recent errors, load, token usage.

Everything is O(1) per update (the p95 is computed lazily from a 64-sample ring). Time is an argument.

The error rate decays with *time*, not with traffic. That matters: health ordering sends traffic away from
a deployment with a high error rate, so a count-based rate (last N outcomes) would never change again and
the deployment would be starved forever after it recovers. Here outcomes fade with a half-life (5 s by
default) and their total weight is capped (10 outcomes), so however long the outage was, a deployment that
stopped failing looks healthy again after at most ~23 s (log2(10 / 0.43) half-lives, 0.43 being the failure
mass below which the rate is under the 0.3 threshold) and is tried again — within issue 3's 30 s promise.
"""

from __future__ import annotations

import math

_TTFT_RING = 64
_MIN_P95_SAMPLES = 5
_MINUTE = 60.0


class DeploymentStats:
    """Statistics for one deployment. ``now`` is the caller's monotonic clock in seconds.

    ``ok`` in ``finished`` means "the deployment did its job": errors that are the app's fault
    (``counts_as_failure`` false) should be reported as ok or not at all. Latency and TTFT EWMAs learn
    only from successful calls, so a deployment that fails fast does not look fast.
    """

    __slots__ = (
        "_cur_minute",
        "_cur_tokens",
        "_err_at",
        "_err_mass",
        "_err_total",
        "_p95",
        "_prev_tokens",
        "_ttft_count",
        "_ttft_ring",
        "alpha",
        "error_half_life",
        "in_flight",
        "last_seen",
        "latency",
        "max_weight",
        "tokens_in_flight",
        "ttft",
        "unhealthy_rate",
    )

    def __init__(self, *, alpha: float = 0.3, error_half_life: float = 5.0, unhealthy_rate: float = 0.3,
                 max_weight: float = 10.0) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError("alpha must be in (0, 1]")
        if error_half_life <= 0:
            raise ValueError("error_half_life must be > 0")
        self.alpha = alpha
        self.error_half_life = error_half_life
        self.unhealthy_rate = unhealthy_rate
        self.max_weight = max_weight
        self.latency: float | None = None
        self.ttft: float | None = None
        self.in_flight = 0
        self.tokens_in_flight = 0  # estimated tokens (prompt + completion budget) of the attempts in flight
        self.last_seen: float | None = None
        self._err_mass = 0.0
        self._err_total = 0.0
        self._err_at = 0.0
        self._ttft_ring: list[float] = []
        self._ttft_count = 0
        self._p95: float | None = None
        self._cur_minute = 0
        self._cur_tokens = 0.0
        self._prev_tokens = 0.0

    # ---- load ----------------------------------------------------------------------------------

    def started(self, now: float, tokens: int = 0) -> None:
        self.in_flight += 1
        if tokens:
            self.tokens_in_flight += tokens
        self._seen(now)

    def finished(self, now: float, latency: float, ok: bool, ttft: float | None = None, tokens: int = 0) -> None:
        """An attempt ended. Call once per ``started`` (with its ``tokens``), whatever the outcome."""
        self.in_flight = max(0, self.in_flight - 1)
        if tokens:
            self.tokens_in_flight = max(0, self.tokens_in_flight - tokens)
        self._seen(now)
        self._decay(now)
        self._err_total += 1.0
        if not ok:
            self._err_mass += 1.0
        if self._err_total > self.max_weight:
            # Keep the ratio, bound the weight: recovery time must not grow with the outage's length.
            scale = self.max_weight / self._err_total
            self._err_total *= scale
            self._err_mass *= scale
        if not ok:
            return
        self.latency = self._ewma(self.latency, latency)
        if ttft is not None:
            self.ttft = self._ewma(self.ttft, ttft)
            self._add_ttft(ttft)

    # ---- health --------------------------------------------------------------------------------

    def error_rate_at(self, now: float) -> float:
        """Decayed failures / (decayed outcomes + 1). The +1 prior lets the rate fade to 0 when idle."""
        factor = self._factor(now)
        return (self._err_mass * factor) / (self._err_total * factor + 1.0)

    def healthy_at(self, now: float) -> bool:
        return self.error_rate_at(now) < self.unhealthy_rate

    @property
    def error_rate(self) -> float:
        """The error rate as of the last event this deployment saw."""
        return self.error_rate_at(self._err_at)

    @property
    def health_score(self) -> float:
        """1.0 = no recent failures, 0.0 = everything recent failed (as of the last event)."""
        return 1.0 - self.error_rate

    @property
    def healthy(self) -> bool:
        return self.error_rate < self.unhealthy_rate

    # ---- time to first token -------------------------------------------------------------------

    @property
    def p95_ttft(self) -> float | None:
        """95th percentile of the last 64 TTFTs; None until 5 were seen (use a fixed hedge delay)."""
        if self._p95 is None and len(self._ttft_ring) >= _MIN_P95_SAMPLES:
            ordered = sorted(self._ttft_ring)
            self._p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
        return self._p95

    # ---- tokens --------------------------------------------------------------------------------

    def add_tokens(self, n: float, now: float) -> None:
        self._roll(now)
        self._cur_tokens += n
        self._seen(now)

    def tokens_this_minute(self, now: float) -> float:
        """Tokens in the last 60 s, estimated from two fixed minutes (the sliding-window-counter trick):
        this minute's count plus the previous minute's weighted by how much of it is still in the window.
        """
        self._roll(now)
        elapsed = (now / _MINUTE) - self._cur_minute
        return self._cur_tokens + self._prev_tokens * max(0.0, 1.0 - elapsed)

    # ---- internals -----------------------------------------------------------------------------

    def _ewma(self, old: float | None, sample: float) -> float:
        return sample if old is None else old + self.alpha * (sample - old)

    def _seen(self, now: float) -> None:
        if self.last_seen is None or now > self.last_seen:
            self.last_seen = now

    def _factor(self, now: float) -> float:
        dt = now - self._err_at
        return 0.5 ** (dt / self.error_half_life) if dt > 0 else 1.0

    def _decay(self, now: float) -> None:
        factor = self._factor(now)
        self._err_mass *= factor
        self._err_total *= factor
        self._err_at = max(self._err_at, now)

    def _add_ttft(self, ttft: float) -> None:
        ring = self._ttft_ring
        if len(ring) < _TTFT_RING:
            ring.append(ttft)
        else:
            ring[self._ttft_count % _TTFT_RING] = ttft
        self._ttft_count += 1
        self._p95 = None

    def _roll(self, now: float) -> None:
        minute = int(now // _MINUTE)
        if minute <= self._cur_minute:
            return
        self._prev_tokens = self._cur_tokens if minute == self._cur_minute + 1 else 0.0
        self._cur_tokens = 0.0
        self._cur_minute = minute
