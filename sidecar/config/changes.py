"""What changes between two loaded configs, by deployment identity — pure, for live reload.

A reload must keep what the sidecar has learned about each upstream (breaker, latency statistics, limits)
when the new config still describes that upstream, and must not reuse anything that depends on the old set
of deployments (cached answers). This module says which is which; the server acts on it.

A deployment's *identity* is what decides where and as whom it calls: its model group, provider, upstream
model, address, API version, Vertex project/location and the key's value (for Bedrock: the region, access key
id, role or profile). Two configs that agree on it describe the same upstream, whatever else (weight, order,
timeouts, prices, limits) changed — so its breaker and statistics carry over. A changed key is a new identity:
what the breaker learned was learned with another key. Deployments with the same identity in one config pair
up in the order they appear.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from sidecar.config.model import Config, Deployment, SidecarSettings
from sidecar.config.reader import Secret

# Settings read once when the process starts (listener, connection pool, logging setup, shutdown):
# a reload that changes them says they take effect at the next restart.
RESTART_ONLY = ("max_body_size_mb", "max_connections_per_host", "access_log", "shutdown_grace_seconds", "listeners",
                "connect_timeout_seconds", "limits.upstream_answer_mb", "limits.upstream_answers_total_mb")

Identity = tuple[str, str, str, str, str | None, str | None, str | None, str]


def identity(deployment: Deployment) -> Identity:
    key = deployment.api_key.value if deployment.api_key is not None else ""
    aws = deployment.aws
    if aws is not None:  # Bedrock: who signs (a static key, a role to assume or a profile), in which region
        access = aws.access_key_id.value if aws.access_key_id is not None else ""
        key = f"{key}|aws:{aws.region}|{access}|{aws.role_name or ''}|{aws.profile_name or ''}"
    return (deployment.model_name, deployment.provider, deployment.model, deployment.api_base,
            deployment.api_version, deployment.vertex_project, deployment.vertex_location, key)


def equal(a: object, b: object) -> bool:
    """Settings equality with secrets compared by value and source (``Secret`` compares by identity)."""
    if isinstance(a, Secret) and isinstance(b, Secret):
        return a.value == b.value and a.path == b.path
    if dataclasses.is_dataclass(a) and not isinstance(a, type) and type(a) is type(b):
        return all(equal(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def same_deployment(a: Deployment, b: Deployment) -> bool:
    """Every field equal."""
    return equal(a, b)


@dataclass(frozen=True, slots=True)
class Changes:
    """How a new config relates to the one being served.

    ``matches`` maps each new deployment id to the old deployment id with the same identity (its state
    carries over); ``unchanged`` is the subset whose every setting is equal too. ``added`` and ``removed``
    are deployment ids; ``deployments_changed`` is true when the set of identities differs, so answers cached
    for the old set must not be served. ``restart_only`` names settings that changed but apply at restart.
    """

    matches: Mapping[str, str]
    unchanged: frozenset[str]
    added: tuple[str, ...]
    removed: tuple[str, ...]
    deployments_changed: bool
    restart_only: tuple[str, ...]

    @property
    def summary(self) -> str:
        """For the log line: ``+2 added, -1 removed, 3 kept (1 retuned)``."""
        retuned = len(self.matches) - len(self.unchanged)
        return (f"+{len(self.added)} added, -{len(self.removed)} removed, {len(self.matches)} kept"
                f" ({retuned} retuned)")


def compare(old: Config, new: Config) -> Changes:
    pool: dict[Identity, list[Deployment]] = {}
    for deployment in old.deployments:
        pool.setdefault(identity(deployment), []).append(deployment)
    matches: dict[str, str] = {}
    unchanged: set[str] = set()
    added: list[str] = []
    for deployment in new.deployments:
        candidates = pool.get(identity(deployment))
        if not candidates:
            added.append(deployment.id)
            continue
        previous = candidates.pop(0)
        matches[deployment.id] = previous.id
        if same_deployment(previous, deployment):
            unchanged.add(deployment.id)
    removed = tuple(d.id for left in pool.values() for d in left)
    return Changes(matches, frozenset(unchanged), tuple(added), removed,
                   deployment_set_digest(old) != deployment_set_digest(new), restart_only(old.sidecar, new.sidecar))


def restart_only(old: SidecarSettings, new: SidecarSettings) -> tuple[str, ...]:
    return tuple(name for name in RESTART_ONLY if _setting(old, name) != _setting(new, name))


def _setting(settings: SidecarSettings, name: str) -> object:
    """``name`` may be dotted: ``limits.upstream_answer_mb``."""
    value: object = settings
    for part in name.split("."):
        value = getattr(value, part)
    return value


def deployment_set_digest(config: Config) -> str:
    """A digest of every deployment's identity, without key values (a rotated key keeps cached answers
    valid; the digest may be part of shared cache keys, so it names the set, not the secrets) — wildcard
    deployments included, and the request parameters (completion defaults change the answers)."""
    digest = hashlib.blake2b(digest_size=8, person=b"deployments")
    templates = (d for w in config.wildcards for d in w.deployments)
    for ident in sorted((*identity(d)[:-1], repr(d.params)) for d in (*config.deployments, *templates)):
        digest.update(repr(ident).encode())
    return digest.hexdigest()


CREDENTIAL_HEADER_WORDS = ("auth", "key", "token", "secret", "cookie", "signature")


def secret_values(config: Config) -> list[str]:
    """Every secret value the config holds (credential-like ``extra_headers`` values too), for the redactor."""
    values = [k.value for k in config.sidecar.inbound_api_keys]
    values += [d.api_key.value for d in config.deployments if d.api_key is not None]
    values += [value for d in config.deployments for name, value in d.extra_headers
               if any(word in name.lower() for word in CREDENTIAL_HEADER_WORDS)]
    values += [d.api_key.value for w in config.wildcards for d in w.deployments if d.api_key is not None]
    values += [k.value for w in config.wildcards for k in w.keys.values()]
    values += [s.value for d in config.deployments if d.aws is not None for s in d.aws.secrets]
    shared = config.sidecar.shared
    values += [r.password.value for r in (shared.redis, shared.cache.redis if shared.cache else None)
               if r is not None and r.password is not None]
    return values


def new_warnings(config: Config, previous: Config) -> list[str]:
    """The warnings a reloaded config has that the one it replaces did not: logged once, not on every reload."""
    known = set(previous.warnings)
    return [w for w in config.warnings if w not in known]


def key_files(config: Config) -> list[str]:
    """The ``file:`` secrets' paths, for the watcher (a rotated Kubernetes Secret swaps them)."""
    secrets = [*config.sidecar.inbound_api_keys, *(d.api_key for d in config.deployments if d.api_key is not None),
               *(d.api_key for w in config.wildcards for d in w.deployments if d.api_key is not None)]
    return sorted({s.path for s in secrets if s.path is not None})
