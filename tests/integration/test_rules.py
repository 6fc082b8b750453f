"""Issue 16, request rules and capabilities, as the app sees them: a real sidecar in front of two fakes.

``primary`` carries the ``eu`` tag, ``backup`` does not; ``main`` has both, falls back to ``spare`` (backup
only). Rules: ``x-sidecar-region: eu`` requires ``eu``; ``x-sidecar-tier: free`` sends to ``spare``;
``x-sidecar-region: mars`` requires a tag no deployment of ``main`` has.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import requests

from tests.integration.procs import APP_KEY, FakeProvider, Sidecar, deployment

MESSAGES = [{"role": "user", "content": "hello"}]


def tagged(group: str, provider: FakeProvider, tags: list[str], **info: Any) -> dict[str, Any]:
    entry = deployment(group, provider)
    entry["model_info"] = {"id": f"{group}-{provider.name}", "tags": tags, **info}
    return entry


@pytest.fixture(scope="module")
def ruled(workdir: Path, primary: FakeProvider, backup: FakeProvider) -> Iterator[Sidecar]:
    config = {
        "model_list": [tagged("main", primary, ["eu"]), tagged("main", backup, ["us"]),
                       tagged("spare", backup, ["us"]), tagged("mars", backup, ["mars"]),
                       tagged("caps", primary, [], supports_vision=False), tagged("caps", backup, [])],
        "router_settings": {"timeout": 10, "num_retries": 1, "cooldown_time": 30, "allowed_fails": 1,
                            "fallbacks": [{"main": ["spare"]}]},
        "sidecar_settings": {
            "retry_after_cap_seconds": 0,
            "catch_all": {"last_good": True},
            "rules": [
                {"name": "eu-data", "when": {"headers": {"x-sidecar-region": "eu"}}, "require_tags": ["eu"]},
                {"name": "free-tier", "when": {"headers": {"x-sidecar-tier": "free"}}, "group": "spare"},
                {"name": "mars-only", "when": {"headers": {"x-sidecar-region": "mars"}}, "require_tags": ["mars"]},
            ],
        },
    }
    sidecar = Sidecar(config, workdir, "rules")
    yield sidecar
    sidecar.stop()


def client(process: Sidecar, **headers: str) -> openai.OpenAI:
    """An SDK client sending ``headers`` with every request."""
    return openai.OpenAI(base_url=process.base_url, api_key=APP_KEY, max_retries=0, timeout=20,
                         default_headers=headers)


def test_a_header_rule_restricts_to_tagged_deployments(ruled: Sidecar, primary: FakeProvider,
                                                       backup: FakeProvider) -> None:
    eu = client(ruled, **{"x-sidecar-region": "eu"})
    served = {eu.chat.completions.with_raw_response.create(model="main", messages=MESSAGES)
              .headers["x-sidecar-deployment"] for _ in range(8)}
    assert served == {"main-primary"}
    assert backup.stats()["requests"] == 0


def test_a_rule_sends_to_another_group(ruled: Sidecar, backup: FakeProvider) -> None:
    raw = client(ruled, **{"x-sidecar-tier": "free"}).chat.completions.with_raw_response.create(
        model="main", messages=MESSAGES)
    assert raw.headers["x-sidecar-deployment"] == "spare-backup"
    assert backup.stats()["requests"] == 1


def test_eligible_deployment_failing_never_leaks_to_fallbacks_or_remembered_answers(
        ruled: Sidecar, primary: FakeProvider, backup: FakeProvider) -> None:
    text = [{"role": "user", "content": "remember me"}]
    # An unrestricted answer from the backup is remembered by the catch-all...
    primary.set(error_rate=1.0, error_status=500)
    plain = client(ruled).chat.completions.with_raw_response.create(model="spare", messages=text)
    assert plain.headers["x-sidecar-deployment"] == "spare-backup"
    before = backup.stats()["requests"]
    # ...but an eu request whose only eligible deployment fails gets a 503 naming its rule: no retry, fallback
    # (spare is backup only) or remembered answer reaches it from elsewhere.
    with pytest.raises(openai.APIStatusError) as failed:
        client(ruled, **{"x-sidecar-region": "eu"}).chat.completions.create(model="main", messages=text)
    assert failed.value.status_code == 503
    assert "eu-data" in failed.value.message
    assert backup.stats()["requests"] == before
    assert primary.stats()["requests"] >= 1


def test_no_eligible_deployment_is_a_403_naming_the_rule(ruled: Sidecar, primary: FakeProvider,
                                                         backup: FakeProvider) -> None:
    with pytest.raises(openai.PermissionDeniedError) as refused:
        client(ruled, **{"x-sidecar-region": "mars"}).chat.completions.create(model="main", messages=MESSAGES)
    assert "mars-only" in refused.value.message
    assert refused.value.body["code"] == "rule_refused"  # type: ignore[index]
    assert primary.stats()["requests"] == 0 and backup.stats()["requests"] == 0


def test_capability_skip_before_any_call(ruled: Sidecar, primary: FakeProvider, backup: FakeProvider) -> None:
    image = [{"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                          {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]}]
    for _ in range(4):
        raw = client(ruled).chat.completions.with_raw_response.create(model="caps", messages=image)
        assert raw.headers["x-sidecar-deployment"] == "caps-backup"
    assert primary.stats()["requests"] == 0


# ---- POST /debug/route ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def explained(workdir: Path, primary: FakeProvider, backup: FakeProvider) -> Iterator[Sidecar]:
    """simple-shuffle over two equal deployments: the debug answer must predict the random order too."""
    config = {
        "model_list": [tagged("pick", primary, ["eu"]), tagged("pick", backup, ["us"], supports_vision=False),
                       tagged("later", backup, ["us"])],
        "router_settings": {"timeout": 10, "num_retries": 0, "cooldown_time": 30, "allowed_fails": 1,
                            "fallbacks": [{"pick": ["later"]}]},
        "sidecar_settings": {
            "inbound_api_keys": [APP_KEY],
            "rules": [{"name": "eu-data", "when": {"headers": {"x-sidecar-region": "eu"}}, "require_tags": ["eu"]}],
        },
    }
    sidecar = Sidecar(config, workdir, "explained")
    yield sidecar
    sidecar.stop()


def debug_route(process: Sidecar, body: dict[str, Any], **headers: str) -> dict[str, Any]:
    answer = requests.post(f"{process.url}/debug/route", json=body, timeout=10,
                           headers={"authorization": f"Bearer {APP_KEY}", **headers})
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def test_debug_route_agrees_with_the_next_request(explained: Sidecar, primary: FakeProvider,
                                                  backup: FakeProvider) -> None:
    body = {"model": "pick", "messages": MESSAGES}
    app = client(explained)
    chosen = []
    for _ in range(12):
        decision = debug_route(explained, body)
        served = app.chat.completions.with_raw_response.create(**body).headers["x-sidecar-deployment"]
        assert decision["choice"] == served
        chosen.append(served)
    assert set(chosen) == {"pick-primary", "pick-backup"}  # both orders happened, each predicted
    decision = debug_route(explained, body)
    assert decision["rule"] is None and decision["plan"] == ["pick", "later"]
    assert [g["strategy"] for g in decision["groups"]] == ["simple-shuffle", "simple-shuffle"]
    assert primary.stats()["requests"] + backup.stats()["requests"] == 12  # the debug calls called no one


def test_debug_route_shows_the_rule_and_skips(explained: Sidecar, backup: FakeProvider) -> None:
    eu = debug_route(explained, {"model": "pick", "messages": MESSAGES}, **{"x-sidecar-region": "eu"})
    assert eu["rule"] == {"name": "eu-data", "group": None, "require_tags": ["eu"], "exclude_tags": [],
                          "strategy": None}
    skipped = {c["deployment"]: c["skipped"] for g in eu["groups"] for c in g["candidates"]}
    assert skipped == {"pick-primary": None, "pick-backup": "rule:eu-data", "later-backup": "rule:eu-data"}
    assert eu["choice"] == "pick-primary"
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]}]
    vision = debug_route(explained, {"model": "pick", "messages": image})
    skipped = {c["deployment"]: c["skipped"] for c in vision["groups"][0]["candidates"]}
    assert skipped == {"pick-primary": None, "pick-backup": "no_vision"}
    assert backup.stats()["requests"] == 0


def test_debug_route_sees_an_open_breaker(explained: Sidecar, primary: FakeProvider) -> None:
    primary.set(fail_next=1, error_status=500)
    body = {"model": "pick", "messages": MESSAGES}
    app = client(explained)
    for _ in range(40):  # until the shuffle picked the primary and it failed once (its breaker opens)
        app.chat.completions.create(**body)
        if primary.stats()["errors_injected"]:
            break
    decision = debug_route(explained, body)
    states = {c["deployment"]: c["skipped"] for c in decision["groups"][0]["candidates"]}
    assert states["pick-primary"] == "breaker_open" and decision["choice"] == "pick-backup"
    assert app.chat.completions.with_raw_response.create(**body).headers["x-sidecar-deployment"] == "pick-backup"


def test_debug_route_is_behind_the_inbound_keys(explained: Sidecar) -> None:
    answer = requests.post(f"{explained.url}/debug/route", json={"model": "pick", "messages": MESSAGES}, timeout=10)
    assert answer.status_code == 401
    unknown = requests.post(f"{explained.url}/debug/route", json={"model": "nope", "messages": MESSAGES}, timeout=10,
                            headers={"authorization": f"Bearer {APP_KEY}"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
