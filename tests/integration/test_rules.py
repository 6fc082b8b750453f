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
