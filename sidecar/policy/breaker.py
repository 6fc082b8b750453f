"""Per-deployment circuit breaker: CLOSED → OPEN → HALF_OPEN → CLOSED, with time passed in.

The router asks ``allow(now)`` before an attempt and reports the verdict with ``record_success`` /
``record_failure`` (only for errors whose ``counts_as_failure`` is true) or ``release_probe`` (no verdict).
Every state change comes back as a ``Transition`` value for the caller to log and put on the trace.

State changes are lazy: an OPEN breaker whose cooldown has passed still reports OPEN until the next
``allow`` call moves it to HALF_OPEN (use ``ready_at`` to ask "could it be tried now?" without acting).

Verdicts are not tied to the request that carried them: a request admitted while CLOSED that finishes
while HALF_OPEN counts as the verdict on the deployment's current health — it is as recent as the probe.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class BreakerState(StrEnum):
    """A ``str`` enum: ``BreakerState.OPEN == "open"``, and ``str()`` gives the bare value for logs."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class Transition:
    """A state change, returned for the caller to log and trace. ``reason`` is a short snake_case tag."""

    deployment: str
    old: BreakerState
    new: BreakerState
    reason: str
    at: float


_BUCKETS = 10


class _Window:
    """Request and failure counts over the last ``window`` seconds in ``_BUCKETS`` time buckets.

    O(1) amortised per update: running totals are kept, and a bucket's counts are subtracted when time
    moves past it. The covered span is between ``window * (1 - 1/_BUCKETS)`` and ``window`` seconds.
    """

    __slots__ = ("_epoch", "_fails", "_totals", "_width", "failures", "total")

    def __init__(self, window: float) -> None:
        self._width = window / _BUCKETS
        self._totals = [0] * _BUCKETS
        self._fails = [0] * _BUCKETS
        self._epoch: int | None = None
        self.total = 0
        self.failures = 0

    def add(self, now: float, failed: bool) -> None:
        self.advance(now)
        i = (self._epoch or 0) % _BUCKETS
        self._totals[i] += 1
        self.total += 1
        if failed:
            self._fails[i] += 1
            self.failures += 1

    def advance(self, now: float) -> None:
        epoch = int(now // self._width)
        if self._epoch is None:
            self._epoch = epoch
            return
        # A clock that steps backwards counts into the current bucket rather than rewriting history.
        for k in range(1, min(epoch - self._epoch, _BUCKETS) + 1):
            i = (self._epoch + k) % _BUCKETS
            self.total -= self._totals[i]
            self.failures -= self._fails[i]
            self._totals[i] = self._fails[i] = 0
        self._epoch = max(epoch, self._epoch)

    def clear(self) -> None:
        self._totals = [0] * _BUCKETS
        self._fails = [0] * _BUCKETS
        self.total = self.failures = 0


class CircuitBreaker:
    """One deployment's breaker.

    Two ways to open, because they catch different failures:

    * ``allowed_fails`` consecutive failures — a deployment that is down. Fast, and works at any traffic
      level, but one success in between resets it, so a deployment failing every other request would
      never open.
    * an error rate ``>= error_rate_threshold`` over the last ``window`` seconds, once at least
      ``min_requests`` outcomes were seen there — a deployment that is *flaky* (a provider shedding half
      its load). ``min_requests`` keeps a quiet deployment from opening on two unlucky requests; those
      cases are the consecutive rule's job. ``error_rate_threshold=None`` disables this rule.

    An OPEN breaker rejects until ``open_until``; then the first ``allow`` moves it to HALF_OPEN and admits
    exactly one probe. The probe's success closes it (counters and window reset, so old failures cannot
    re-open it at once); its failure re-opens it for ``cooldown``. ``release_probe`` lets the next caller
    probe when the probe ended without a verdict. A probe that is never reported is presumed lost after
    ``probe_lease`` seconds, so a forgotten report cannot exclude a deployment forever.
    """

    __slots__ = ("_consecutive", "_open_until", "_probe_started", "_state", "_window", "allowed_fails",
                 "cooldown", "deployment_id", "error_rate_threshold", "min_requests", "probe_lease")

    def __init__(
        self,
        deployment_id: str,
        allowed_fails: int,
        cooldown: float,
        *,
        error_rate_threshold: float | None = 0.5,
        window: float = 30.0,
        min_requests: int = 20,
        probe_lease: float = 600.0,
    ) -> None:
        if allowed_fails < 1:
            raise ValueError("allowed_fails must be >= 1")
        if window <= 0:
            raise ValueError("window must be > 0")
        self.deployment_id = deployment_id
        self.allowed_fails = allowed_fails
        self.cooldown = max(0.0, cooldown)
        self.error_rate_threshold = error_rate_threshold
        self.min_requests = max(1, min_requests)
        self.probe_lease = probe_lease
        self._state = BreakerState.CLOSED
        self._open_until = 0.0
        self._consecutive = 0
        self._probe_started: float | None = None
        self._window = _Window(window)

    @property
    def state(self) -> BreakerState:
        return self._state

    @property
    def open_until(self) -> float:
        """When an OPEN breaker starts admitting a probe (meaningless in other states)."""
        return self._open_until

    @property
    def consecutive_failures(self) -> int:
        return self._consecutive

    def allow(self, now: float) -> bool:
        """May an attempt go to this deployment now? In HALF_OPEN, True for exactly one caller."""
        return self.admit(now)[0]

    def admit(self, now: float) -> tuple[bool, Transition | None]:
        """``allow`` that also returns the OPEN → HALF_OPEN transition it caused, for the trace."""
        state = self._state
        if state is BreakerState.CLOSED:
            return True, None
        if state is BreakerState.OPEN:
            if now < self._open_until:
                return False, None
            self._probe_started = now
            return True, self._move(BreakerState.HALF_OPEN, "cooldown_elapsed", now)
        if self._probe_started is not None and now - self._probe_started < self.probe_lease:
            return False, None
        self._probe_started = now
        return True, None

    def record_success(self, now: float) -> Transition | None:
        self._consecutive = 0
        if self._state is BreakerState.HALF_OPEN:
            self._probe_started = None
            self._window.clear()
            return self._move(BreakerState.CLOSED, "probe_succeeded", now)
        if self._state is BreakerState.CLOSED:
            self._window.add(now, failed=False)
        # OPEN: a straggler admitted before the breaker opened; the probe decides, not it.
        return None

    def record_failure(self, now: float, *, reopen_after: float | None = None) -> Transition | None:
        """Call only for errors with ``counts_as_failure``; others are the app's fault, not the upstream's.

        A failed probe re-opens the breaker for ``cooldown``, or for ``reopen_after`` when the upstream said
        how long (a 429's Retry-After): a throttled deployment is not broken, and it named its own pause.
        """
        state = self._state
        if state is BreakerState.HALF_OPEN:
            pause = self.cooldown if reopen_after is None else max(0.0, reopen_after)
            return self._open(now, now + pause, "probe_failed")
        if state is BreakerState.OPEN:
            # Stragglers must not extend the cooldown: that would delay recovery for no new evidence.
            return None
        self._consecutive += 1
        self._window.add(now, failed=True)
        if self._consecutive >= self.allowed_fails:
            return self._open(now, now + self.cooldown, "consecutive_failures")
        if self._error_rate_exceeded():
            return self._open(now, now + self.cooldown, "error_rate")
        return None

    def cool_down(self, now: float, seconds: float) -> Transition | None:
        """Skip the deployment for ``seconds`` (a 429 with Retry-After), even below the failure threshold.

        Already OPEN: ``open_until`` is extended, never shortened, and no transition is returned.
        """
        if seconds <= 0:
            return None
        until = now + seconds
        if self._state is BreakerState.OPEN:
            self._open_until = max(self._open_until, until)
            return None
        return self._open(now, until, "retry_after")

    def reset(self, now: float, reason: str) -> Transition | None:
        """Forget the failures seen so far (the deployment's key changed: they were the old key's)."""
        self._consecutive = 0
        self._probe_started = None
        self._window.clear()
        return self._move(BreakerState.CLOSED, reason, now)

    def release_probe(self) -> None:
        """The probe ended without a verdict (app disconnected, app's fault): let the next caller probe."""
        if self._state is BreakerState.HALF_OPEN:
            self._probe_started = None

    def ready_at(self, now: float) -> float:
        """When the deployment may be tried again: ``now`` if ``allow(now)`` would admit it.

        With a probe in flight the verdict is pending; a failing probe re-opens it for ``cooldown``, so
        ``now + cooldown`` is the estimate (bounded by the probe's lease).
        """
        if self._state is BreakerState.CLOSED:
            return now
        if self._state is BreakerState.OPEN:
            return max(now, self._open_until)
        if self._probe_started is None:
            return now
        lease_end = self._probe_started + self.probe_lease
        return max(now, min(now + self.cooldown, lease_end))

    def _error_rate_exceeded(self) -> bool:
        threshold = self.error_rate_threshold
        window = self._window
        if threshold is None or window.total < self.min_requests:
            return False
        return window.failures >= threshold * window.total

    def _open(self, now: float, until: float, reason: str) -> Transition | None:
        self._open_until = until
        self._probe_started = None
        self._consecutive = 0
        return self._move(BreakerState.OPEN, reason, now)

    def _move(self, new: BreakerState, reason: str, now: float) -> Transition | None:
        old, self._state = self._state, new
        if old is new:
            return None
        return Transition(self.deployment_id, old, new, reason, now)
