"""Issue 14, measured as a LiteLLM user would: the config they bring (``num_retries: 2``, ``timeout: 30``,
``fallbacks``, nothing else), the official ``openai`` SDK, fault-injecting fakes behind a real sidecar.

One sidecar serves most tests: each test has model groups of its own (separate deployments, so separate
breakers) in front of the shared fakes. Time bounds come from the config under test with generous slack.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.procs import FakeProvider, Sidecar, deployment
from tests.integration.test_resilience import MESSAGES, STORY, client_for, sidecar, stream_text

ROUTER = {"num_retries": 2, "timeout": 30}  # the LiteLLM user's settings; nothing else is tuned
CONTINUATIONS = {"prefill": True, "splice": False}


def dep(group: str, fake: FakeProvider, info: dict[str, Any] | None = None, **params: Any) -> dict[str, Any]:
    """A deployment named after its group (``<group>-dep``), so each test's breakers are its own."""
    return {**deployment(group, fake, **params), "model_info": {"id": f"{group}-dep", **(info or {})}}


def _config(primary: FakeProvider, backup: FakeProvider) -> dict[str, Any]:
    model_list = [dep("spare", backup), dep("tiny", backup, {"max_input_tokens": 1}),
                  dep("same-window", backup, {"max_input_tokens": 8000})]
    fallbacks: list[dict[str, list[str]]] = []
    for group in ("main", "persist-429", "persist-500", "ctx"):
        model_list.append(dep(group, primary))
        fallbacks.append({group: ["spare"]})
    for name, prefill in CONTINUATIONS.items():
        model_list += [dep(f"stall-{name}", primary), dep(f"cont-{name}", backup, supports_prefill=prefill)]
        fallbacks.append({f"stall-{name}": [f"cont-{name}"]})
    model_list += [dep("ctx-small", primary), dep("ctx-window", primary, {"max_input_tokens": 8000})]
    fallbacks += [{"ctx-small": ["tiny"]}, {"ctx-window": ["same-window"]}]
    model_list += [dep("flaky", primary), dep("lonely", primary), dep("lonely-refuse", primary)]
    return {"model_list": model_list, "router_settings": {**ROUTER, "fallbacks": fallbacks},
            "sidecar_settings": {"breaker": {"groups": {"lonely-refuse": {"when_all_open": "refuse"}}}}}


@pytest.fixture(scope="module")
def litellm(workdir: Path, primary: FakeProvider, backup: FakeProvider) -> Iterator[Sidecar]:
    process = Sidecar(_config(primary, backup), workdir, "litellm-config")
    yield process
    process.stop()


def metrics(process: Sidecar) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = requests.get(f"{process.admin_url}/metrics", timeout=5).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def panics(process: Sidecar, group: str) -> float:
    return metrics(process).get(("llm_sidecar_breaker_panic_total",
                                 (("deployment", f"{group}-dep"), ("model_group", group))), 0.0)


# ---- 1. retries are spent inside the model group before its fallbacks -------------------------------


def test_a_rate_limited_model_is_retried_after_retry_after_not_abandoned(
        litellm: Sidecar, primary: FakeProvider, backup: FakeProvider) -> None:
    primary.set(fail_next=1, error_status=429, retry_after=2)
    raw = client_for(litellm).chat.completions.with_raw_response.create(model="main", messages=MESSAGES)
    assert raw.parse().choices[0].message.content == "Hello from primary."
    assert raw.headers["x-sidecar-deployment"] == "main-dep"
    assert raw.headers["x-sidecar-attempts"] == "2"
    assert "x-sidecar-fallback" not in raw.headers
    first, second = primary.stats()["request_times"]
    assert second - first >= 1.8  # the second attempt waited for the upstream's Retry-After
    assert backup.stats()["requests"] == 0  # the fallback (another model) was never touched


