"""Everything built from one loaded config, as one value: router, pipeline, cache, budgets, their tasks.

The server serves one ``Assembly`` at a time and a reload swaps it whole (``AppState.install``): a request
picks the pipeline once and finishes on it, so nothing on the request path locks or checks for reloads.
``assemble`` builds the next one from the previous: per-deployment state carries over by identity
(``config.changes``, ``routing.carry``), the cache and budgets are kept when their settings are, and budget
spend carries over by name. ``retire`` closes what the replaced one owned once its requests are done.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp

from sidecar.config import Config
from sidecar.config.changes import Changes, compare, deployment_set_digest, equal
from sidecar.config.shared import RedisSettings
from sidecar.policy.limits import TokenBucket
from sidecar.providers import http
from sidecar.providers.sglang_poll import POOL_TASK, PoolWatcher, poller_name
from sidecar.routing.coalesce import Coalescer
from sidecar.routing.outcome import Target
from sidecar.routing.pipeline import Pipeline
from sidecar.routing.router import Router
from sidecar.routing.semantic import SemanticCache
from sidecar.state.budgets import Budgets
from sidecar.state.cache import ResponseCache
from sidecar.state.fleet import Fleet, FleetBucket
from sidecar.state.locks import FleetLocks
from sidecar.state.placement import ReplicaPlacement
from sidecar.state.semantic_share import SemanticShare
from sidecar.telemetry import RequestMetrics

if TYPE_CHECKING:
    from sidecar.telemetry.tracing import Tracing  # the OTel SDK loads only when tracing is on

log = logging.getLogger("sidecar.server")
DRAIN_POLL_SECONDS = 0.05
DRAIN_MARGIN_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Assembly:
    """One config and everything built from it. ``digest`` is the config file's sha256 (hex)."""

    config: Config
    digest: str
    router: Router
    pipeline: Pipeline
    tracing: Tracing | None
    cache: ResponseCache | None
    budgets: Budgets | None
    tasks: tuple[asyncio.Task[None], ...] = ()  # background work owned by this config (budget sync)
    fleet: Fleet | None = None  # fleet-wide rate limits' Redis side
    placement: ReplicaPlacement | None = None  # sglang pools' replica_share: redis


@dataclass(frozen=True, slots=True)
class Process:
    """What lives as long as the process, whatever the config: the upstream client, the metrics registry
    and tracing's sampler and exporters."""

    session: aiohttp.ClientSession
    metrics: RequestMetrics
    tracing: Tracing | None


async def assemble(config: Config, digest: str, process: Process, previous: Assembly | None = None) -> Assembly:
    """Build the assembly for ``config``, carrying over from ``previous`` (the one being served)."""
    changes = compare(previous.config, config) if previous is not None else None
    if any(d.api_base.startswith("https:") for d in config.deployments):
        await asyncio.get_running_loop().run_in_executor(None, http.pool_of(process.session).load_tls)
    tracing = process.tracing.reconfigured(config) if process.tracing is not None and previous else process.tracing
    router = Router(config, process.session, observer=tracing, previous=_carried(previous, changes))
    if (previous is not None and changes is not None and not changes.deployments_changed
            and config.sidecar.catch_all == previous.config.sidecar.catch_all):
        router.catch_all = previous.router.catch_all  # last good answers of the same deployment set
    cache = _cache(config, previous)
    budgets, tasks = _budgets(config, previous)
    fleet = _fleet(config, previous, router)
    tasks = (*tasks, *_pollers(router, previous))
    placement = _placement(config, previous, router)
    pipeline = Pipeline(router, process.metrics, cache=cache, budgets=budgets, tracing=tracing,
                        generation=deployment_set_digest(config), coalescer=_coalescer(cache, previous))
    pipeline.semantic = _semantic(config, router, previous)
    pipeline.locks = _locks(pipeline, previous)
    return Assembly(config, digest, router, pipeline, tracing, cache, budgets, tasks, fleet, placement)


def _pollers(router: Router, previous: Assembly | None) -> tuple[asyncio.Task[None], ...]:
    """The replicas' pollers of each SGLang pool; a pool carried over from ``previous`` keeps its task (a second
    one would poll every replica twice until the old config's requests have drained)."""
    running = {t.get_name(): t for t in previous.tasks} if previous is not None else {}
    return tuple(running.get(poller_name(pool)) or PoolWatcher(pool).start() for pool in router.pools())


