"""Token buckets for per-deployment rpm / tpm limits, with time passed in.

A bucket holds up to ``burst`` units (default: one minute's worth, which is what an rpm/tpm quota
allows) and refills continuously at ``rate_per_minute / 60`` per second. It starts full.
"""

from __future__ import annotations

import math


class TokenBucket:
    """``take(n, now)`` → 0.0 when granted (and consumed), else the seconds to wait (nothing consumed).

    A request larger than the whole burst could never be granted by the usual rule, so it is granted
    when the bucket is full and leaves it in debt: a huge prompt waits for a full minute's budget instead
    of starving forever, and the debt holds back what follows until it is paid off.
    """

    __slots__ = ("_last", "_level", "burst", "per_second")

    def __init__(self, rate_per_minute: float, burst: float | None = None) -> None:
        if not rate_per_minute > 0 or math.isinf(rate_per_minute):
            raise ValueError("rate_per_minute must be a positive finite number")
        self.per_second = rate_per_minute / 60.0
        self.burst = float(rate_per_minute if burst is None else burst)
        if not self.burst > 0:
            raise ValueError("burst must be > 0")
        self._level = self.burst
        self._last: float | None = None

    def available(self, now: float) -> float:
        """Units that could be taken now (negative while in debt)."""
        self._refill(now)
        return self._level

    def take(self, n: float, now: float) -> float:
        self._refill(now)
        if n <= 0:
            return 0.0
        need = min(n, self.burst)
        if self._level >= need:
            self._level -= n
            return 0.0
        return (need - self._level) / self.per_second

    def consume(self, n: float, now: float) -> None:
        """Charge ``n`` unconditionally (may go into debt); negative ``n`` refunds, up to ``burst``.

        For tpm: ``take`` an estimate before the call, then ``consume(actual - estimate, now)`` after.
        """
        self._refill(now)
        self._level = min(self.burst, self._level - n)

    def _refill(self, now: float) -> None:
        last = self._last
        if last is not None and now > last:
            self._level = min(self.burst, self._level + (now - last) * self.per_second)
        if last is None or now > last:
            self._last = now