@pytest.mark.parametrize("status", [429, 500])
def test_a_persistently_failing_model_gets_its_retries_then_the_fallback(
        litellm: Sidecar, primary: FakeProvider, backup: FakeProvider, status: int) -> None:
    primary.set(error_rate=1.0, error_status=status, retry_after=0.5 if status == 429 else None)
    group = f"persist-{status}"
    started = time.monotonic()
    raw = client_for(litellm).chat.completions.with_raw_response.create(model=group, messages=MESSAGES)
    assert time.monotonic() - started < ROUTER["timeout"]
    assert raw.parse().choices[0].message.content == "Hello from backup."
    assert raw.headers["x-sidecar-fallback"] == "spare"
    assert primary.stats()["requests"] == 1 + ROUTER["num_retries"]  # 3 attempts, no more
    assert raw.headers["x-sidecar-attempts"] == str(2 + ROUTER["num_retries"])
    assert backup.stats()["requests"] == 1


def test_num_retries_zero_goes_straight_to_the_fallback(workdir: Path, primary: FakeProvider,
                                                       backup: FakeProvider) -> None:
    primary.set(fail_next=1, error_status=429, retry_after=2)
    model_list = [deployment("main", primary), deployment("spare", backup)]
    with sidecar(workdir, "retries-zero", model_list,
                 {"num_retries": 0, "timeout": 30, "fallbacks": [{"main": ["spare"]}]}) as process:
        started = time.monotonic()
        raw = client_for(process).chat.completions.with_raw_response.create(model="main", messages=MESSAGES)
        assert time.monotonic() - started < 1.5  # no wait for the Retry-After
        assert raw.parse().choices[0].message.content == "Hello from backup."
        assert raw.headers["x-sidecar-fallback"] == "spare"
        assert primary.stats()["requests"] == 1 and backup.stats()["requests"] == 1


# ---- 2. a stalled stream is caught while there is time to continue it -------------------------------


@pytest.mark.parametrize("continuation", list(CONTINUATIONS))
def test_a_stream_that_stalls_is_continued_well_inside_the_deadline(
        litellm: Sidecar, primary: FakeProvider, backup: FakeProvider, continuation: str) -> None:
    """A token every 20 ms, then silence with the socket open: the stall is noticed from the stream's own
    pace (seconds), not by the idle limit (a third of the 30 s timeout), and the answer is continued."""
    primary.set(text=STORY, chunks=40, chunk_delay=0.02, stall_after=20)
    backup.set(text=STORY, chunks=7)
    started = time.monotonic()
    chunks = list(client_for(litellm, timeout=60).chat.completions.create(
        model=f"stall-{continuation}", messages=MESSAGES, stream=True))
    elapsed = time.monotonic() - started
    assert stream_text(chunks) == STORY  # the whole answer, exactly once
    assert len({c.id for c in chunks}) == 1
    assert elapsed < ROUTER["timeout"] / 3 - 2  # before the idle limit alone could have fired
    sent = backup.stats()["last_body"]["messages"]
    if continuation == "prefill":
        assert sent[-1]["role"] == "assistant" and STORY.startswith(sent[-1]["content"]) and sent[-1]["content"]
    else:
        assert sent == MESSAGES


# ---- 3. context-window errors follow the configured fallbacks -----------------------------------------


def test_context_window_error_goes_to_the_fallbacks(litellm: Sidecar, primary: FakeProvider,
                                                    backup: FakeProvider) -> None:
    primary.set(fail_next=1, error_status=400, error_code="context_length_exceeded")
    raw = client_for(litellm).chat.completions.with_raw_response.create(model="ctx", messages=MESSAGES)
    assert raw.parse().choices[0].message.content == "Hello from backup."
    assert raw.headers["x-sidecar-fallback"] == "spare"
    assert raw.headers["x-sidecar-attempts"] == "2"
    assert primary.stats()["requests"] == 1  # never resent to the model that refused it


