"""The semantic cache as apps see it: paraphrases answered from the cache through the real embeddings path
(an embeddings model group on the fake, whose ``bow…`` model embeds a bag of words: deterministic, and
close for texts that share most words), and slow embeddings a plain miss within the time budget."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import requests

from tests.integration.procs import APP_KEY, FakeProvider, Sidecar, deployment


@pytest.fixture(scope="module")
def sidecar(workdir: Path, primary: FakeProvider, backup: FakeProvider) -> Iterator[Sidecar]:
    config = {"model_list": [{**deployment("chat", primary), "model_info": {"tags": ["eu"]}},
                             deployment("plain", primary), deployment("embed", backup, model="openai/bow-embed")],
              "router_settings": {"timeout": 10, "num_retries": 0},
              "sidecar_settings": {"semantic_cache": {"embedding_model": "embed", "groups": ["chat"],
                                                      "threshold": 0.8, "timeout_ms": 300},
                                   "rules": [{"name": "eu-data", "when": {"headers": {"x-sidecar-region": "eu"}},
                                              "require_tags": ["eu"]}]}}
    process = Sidecar(config, workdir, "semantic")
    yield process
    process.stop()


def ask(sidecar: Sidecar, text: str, model: str = "chat", **options: Any) -> Any:
    client = openai.OpenAI(base_url=sidecar.base_url, api_key=APP_KEY, max_retries=0, timeout=20)
    return client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "system", "content": f"run {time.time_ns()}"} if "run" in options else
                               {"role": "system", "content": "Be brief."}, {"role": "user", "content": text}],
        **{k: v for k, v in options.items() if k != "run"})


def test_a_paraphrase_is_a_semantic_hit_with_its_similarity(sidecar: Sidecar, primary: FakeProvider,
                                                            backup: FakeProvider) -> None:
    first = ask(sidecar, "What is the capital city of France?", temperature=0)
    assert "x-sidecar-cache" not in first.headers
    again = ask(sidecar, "what is the capital city of france", temperature=0)
    assert again.headers["x-sidecar-cache"] == "semantic-hit"
    assert float(again.headers["x-sidecar-cache-similarity"]) >= 0.8
    assert again.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert primary.stats()["requests"] == 1 and backup.stats()["requests"] == 2  # two embeddings
    other = ask(sidecar, "How many legs does a spider have?", temperature=0)
    assert "x-sidecar-cache" not in other.headers and primary.stats()["requests"] == 2
    stream = openai.OpenAI(base_url=sidecar.base_url, api_key=APP_KEY, max_retries=0).chat.completions
    raw = stream.with_raw_response.create(model="chat", temperature=0, stream=True, messages=[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "What's the capital city of France?"}])
    assert raw.headers["x-sidecar-cache"] == "semantic-hit"
    assert "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert primary.stats()["requests"] == 2
    metrics = requests.get(f"{sidecar.admin_url}/metrics", timeout=5).text
    assert 'llm_sidecar_semantic_cache_total{result="hit"} 2' in metrics


def test_sampled_requests_other_groups_and_other_parameters_never_hit(sidecar: Sidecar, primary: FakeProvider) -> None:
    ask(sidecar, "Name a green vegetable please", temperature=0)
    assert "x-sidecar-cache" not in ask(sidecar, "Name a green vegetable please", temperature=0.7).headers
    assert "x-sidecar-cache" not in ask(sidecar, "Name a green vegetable please", model="plain",
                                        temperature=0).headers
    assert "x-sidecar-cache" not in ask(sidecar, "Name a green vegetable please", temperature=0,
                                        max_tokens=7).headers
    assert primary.stats()["requests"] == 4


def test_a_compliance_restricted_request_is_never_answered_from_the_semantic_cache(
        sidecar: Sidecar, primary: FakeProvider) -> None:
    """Its entries may come from any deployment of the group (another tenant's answers): a request a rule
    restricts to tagged deployments skips it, as it skips the catch-all's remembered answers."""
    ask(sidecar, "Which river runs through the city of Vienna?", temperature=0)
    calls = primary.stats()["requests"]
    assert ask(sidecar, "which river runs through the city of vienna",
               temperature=0).headers["x-sidecar-cache"] == "semantic-hit"
    restricted = ask(sidecar, "which river runs through the city of vienna", temperature=0,
                     extra_headers={"x-sidecar-region": "eu"})
    assert "x-sidecar-cache" not in restricted.headers and primary.stats()["requests"] == calls + 1


def test_slow_embeddings_are_a_plain_miss_within_the_time_budget(sidecar: Sidecar, primary: FakeProvider,
                                                                 backup: FakeProvider) -> None:
    ask(sidecar, "Which planet is the largest one", temperature=0)
    backup.set(hang=True)  # the embeddings model does not answer
    started = time.monotonic()
    answer = ask(sidecar, "which planet is the largest one", temperature=0)
    assert "x-sidecar-cache" not in answer.headers and answer.parse().choices[0].message.content
    assert time.monotonic() - started < 1.5  # the 300 ms budget, then the upstream
    assert primary.stats()["requests"] == 2
    backup.set(hang=False, error_rate=1.0, error_status=500)  # embeddings down
    down = ask(sidecar, "which planet is the largest one", temperature=0)
    assert "x-sidecar-cache" not in down.headers
    backup.set(error_rate=0.0)
    metrics = requests.get(f"{sidecar.admin_url}/metrics", timeout=5).text
    assert 'llm_sidecar_semantic_cache_total{result="skipped"} 2' in metrics


def stream(sidecar: Sidecar, text: str) -> tuple[str | None, str]:
    """(x-sidecar-cache, the text) of a streamed answer."""
    client = openai.OpenAI(base_url=sidecar.base_url, api_key=APP_KEY, max_retries=0, timeout=20)
    raw = client.chat.completions.with_raw_response.create(model="chat", temperature=0, stream=True, messages=[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": text}])
    return raw.headers.get("x-sidecar-cache"), "".join(c.choices[0].delta.content or "" for c in raw.parse()
                                                         if c.choices)


def assert_a_streamed_answer_answers_paraphrases(sidecar: Sidecar, primary: FakeProvider, verdict: str | None) -> None:
    calls = primary.stats()["requests"]
    first, text = stream(sidecar, "What is the tallest mountain on planet Earth?")
    assert first == verdict and text
    deadline = time.monotonic() + 5
    while (plain := ask(sidecar, "what is the tallest mountain on planet earth", temperature=0)) \
            .headers.get("x-sidecar-cache") != "semantic-hit":  # stored just after the stream's end
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert plain.parse().choices[0].message.content == text
    assert stream(sidecar, "What's the tallest mountain on planet Earth?") == ("semantic-hit", text)
    assert primary.stats()["requests"] == calls + 1


def test_a_streamed_answer_feeds_the_semantic_cache(sidecar: Sidecar, primary: FakeProvider) -> None:
    assert_a_streamed_answer_answers_paraphrases(sidecar, primary, None)  # no response cache: no verdict


def test_a_streamed_answer_feeds_the_semantic_cache_through_a_coalesced_call(
        workdir: Path, primary: FakeProvider, backup: FakeProvider) -> None:
    config = {"model_list": [deployment("chat", primary), deployment("embed", backup, model="openai/bow-embed")],
              "router_settings": {"timeout": 10, "num_retries": 0},
              "sidecar_settings": {"cache": {"type": "local"},
                                   "semantic_cache": {"embedding_model": "embed", "groups": ["chat"],
                                                      "threshold": 0.8, "timeout_ms": 300}}}
    process = Sidecar(config, workdir, "semantic-with-cache")
    try:
        assert_a_streamed_answer_answers_paraphrases(process, primary, "miss")
    finally:
        process.stop()
