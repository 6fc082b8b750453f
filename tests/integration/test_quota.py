"""Upstream rate-limit headers slow a deployment down before its 429: the fake primary keeps an OpenAI-style
request quota (a bucket refilled continuously, reported on every answer as x-ratelimit-*-requests, 429 past
it); the sidecar reads what is left and sends the rest to the backup instead of into the 429."""

from __future__ import annotations

from pathlib import Path

import openai

from tests.integration.procs import APP_KEY, FakeProvider, Sidecar, deployment

MESSAGES = [{"role": "user", "content": "hello"}]


def test_rate_limit_headers_slow_a_deployment_before_its_429(workdir: Path, primary: FakeProvider,
                                                              backup: FakeProvider) -> None:
    primary.set(quota_requests=3, quota_window=30.0)  # 3 at once, then one every 10 s
    config = {"model_list": [deployment("main", primary, order=1), deployment("main", backup, order=2)],
              "router_settings": {"timeout": 10, "num_retries": 0, "cooldown_time": 30}}
    process = Sidecar(config, workdir, "quota")
    try:
        client = openai.OpenAI(base_url=process.base_url, api_key=APP_KEY, max_retries=0, timeout=20)
        served = [client.chat.completions.with_raw_response.create(model="main", messages=MESSAGES)
                  .headers["x-sidecar-deployment"] for _ in range(8)]
        stats = primary.stats()
        assert served[:3] == ["openai/primary-model"] * 3
        assert served[3:] == ["openai/backup-model"] * 5  # the quota said 0 left: straight to the backup
        assert stats["requests"] == 3 and "429" not in stats["by_status"]  # the primary never answered 429
        streamed = client.chat.completions.create(model="main", messages=MESSAGES, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
        assert primary.stats()["requests"] == 3
    finally:
        process.stop()


def test_without_quota_headers_nothing_changes(workdir: Path, primary: FakeProvider, backup: FakeProvider) -> None:
    config = {"model_list": [deployment("main", primary, order=1), deployment("main", backup, order=2)],
              "router_settings": {"timeout": 10, "num_retries": 0}}
    process = Sidecar(config, workdir, "no-quota")
    try:
        client = openai.OpenAI(base_url=process.base_url, api_key=APP_KEY, max_retries=0, timeout=20)
        for _ in range(6):
            raw = client.chat.completions.with_raw_response.create(model="main", messages=MESSAGES)
            assert raw.headers["x-sidecar-deployment"] == "openai/primary-model"
        assert backup.stats()["requests"] == 0
    finally:
        process.stop()
