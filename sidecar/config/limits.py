"""``sidecar_settings.limits`` and ``sidecar_settings.listeners``: every resource bounded where it enters.

Each limit is a named setting with a default that suits a sidecar of a few hundred MiB next to one app;
``check-config`` names a bad value with its location like any other key.
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.config.reader import Section

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class LimitSettings:
    """``sidecar_settings.limits``: how much of an upstream's answer the sidecar takes."""

    # -- upstream answers held in memory (egress): one whole (non-streamed) answer, decoded; all whole answers
    #    being read at once; one event of a streamed answer. Beyond them the answer is an upstream error.
    upstream_answer_mb: float = 64.0
    upstream_answers_total_mb: float = 128.0
    upstream_sse_event_mb: float = 4.0
    # -- a streamed answer's length (issue 13): an endless or runaway stream ends at whichever comes first,
    #    with an upstream error (in-band once the app has part of the answer).
    max_stream_mb: float = 64.0
    max_stream_events: int = 1_000_000

    @property
    def max_stream_bytes(self) -> int:
        return int(self.max_stream_mb * MIB)


@dataclass(frozen=True, slots=True)
class ListenerSettings:
    """``sidecar_settings.listeners``: what one client connection may hold, on both ports.

    A connection must send a request's head within ``header_timeout`` of its first byte (the first request's,
    of the connection's opening) and its body within ``body_timeout``; an idle keep-alive connection closes
    after ``idle_timeout``. Each port takes at most its own number of connections, the oldest idle one making
    room for a newcomer — the admin port's cap is small and separate, so connections to it (it listens on the
    pod's address) can never take the descriptors the API needs.
    """

    header_timeout: float = 10.0
    body_timeout: float = 60.0
    idle_timeout: float = 75.0
    max_connections: int = 1024
    admin_max_connections: int = 32


def limit_settings(s: Section) -> LimitSettings:
    default = LimitSettings()
    settings = LimitSettings(
        upstream_answer_mb=s.number("upstream_answer_mb", default.upstream_answer_mb, minimum=0.001),
        upstream_answers_total_mb=s.number("upstream_answers_total_mb", default.upstream_answers_total_mb,
                                           minimum=0.001),
        upstream_sse_event_mb=s.number("upstream_sse_event_mb", default.upstream_sse_event_mb, minimum=0.001),
        max_stream_mb=s.number("max_stream_mb", default.max_stream_mb, minimum=0.001),
        max_stream_events=s.integer("max_stream_events", default.max_stream_events, minimum=1),
    )
    s.finish()
    return settings


def listener_settings(s: Section) -> ListenerSettings:
    default = ListenerSettings()
    settings = ListenerSettings(
        header_timeout=s.number("header_timeout", default.header_timeout, minimum=0.001),
        body_timeout=s.number("body_timeout", default.body_timeout, minimum=0.001),
        idle_timeout=s.number("idle_timeout", default.idle_timeout, minimum=0.001),
        max_connections=s.integer("max_connections", default.max_connections, minimum=1),
        admin_max_connections=s.integer("admin_max_connections", default.admin_max_connections, minimum=1),
    )
    s.finish()
    return settings
