"""Session affinity as the app sees it: the same session key reaches the same deployment while it is healthy,
and moves for good when that deployment's breaker opens. simple-shuffle over two equal deployments, so without
affinity the sessions' requests would spread."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import requests

from tests.integration.procs import APP_KEY, FakeProvider, Sidecar, deployment

MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def sticky(workdir: Path, primary: FakeProvider, backup: FakeProvider) -> Iterator[Sidecar]:
    config = {"model_list": [deployment("chat", primary), deployment("chat", backup)],
              "router_settings": {"timeout": 10, "num_retries": 0, "cooldown_time": 60, "allowed_fails": 1},
              "sidecar_settings": {"affinity": {"header": "x-session-id", "metadata_key": "session"}}}
    sidecar = Sidecar(config, workdir, "affinity")
    yield sidecar
    sidecar.stop()


def ask(process: Sidecar, session: str | None = None, metadata: dict[str, str] | None = None) -> str:
    client = openai.OpenAI(base_url=process.base_url, api_key=APP_KEY, max_retries=0, timeout=20,
                           default_headers={"x-session-id": session} if session else None)
    extra = {"metadata": metadata} if metadata else {}
    raw = client.chat.completions.with_raw_response.create(model="chat", messages=MESSAGES, **extra)
    return raw.headers["x-sidecar-deployment"]


def test_a_session_stays_on_its_deployment(sticky: Sidecar) -> None:
    firsts = []
    for n in range(16):
        session = f"s-{n}"
        served = {ask(sticky, session) for _ in range(4)}
        assert len(served) == 1  # every request of the session went where its first did
        firsts.append(served.pop())
    assert set(firsts) == {"openai/primary-model", "openai/backup-model"}  # sessions still spread
    by_metadata = {ask(sticky, metadata={"session": "meta-1"}) for _ in range(4)}
    assert len(by_metadata) == 1


def test_affinity_moves_when_the_breaker_opens(sticky: Sidecar, primary: FakeProvider) -> None:
    session = next(f"m-{n}" for n in range(64) if ask(sticky, f"m-{n}") == "openai/primary-model")
    primary.set(fail_next=1, error_status=500)  # its next call fails: allowed_fails 1 opens the breaker
    assert ask(sticky, session) == "openai/backup-model"  # failed over within the request
    assert {ask(sticky, session) for _ in range(4)} == {"openai/backup-model"}
    debug = requests.post(f"{sticky.url}/debug/route", json={"model": "chat", "messages": MESSAGES},
                          headers={"x-session-id": session}, timeout=10).json()
    assert debug["choice"] == "openai/backup-model"
    assert [c["deployment"] for c in debug["groups"][0]["candidates"] if c["session"]] == ["openai/backup-model"]
