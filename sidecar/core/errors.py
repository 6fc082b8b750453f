"""The error tree: every failure the sidecar can meet, classified once.

    SidecarError                      anything we answer with an error body
    ├── RequestError                  the app's request is at fault: never retried, never failed over
    │   ├── InvalidRequest            400, names the bad field (``param``)
    │   ├── InboundAuthError          401, missing or wrong inbound key
    │   ├── UnknownModel              404, no model group of that name
    │   ├── BodyTooLarge              413
    │   └── RequestTimeout            408, the app's body did not arrive in time
    ├── UpstreamError                 one upstream attempt failed; ``error_class`` is the telemetry name
    │   ├── RateLimited               rate_limited  (429, Anthropic 529, Gemini RESOURCE_EXHAUSTED)
    │   ├── UpstreamServerError       server_error  (5xx, malformed or truncated body)
    │   ├── UpstreamTimeout           timeout       (connect, first byte, idle, whole request)
    │   ├── UpstreamConnectionError   connection    (refused, reset, DNS, TLS, proxy)
    │   ├── UpstreamAuthError         auth          (401/403: our key, not the app's; a proxy's 407)
    │   ├── UpstreamBadRequest        bad_request   (400/404/413/422 caused by the request: pass through)
    │   ├── ContextWindowExceeded     context_window_exceeded
    │   └── ContentPolicyViolation    content_policy
    ├── BudgetExceeded                429, a configured spend budget is used up (Retry-After: its reset)
    ├── AnswerTooLarge                502, a streamed answer passed sidecar_settings.limits: the request ends
    ├── RuleRefused                   403, a request rule allows no deployment of the model group
    └── RoutingError                  the sidecar ran out of options
        ├── NoHealthyUpstream         503
        ├── AllRateLimited            429 with Retry-After of the soonest recovery
        └── DeadlineExceeded          504

Each class carries the HTTP status the app sees, the OpenAI error ``type``, whether a retry on the same
deployment can help (``retryable``) and whether it counts against the deployment's circuit breaker
(``counts_as_failure``, pybreaker's ``is_system_error``). Messages are written for the app: they never
contain provider keys, upstream URLs or internal addresses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class SidecarError(Exception):
    """Base of every error the sidecar answers with."""

    status: int = 500
    type: str = "api_error"
    code: str | None = None
    error_class: str = "internal"
    retryable: bool = False
    counts_as_failure: bool = False
    # What routing had done when this error ended the request (a ``routing.Outcome``), for the x-sidecar-*
    # headers of the error answer; set by the pipeline.
    outcome: object | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


# ---- the app's fault -------------------------------------------------------------------------------


class RequestError(SidecarError):
    status = 400
    type = "invalid_request_error"
    error_class = "bad_request"


class InvalidRequest(RequestError):
    pass


class InboundAuthError(RequestError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"
    error_class = "inbound_auth"


class UnknownModel(RequestError):
    status = 404
    code = "model_not_found"
    error_class = "unknown_model"


class BodyTooLarge(RequestError):
    status = 413
    code = "request_too_large"
    error_class = "body_too_large"


class RequestTimeout(RequestError):
    status = 408
    code = "request_timeout"
    error_class = "request_timeout"


# ---- one upstream attempt failed ----------------------------------------------------------------


class UpstreamError(SidecarError):
    """An upstream attempt's failure. ``upstream_status`` is what the provider said (0: no answer).

    ``cause`` tells an operator what went wrong on the way (``dns``, ``refused``, ``tls_verify``,
    ``proxy_auth``, ``connect_timeout``, ``closed``, ``too_large``, ...): it goes to the log line, the
    attempt's span and a metric label, never into the message the app sees.
    """

    status = 502
    type = "api_error"
    retryable = True
    counts_as_failure = True
    committed = False  # set when the failure came after the app had part of a streamed answer
    partial: Sequence[Any] = ()  # a stream's chunks decoded from the same read before the failure (sent first)

    def __init__(
        self,
        message: str,
        *,
        upstream_status: int = 0,
        retry_after: float | None = None,
        body: bytes | None = None,
        param: str | None = None,
        code: str | None = None,
        cause: str | None = None,
    ) -> None:
        super().__init__(message, param=param, code=code)
        self.upstream_status = upstream_status
        self.retry_after = retry_after
        self.body = body
        self.cause = cause


    @property
    def cause_label(self) -> str:
        """What the log line, the span and the metric say went wrong: the cause, else the upstream's status."""
        if self.cause:
            return self.cause
        if self.upstream_status >= 400:
            return f"http_{self.upstream_status}"
        return self.error_class


