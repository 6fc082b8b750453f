"""When a quiet stream has stalled: silence measured against the stream's own pace (pure; times passed in).

A fixed idle limit must outlast the slowest healthy stream, so it notices a stalled fast stream far too
late: a stream that sent a token every 20 ms and then nothing for several seconds has stalled, but a 30 s
idle limit would wait until the request's deadline is gone and nothing can be saved. The detector keeps
the smoothed wait between reads and its mean deviation — Jacobson and Karels' retransmission timer (RFC
6298: ``srtt``, ``rttvar``) — and calls the stream stalled after ``pace_multiple * (srtt + 4 * rttvar)`` of
silence, never sooner than ``min_seconds`` and never later than the idle limit. Until ``warmup`` waits
have been seen, only the idle limit applies: a handful of gaps says nothing about a pace.

The waits fed in are the upstream's alone (from the moment the reader asked for more bytes to their
arrival), so time spent writing to a slow app never counts as the upstream's silence.
"""

from __future__ import annotations

from sidecar.config import StallSettings

_GAIN = 0.125  # RFC 6298's alpha: weight of a new wait in the smoothed wait
_DEVIATION_GAIN = 0.25  # RFC 6298's beta: weight of a new deviation in the mean deviation


class StallDetector:
    """One stream's pace. ``limit`` is how long the next wait may last; ``phase`` names the rule that set
    it: ``stall`` (the stream's pace) or ``idle`` (the fixed limit)."""

    __slots__ = ("_settings", "_srtt", "_var", "_waits", "ceiling", "limit", "phase")

    def __init__(self, ceiling: float, settings: StallSettings | None) -> None:
        self.ceiling = ceiling
        self._settings = settings
        self._srtt = 0.0
        self._var = 0.0
        self._waits = 0
        self.limit = ceiling
        self.phase = "idle"

    def waited(self, seconds: float) -> None:
        """Bytes arrived after ``seconds`` of waiting for them: update the pace and the next limit."""
        settings = self._settings
        if settings is None:
            return
        seconds = max(0.0, seconds)
        if self._waits == 0:
            self._srtt, self._var = seconds, seconds / 2
        else:
            self._var += _DEVIATION_GAIN * (abs(self._srtt - seconds) - self._var)
            self._srtt += _GAIN * (seconds - self._srtt)
        self._waits += 1
        if self._waits < settings.warmup:
            return
        paced = max(settings.min_seconds, settings.pace_multiple * (self._srtt + 4 * self._var))
        if paced < self.ceiling:
            self.limit, self.phase = paced, "stall"
        else:
            self.limit, self.phase = self.ceiling, "idle"
