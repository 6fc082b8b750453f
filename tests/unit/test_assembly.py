"""server.assembly in process: what the next assembly shares with the one it replaces, and what ``retire``
closes (only what is not shared, and only once the old pipeline's requests are done)."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from sidecar.config import Config, parse
from sidecar.server.assembly import Process, assemble, retire
from sidecar.telemetry import RequestMetrics
from sidecar.telemetry.tracing import Tracing

BASE: dict[str, Any] = {
    "model_list": [{"model_name": "chat", "litellm_params": {"model": "openai/a", "api_base": "http://a.test/v1",
                                                            "api_key": "k"},
                    "model_info": {"input_cost_per_token": 1e-6}}],
    "sidecar_settings": {"cache": {"type": "local", "ttl": 60},
                         "budgets": [{"name": "team", "max_budget_usd": 10, "period": "1d"}]},
}


def config(edit: Any = None) -> Config:
    data = copy.deepcopy(BASE)
    if edit is not None:
        edit(data)
    return parse(data)


def process(tracing: Tracing | None = None) -> Process:
    return Process(None, RequestMetrics(), tracing)  # type: ignore[arg-type]  # no upstream is called here


async def test_an_unchanged_config_shares_cache_budgets_and_breakers() -> None:
    proc = process()
    old = await assemble(config(), "d1", proc)
    new = await assemble(config(), "d2", proc, old)
    assert new.cache is old.cache and new.budgets is old.budgets
    assert new.router.catch_all is old.router.catch_all
    assert new.router.all_targets()[0].breaker is old.router.all_targets()[0].breaker
    assert new.pipeline.generation == old.pipeline.generation and new.pipeline is not old.pipeline
    assert new.cache is not None
    new.cache.put("k", b"answer")
    await retire(old, new)
    assert await new.cache.get("k") == b"answer"  # shared: not closed
    await retire(new, None)


async def test_changed_settings_build_new_ones_and_retire_closes_the_old_after_its_requests() -> None:
    proc = process()
    old = await assemble(config(), "d1", proc)
    assert old.budgets is not None
    old.budgets.spend(["chat"], 4.0)
    changed = config(lambda d: (d["sidecar_settings"]["cache"].update(ttl=5),
                                d["model_list"][0]["litellm_params"].update(api_base="http://b.test/v1")))
    new = await assemble(changed, "d2", proc, old)
    assert new.cache is not old.cache and new.budgets is not old.budgets
    assert new.budgets is not None and new.budgets.ledger.windows["team"].spent == 4.0  # spend carried over
    assert new.pipeline.generation != old.pipeline.generation  # another deployment set: other cache keys
    closed: list[str] = []
    old_cache = old.cache
    assert old_cache is not None

    async def aclose() -> None:
        closed.append("cache")

    old_cache.aclose = aclose  # type: ignore[method-assign]
    old.pipeline.active = 1  # a request still in flight on the old config
    retiring = asyncio.create_task(retire(old, new))
    await asyncio.sleep(0.2)
    assert closed == [] and not retiring.done()
    old.pipeline.active = 0
    await asyncio.wait_for(retiring, 5)
    assert closed == ["cache"]
    await retire(new, None)


async def test_tracing_is_reconfigured_with_the_same_exporters(monkeypatch: Any) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    import os

    tracing = Tracing.from_env(config(), os.environ)
    assert tracing is not None
    old = await assemble(config(), "d1", process(tracing))
    renamed = config(lambda d: d["model_list"][0].update(model_info={"id": "renamed"}))
    new = await assemble(renamed, "d2", process(old.tracing), old)
    assert new.tracing is not None and new.tracing is not old.tracing
    assert new.tracing.exporters is tracing.exporters and new.tracing.sampler is tracing.sampler
    assert set(new.tracing.clients) == {"renamed"} and set(tracing.clients) == {"openai/a"}
    assert new.router.observer is new.tracing and new.pipeline.tracing is new.tracing
    await retire(old, new)
    await retire(new, None)
    await tracing.aclose(0.5)


async def test_a_reload_keeps_an_sglang_pool_with_its_adapter_and_stops_only_the_old_pollers() -> None:
    def pool(data: dict[str, Any]) -> None:
        data["model_list"].append({"model_name": "local", "litellm_params": {
            "model": "sglang/m", "replicas": ["http://10.0.0.1:30000/v1", "http://10.0.0.2:30000/v1"]}})

    proc = process()
    old = await assemble(config(pool), "d1", proc)
    new = await assemble(config(pool), "d2", proc, old)
    old_target = next(t for t in old.router.all_targets() if t.pool is not None)
    new_target = next(t for t in new.router.all_targets() if t.pool is not None)
    assert new_target.pool is old_target.pool and new_target.adapter.pool is new_target.pool  # type: ignore[attr-defined]
    pollers = [t for t in new.tasks if t.get_name().startswith("sglang-pool:")]
    assert len(pollers) == 1 and pollers[0] in old.tasks  # the kept pool's poller: one per replica, not two
    await retire(old, new)
    assert not pollers[0].done()

    def other(data: dict[str, Any]) -> None:
        data["model_list"].append({"model_name": "local", "litellm_params": {
            "model": "sglang/m", "replicas": ["http://10.0.0.1:30000/v1", "http://10.0.0.3:30000/v1"]}})

    changed = await assemble(config(other), "d3", proc, new)
    fresh = [t for t in changed.tasks if t.get_name().startswith("sglang-pool:")]
    assert len(fresh) == 1 and fresh[0] is not pollers[0]  # another replica set: another pool, its own poller
    await retire(new, changed)
    assert pollers[0].cancelled() or pollers[0].done()
    await retire(changed, None)
    assert fresh[0].cancelled() or fresh[0].done()


async def test_a_reload_keeps_the_pools_redis_placement_and_retire_closes_it_once_unused() -> None:
    def pool(share: bool) -> Any:
        def edit(data: dict[str, Any]) -> None:
            data["model_list"].append({"model_name": "local", "litellm_params": {
                "model": "sglang/m", "replicas": ["http://10.0.0.1:30000/v1"],
                **({"replica_share": "redis"} if share else {})}})
            data["sidecar_settings"]["redis"] = {"url": "redis://127.0.0.1:1/0"}  # never reached here
        return edit

    proc = process()
    old = await assemble(config(pool(True)), "d1", proc)
    new = await assemble(config(pool(True)), "d2", proc, old)
    placement = old.placement
    assert placement is not None and new.placement is placement
    shared_pool = new.router.pools()[0]
    assert shared_pool.placement is placement
    closed: list[bool] = []

    async def aclose() -> None:
        closed.append(True)

    placement.aclose = aclose  # type: ignore[method-assign]
    await retire(old, new)
    assert not closed  # still the new assembly's
    off = await assemble(config(pool(False)), "d3", proc, new)
    assert off.placement is None and all(p.placement is None for p in off.router.pools())
    await retire(new, off)
    assert closed == [True]
    await retire(off, None)
    placement.warming.cancel()
