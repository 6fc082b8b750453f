"""In-flight coalescing and streams from the cache, as apps see them: the real sidecar in front of the fake
upstream, driven by the official SDKs. Every test asks its own question (``unique``) so entries and flights
never cross between tests."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
import requests

from tests.integration.procs import APP_KEY, FakeProvider, Sidecar, deployment

_counter = itertools.count()


def unique(text: str = "share me") -> list[dict[str, str]]:
    return [{"role": "user", "content": f"{text} #{next(_counter)} {time.time_ns()}"}]


@pytest.fixture(scope="module")
def sidecar(workdir: Path, primary: FakeProvider) -> Iterator[Sidecar]:
    config = {"model_list": [deployment("c", primary)],
              "router_settings": {"timeout": 20, "num_retries": 0, "cooldown_time": 0},
              "sidecar_settings": {"cache": {"type": "local", "ttl": 60, "max_size": 100}}}
    process = Sidecar(config, workdir, "coalescing")
    yield process
    process.stop()


def async_client(sidecar: Sidecar) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=sidecar.base_url, api_key=APP_KEY, max_retries=0, timeout=30)


def metric(sidecar: Sidecar, name: str) -> float:
    for line in requests.get(f"{sidecar.admin_url}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_fifty_identical_requests_make_one_upstream_call(sidecar: Sidecar, primary: FakeProvider) -> None:
    primary.set(latency=1.0)
    messages = unique()
    before = metric(sidecar, "llm_sidecar_coalesced_requests_total")

    async def run() -> list[Any]:
        client = async_client(sidecar)
        async with client:
            return await asyncio.gather(*(client.chat.completions.with_raw_response.create(
                model="c", messages=messages, temperature=0) for _ in range(50)))

    answers = asyncio.run(run())
    assert primary.stats()["requests"] == 1
    verdicts = [a.headers["x-sidecar-cache"] for a in answers]
    assert verdicts.count("miss") == 1 and set(verdicts) <= {"miss", "coalesced", "hit"}
    assert len({a.parse().choices[0].message.content for a in answers}) == 1
    coalesced = verdicts.count("coalesced")
    assert coalesced >= 25  # most came within the second the call took (stragglers find the entry: hits)
    assert metric(sidecar, "llm_sidecar_coalesced_requests_total") - before == coalesced


def test_fifty_identical_streams_share_one_call_and_late_joiners_get_whole_streams(
        sidecar: Sidecar, primary: FakeProvider) -> None:
    primary.set(chunks=20, chunk_delay=0.15)
    messages = unique()
    first_chunk = asyncio.Event()

    async def one(client: openai.AsyncOpenAI) -> tuple[str, str, int]:
        raw = await client.chat.completions.with_raw_response.create(
            model="c", messages=messages, temperature=0, stream=True, stream_options={"include_usage": True})
        text, usage = [], 0
        async for chunk in raw.parse():
            if chunk.choices:
                text.append(chunk.choices[0].delta.content or "")
                if text[-1]:
                    first_chunk.set()
            if chunk.usage is not None:
                usage = chunk.usage.total_tokens
        return raw.headers["x-sidecar-cache"], "".join(text), usage

    async def run() -> list[tuple[str, str, int]]:
        client = async_client(sidecar)
        async with client:
            early = [asyncio.create_task(one(client)) for _ in range(25)]
            await asyncio.wait_for(first_chunk.wait(), 20)  # the stream has begun: these join late
            late = [asyncio.create_task(one(client)) for _ in range(25)]
            return await asyncio.gather(*early, *late)

    results = asyncio.run(run())
    assert primary.stats()["requests"] == 1
    verdicts = [verdict for verdict, _, _ in results]
    assert verdicts.count("miss") == 1 and verdicts[:25].count("coalesced") == 24
    assert "coalesced" in verdicts[25:]  # late joiners (the rest, if the stream ended before they came: hits)
    assert set(verdicts) <= {"miss", "coalesced", "hit"}
    texts = {text for _, text, _ in results}
    assert len(texts) == 1 and texts.pop()  # every stream, early or late, whole and the same
    assert {usage for _, _, usage in results if usage} and all(usage > 0 for _, _, usage in results)


def test_the_leaders_disconnect_does_not_end_the_call_for_its_followers(
        sidecar: Sidecar, primary: FakeProvider) -> None:
    primary.set(chunks=8, chunk_delay=0.15)
    messages = unique()
    client = openai.OpenAI(base_url=sidecar.base_url, api_key=APP_KEY, max_retries=0, timeout=20)
    leader = client.chat.completions.with_raw_response.create(model="c", messages=messages, temperature=0,
                                                              stream=True)
    assert leader.headers["x-sidecar-cache"] == "miss"
    leading = leader.parse()
    next(iter(leading))  # the leader has its first chunk
    follower = client.chat.completions.create(model="c", messages=messages, temperature=0, stream=True)
    first = next(iter(follower))
    leading.close()  # the leader hangs up
    rest = "".join(c.choices[0].delta.content or "" for c in follower if c.choices)
    assert (first.choices[0].delta.content or "") + rest
    assert primary.stats()["requests"] == 1
    assert primary.stats().get("disconnects", 0) == 0
    deadline = time.monotonic() + 5  # the leader's own request ends with the call it made (logged after it)
    while '"outcome":"cancelled"' not in sidecar.logs() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert '"outcome":"cancelled"' in sidecar.logs()


def test_a_whole_answer_leaders_hang_up_does_not_end_the_call_for_its_followers(
        sidecar: Sidecar, primary: FakeProvider) -> None:
    primary.set(latency=1.0)
    messages, alone = unique(), unique("alone")

    async def run() -> list[Any]:
        hasty = openai.AsyncOpenAI(base_url=sidecar.base_url, api_key=APP_KEY, max_retries=0, timeout=0.4)
        async with hasty, async_client(sidecar) as patient:
            leader = asyncio.create_task(hasty.chat.completions.create(model="c", messages=messages,
                                                                       temperature=0))
            await asyncio.sleep(0.15)  # the leader's call is on its way
            followers = [patient.chat.completions.with_raw_response.create(model="c", messages=messages,
                                                                          temperature=0) for _ in range(3)]
            return await asyncio.gather(leader, *followers, return_exceptions=True)

    results = asyncio.run(run())
    assert isinstance(results[0], openai.APITimeoutError)  # the leader's app hung up
    assert [r.headers["x-sidecar-cache"] for r in results[1:]] == ["coalesced"] * 3
    assert len({r.parse().choices[0].message.content for r in results[1:]}) == 1
    assert primary.stats()["requests"] == 1 and primary.stats().get("disconnects", 0) == 0

    async def lone() -> None:  # nobody else waits: the hang-up ends the upstream call, as for any request
        hasty = openai.AsyncOpenAI(base_url=sidecar.base_url, api_key=APP_KEY, max_retries=0, timeout=0.4)
        async with hasty:
            with pytest.raises(openai.APITimeoutError):
                await hasty.chat.completions.create(model="c", messages=alone, temperature=0)

    asyncio.run(lone())
    deadline = time.monotonic() + 5
    while primary.stats().get("disconnects", 0) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert primary.stats()["requests"] == 2 and primary.stats().get("disconnects", 0) == 1


def test_a_failure_reaches_every_waiter_and_a_retryable_one_is_retried_by_one(
        sidecar: Sidecar, primary: FakeProvider) -> None:
    messages = unique()

    async def burst(n: int) -> list[Any]:
        client = async_client(sidecar)
        async with client:
            return await asyncio.gather(*(client.chat.completions.create(model="c", messages=messages,
                                                                         temperature=0) for _ in range(n)),
                                        return_exceptions=True)

    primary.set(fail_next=1, error_status=400, latency=0.5)
    results = asyncio.run(burst(10))
    assert all(isinstance(r, openai.BadRequestError) for r in results)
    assert primary.stats()["requests"] == 1

    primary.clear()
    primary.set(fail_next=1, error_status=500, latency=0.5)
    results = asyncio.run(burst(10))
    answered = [r for r in results if not isinstance(r, Exception)]
    assert len(answered) >= 9  # the leader gets its call's error; the others share one retry
    assert primary.stats()["requests"] == 2


def test_a_streamed_answer_is_replayed_from_the_cache_through_the_openai_sdk(
        sidecar: Sidecar, primary: FakeProvider) -> None:
    client = openai.OpenAI(base_url=sidecar.base_url, api_key=APP_KEY, max_retries=0, timeout=20)
    messages = unique()

    def streamed(**options: Any) -> tuple[str, str, Any, str | None]:
        raw = client.chat.completions.with_raw_response.create(model="c", messages=messages, temperature=0,
                                                               stream=True, **options)
        chunks = list(raw.parse())
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = next(c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason)
        return raw.headers["x-sidecar-cache"], text, chunks[-1].usage, finish

    verdict, text, usage, finish = streamed()
    assert verdict == "miss" and text and usage is None and finish == "stop"
    time.sleep(0.2)  # the entry is stored just after the stream ends
    hit = streamed(stream_options={"include_usage": True})
    assert hit[0] == "hit" and hit[1] == text and hit[3] == "stop"
    assert hit[2] is not None and hit[2].total_tokens > 0
    assert streamed()[2] is None  # no usage chunk unless asked
    plain = client.chat.completions.with_raw_response.create(model="c", messages=messages, temperature=0)
    assert plain.headers["x-sidecar-cache"] == "hit" and plain.parse().choices[0].message.content == text
    assert primary.stats()["requests"] == 1


def test_a_streamed_answer_is_replayed_from_the_cache_through_the_anthropic_sdk(
        sidecar: Sidecar, primary: FakeProvider) -> None:
    claude = anthropic.Anthropic(base_url=sidecar.url, api_key=APP_KEY, max_retries=0, timeout=20)
    messages = unique()

    def streamed() -> tuple[str, str, Any]:
        with claude.messages.with_streaming_response.create(model="c", max_tokens=64, extra_body={"temperature": 0},
                                                            messages=messages, stream=True) as raw:
            verdict = raw.headers["x-sidecar-cache"]
            events = list(raw.parse())
        text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
        kinds = [e.type for e in events]
        assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
        delta = next(e for e in events if e.type == "message_delta")
        return verdict, text, delta

    first = streamed()
    time.sleep(0.2)
    second = streamed()
    assert (first[0], second[0]) == ("miss", "hit") and first[1] == second[1] and first[1]
    assert second[2].delta.stop_reason == "end_turn" and second[2].usage.output_tokens > 0
    assert primary.stats()["requests"] == 1
