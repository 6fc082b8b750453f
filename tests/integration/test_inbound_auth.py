"""Inbound keys: with keys configured, apps must present one; probes stay open."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import requests

from tests.integration.procs import FakeProvider, Sidecar, deployment

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def guarded(workdir: Path, primary: FakeProvider) -> Iterator[Sidecar]:
    sidecar = Sidecar({"model_list": [deployment("m", primary)], "general_settings": {"master_key": "sk-master"},
                       "sidecar_settings": {"inbound_api_keys": ["os.environ/APP_KEY_2"]}},
                      workdir, "guarded", env={"APP_KEY_2": "sk-second"})
    yield sidecar
    sidecar.stop()


def test_missing_or_wrong_key_is_401(guarded: Sidecar) -> None:
    for key in ("", "sk-wrong"):
        client = openai.OpenAI(base_url=guarded.base_url, api_key=key or "none", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as info:
            client.chat.completions.create(model="m", messages=MESSAGES)
        assert info.value.status_code == 401 and "sk-master" not in str(info.value.body)


@pytest.mark.parametrize("key", ["sk-master", "sk-second"])
def test_configured_keys_are_accepted(guarded: Sidecar, key: str) -> None:
    client = openai.OpenAI(base_url=guarded.base_url, api_key=key, max_retries=0)
    assert client.chat.completions.create(model="m", messages=MESSAGES).choices


def test_x_api_key_header_is_accepted(guarded: Sidecar) -> None:
    response = requests.post(f"{guarded.base_url}/chat/completions", json={"model": "m", "messages": MESSAGES},
                             headers={"x-api-key": "sk-second"}, timeout=10)
    assert response.status_code == 200


def test_probes_need_no_key(guarded: Sidecar) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        assert requests.get(guarded.url + path, timeout=5).status_code == 200
