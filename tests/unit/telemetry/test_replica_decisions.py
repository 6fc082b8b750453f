"""The route span says which replica of a shared SGLang pool was chosen and why, or why the pool was passed."""

from __future__ import annotations

from sidecar.policy.plan import Attempt, Skip
from sidecar.policy.ring import ReplicaChoice
from sidecar.routing.outcome import Outcome
from sidecar.telemetry import decisions
from sidecar.telemetry.replicas import ReplicaRow, render_replicas


def test_route_span_names_the_replica_and_the_event_has_the_ring() -> None:
    outcome = Outcome("local", deployment="sglang/m")
    choice = ReplicaChoice("sglang/m", "r-abc123", "ring", 17, (("r-def456", 5.0),), 2.0)
    outcome.trail += [Attempt("sglang/m", "local", 1, 0), choice]
    labels = dict(decisions.route_span(outcome)[0])
    assert labels["sidecar.sglang.replica"] == "sglang/m/r-abc123"
    assert labels["sidecar.sglang.spill_over"] is None
    name, values = decisions.event(choice)
    assert name == "replica" and values["sidecar.sglang.ring_position"] == 17
    assert values["sidecar.sglang.passed_over"] == ["r-def456: load 5"]


def test_spill_over_is_on_the_route_span() -> None:
    outcome = Outcome("local", deployment="openai/gpt", answered_group="remote")
    outcome.trail += [Skip("sglang/m", "pool_saturated"), Attempt("openai/gpt", "remote", 1, 0)]
    labels = dict(decisions.route_span(outcome)[0])
    assert labels["sidecar.sglang.spill_over"] == ("sglang/m: pool_saturated",)
    assert labels["sidecar.routing.skipped"] == ("sglang/m: pool_saturated",)


def test_plain_requests_get_no_sglang_attributes() -> None:
    outcome = Outcome("g", deployment="openai/gpt")
    outcome.trail.append(Attempt("openai/gpt", "g", 1, 0))
    assert not any(k.startswith("sidecar.sglang") for k, _ in decisions.route_span(outcome)[0])


def test_replica_metrics() -> None:
    text = render_replicas([ReplicaRow("sglang/m", "r-abc123", True, 2, 3.0, 10, 640)])
    assert 'llm_sidecar_sglang_replica_cached_prompt_tokens_total{deployment="sglang/m",replica="r-abc123"} 640' in text
    assert 'llm_sidecar_sglang_replica_healthy{deployment="sglang/m",replica="r-abc123"} 1' in text
    assert render_replicas([]) == ""