def _carried(previous: Assembly | None, changes: Changes | None) -> Mapping[str, Target]:
    if previous is None or changes is None:
        return {}
    old = {t.deployment.id: t for t in previous.router.all_targets()}
    return {new_id: old[old_id] for new_id, old_id in changes.matches.items()}


def _cache(config: Config, previous: Assembly | None) -> ResponseCache | None:
    """The same cache when its settings are the same (keys carry the deployment set's digest, so answers
    from a replaced set are not served); a new one otherwise."""
    settings = config.sidecar.shared.cache
    if settings is None:
        return None
    if previous is not None and previous.cache is not None and equal(settings, previous.cache.settings):
        return previous.cache
    return ResponseCache.from_settings(settings)


def _semantic(config: Config, router: Router, previous: Assembly | None) -> SemanticCache | None:
    """The semantic cache when configured (its index kept across a reload with the same settings, deployments
    and Redis: the embeddings would be the same), its entries shared through Redis when there is one."""
    settings = config.sidecar.shared.semantic
    if settings is None:
        return None
    generation = deployment_set_digest(config)
    sharing = _sharing(config)
    old = previous.pipeline.semantic if previous is not None else None
    if old is not None and old.settings == settings and previous is not None \
            and previous.pipeline.generation == generation \
            and (old.share.place if old.share is not None else None) == sharing:
        old.router = router
        return old
    for name in (settings.embedding_model, *settings.groups):
        if name not in config.groups:
            log.warning("semantic_cache: no model group '%s'", name)
    semantic = SemanticCache(settings, router)
    if sharing is not None:  # the generation names the embeddings too: another model's vectors never mix in
        semantic.share = SemanticShare(semantic.index, settings, *sharing,
                                       f"{generation}/{settings.embedding_model}").start()
    return semantic


def _sharing(config: Config) -> tuple[RedisSettings, str] | None:
    """(Redis, namespace) the semantic cache shares its entries through, or None: kept in this pod."""
    shared = config.sidecar.shared
    if shared.semantic is None or not shared.semantic.shared or shared.redis is None:
        return None
    return shared.redis, shared.namespace


def _fleet(config: Config, previous: Assembly | None, router: Router) -> Fleet | None:
    """Fleet buckets in place of the local rpm/tpm buckets of the deployments listed (the same Fleet and
    buckets across a reload that keeps the settings; a target carried over keeps its bucket)."""
    shared = config.sidecar.shared
    settings = shared.fleet
    if settings is None or shared.redis is None:
        for target in router.all_targets():  # carried over from a config that shared them
            deployment = target.deployment
            if isinstance(target.rpm, FleetBucket) and deployment.rpm:
                target.rpm = TokenBucket(deployment.rpm)
            if isinstance(target.tpm, FleetBucket) and deployment.tpm:
                target.tpm = TokenBucket(deployment.tpm)
        return None
    fleet = previous.fleet if previous is not None else None
    if fleet is None or fleet.settings != settings:
        fleet = Fleet(settings, shared.redis, shared.namespace)
    wanted = set(settings.deployments)
    for target in router.all_targets():
        deployment = target.deployment
        if deployment.id not in wanted:
            continue
        wanted.discard(deployment.id)
        if deployment.rpm and not (isinstance(target.rpm, FleetBucket) and target.rpm.fleet is fleet):
            target.rpm = fleet.bucket(deployment.id, "rpm", deployment.rpm)
        if deployment.tpm and not (isinstance(target.tpm, FleetBucket) and target.tpm.fleet is fleet):
            target.tpm = fleet.bucket(deployment.id, "tpm", deployment.tpm)
        if not (deployment.rpm or deployment.tpm):
            log.warning("fleet_rate_limits: deployment '%s' has no rpm or tpm to share", deployment.id)
    for missing in sorted(wanted):
        log.warning("fleet_rate_limits: no deployment '%s' (ids are model_info.id, or provider/model)", missing)
    return fleet


