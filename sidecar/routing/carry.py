"""What a reloaded router keeps of the one it replaces: per-deployment state, for the same upstream.

``config.changes.compare`` pairs each new deployment with the old one that has the same identity. Its
breaker and statistics are the same objects in both routers — requests still in flight on the old config
report into the state the new one reads — with the breaker's thresholds set to the new settings (a
changed error-rate window keeps the old window's counts until the next restart). Token
buckets carry over when the limit is the same (a changed ``rpm``/``tpm`` starts a full bucket at the new
rate); the adapter carries over when nothing about the deployment changed (it may hold a cached token).
"""

from __future__ import annotations

import dataclasses

from sidecar.config.changes import same_deployment
from sidecar.routing.outcome import Target


def inherit(fresh: Target, previous: Target) -> Target:
    """``fresh`` (built for the new deployment and settings) with ``previous``'s state for the same upstream."""
    breaker, new_settings = previous.breaker, fresh.breaker
    breaker.allowed_fails, breaker.cooldown = new_settings.allowed_fails, new_settings.cooldown
    breaker.error_rate_threshold, breaker.min_requests = new_settings.error_rate_threshold, new_settings.min_requests
    new, old = fresh.deployment, previous.deployment
    same = same_deployment(new, old)
    return dataclasses.replace(
        fresh,
        deployment=old if same else new,  # equal in every field; the adapter holds the old one's key
        adapter=previous.adapter if same else fresh.adapter,
        pool=previous.pool if same else fresh.pool,  # an SGLang pool goes with its adapter (which leases from it)
        breaker=breaker,
        stats=previous.stats,
        rpm=previous.rpm if new.rpm == old.rpm else fresh.rpm,
        tpm=previous.tpm if new.tpm == old.tpm else fresh.tpm,
        rate_limited=previous.rate_limited,
        quota=previous.quota,  # the upstream's quota is the upstream's, whatever the config says
    )
