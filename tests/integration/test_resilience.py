"""Issue 3, resilience, as the app sees it: a real sidecar in front of fault-injecting fake upstreams.

Every test starts its own sidecar with the router settings it exercises (small cooldowns and timeouts),
drives it with the official ``openai`` SDK and checks what each upstream saw through the fake's control
route. Faults are deterministic (``fail_next``, ``seed``); time bounds are derived from the config
values under test, with generous slack, never from how fast the machine is.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai
import pytest
import requests

from tests.integration.procs import APP_KEY, PROVIDER_KEY, FakeProvider, Sidecar, deployment

MESSAGES = [{"role": "user", "content": "Tell me a story"}]
STORY = "Once upon a time, a sidecar kept every answer whole even when its upstream broke."
PRIMARY, BACKUP = "openai/primary-model", "openai/backup-model"


@contextmanager
def sidecar(workdir: Path, name: str, model_list: list[dict[str, Any]], router: dict[str, Any] | None = None,
            settings: dict[str, Any] | None = None) -> Iterator[Sidecar]:
    config: dict[str, Any] = {"model_list": model_list,
                              "router_settings": {"timeout": 10, "num_retries": 0, "cooldown_time": 1,
                                                  **(router or {})}}
    if settings:
        config["sidecar_settings"] = settings
    process = Sidecar(config, workdir, name)
    try:
        yield process
    finally:
        process.stop()


def client_for(process: Sidecar, timeout: float = 30) -> openai.OpenAI:
    return openai.OpenAI(base_url=process.base_url, api_key=APP_KEY, max_retries=0, timeout=timeout)


def pair(primary: FakeProvider, backup: FakeProvider, group: str = "main", **backup_params: Any) -> list[dict]:
    """``group`` with the primary first (order 1) and the backup second (order 2)."""
    return [deployment(group, primary, order=1), deployment(group, backup, order=2, **backup_params)]


def stream_text(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def wait_for(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


# ---- the classic exercise ------------------------------------------------------------------------


def test_classic_exercise_half_rate_limited_primary(workdir: Path, primary: FakeProvider,
                                                    backup: FakeProvider) -> None:
    """Primary fails 50% with 429, backup healthy: 500 requests at concurrency 8 all succeed; the breaker
    opens, the primary sees nothing while it is open, one probe after the cooldown, then traffic returns."""
    cooldown, latency = 1.0, 0.03
    primary.set(error_rate=0.5, error_status=429, seed=7, latency=latency)
    backup.set(latency=0.04)  # 500 requests / 8 in parallel take at least 2.5 s: several cooldowns long
    with sidecar(workdir, "classic", pair(primary, backup),
                 {"allowed_fails": 3, "cooldown_time": cooldown}) as process:
        client = client_for(process)

        def one(i: int) -> tuple[str, str]:
            raw = client.chat.completions.with_raw_response.create(
                model="main", messages=[{"role": "user", "content": f"q{i}"}])
            completion = raw.parse()
            return raw.headers["x-sidecar-deployment"], completion.model

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(one, range(500)))
        assert len(answers) == 500  # every one succeeded (an error would have raised)
        assert {a[0] for a in answers} <= {PRIMARY, BACKUP}
        for deployment_id, model in answers:  # the body names the model that actually answered
            assert model == ("primary-model" if deployment_id == PRIMARY else "backup-model")
        logs = process.logs()
        opens = logs.count("-> open (")
        assert opens >= 1 and logs.count("open -> half_open") >= 1
        assert "breaker openai/primary-model: closed -> open" in logs

        times = primary.stats()["request_times"]
        gaps = [(i, b - a) for i, (a, b) in enumerate(itertools.pairwise(times))]
        # While open the primary sees nothing: every opening is one silence of at least the cooldown
        # (less a little for requests admitted just before it opened), the last one possibly unfinished.
        quiet = [i for i, gap in gaps if gap >= 0.6 * cooldown]
        assert len(quiet) >= opens - 1
        # ...and after each silence exactly one probe: nothing else reaches the primary before the probe's
        # verdict, which the fake gives no sooner than its latency.
        for i in quiet:
            if i + 2 < len(times):
                assert times[i + 2] - times[i + 1] >= 0.9 * latency

        # Traffic returns: once the primary is healthy, after at most one cooldown it answers again.
        primary.set(error_rate=0.0, latency=0.0)
        backup.set(latency=0.0)
        time.sleep(cooldown * 1.2)
        served = [client.chat.completions.with_raw_response.create(model="main", messages=MESSAGES)
                  .headers["x-sidecar-deployment"] for _ in range(5)]
        assert served == [PRIMARY] * 5


# ---- silent upstreams and time limits ------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_hanging_primary_answered_by_backup(workdir: Path, primary: FakeProvider, backup: FakeProvider,
                                            stream: bool) -> None:
    primary.set(hang=True)
    model_list = [deployment("main", primary, order=1, timeout=1, stream_timeout=0.5),
                  deployment("main", backup, order=2)]
    with sidecar(workdir, f"hang-{stream}", model_list, {"timeout": 20}) as process:
        client = client_for(process)
        started = time.monotonic()
        if stream:
            raw = client.chat.completions.with_raw_response.create(model="main", messages=MESSAGES, stream=True)
            assert stream_text(list(raw.parse())) == "Hello from backup."
        else:
            raw = client.chat.completions.with_raw_response.create(model="main", messages=MESSAGES)
            assert raw.parse().choices[0].message.content == "Hello from backup."
        elapsed = time.monotonic() - started
        assert raw.headers["x-sidecar-deployment"] == BACKUP
        assert raw.headers["x-sidecar-attempts"] == "2"  # a silent upstream is not retried
        assert elapsed >= (0.5 if stream else 1.0) * 0.95  # the limit fired...
        assert elapsed < 20  # ...long before the request's timeout
        assert primary.stats()["requests"] == 1
        assert wait_for(lambda: primary.stats()["disconnects"] == 1)  # the silent call was abandoned


def test_slow_first_token_fails_over_before_timeout(workdir: Path, primary: FakeProvider,
                                                    backup: FakeProvider) -> None:
    ttft = 3.0
    primary.set(ttft=ttft)
    model_list = [deployment("main", primary, order=1, stream_timeout=0.5),
                  deployment("main", backup, order=2)]
    with sidecar(workdir, "ttft", model_list, {"timeout": 20}) as process:
        started = time.monotonic()
        raw = client_for(process).chat.completions.with_raw_response.create(model="main", messages=MESSAGES,
                                                                            stream=True)
        chunks = list(raw.parse())
        assert time.monotonic() - started < ttft  # the backup answered before the primary's first token
        assert stream_text(chunks) == "Hello from backup."
        assert chunks[0].model == "backup-model"
        assert raw.headers["x-sidecar-deployment"] == BACKUP
        assert raw.headers["x-sidecar-attempts"] == "2"


# ---- error classes -------------------------------------------------------------------------------


def test_upstream_400_passed_through_not_retried_not_failed_over(workdir: Path, primary: FakeProvider,
                                                                 backup: FakeProvider) -> None:
    primary.set(fail_next=1, error_status=400)
    with sidecar(workdir, "bad-request", pair(primary, backup), {"num_retries": 3}) as process:
        with pytest.raises(openai.BadRequestError) as caught:
            client_for(process).chat.completions.create(model="main", messages=MESSAGES)
        assert caught.value.status_code == 400
        assert caught.value.body["type"] == "invalid_request_error"  # type: ignore[index]
        assert primary.stats()["requests"] == 1
        assert backup.stats()["requests"] == 0


def test_upstream_401_fails_over_and_is_recorded(workdir: Path, primary: FakeProvider,
                                                 backup: FakeProvider) -> None:
    primary.set(require_key="a-key-we-do-not-have")
    with sidecar(workdir, "auth", pair(primary, backup), {"num_retries": 3}) as process:
        raw = client_for(process).chat.completions.with_raw_response.create(model="main", messages=MESSAGES)
        completion = raw.parse()
        assert completion.choices[0].message.content == "Hello from backup."
        assert completion.model == "backup-model"
        assert raw.headers["x-sidecar-deployment"] == BACKUP
        assert raw.headers["x-sidecar-attempts"] == "2"
        assert "x-sidecar-fallback" not in raw.headers  # same model group
        assert primary.stats()["by_status"] == {"401": 1}  # the refused key was not retried


def test_retry_after_is_honoured_on_a_single_deployment(workdir: Path, primary: FakeProvider) -> None:
    primary.set(fail_next=1, error_status=429, retry_after=1)
    with sidecar(workdir, "retry-after", [deployment("solo", primary)],
                 {"num_retries": 2, "timeout": 20}) as process:
        raw = client_for(process).chat.completions.with_raw_response.create(model="solo", messages=MESSAGES)
        assert raw.parse().choices[0].message.content == "Hello from primary."
        assert raw.headers["x-sidecar-attempts"] == "2"
        times = primary.stats()["request_times"]
        assert len(times) == 2
        assert times[1] - times[0] >= 0.99  # not before the upstream's Retry-After


def test_retry_after_beyond_the_deadline_goes_straight_to_the_fallback(workdir: Path, primary: FakeProvider,
                                                                       backup: FakeProvider) -> None:
    timeout = 5.0
    primary.set(fail_next=1, error_status=429, retry_after=30)
    model_list = [deployment("main", primary), deployment("spare", backup)]
    with sidecar(workdir, "retry-after-far", model_list,
                 {"num_retries": 3, "timeout": timeout, "fallbacks": [{"main": ["spare"]}]}) as process:
        started = time.monotonic()
        raw = client_for(process).chat.completions.with_raw_response.create(model="main", messages=MESSAGES)
        assert time.monotonic() - started < timeout  # no sleep on the 30 s Retry-After
        completion = raw.parse()
        assert completion.choices[0].message.content == "Hello from backup."
        assert completion.model == "backup-model"
        assert raw.headers["x-sidecar-fallback"] == "spare"
        assert raw.headers["x-sidecar-deployment"] == BACKUP
        assert raw.headers["x-sidecar-attempts"] == "2"
        assert primary.stats()["requests"] == 1


# ---- streams -------------------------------------------------------------------------------------


def test_stream_with_one_malformed_event_completes(workdir: Path, primary: FakeProvider,
                                                   backup: FakeProvider) -> None:
    primary.set(text=STORY, malformed_event_at=2)
    with sidecar(workdir, "malformed-event", pair(primary, backup)) as process:
        raw = client_for(process).chat.completions.with_raw_response.create(model="main", messages=MESSAGES,
                                                                            stream=True)
        assert stream_text(list(raw.parse())) == STORY
        assert raw.headers["x-sidecar-deployment"] == PRIMARY
        assert raw.headers["x-sidecar-attempts"] == "1"
        assert backup.stats()["requests"] == 0


def test_stream_without_done_finishes_cleanly_with_usage(workdir: Path, primary: FakeProvider) -> None:
    idle = 5.0
    primary.set(text=STORY, no_done=True)
    with sidecar(workdir, "no-done", [deployment("solo", primary)], {"timeout": 20},
                 {"stream_idle_timeout": idle}) as process:
        started = time.monotonic()
        chunks = list(client_for(process).chat.completions.create(
            model="solo", messages=MESSAGES, stream=True, stream_options={"include_usage": True}))
        assert time.monotonic() - started < idle  # finished at the body's end, not by a timer
        assert stream_text(chunks) == STORY
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
        with requests.post(f"{process.base_url}/chat/completions", stream=True, timeout=20,
                           json={"model": "solo", "messages": MESSAGES, "stream": True}) as response:
            assert response.content.endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize("prefill", [True, False], ids=["prefill", "splice"])
@pytest.mark.parametrize("fault", ["drop_after", "stall_after"])
def test_broken_stream_is_continued_on_the_backup(workdir: Path, primary: FakeProvider, backup: FakeProvider,
                                                  fault: str, prefill: bool) -> None:
    """A cut or stalled stream: the app still receives the whole answer, exactly once."""
    primary.set(text=STORY, chunks=6, chunk_delay=0.2, **{fault: 3})
    backup.set(text=STORY, chunks=4)
    with sidecar(workdir, f"broken-{fault}-{prefill}", pair(primary, backup, supports_prefill=prefill),
                 {"timeout": 30}, {"stream_idle_timeout": 0.5}) as process:
        raw = client_for(process).chat.completions.with_raw_response.create(
            model="main", messages=MESSAGES, stream=True, stream_options={"include_usage": True})
        chunks = list(raw.parse())
        assert stream_text(chunks) == STORY
        assert raw.headers["x-sidecar-deployment"] == PRIMARY  # committed with the primary's headers
        assert len({c.id for c in chunks}) == 1  # one completion, no seam
        assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
        sent = backup.stats()["last_body"]["messages"]
        if prefill:
            assert sent[-1]["role"] == "assistant" and STORY.startswith(sent[-1]["content"])
        else:
            assert sent == MESSAGES
        assert backup.stats()["requests"] == 1


def test_backup_rejecting_prefill_is_spliced(workdir: Path, primary: FakeProvider, backup: FakeProvider) -> None:
    primary.set(text=STORY, chunks=6, chunk_delay=0.2, drop_after=3)
    backup.set(text=STORY, reject_prefill=True)
    with sidecar(workdir, "reject-prefill", pair(primary, backup, supports_prefill=True)) as process:
        chunks = list(client_for(process).chat.completions.create(model="main", messages=MESSAGES, stream=True))
        assert stream_text(chunks) == STORY  # the prefill 400 never reached the app
        stats = backup.stats()
        assert stats["by_status"] == {"400": 1}  # the prefill was tried and refused...
        assert stats["requests"] == 2 and stats["last_body"]["messages"] == MESSAGES  # ...then spliced


def test_splice_that_diverges_ends_with_an_error(workdir: Path, primary: FakeProvider,
                                                 backup: FakeProvider) -> None:
    primary.set(text=STORY, chunks=6, chunk_delay=0.2, drop_after=3)
    backup.set(text="Something else entirely, said differently.")
    with sidecar(workdir, "diverged", pair(primary, backup, supports_prefill=False)) as process:
        received: list[Any] = []
        with pytest.raises(openai.APIError):
            for chunk in client_for(process).chat.completions.create(model="main", messages=MESSAGES,
                                                                     stream=True):
                received.append(chunk)
        text = stream_text(received)
        assert STORY.startswith(text) and text != STORY  # what came was true, and it did not end cleanly


def test_cut_stream_with_nowhere_to_continue_is_an_error_not_a_clean_end(workdir: Path,
                                                                         primary: FakeProvider) -> None:
    primary.set(text=STORY, chunks=6, chunk_delay=0.2, drop_after=3)
    with sidecar(workdir, "cut-alone", [deployment("solo", primary)]) as process:
        with requests.post(f"{process.base_url}/chat/completions", stream=True, timeout=20,
                           json={"model": "solo", "messages": MESSAGES, "stream": True}) as response:
            assert response.status_code == 200
            body = response.content
        assert b"[DONE]" not in body
        assert b'"error"' in body.rsplit(b"data: ", 1)[-1]  # the last event is an explicit error
        with pytest.raises(openai.APIError):
            list(client_for(process).chat.completions.create(model="solo", messages=MESSAGES, stream=True))


# ---- outage and recovery -------------------------------------------------------------------------


def test_outage_then_recovery_under_steady_traffic(workdir: Path, primary: FakeProvider,
                                                   backup: FakeProvider) -> None:
    cooldown, outage = 1.0, 2.5
    primary.set(error_rate=1.0, error_status=500)
    with sidecar(workdir, "outage", pair(primary, backup),
                 {"allowed_fails": 3, "cooldown_time": cooldown, "num_retries": 1}) as process:
        client = client_for(process)
        results: list[tuple[float, int, str]] = []
        stop = threading.Event()

        def traffic() -> None:
            while not stop.is_set():
                try:
                    raw = client.chat.completions.with_raw_response.create(model="main", messages=MESSAGES)
                    results.append((time.time(), raw.status_code, raw.headers["x-sidecar-deployment"]))
                except openai.APIStatusError as error:
                    results.append((time.time(), error.status_code, ""))
                except openai.APIError:
                    results.append((time.time(), 0, ""))
                time.sleep(0.02)

        worker = threading.Thread(target=traffic)
        worker.start()
        try:
            time.sleep(outage)
            primary.set(error_rate=0.0)
            recovered = time.time()
            assert wait_for(lambda: any(t > recovered and d == PRIMARY for t, _, d in results),
                            timeout=cooldown + 10)
            time.sleep(0.2)
        finally:
            stop.set()
            worker.join(30)
        assert all(status == 200 for _, status, _ in results)
        during = [d for t, _, d in results if t < recovered]
        assert len(during) > 10 and BACKUP in during  # answered throughout the outage
        back = min(t for t, _, d in results if t > recovered and d == PRIMARY)
        # The next probe comes at most one cooldown after the primary recovered (plus slack).
        assert back - recovered < cooldown + 3
        assert "breaker openai/primary-model: half_open -> closed" in process.logs()


# ---- when nothing can answer ---------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_catch_all_static_response(workdir: Path, primary: FakeProvider, backup: FakeProvider,
                                   stream: bool) -> None:
    primary.set(error_rate=1.0, error_status=500)
    backup.set(error_rate=1.0, error_status=503)
    static = "The assistant is unavailable right now."
    with sidecar(workdir, f"catch-all-{stream}", pair(primary, backup), {},
                 {"catch_all": {"static_response": static}}) as process:
        raw = client_for(process).chat.completions.with_raw_response.create(model="main", messages=MESSAGES,
                                                                            stream=stream)
        assert raw.status_code == 200
        assert raw.headers["x-sidecar-deployment"] == "catch-all"
        answer = raw.parse()
        text = stream_text(list(answer)) if stream else answer.choices[0].message.content
        assert text == static


def test_catch_all_last_good_answer(workdir: Path, primary: FakeProvider, backup: FakeProvider) -> None:
    with sidecar(workdir, "last-good", pair(primary, backup), {}, {"catch_all": {"last_good": True}}) as process:
        client = client_for(process)
        first = client.chat.completions.create(model="main", messages=MESSAGES)
        assert first.choices[0].message.content == "Hello from primary."
        primary.set(error_rate=1.0, error_status=500)
        backup.set(error_rate=1.0, error_status=500)
        raw = client.chat.completions.with_raw_response.create(model="main", messages=MESSAGES)
        assert raw.headers["x-sidecar-deployment"] == "catch-all"
        assert raw.parse().choices[0].message.content == "Hello from primary."
        with pytest.raises(openai.APIStatusError) as caught:  # a different request has no last good answer
            client.chat.completions.create(model="main", messages=[{"role": "user", "content": "other"}])
        assert caught.value.status_code == 503


def test_all_failed_is_a_generic_503(workdir: Path, primary: FakeProvider, backup: FakeProvider) -> None:
    primary.set(error_rate=1.0, error_status=500)
    backup.set(error_rate=1.0, error_status=502)
    with sidecar(workdir, "all-failed", pair(primary, backup)) as process:
        response = requests.post(f"{process.base_url}/chat/completions", timeout=20,
                                 json={"model": "main", "messages": MESSAGES})
        assert response.status_code == 503
        error = response.json()["error"]
        assert set(error) >= {"message", "type", "param", "code"}
        for secret in ("127.0.0.1", "localhost", str(primary.port), str(backup.port), "http", PROVIDER_KEY):
            assert secret not in response.text


def test_all_rate_limited_is_429_with_retry_after(workdir: Path, primary: FakeProvider,
                                                  backup: FakeProvider) -> None:
    primary.set(error_rate=1.0, error_status=429, retry_after=2)
    backup.set(error_rate=1.0, error_status=429, retry_after=3)
    with sidecar(workdir, "all-limited", pair(primary, backup)) as process:
        with pytest.raises(openai.RateLimitError) as caught:
            client_for(process).chat.completions.create(model="main", messages=MESSAGES)
        headers = caught.value.response.headers
        assert 1 <= int(headers["retry-after"]) <= 3  # the soonest recovery
        for secret in ("127.0.0.1", str(primary.port), PROVIDER_KEY):
            assert secret not in caught.value.response.text


# ---- hedging -------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False])
def test_hedging_uses_the_fast_backup_and_cancels_the_slow_primary(workdir: Path, primary: FakeProvider,
                                                                   backup: FakeProvider, stream: bool) -> None:
    ttft = 3.0
    primary.set(ttft=ttft)
    model_list = [deployment("main", primary, order=1, stream_timeout=15),
                  deployment("main", backup, order=2)]
    with sidecar(workdir, f"hedging-{stream}", model_list, {"timeout": 30},
                 {"hedging": {"main": {"after": 0.2}}}) as process:
        started = time.monotonic()
        raw = client_for(process).chat.completions.with_raw_response.create(model="main", messages=MESSAGES,
                                                                            stream=stream)
        answer = raw.parse()
        assert (stream_text(list(answer)) if stream else answer.choices[0].message.content) == "Hello from backup."
        assert time.monotonic() - started < ttft
        assert raw.headers["x-sidecar-deployment"] == BACKUP
        assert wait_for(lambda: primary.stats()["disconnects"] == 1, timeout=ttft + 5)
        assert primary.stats()["completed"] == 0
