from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.integration.procs import APP_KEY, FakeProvider, RedisServer, Sidecar, deployment


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("procs")


@pytest.fixture(scope="session")
def primary(workdir: Path) -> Iterator[FakeProvider]:
    fake = FakeProvider("primary", workdir)
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def backup(workdir: Path) -> Iterator[FakeProvider]:
    fake = FakeProvider("backup", workdir)
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def redis_server(workdir: Path) -> Iterator[RedisServer]:
    """One real redis-server for the session; tests keep apart by using their own key namespaces."""
    server = RedisServer(workdir)
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _clean_fakes(request: pytest.FixtureRequest) -> None:
    for name in ("primary", "backup"):
        if name in request.fixturenames:
            request.getfixturevalue(name).clear()


@pytest.fixture(scope="module")
def solo(workdir: Path, primary: FakeProvider) -> Iterator[Sidecar]:
    """A sidecar whose every model group has just the primary, and a small body limit."""
    config = {
        "model_list": [deployment("solo", primary), deployment("embed", primary)],
        "router_settings": {"timeout": 10, "num_retries": 0, "cooldown_time": 0},
        "sidecar_settings": {"max_body_size_mb": 1, "retry_after_cap_seconds": 0},
    }
    sidecar = Sidecar(config, workdir, "solo")
    yield sidecar
    sidecar.stop()


@pytest.fixture
def client(solo: Sidecar) -> openai.OpenAI:
    return openai.OpenAI(base_url=solo.base_url, api_key=APP_KEY, max_retries=0, timeout=20)
