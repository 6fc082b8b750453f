"""What the redactor must know from the configuration: every secret value (``changes.secret_values``, read
from the live ``Secret`` objects, so a rotated key file gives the new key) and every deployment's host."""

from __future__ import annotations

from urllib.parse import urlsplit

from sidecar.config.changes import secret_values
from sidecar.config.model import Config
from sidecar.core.redact import Redactor


def internal_hosts(config: Config) -> list[str]:
    """The host names of every deployment's ``api_base`` and of the Redis servers."""
    hosts = set()
    for deployment in config.deployments:
        host = urlsplit(deployment.api_base).hostname
        if host:
            hosts.add(host)
    shared = config.sidecar.shared
    hosts.update(r.host for r in (shared.redis, shared.cache.redis if shared.cache else None) if r is not None)
    return sorted(hosts)


def configure_redactor(redactor: Redactor, config: Config) -> Redactor:
    """Compile ``redactor`` for this configuration (at load; again on reload)."""
    redactor.configure(secret_values(config), internal_hosts(config))
    return redactor
