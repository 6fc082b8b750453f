"""Intent routing through the real embeddings path: the ``embed`` group is the primary fake serving a
deterministic bag-of-words embedding model; ``support`` requests go to ``complex`` or ``standard`` (both the
backup fake, told apart by deployment id) by their nearest examples; embeddings down → the default at once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.integration.procs import APP_KEY, FakeProvider, Sidecar, deployment


def named(group: str, provider: FakeProvider, name: str) -> dict[str, object]:
    entry = deployment(group, provider)
    entry["model_info"] = {"id": name}
    return entry


@pytest.fixture(scope="module")
def routed(workdir: Path, primary: FakeProvider, backup: FakeProvider) -> Iterator[Sidecar]:
    primary.set(embedding_model="words")
    config = {
        "model_list": [named("embed", primary, "embedder"), named("complex", backup, "complex-model"),
                       named("standard", backup, "standard-model"), named("support", backup, "support-model")],
        "router_settings": {"timeout": 10, "num_retries": 0, "cooldown_time": 60, "allowed_fails": 1},
        "sidecar_settings": {"intent": {"support": {
            "embeddings": "embed", "default": "standard", "threshold": 0.5, "timeout_seconds": 2,
            "routes": {
                "complex": ["debug a kubernetes cluster outage", "design a database migration plan",
                            "refactor a large legacy codebase"],
                "standard": ["what are your opening hours", "reset my password", "where is my parcel"]}}}},
    }
    sidecar = Sidecar(config, workdir, "intent")
    yield sidecar
    sidecar.stop()


def ask(process: Sidecar, text: str) -> str:
    client = openai.OpenAI(base_url=process.base_url, api_key=APP_KEY, max_retries=0, timeout=20)
    raw = client.chat.completions.with_raw_response.create(model="support",
                                                           messages=[{"role": "user", "content": text}])
    return raw.headers["x-sidecar-deployment"]


def test_paraphrases_reach_their_group_and_embeddings_down_means_the_default(
        routed: Sidecar, primary: FakeProvider) -> None:
    primary.set(embedding_model="words")
    deadline = time.monotonic() + 20  # the examples are embedded in the background at start
    while ask(routed, "our kubernetes cluster is down, please debug it") != "complex-model":
        assert time.monotonic() < deadline, "the intent examples were never embedded"
        time.sleep(0.1)
    assert ask(routed, "Plan the migration of our database") == "complex-model"
    assert ask(routed, "Could you refactor this legacy codebase?") == "complex-model"
    assert ask(routed, "What hours are you open?") == "standard-model"
    assert ask(routed, "I forgot my password, reset it") == "standard-model"
    assert ask(routed, "tell me a joke about penguins") == "standard-model"  # near nothing: the default
    primary.set(hang=True, embedding_model="words")  # embeddings silent: the default once the budget is spent
    assert ask(routed, "our kubernetes cluster is down, please debug it") == "standard-model"
    primary.set(hang=False, error_rate=1.0, error_status=500, embedding_model="words")  # embeddings down
    assert ask(routed, "our kubernetes cluster is down, please debug it") == "standard-model"
    assert ask(routed, "our kubernetes cluster is down, please debug it") == "standard-model"  # breaker open
