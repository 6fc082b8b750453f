"""Shadow traffic as the app sees it — not at all: every request to ``main`` (the primary fake) is copied to
``shadow`` (the backup fake) after the app has its answer; the copies' outcomes, tokens and cost show in the
shadow metrics only, a slow or failing shadow changes nothing for the app, and a rule's tags bind the copy."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.procs import APP_KEY, FakeProvider, Sidecar, deployment

MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def shadowed(workdir: Path, primary: FakeProvider, backup: FakeProvider) -> Iterator[Sidecar]:
    shadow = deployment("shadow", backup)
    shadow["model_info"] = {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6, "tags": ["us"]}
    main = deployment("main", primary)
    main["model_info"] = {"tags": ["eu"]}
    config = {"model_list": [main, shadow],
              "router_settings": {"timeout": 10, "num_retries": 0},
              "sidecar_settings": {
                  "shadow": {"main": {"to": "shadow", "share": 1.0}},
                  "rules": [{"name": "eu-data", "when": {"headers": {"x-sidecar-region": "eu"}},
                             "require_tags": ["eu"]}]}}
    sidecar = Sidecar(config, workdir, "shadow")
    yield sidecar
    sidecar.stop()


def samples(process: Sidecar, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    text = requests.get(f"{process.url}/metrics", timeout=10).text
    return {tuple(sorted(s.labels.items())): s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == name}


def wait_for(predicate: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return bool(predicate())  # type: ignore[operator]


def test_copies_reach_the_shadow_and_only_its_metrics(shadowed: Sidecar, primary: FakeProvider,
                                                      backup: FakeProvider) -> None:
    client = openai.OpenAI(base_url=shadowed.base_url, api_key=APP_KEY, max_retries=0, timeout=20)
    primary.set(text="the app's answer")
    backup.set(text="the shadow's answer")
    for _ in range(4):
        raw = client.chat.completions.with_raw_response.create(model="main", messages=MESSAGES)
        assert raw.parse().choices[0].message.content == "the app's answer"
        assert raw.headers["x-sidecar-deployment"] == "openai/primary-model" and "x-sidecar-cost" not in raw.headers
    text = "".join(c.choices[0].delta.content or "" for c in
                   client.chat.completions.create(model="main", messages=MESSAGES, stream=True) if c.choices)
    assert text == "the app's answer"
    assert wait_for(lambda: backup.stats()["completed"] == 5)
    assert "stream" not in backup.stats()["last_body"]  # copies are asked whole
    key = (("deployment", "openai/backup-model"), ("model_group", "main"), ("outcome", "success"),
           ("shadow_group", "shadow"))
    assert wait_for(lambda: samples(shadowed, "llm_sidecar_shadow_requests_total").get(key) == 5)
    assert samples(shadowed, "llm_sidecar_shadow_cost_usd_total")[
        (("deployment", "openai/backup-model"), ("shadow_group", "shadow"))] > 0
    app_requests = samples(shadowed, "llm_sidecar_requests_total")
    assert all(dict(k)["model_group"] != "shadow" for k in app_requests)  # the copies are not app requests
    assert not any(dict(k).get("deployment") == "openai/backup-model"
                   for k in samples(shadowed, "llm_sidecar_cost_usd_total"))


def test_a_slow_or_failing_shadow_changes_nothing_for_the_app(shadowed: Sidecar, primary: FakeProvider,
                                                              backup: FakeProvider) -> None:
    client = openai.OpenAI(base_url=shadowed.base_url, api_key=APP_KEY, max_retries=0, timeout=20)
    backup.set(latency=3.0)
    raw = client.chat.completions.with_raw_response.create(model="main", messages=MESSAGES)
    assert raw.headers["x-sidecar-deployment"] == "openai/primary-model"
    assert wait_for(lambda: backup.stats()["requests"] == 1)
    assert backup.stats()["completed"] == 0  # the app has its answer while the copy is still waiting upstream
    backup.set(latency=0.0, error_rate=1.0, error_status=500)
    raw = client.chat.completions.with_raw_response.create(model="main", messages=MESSAGES)
    assert raw.headers["x-sidecar-deployment"] == "openai/primary-model"
    failed = (("deployment", ""), ("model_group", "main"), ("outcome", "no_upstream"), ("shadow_group", "shadow"))
    assert wait_for(lambda: samples(shadowed, "llm_sidecar_shadow_requests_total").get(failed, 0) >= 1)


def test_a_rule_binds_the_copy(shadowed: Sidecar, primary: FakeProvider, backup: FakeProvider) -> None:
    client = openai.OpenAI(base_url=shadowed.base_url, api_key=APP_KEY, max_retries=0, timeout=20,
                           default_headers={"x-sidecar-region": "eu"})
    raw = client.chat.completions.with_raw_response.create(model="main", messages=MESSAGES)
    assert raw.headers["x-sidecar-deployment"] == "openai/primary-model"
    refused = (("deployment", ""), ("model_group", "main"), ("outcome", "rule_refused"), ("shadow_group", "shadow"))
    assert wait_for(lambda: samples(shadowed, "llm_sidecar_shadow_requests_total").get(refused) == 1)
    assert backup.stats()["requests"] == 0  # the eu request's copy never reached the untagged shadow
