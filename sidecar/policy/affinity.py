"""Session affinity: requests with the same session key go to the deployment that last answered that session,
while it is healthy — provider-side prompt caches (OpenAI, Anthropic) pay off only that way (pure; time passed in).

A bounded table (least recently used out first) of (model group, session key) → deployment id, each entry
forgotten ``ttl`` seconds after its session's last answer. The router moves the remembered deployment to the
front of the strategy's order when it is among the request's candidates and its breaker admits calls; when it
does not (open breaker, rule, capability), the request goes where the strategy says, and the deployment that
answers becomes the session's — the affinity moves.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Sticky:
    """A trail value: the request went first to ``deployment``, its session's deployment in ``group``."""

    deployment: str
    group: str


class AffinityTable:
    __slots__ = ("_entries", "max_entries", "ttl")

    def __init__(self, max_entries: int, ttl: float) -> None:
        self.max_entries = max_entries
        self.ttl = ttl
        self._entries: OrderedDict[tuple[str, str], tuple[str, float]] = OrderedDict()

    def get(self, group: str, session: str, now: float) -> str | None:
        """The session's deployment in ``group``, if it answered within ``ttl``."""
        key = (group, session)
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now - entry[1] > self.ttl:
            del self._entries[key]
            return None
        return entry[0]

    def put(self, group: str, session: str, deployment: str, now: float) -> None:
        """``deployment`` answered the session in ``group``."""
        key = (group, session)
        self._entries[key] = (deployment, now)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