@pytest.mark.parametrize("group", ["ctx-small", "ctx-window"])
def test_context_window_error_with_no_fallback_that_fits_is_the_original_error(
        litellm: Sidecar, primary: FakeProvider, backup: FakeProvider, group: str) -> None:
    """``ctx-small``: the fallback's window is below the prompt's estimate; ``ctx-window``: it is no larger
    than the window of the deployment that just refused the prompt."""
    primary.set(fail_next=1, error_status=400, error_code="context_length_exceeded")
    with pytest.raises(openai.BadRequestError) as caught:
        client_for(litellm).chat.completions.create(model=group, messages=MESSAGES)
    assert caught.value.status_code == 400
    assert caught.value.body["code"] == "context_length_exceeded"  # type: ignore[index]
    assert caught.value.body["message"] == "Invalid request"  # type: ignore[index]  # the upstream's own
    assert primary.stats()["requests"] == 1 and backup.stats()["requests"] == 0


# ---- 4. a breaker never turns a partly healthy upstream into a dead one -------------------------------


def _open_breaker(process: Sidecar, group: str) -> None:
    """Fail one request's three attempts: three consecutive failures open the group's only breaker."""
    with pytest.raises(openai.APIStatusError) as caught:
        client_for(process).chat.completions.create(model=group, messages=MESSAGES)
    assert caught.value.status_code == 503


def test_with_every_candidate_open_the_request_is_sent_anyway_and_counted(
        litellm: Sidecar, primary: FakeProvider) -> None:
    primary.set(error_rate=1.0, error_status=500)
    _open_breaker(litellm, "lonely")
    primary.set(error_rate=0.0)
    calls = primary.stats()["requests"]
    raw = client_for(litellm).chat.completions.with_raw_response.create(model="lonely", messages=MESSAGES)
    assert raw.parse().choices[0].message.content == "Hello from primary."
    assert raw.headers["x-sidecar-deployment"] == "lonely-dep" and raw.headers["x-sidecar-attempts"] == "1"
    assert primary.stats()["requests"] == calls + 1
    assert panics(litellm, "lonely") == 1
    assert metrics(litellm)[("llm_sidecar_breaker_state", (("deployment", "lonely-dep"),))] == 1  # still open


def test_a_group_may_choose_refusal(litellm: Sidecar, primary: FakeProvider) -> None:
    primary.set(error_rate=1.0, error_status=500)
    _open_breaker(litellm, "lonely-refuse")
    primary.set(error_rate=0.0)
    calls = primary.stats()["requests"]
    _open_breaker(litellm, "lonely-refuse")  # refused with 503, no call made
    assert primary.stats()["requests"] == calls
    assert panics(litellm, "lonely-refuse") == 0


def test_a_partly_failing_upstream_under_load_answers_the_app_as_often_as_it_answers_us(
        litellm: Sidecar, primary: FakeProvider) -> None:
    """One deployment, no fallback, 40% of calls failing with 500, 64 requests in parallel: the breaker opens
    again and again, yet the app's success rate stays close to (above, thanks to retries) the upstream's."""
    primary.set(error_rate=0.4, error_status=500, seed=14)
    calls_before = primary.stats()["requests"]
    client = client_for(litellm)

    def one(i: int) -> bool:
        try:
            client.chat.completions.create(model="flaky", messages=[{"role": "user", "content": f"q{i}"}])
            return True
        except openai.APIStatusError as error:
            assert error.status_code == 503
            return False

    with ThreadPoolExecutor(64) as pool:
        answered = list(pool.map(one, range(640)))
    stats = primary.stats()
    calls = stats["requests"] - calls_before
    upstream_rate = 1 - stats["errors_injected"] / stats["requests"]
    app_rate = sum(answered) / len(answered)
    assert 0.5 < upstream_rate < 0.7
    assert app_rate >= upstream_rate, (app_rate, upstream_rate)  # measured: ~0.9 against ~0.6
    assert calls >= len(answered)  # every request reached the upstream at least once
    assert panics(litellm, "flaky") > 0
    assert "breaker flaky-dep: closed -> open" in litellm.logs()
