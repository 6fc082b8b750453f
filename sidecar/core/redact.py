"""One redaction for every text that leaves the sidecar: log lines, spans, and the errors the app receives.

An upstream's error message may echo anything — our Authorization header, the key itself, the URL it was
called on, an address inside the provider's network — and the sidecar passes the useful part of that message
on. ``Redactor`` masks, keeping the rest of the message readable:

* the configured secret values, exactly (and a secret's head left dangling by clipping: ``sk-abc…``);
* by shape: ``Bearer``/``Basic`` credentials, ``api_key=…``-style assignments, key-shaped strings
  (``sk-…``, ``AIza…``, ``ya29.…``, ``AKIA…``);
* every URL (``scheme://…``) → ``[url]``;
* the hosts of the configured deployments → ``[host]``, and internal host names (``localhost``,
  ``*.svc``, ``*.cluster.local``, ``*.internal``, ``*.local``) → ``[host]``;
* IP addresses that are not globally routable (private, loopback, link-local, CGNAT, unique-local) →
  ``[address]``.

Everything is compiled into one pattern when the configuration is loaded (``configure``); a call is one
regex pass. Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

REDACTED = "[REDACTED]"
URL = "[url]"
HOST = "[host]"
ADDRESS = "[address]"
CLIP = "…"  # what clipped upstream messages end with
MIN_SECRET = 4  # shorter values would mask ordinary words

_KEY_SHAPES = [
    r"(?i:\b(?P<sc>bearer|basic)\s+)[A-Za-z0-9._~+/=-]{6,}",
    r"(?P<kp>(?i:(?<![\w-])\"?(?:authorization|x-api-key|api[-_]?key|x-goog-api-key|password|secret|token)\"?"
    r"\s*[:=]\s*\"?))"
    r"(?i:(?:bearer|basic)\s+)?[^\s\",}]{4,}",
    r"\b(?:sk|pk|rk|gsk|xai|fw)[-_][A-Za-z0-9_-]{8,}",
    r"\bAIza[0-9A-Za-z_-]{20,}",
    r"\bya29\.[0-9A-Za-z_.-]{20,}",  # a Google OAuth access token (Vertex AI)
    r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",  # an AWS access key id (Bedrock)
]
_KEY_SHAPED = re.compile("|".join(_KEY_SHAPES[2:]))  # the shapes that need no context around them


def looks_secret(text: str) -> bool:
    """Does ``text`` contain something shaped like a provider key or token (not to be echoed back)?"""
    return _KEY_SHAPED.search(text) is not None


_URL = r"(?P<url>\b[A-Za-z][A-Za-z0-9+.-]{1,15}://[^\s\"'<>`]+)"
_PORT = r"(?::\d{1,5})?"
_INTERNAL_HOST = (r"(?P<ih>(?i:\blocalhost\b|\b(?:[a-z0-9-]+\.)+"
                  r"(?:svc|cluster\.local|internal|local|localdomain|home\.arpa)\b))" + _PORT)
_IPV4 = r"(?P<v4>\b(?:\d{1,3}\.){3}\d{1,3}\b)" + _PORT
_IPV6 = r"(?<![\w:.])\[?(?P<v6>(?i:[0-9a-f]{0,4}(?::[0-9a-f]{0,4}){2,7}))(?:\]" + _PORT + r")?(?![\w:])"


class Redactor:
    """Masks secrets, key-shaped strings, URLs, deployment hosts and internal addresses in text."""

    __slots__ = ("_hosts", "_pattern", "_secrets")

    def __init__(self, secrets: Iterable[str] = (), hosts: Iterable[str] = ()) -> None:
        self._secrets: tuple[str, ...] = ()
        self._hosts: tuple[str, ...] = ()
        self._pattern = re.compile("")
        self.configure(secrets, hosts)

    def configure(self, secrets: Iterable[str] = (), hosts: Iterable[str] | None = None) -> None:
        """Compile the pattern for these secret values and deployment hosts (``None``: keep the hosts)."""
        self._secrets = tuple(sorted({s for s in secrets if len(s) >= MIN_SECRET}, key=len, reverse=True))
        if hosts is not None:
            self._hosts = tuple(sorted({h.lower().strip("[]") for h in hosts if h}, key=len, reverse=True))
        parts = [re.escape(s) for s in self._secrets] + _KEY_SHAPES + [_URL]
        if self._hosts:
            names = "|".join(re.escape(h) for h in self._hosts)
            parts.append(rf"(?P<dh>(?i:(?<![\w.-])(?:{names})(?![\w-])))" + _PORT)
        parts += [_INTERNAL_HOST, _IPV4, _IPV6]
        self._pattern = re.compile("|".join(f"(?:{p})" for p in parts))

    def update_secrets(self, secrets: Iterable[str]) -> None:
        """Recompile only when the secret values changed (a rotated key file)."""
        values = tuple(sorted({s for s in secrets if len(s) >= MIN_SECRET}, key=len, reverse=True))
        if values != self._secrets:
            self.configure(values)

    def __call__(self, text: str) -> str:
        if text.endswith(CLIP):
            text = self._clipped_secret(text)
        return self._pattern.sub(self._mask, text)

    def _clipped_secret(self, text: str) -> str:
        """A message clipped in the middle of a configured secret ends with the secret's head: mask it."""
        head = text[: -len(CLIP)]
        for secret in self._secrets:
            for n in range(min(len(secret) - 1, len(head)), MIN_SECRET - 1, -1):
                if head.endswith(secret[:n]):
                    return head[:-n] + REDACTED + CLIP
        return text

    @staticmethod
    def _mask(match: re.Match[str]) -> str:
        kind = match.lastgroup
        if kind is None:
            return REDACTED
        if kind == "sc":
            return f"{match.group('sc')} {REDACTED}"
        if kind == "kp":
            return f"{match.group('kp')}{REDACTED}"
        if kind == "url":
            url = match.group("url")
            kept = url.rstrip(".,;:!?)]}'")
            return URL + url[len(kept):]
        if kind in ("dh", "ih"):
            return HOST
        return ADDRESS if _internal(match.group(kind)) else match.group(0)


def _internal(literal: str) -> bool:
    """An IP literal that is not globally routable (anything that fails to parse is not an address)."""
    try:
        return not ipaddress.ip_address(literal.strip("[]")).is_global
    except ValueError:
        return False


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, ending with ``…`` when cut (the redactor knows the mark)."""
    return text if len(text) <= limit else text[:limit] + CLIP
