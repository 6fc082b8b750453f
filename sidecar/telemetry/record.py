"""One request's facts, gathered once by the handler and fed to metrics, the log line and the span."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field

from sidecar.core.types import Usage

# The router's Outcome for the request being served, noted when its first attempt starts, so the handler can
# record attempts and errors even when routing ends in an exception (which carries no Outcome).
CURRENT_OUTCOME: ContextVar[object | None] = ContextVar("sidecar_current_outcome", default=None)


@dataclass(slots=True)
class RequestRecord:
    request_id: str
    group: str  # "" when the app asked for a model the sidecar does not serve (not a label value)
    deployment: str = ""
    outcome: str = "error"  # success, error, cancelled
    status: int = 500
    seconds: float = 0.0
    attempts: int = 0
    errors: list[str] = field(default_factory=list)
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (deployment, error class, cause)
    fallback: str | None = None
    fallback_cause: str | None = None
    panic: str | None = None  # the deployment sent to past its open breaker (nothing else was left)
    ttft: float | None = None
    usage: Usage | None = None
    cost: float | None = None
    stream: bool = False
    trace_id: str | None = None
    error_type: str | None = None
    dropped: tuple[str, ...] | None = None  # fields drop_params removed (the provider cannot take them)