def _placement(config: Config, previous: Assembly | None, router: Router) -> ReplicaPlacement | None:
    """The Redis side of the sglang pools with ``replica_share: redis`` (the same one across a reload that
    keeps the Redis and namespace: its client stays connected)."""
    shared = config.sidecar.shared
    pools = router.pools()
    placement = previous.placement if previous is not None else None
    if not any(pool.settings.share for pool in pools) or shared.redis is None:
        placement = None
    elif placement is None or placement.settings != shared.redis or placement.namespace != shared.namespace:
        placement = ReplicaPlacement(shared.redis, shared.namespace)
    for pool in pools:  # a pool carried over from a config that shared it may no longer
        pool.placement = placement if pool.settings.share else None
    return placement


def _coalescer(cache: ResponseCache | None, previous: Assembly | None) -> Coalescer | None:
    """In-flight coalescing when the cache is on with ``coalesce`` (the same one across reloads: its flights'
    keys carry the deployment set's digest, and its counters go on)."""
    if cache is None or not cache.settings.coalesce:
        return None
    if previous is not None and previous.pipeline.coalescer is not None:
        return previous.pipeline.coalescer
    return Coalescer()


def _locks(pipeline: Pipeline, previous: Assembly | None) -> FleetLocks | None:
    """Cross-pod coalescing when the coalescing cache has a Redis tier and a lease (kept across reloads that
    keep the cache: its leases and counters go on)."""
    cache = pipeline.cache
    if pipeline.coalescer is None or cache is None or cache.gate is None or not cache.settings.fleet_lock_ms:
        return None
    old = previous.pipeline.locks if previous is not None else None
    if old is not None and old.cache is cache:
        return old
    return FleetLocks(cache, cache.settings.fleet_lock_ms)


def _budgets(config: Config, previous: Assembly | None) -> tuple[Budgets | None, tuple[asyncio.Task[None], ...]]:
    shared = config.sidecar.shared
    if not shared.budgets:
        return None, ()
    _warn_unpriced(config)
    if previous is not None and previous.budgets is not None:
        old = previous.config
        if equal(shared, old.sidecar.shared) and list(config.groups) == list(old.groups):
            return previous.budgets, tuple(t for t in previous.tasks if not t.get_name().startswith(POOL_TASK))
    budgets = Budgets.from_settings(shared, [*config.groups, *(w.pattern for w in config.wildcards)])
    if previous is not None and previous.budgets is not None:
        budgets.ledger.adopt(previous.budgets.ledger)
    return budgets, (asyncio.create_task(budgets.run()),) if budgets.redis is not None else ()


def _warn_unpriced(config: Config) -> None:
    """Budgets count the cost from model_info prices: say so when a covered deployment has none."""
    for budget in config.sidecar.shared.budgets:
        unpriced = sorted({d.id for d in config.deployments if (not budget.models or d.model_name in budget.models)
                           and d.model_info.input_cost_per_token is None
                           and d.model_info.output_cost_per_token is None})
        if unpriced:
            log.warning("budget '%s': no model_info prices for %s; their answers cost nothing against it",
                        budget.name, ", ".join(unpriced))


async def retire(old: Assembly, successor: Assembly | None) -> None:
    """Close what ``old`` owns and ``successor`` does not share, once ``old``'s requests are done (or
    after its request timeout, the longest any of them may take)."""
    polls = int((old.config.router.timeout + DRAIN_MARGIN_SECONDS) / DRAIN_POLL_SECONDS)
    for _ in range(polls):  # the request path keeps a count, not an event: a poll here costs it nothing
        if not old.pipeline.active:
            break
        await asyncio.sleep(DRAIN_POLL_SECONDS)
    keep = set(successor.tasks) if successor is not None else set()
    stopping = [t for t in old.tasks if t not in keep]
    for task in stopping:
        task.cancel()
    await asyncio.gather(*stopping, return_exceptions=True)
    if old.budgets is not None and (successor is None or successor.budgets is not old.budgets):
        await old.budgets.aclose(final=successor is None)
    if old.cache is not None and (successor is None or successor.cache is not old.cache):
        if old.pipeline.locks is not None:
            await old.pipeline.locks.aclose()
        await old.cache.aclose()
    if old.fleet is not None and (successor is None or successor.fleet is not old.fleet):
        await old.fleet.aclose()
    if old.placement is not None and (successor is None or successor.placement is not old.placement):
        await old.placement.aclose()
    semantic = old.pipeline.semantic
    if semantic is not None and (successor is None or successor.pipeline.semantic is not semantic):
        await semantic.aclose()
