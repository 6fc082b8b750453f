"""What carries over between two configs (config.changes, routing.carry, the budget ledger) — no I/O."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from sidecar.config import Config, parse
from sidecar.config.changes import compare, deployment_set_digest, equal, key_files, secret_values
from sidecar.config.shared import BudgetSettings
from sidecar.core.types import ChatRequest
from sidecar.policy.budget import BudgetLedger
from sidecar.routing.router import Router
from sidecar.state.cache import cache_key

BASE: dict[str, Any] = {
    "model_list": [
        {"model_name": "chat", "litellm_params": {"model": "openai/a", "api_base": "http://a.test/v1",
                                                 "api_key": "ka", "rpm": 60}},
        {"model_name": "chat", "litellm_params": {"model": "openai/b", "api_base": "http://b.test/v1",
                                                 "api_key": "kb"}},
        {"model_name": "other", "litellm_params": {"model": "anthropic/c", "api_base": "http://c.test"}},
    ],
    "router_settings": {"allowed_fails": 3, "cooldown_time": 30},
}


def config(edit: Any = None) -> Config:
    data = copy.deepcopy(BASE)
    if edit is not None:
        edit(data)
    return parse(data)


def params(data: dict[str, Any], i: int) -> dict[str, Any]:
    return data["model_list"][i]["litellm_params"]  # type: ignore[no-any-return]


def test_the_same_config_keeps_every_deployment_unchanged() -> None:
    changes = compare(config(), config())
    assert changes.matches == {"openai/a": "openai/a", "openai/b": "openai/b", "anthropic/c": "anthropic/c"}
    assert changes.unchanged == set(changes.matches)
    assert (changes.added, changes.removed, changes.deployments_changed, changes.restart_only) == ((), (), False, ())


def test_tuning_keeps_the_identity_but_is_not_unchanged() -> None:
    changes = compare(config(), config(lambda d: params(d, 0).update(weight=5, rpm=120, timeout=9)))
    assert changes.matches["openai/a"] == "openai/a" and "openai/a" not in changes.unchanged
    assert not changes.deployments_changed  # the same upstreams: cached answers stay valid
    assert changes.summary == "+0 added, -0 removed, 3 kept (1 retuned)"


@pytest.mark.parametrize(("field", "value"), [("api_base", "http://a2.test/v1"), ("model", "openai/a2"),
                                              ("api_key", "rotated")])
def test_a_new_address_model_or_key_is_a_new_upstream(field: str, value: str) -> None:
    changes = compare(config(), config(lambda d: params(d, 0).update({field: value})))
    assert "openai/a" not in changes.matches.values()
    assert changes.removed == ("openai/a",) and len(changes.added) == 1
    # A rotated key is a new identity for the breaker, but not a new deployment set for the cache.
    assert changes.deployments_changed is (field != "api_key")


def test_an_explicit_id_change_keeps_the_state_of_the_same_upstream() -> None:
    new = config(lambda d: d["model_list"][1].update(model_info={"id": "renamed"}))
    assert compare(config(), new).matches["renamed"] == "openai/b"


def test_moving_a_deployment_to_another_group_is_a_new_upstream() -> None:
    new = config(lambda d: d["model_list"][1].update(model_name="other"))
    assert "openai/b" in compare(config(), new).removed


def test_identical_entries_pair_in_order_and_extras_are_added() -> None:
    doubled = config(lambda d: d["model_list"].append(copy.deepcopy(d["model_list"][0])))
    changes = compare(config(), doubled)
    assert changes.matches["openai/a"] == "openai/a" and changes.added == ("openai/a#2",)
    assert compare(doubled, config()).removed == ("openai/a#2",)


def test_restart_only_settings_are_named() -> None:
    new = config(lambda d: d.update(sidecar_settings={"max_connections_per_host": 8, "max_body_size_mb": 2}))
    assert compare(config(), new).restart_only == ("max_body_size_mb", "max_connections_per_host")


def test_secrets_compare_by_value_and_the_set_digest_ignores_order_and_keys() -> None:
    assert equal(config().deployments[0], config().deployments[0])  # two Secret objects, one value
    reordered = config(lambda d: d["model_list"].reverse())
    assert deployment_set_digest(reordered) == deployment_set_digest(config())
    rotated = config(lambda d: params(d, 1).update(api_key="kb2"))
    assert deployment_set_digest(rotated) == deployment_set_digest(config())
    moved = config(lambda d: params(d, 1).update(api_base="http://b2.test/v1"))
    assert deployment_set_digest(moved) != deployment_set_digest(config())


def test_secret_values_and_key_files(tmp_path: Any) -> None:
    key = tmp_path / "key"
    key.write_text("sk-from-file\n")
    cfg = config(lambda d: params(d, 2).update(api_key=f"file:{key}"))
    assert sorted(secret_values(cfg)) == ["ka", "kb", "sk-from-file"]
    assert key_files(cfg) == [str(key)]


# ---- the router: per-deployment state by identity ---------------------------------------------------------

def targets(router: Router) -> dict[str, Any]:
    return {t.deployment.id: t for t in router.all_targets()}


def reload(old: Router, new_config: Config) -> Router:
    changes = compare(old.config, new_config)
    before = targets(old)
    return Router(new_config, None, clock=lambda: 0.0,  # type: ignore[arg-type]
                  previous={new: before[was] for new, was in changes.matches.items()})


def test_breaker_statistics_and_limits_carry_over_for_the_same_upstream() -> None:
    old = Router(config(), None, clock=lambda: 0.0)  # type: ignore[arg-type]
    a = targets(old)["openai/a"]
    a.breaker.cool_down(0.0, 500.0)
    a.stats.finished(0.0, 0.25, ok=True)
    new = reload(old, config(lambda d: (params(d, 0).update(weight=3),
                                        d["router_settings"].update(allowed_fails=7, cooldown_time=5))))
    carried = targets(new)["openai/a"]
    assert carried is not a and carried.deployment.weight == 3
    assert carried.breaker is a.breaker and carried.breaker.state == "open" and carried.stats is a.stats
    assert (carried.breaker.allowed_fails, carried.breaker.cooldown) == (7, 5.0)  # the new settings apply
    assert carried.rpm is a.rpm  # the same limit: the bucket's level carries over
    assert carried.adapter is not a.adapter  # the deployment changed: a new adapter


def test_a_changed_limit_starts_a_new_bucket_and_an_unchanged_deployment_keeps_its_adapter() -> None:
    old = Router(config(), None, clock=lambda: 0.0)  # type: ignore[arg-type]
    new = reload(old, config(lambda d: params(d, 0).update(rpm=600)))
    assert targets(new)["openai/a"].rpm is not targets(old)["openai/a"].rpm
    assert targets(new)["openai/a"].rpm.per_second == 10.0  # type: ignore[union-attr]
    assert targets(new)["openai/b"].adapter is targets(old)["openai/b"].adapter


def test_a_new_upstream_starts_fresh() -> None:
    old = Router(config(), None, clock=lambda: 0.0)  # type: ignore[arg-type]
    targets(old)["openai/b"].breaker.cool_down(0.0, 500.0)
    new = reload(old, config(lambda d: params(d, 1).update(api_base="http://b2.test/v1")))
    assert targets(new)["openai/b"].breaker.state == "closed"


# ---- what depends on the deployment set, and budgets ---------------------------------------------------------

def test_the_cache_key_names_the_deployment_set() -> None:
    request = ChatRequest("chat", {"model": "chat", "messages": [{"role": "user", "content": "hi"}]})
    old, new = deployment_set_digest(config()), deployment_set_digest(config(lambda d: d["model_list"].pop()))
    assert cache_key(request, old) == cache_key(request, old) != cache_key(request, new)


def test_budget_spend_carries_over_by_name_and_period() -> None:
    day = BudgetSettings("team", 10.0, 86400.0, "1d")
    old = BudgetLedger([day, BudgetSettings("hourly", 1.0, 3600.0, "1h")], ["chat"])
    old.add(["chat"], 4.0, 1000.0)
    raised = BudgetLedger([BudgetSettings("team", 50.0, 86400.0, "1d", ("chat",)),
                           BudgetSettings("hourly", 1.0, 7200.0, "2h")], ["chat"])
    raised.adopt(old)
    assert raised.windows["team"].spent == 4.0  # a raised limit does not forget the spend
    assert raised.windows["hourly"].spent == 0.0  # another period: another window
