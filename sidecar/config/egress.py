"""What egress needs from the configuration: proxies, and deployments whose requests can be sent at all.

Proxies: ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``ALL_PROXY`` / ``NO_PROXY`` read as curl and httpx read them.

Read once at config load; ``ProxySettings.choose(scheme, host, port, override)`` decides per upstream URL
(the client calls it once per URL, when it builds the URL's request head), never per request.

* The variable for the target's scheme — ``https_proxy`` for https upstreams, ``http_proxy`` for http ones
  — then ``all_proxy``; the lower-case spelling wins over the upper-case one. A value without a scheme is an
  ``http://`` proxy (as curl reads it); user and password in it become ``Proxy-Authorization: Basic``.
* ``NO_PROXY`` (either case): comma- or space-separated; ``*`` alone turns proxies off; a host name matches
  itself and every name under it (``example.com`` and ``.example.com`` both match ``api.example.com``); an
  IP address matches itself, a CIDR block (``10.0.0.0/8``, ``fd00::/8``) every address in it; an entry may
  end in ``:port`` to match that port only.
* A deployment's ``litellm_params.proxy`` overrides the variables for it: a proxy URL, or ``none`` to go direct.

Only ``http://`` proxies are supported (https upstreams go through them in a CONNECT tunnel, with TLS to
the upstream end to end); a TLS connection to the proxy itself, or SOCKS, is refused at load.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from sidecar.config.environ import unresolved
from sidecar.config.reader import Section, has_control, header_problem

NO_PROXY_VALUES = ("none", "direct")


@dataclass(frozen=True, slots=True)
class Proxy:
    """An http:// forward proxy. ``authorization`` is the ``Proxy-Authorization`` value (never logged)."""

    host: str
    port: int
    authorization: str | None = field(default=None, repr=False)


def parse_proxy(value: str) -> Proxy:
    """``http://[user:password@]host[:port]``, or ``host[:port]`` (http assumed); ``ValueError`` otherwise."""
    text = value.strip()
    if "://" not in text:
        text = "http://" + text
    try:
        parts = urlsplit(text)
        port = parts.port or 80
    except ValueError:
        raise ValueError("not a valid proxy URL") from None
    if parts.scheme.lower() != "http":
        raise ValueError(f"'{parts.scheme}://' proxies are not supported (only http://)")
    if not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise ValueError("expected http://[user:password@]host[:port]")
    authorization = None
    if parts.username is not None:
        secret = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        authorization = "Basic " + base64.b64encode(secret).decode("ascii")
    return Proxy(parts.hostname, port, authorization)


@dataclass(frozen=True, slots=True)
class _Exempt:
    """One ``NO_PROXY`` entry: a domain suffix, or an IP network; optionally one port."""

    domain: str | None
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None
    port: int | None

    def matches(self, host: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.network is not None:
            return ip is not None and ip.version == self.network.version and ip in self.network
        domain = self.domain
        assert domain is not None
        return host == domain or host.endswith("." + domain)


def _exempt(entry: str) -> _Exempt:
    port = None
    text = entry
    if text.startswith("["):  # [v6]:port
        text, _, rest = text[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    elif text.count(":") == 1:
        text, _, raw = text.partition(":")
        port = int(raw) if raw.isdigit() else None
    try:
        return _Exempt(None, ipaddress.ip_network(text, strict=False), port)
    except ValueError:
        return _Exempt(text.lower().lstrip("*").lstrip(".").rstrip("."), None, port)


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """The proxies the environment names, and the hosts ``NO_PROXY`` exempts."""

    http: Proxy | None = None
    https: Proxy | None = None
    exempt_all: bool = False
    exempt: tuple[_Exempt, ...] = ()

    @property
    def configured(self) -> bool:
        return self.http is not None or self.https is not None

    def choose(self, scheme: str, host: str, port: int, override: str | None = None) -> Proxy | None:
        """The proxy for an upstream URL: ``override`` is a deployment's (a URL, or "none"), else the environment's."""
        if override is not None:
            return None if override.lower() in NO_PROXY_VALUES else parse_proxy(override)
        proxy = self.https if scheme == "https" else self.http
        if proxy is None or self.exempt_all:
            return None
        name = host.lower().rstrip(".")
        try:
            ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(name.strip("[]"))
        except ValueError:
            ip = None
        if any(entry.matches(name, ip, port) for entry in self.exempt):
            return None
        return proxy


def proxy_settings(env: Mapping[str, str], problems: list[str]) -> ProxySettings:
    """Read the variables; a value that is not a usable proxy is a problem naming the variable."""
    chosen: dict[str, Proxy | None] = {}
    for scheme in ("http", "https"):
        name, value = _variable(env, f"{scheme}_proxy") or _variable(env, "all_proxy") or ("", "")
        chosen[scheme] = None
        if value:
            try:
                chosen[scheme] = parse_proxy(value)
            except ValueError as exc:
                problems.append(f"environment {name}: {exc}")
    _, raw = _variable(env, "no_proxy") or ("", "")
    entries = [e.strip() for e in raw.replace(" ", ",").split(",") if e.strip()]
    return ProxySettings(http=chosen["http"], https=chosen["https"], exempt_all="*" in entries,
                         exempt=tuple(_exempt(e) for e in entries if e != "*"))


def _variable(env: Mapping[str, str], lower: str) -> tuple[str, str] | None:
    """The lower-case variable if set (set but empty, it hides the upper-case one), else the upper-case one."""
    for name in (lower, lower.upper()):
        value = env.get(name)
        if value is not None:
            return (name, value.strip()) if value.strip() else None
    return None


# ---- deployments ------------------------------------------------------------------------------------


def check_egress(params: Section, api_base: str | None, headers: Mapping[Any, Any]) -> str | None:
    """Report what would make every request of a deployment fail (a bad header, URL or proxy); its proxy
    override (``litellm_params.proxy``: a URL, or "none")."""
    for key, value in headers.items():
        if (problem := header_problem(key, value)) is not None:
            params.problem("extra_headers", problem)
    if api_base and not unresolved(api_base):
        scheme, _, rest = api_base.partition("://")
        if scheme.lower() not in ("http", "https") or not rest or rest.startswith("/"):
            params.problem("api_base", "expected an http:// or https:// URL with a host")
        elif has_control(api_base) or " " in api_base:
            params.problem("api_base", "the URL contains whitespace or a control character")
    value = params.string("proxy", None)
    if value is None or value.lower() in NO_PROXY_VALUES:
        return value
    try:
        parse_proxy(value)
    except ValueError as exc:
        params.problem("proxy", f"{exc} (or 'none' to go direct)")
        return None
    return value
