"""What to do after one upstream attempt failed: retry the same deployment, fail over, or give up.

The whole rulebook for "what happens on a 429 / 500 / timeout" is ``RetryPolicy.decide``:

==========================  ===================================================================
error_class                 decision
==========================  ===================================================================
rate_limited                retry up to ``RateLimitErrorRetries`` (else ``num_retries``), waiting
                            Retry-After (capped) or backoff
server_error, connection    retry up to ``InternalServerErrorRetries`` (else ``num_retries``),
                            waiting backoff (or the upstream's Retry-After)
timeout, phase connect      like connection (nothing was accepted); ``TimeoutErrorRetries`` wins
timeout, any other phase    the upstream took the request and went silent: fail over at once,
                            unless ``TimeoutErrorRetries`` is explicitly set
auth                        fail over (our key was refused); ``AuthenticationErrorRetries`` may
                            allow retries, e.g. while a rotated key file is picked up
bad_request, content_policy give up: pass the error to the app (``BadRequestErrorRetries`` /
                            ``ContentPolicyViolationErrorRetries`` may allow retries, for LiteLLM
                            configs that set them); content-policy fallbacks are the plan's job
context_window_exceeded     give up: the same deployment can never take it; the plan knows the
                            context-window fallbacks
anything after the first    fail over: the router continues the stream on the next candidate
byte (``bytes_received``)
==========================  ===================================================================

Retries are spent where LiteLLM spends them: inside the model group first. While the group has another
deployment that can be tried (``has_alternative``), any retryable failure moves there at once — a healthy
sibling answers sooner than any wait on the failing one. On the group's last candidate the budget above is
spent on that deployment, waiting as the table says; only then does the router walk the ``fallbacks``
groups (a different model than the app asked for). ``num_retries: 0`` therefore goes straight on.

Backoff is exponential with full jitter — ``uniform(0, min(8 s, 0.25 s * 2**retries_done))`` — so
retries from many concurrent requests spread out instead of arriving together (AWS "Exponential Backoff
and Jitter"). The first retry waits at most 250 ms: long enough to skip a blip, short enough that a
request with a backup still fails over well within a second. A wait that would end at or after the
request's deadline is never slept: the decision becomes ``Failover("deadline")``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from sidecar.config import RouterSettings
from sidecar.core.errors import UpstreamError, UpstreamTimeout

BACKOFF_BASE = 0.25
BACKOFF_CAP = 8.0
PASS_THROUGH = frozenset({"bad_request", "context_window_exceeded", "content_policy"})
_SILENT_PHASES = frozenset({"first_byte", "idle", "stall", "total", "upstream"})


@dataclass(frozen=True, slots=True)
class Retry:
    """Sleep ``delay`` seconds, then try the same deployment again."""

    delay: float
    reason: str


@dataclass(frozen=True, slots=True)
class Failover:
    """Move on to the next candidate (next deployment, then the next fallback group)."""

    reason: str


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Stop and pass this error to the app (unless the plan has a fallback for its cause)."""

    reason: str


Decision = Retry | Failover | GiveUp


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retry budgets per ``error_class`` (absent: no retries) plus the backoff and Retry-After limits."""

    budgets: Mapping[str, int] = field(default_factory=dict)
    silent_timeout_retries: int = 0
    retry_after_cap: float = 60.0
    min_wait: float = 0.0  # router_settings.retry_after: the shortest backoff (an upstream's Retry-After wins)
    base: float = BACKOFF_BASE
    cap: float = BACKOFF_CAP

    @classmethod
    def from_settings(cls, router: RouterSettings, retry_after_cap: float) -> RetryPolicy:
        policy, n = router.retry_policy, router.num_retries
        budgets = {
            "rate_limited": policy.get("RateLimitErrorRetries", n),
            "server_error": policy.get("InternalServerErrorRetries", n),
            "connection": policy.get("InternalServerErrorRetries", n),
            "timeout": policy.get("TimeoutErrorRetries", n),
            "auth": policy.get("AuthenticationErrorRetries", 0),
            "bad_request": policy.get("BadRequestErrorRetries", 0),
            "content_policy": policy.get("ContentPolicyViolationErrorRetries", 0),
        }
        return cls(
            budgets=budgets,
            silent_timeout_retries=policy.get("TimeoutErrorRetries", 0),
            retry_after_cap=retry_after_cap,
            min_wait=router.retry_after,
        )

    def decide(
        self,
        error: UpstreamError,
        retries_done: int,
        now: float,
        deadline: float,
        rng: random.Random,
        *,
        bytes_received: bool = False,
        has_alternative: bool = False,
    ) -> Decision:
        """Decide after a failed attempt.

        ``retries_done``: retries already made on this deployment for this request. ``bytes_received``:
        the attempt had sent the app something (a cut stream) — never retried here. ``has_alternative``:
        another deployment *of the same model group* can be tried now; the failure then moves there at once.
        Fallback groups are not alternatives: the budget is spent on the group's last candidate first.
        """
        cls_ = error.error_class
        budget = self.budget(error)
        if cls_ in PASS_THROUGH and (budget == 0 or retries_done >= budget):
            return GiveUp(cls_)
        if bytes_received:
            return Failover(f"{cls_}_after_first_byte")
        if retries_done >= budget:
            return Failover(self._exhausted_reason(error, budget))
        if has_alternative:
            return Failover(_reason(error))
        delay = self.delay(error, retries_done, rng)
        if now + delay >= deadline:
            return Failover("deadline")
        return Retry(delay, cls_)

    def budget(self, error: UpstreamError) -> int:
        """How many retries on the same deployment this error allows in total."""
        cls_ = error.error_class
        if cls_ == "timeout" and getattr(error, "phase", None) in _SILENT_PHASES:
            return self.silent_timeout_retries
        if cls_ in self.budgets:
            return self.budgets[cls_]
        # An unclassified upstream error: treat a retryable one like a server error.
        return self.budgets.get("server_error", 0) if error.retryable else 0

    def delay(self, error: UpstreamError, retries_done: int, rng: random.Random) -> float:
        """Retry-After when the upstream gave one (capped), else exponential backoff with full jitter, at least
        ``min_wait``."""
        if error.retry_after is not None:
            return min(max(0.0, error.retry_after), self.retry_after_cap)
        return max(self.min_wait, rng.uniform(0.0, min(self.cap, self.base * 2.0 ** min(retries_done, 32))))

    @staticmethod
    def _exhausted_reason(error: UpstreamError, budget: int) -> str:
        return _reason(error) if budget == 0 else f"{error.error_class}_retries_exhausted"


def _reason(error: UpstreamError) -> str:
    """The failover reason for ``error``: its class, and for a timeout which limit fired."""
    return f"timeout_{error.phase}" if isinstance(error, UpstreamTimeout) else error.error_class
