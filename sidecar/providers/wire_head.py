"""Request heads for the upstream client (``providers.wire``): what a URL turns into, computed once per URL.

The request line and header lines are encoded once per (URL, header mapping, proxy choice); a request then
only adds its content-length (and its trace context) and body. Header names and values are checked here
too: CR, LF or NUL would let a value inject fields, so they are refused (the config checks them at load).
"""

from __future__ import annotations

import base64
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from sidecar.config.egress import Proxy, ProxySettings

# Hop-by-hop or framing fields we own; answers are asked for uncompressed (``accept-encoding: identity``).
_OWN_FIELDS = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive", "te",
                         "upgrade", "accept-encoding", "expect", "proxy-authorization"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(slots=True)
class Target:
    """What one upstream URL, header mapping and proxy choice turn into, computed once."""

    key: tuple[str, str, int, Proxy | None]  # the connections it may use
    host: str
    port: int
    ssl: ssl.SSLContext | None
    proxy: Proxy | None
    override: str | None  # the deployment's proxy setting this was built for
    headers: Mapping[str, str]  # the mapping this was built from (identity checked first, then equality)
    head: bytes  # request line and header lines, then b"content-length: "
    untraced: bytes  # request line and header lines without trace context ones, without content-length


def build_target(url: str, headers: Mapping[str, str], override: str | None, user_agent: str, proxies: ProxySettings,
                 tls: ssl.SSLContext | None) -> Target:
    """The connections a URL uses (with its proxy) and its request head; ``ValueError`` if it cannot be sent."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError("upstream URLs must be http:// or https:// with a host")
    host = parts.hostname
    port = parts.port or _DEFAULT_PORTS[scheme]
    authority = f"[{host}]" if ":" in host else host
    if port != _DEFAULT_PORTS[scheme]:
        authority = f"{authority}:{port}"
    fields: dict[str, str] = {"host": authority, "user-agent": user_agent, "accept-encoding": "identity"}
    if parts.username is not None:  # credentials in the URL, as aiohttp would send them
        secret = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        fields["authorization"] = "Basic " + base64.b64encode(secret).decode("ascii")
    for name, value in headers.items():
        if name.lower() not in _OWN_FIELDS:
            fields[name.lower()] = value
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if any(c in path for c in " \r\n"):
        raise ValueError("invalid character in the upstream URL's path")
    proxy = proxies.choose(scheme, host, port, override)
    key = (scheme, host, port, proxy)
    if proxy is not None and scheme == "http":  # no tunnel: the proxy takes the request in absolute form
        path = f"http://{authority}{path}"
        key = ("http", proxy.host, proxy.port, proxy)  # one set of connections to the proxy, for every host
        if proxy.authorization is not None:
            fields["proxy-authorization"] = proxy.authorization
    line = f"POST {path} HTTP/1.1\r\n".encode()
    encoded = line + _encode_fields(fields)
    untraced = line + _encode_fields({k: v for k, v in fields.items() if k not in TRACE_FIELDS})
    return Target(key, host, port, tls if scheme == "https" else None, proxy, override, headers,
                  encoded + b"content-length: ", untraced)


TRACE_FIELDS = frozenset(("traceparent", "tracestate"))


def trace_fields(fields: Mapping[str, str]) -> bytes:
    """W3C trace context header lines for ``prepare``, checked like every other field."""
    return _encode_fields({name.lower(): value for name, value in fields.items()})


def _encode_fields(fields: Mapping[str, str]) -> bytes:
    """Header lines; CR, LF or NUL in a name or value would let it inject fields, so they are refused."""
    text = "".join(f"{name}: {value}\r\n" for name, value in fields.items())
    if any(c in name or c in str(value) for name, value in fields.items() for c in "\r\n\0") or any(
            not name or ":" in name or " " in name for name in fields):
        raise ValueError("invalid character in an upstream request header")
    return text.encode()