class RateLimited(UpstreamError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"
    error_class = "rate_limited"


class UpstreamServerError(UpstreamError):
    status = 502
    error_class = "server_error"


def unreadable(error: Exception, what: str) -> UpstreamServerError:
    """``what`` (an answer, an event) from the upstream that a reader could not make sense of — its own
    ``KeyError``, ``TypeError``, ``struct.error``…: a broken answer, failed over like a 5xx, never the sidecar's
    own 500. The message names the exception's type only, never the upstream's text."""
    return UpstreamServerError(f"the upstream sent {what} the sidecar could not read ({type(error).__name__})",
                               upstream_status=200, cause="bad_answer")


class UpstreamTimeout(UpstreamError):
    """``phase`` says which limit fired: connect, first_byte, idle, stall (the stream's own pace) or total."""

    status = 504
    type = "timeout_error"
    error_class = "timeout"

    def __init__(self, message: str, *, phase: str, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.phase = phase


class UpstreamConnectionError(UpstreamError):
    status = 502
    error_class = "connection"


class UpstreamAuthError(UpstreamError):
    """The provider refused *our* credentials: retrying the same key cannot help; fail over."""

    status = 502
    error_class = "auth"
    retryable = False


class UpstreamBadRequest(UpstreamError):
    """The provider rejected the request itself: passed through to the app with its status."""

    status = 400
    type = "invalid_request_error"
    error_class = "bad_request"
    retryable = False
    counts_as_failure = False


class ContextWindowExceeded(UpstreamBadRequest):
    code = "context_length_exceeded"
    error_class = "context_window_exceeded"


class ContentPolicyViolation(UpstreamBadRequest):
    code = "content_filter"
    error_class = "content_policy"


# ---- a spend budget is used up --------------------------------------------------------------------


class BudgetExceeded(SidecarError):
    """Refused before any upstream call; ``retry_after`` is the time until the budget's window resets."""

    status = 429
    type = "budget_exceeded"
    code = "budget_exceeded"
    error_class = "budget_exceeded"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


# ---- an upstream's answer is too long --------------------------------------------------------------


class AnswerTooLarge(SidecarError):
    """A streamed answer went past ``sidecar_settings.limits`` (bytes or events): a runaway or endless stream.

    Not an ``UpstreamError``: the request ends here (in-band once the app has part of the answer) rather than
    continuing the same runaway answer on another deployment."""

    status = 502
    code = "answer_too_large"
    error_class = "answer_too_large"


# ---- the sidecar ran out of options ---------------------------------------------------------------


class RuleRefused(SidecarError):
    """A request rule (``sidecar_settings.rules``) restricts the request to deployments carrying (or not
    carrying) some tags, and no deployment of its model group or fallbacks qualifies: refused, never leaked."""

    status = 403
    type = "permission_error"
    code = "rule_refused"
    error_class = "rule_refused"


class RoutingError(SidecarError):
    status = 503
    type = "service_unavailable_error"
    error_class = "no_upstream"


class NoHealthyUpstream(RoutingError):
    code = "no_healthy_upstream"


class AllRateLimited(RoutingError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"
    error_class = "rate_limited"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DeadlineExceeded(RoutingError):
    status = 504
    type = "timeout_error"
    code = "deadline_exceeded"
    error_class = "deadline"
