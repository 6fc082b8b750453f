"""Live config reload through the real process: a steady load while the config is replaced ten times (valid
and invalid versions, swapped in as the kubelet swaps a ConfigMap volume's ``..data`` link) and a key file
is rotated the same way. No request fails, /readyz stays ready, new deployments get traffic promptly,
invalid versions are logged with their locations and ignored, and an open breaker survives every reload.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import os
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import requests
import yaml

from tests.integration.procs import APP_KEY, FakeProvider, Sidecar, deployment

RATE = 200  # requests per second of background load
RELOADS = 10


class VolumeDir:
    """A directory laid out as the kubelet lays out a ConfigMap or Secret volume: each file is a symlink
    into ``..data``, itself a symlink to a timestamped directory; an update writes a new directory and
    renames a new ``..data`` link over the old one (one atomic step), then removes the old directory."""

    def __init__(self, root: Path, files: dict[str, str]) -> None:
        self.root = root
        self.generation = 0
        root.mkdir()
        self.update(files)
        for name in files:
            (root / name).symlink_to(Path("..data") / name)

    def update(self, files: dict[str, str]) -> None:
        self.generation += 1
        fresh = self.root / f"..2026_01_01_00_00_{self.generation:02d}"
        fresh.mkdir()
        for name, text in files.items():
            (fresh / name).write_text(text)
        link = self.root / "..data_tmp"
        link.symlink_to(fresh.name)
        old = (self.root / "..data").resolve() if (self.root / "..data").exists() else None
        os.replace(link, self.root / "..data")
        if old is not None:
            for child in old.iterdir():
                child.unlink()
            old.rmdir()


@pytest.fixture(scope="module")
def fresh(workdir: Path) -> Iterator[FakeProvider]:
    fake = FakeProvider("fresh", workdir)
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def keyed(workdir: Path) -> Iterator[FakeProvider]:
    fake = FakeProvider("keyed", workdir)
    fake.set(require_key="key-after-rotation")
    yield fake
    fake.stop()


class Load:
    """``RATE`` chat requests a second from a thread, and /readyz polled alongside, until stopped."""

    def __init__(self, sidecar: Sidecar) -> None:
        self.sidecar = sidecar
        self.statuses: Counter[int | str] = Counter()
        self.deployments: Counter[str] = Counter()
        self.not_ready: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)

    async def _run(self) -> None:
        body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            async def one() -> None:
                try:
                    async with session.post(f"{self.sidecar.base_url}/chat/completions", json=body) as answer:
                        await answer.read()
                        self.statuses[answer.status] += 1
                        self.deployments[answer.headers.get("x-sidecar-deployment", "")] += 1
                except Exception as error:  # a failed request is what this test looks for
                    self.statuses[type(error).__name__] += 1

            async def ready() -> None:
                while not self._stop.is_set():
                    async with session.get(f"{self.sidecar.admin_url}/readyz") as answer:
                        if answer.status != 200:
                            self.not_ready.append(answer.status)
                    await asyncio.sleep(0.05)

            tasks: set[asyncio.Task[None]] = {asyncio.create_task(ready())}
            started, sent = time.monotonic(), 0
            while not self._stop.is_set():
                due = int((time.monotonic() - started) * RATE)
                for _ in range(due - sent):
                    task = asyncio.create_task(one())
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                sent = max(sent, due)
                await asyncio.sleep(0.005)
            await asyncio.gather(*tasks)


def metric(sidecar: Sidecar, name: str) -> dict[str, float]:
    text = requests.get(f"{sidecar.admin_url}/metrics", timeout=10).text
    return {labels: float(value) for labels, value in re.findall(rf"^{name}\{{(.*)\}} (\S+)$", text, re.M)}


def reloads(sidecar: Sidecar) -> dict[str, float]:
    return {k.split('"')[1]: v for k, v in metric(sidecar, "llm_sidecar_config_reloads_total").items()}


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_reloads_under_load(workdir: Path, primary: FakeProvider, backup: FakeProvider, fresh: FakeProvider,
                            keyed: FakeProvider) -> None:
    keys = VolumeDir(workdir / "keys", {"keyed": "key-before-rotation\n"})
    base: dict[str, Any] = {
        "model_list": [
            deployment("chat", backup, order=1),  # rate limited for 600 s by the first request: its breaker opens
            deployment("chat", primary, order=2),
            {"model_name": "keyed", "litellm_params": {"model": "openai/keyed-model", "api_base": keyed.api_base,
                                                       "api_key": f"file:{keys.root / 'keyed'}"}},
        ],
        "router_settings": {"timeout": 20, "num_retries": 0, "fallbacks": [{"keyed": ["chat"]}]},
        "sidecar_settings": {"retry_after_cap_seconds": 600},
    }
    versions = _versions(base, fresh)
    volume = VolumeDir(workdir / "config", {"config.yaml": yaml.safe_dump(base)})
    backup.set(error_rate=1.0, error_status=429, retry_after=600)
    sidecar = Sidecar(volume.root / "config.yaml", workdir, "reload")
    client = openai.OpenAI(base_url=sidecar.base_url, api_key=APP_KEY, max_retries=0, timeout=30)
    chat = client.chat.completions.with_raw_response.create
    hi = [{"role": "user", "content": "hi"}]
    try:
        assert chat(model="chat", messages=hi).headers["x-sidecar-deployment"] == "openai/primary-model"
        before = chat(model="keyed", messages=hi).headers  # the key is wrong until rotated: answered by chat
        assert before["x-sidecar-fallback"] == "chat"
        breaker = 'deployment="openai/backup-model"'
        assert metric(sidecar, "llm_sidecar_breaker_state")[breaker] == 1
        to_fresh: list[float] = []
        with Load(sidecar) as load:
            for number, (kind, text) in enumerate(versions):
                counts = reloads(sidecar)
                slow = _slow_request_to_fresh(client, fresh) if number == 4 else None
                changed_at = time.monotonic()
                volume.update({"config.yaml": text})
                wait_for(lambda c=counts, k=kind: reloads(sidecar)[{"valid": "success"}.get(k, k)] > c[
                    {"valid": "success"}.get(k, k)], f"reload {number} ({kind})")
                if kind == "valid" and "fresh" in text:
                    wait_for(lambda: _answers_from_fresh(client), "traffic to the new deployment")
                    to_fresh.append(time.monotonic() - changed_at)
                if slow is not None:
                    slow.join(30)
                    assert slow.result == "openai/fresh-model"  # finished on the config it started on
                assert metric(sidecar, "llm_sidecar_breaker_state")[breaker] == 1, f"breaker lost at {number}"
            keys.update({"keyed": "key-after-rotation\n"})
            rotated_at = time.monotonic()
            wait_for(lambda: "x-sidecar-fallback" not in chat(model="keyed", messages=hi).headers,
                     "the rotated key")
            to_key = time.monotonic() - rotated_at
            time.sleep(0.5)
        failed = {status: n for status, n in load.statuses.items() if status != 200}
        assert failed == {} and load.not_ready == []
        assert load.statuses[200] >= RATE * 3  # the load ran throughout
        assert reloads(sidecar) == {"success": 6, "invalid": 4, "error": 0}
        served = hashlib.sha256(yaml.safe_dump(base).encode()).hexdigest()
        assert metric(sidecar, "llm_sidecar_config_info") == {f'hash="{served}"': 1}
        _invalid_versions_were_logged(sidecar.logs())
        print(f"\nconfig change -> new deployment answering: {[round(s, 2) for s in to_fresh]} s; "
              f"key rotation -> new key in use: {to_key:.2f} s; {load.statuses[200]} requests, "
              f"{dict(load.deployments)}")
        assert max(to_fresh) < 10 and to_key < 10  # ~0.5 s (the watch period); generous for a loaded machine
        # SIGHUP reloads even when nothing changed; the process is still serving afterwards.
        sidecar.process.send_signal(signal.SIGHUP)
        wait_for(lambda: reloads(sidecar)["success"] == 7, "the SIGHUP reload")
        assert chat(model="chat", messages=hi).http_response.status_code == 200
    finally:
        assert sidecar.stop() == 0


def _versions(base: dict[str, Any], fresh: FakeProvider) -> list[tuple[str, str]]:
    """Ten replacements of the config, valid and invalid (each invalid one with a different problem)."""
    with_fresh = copy.deepcopy(base)
    with_fresh["model_list"].append(deployment("fresh", fresh))
    retuned = copy.deepcopy(with_fresh)
    retuned["model_list"][1]["litellm_params"]["weight"] = 3
    bad_provider = copy.deepcopy(base)
    bad_provider["model_list"].append({"model_name": "x", "litellm_params": {"model": "nope/x"}})
    bad_fallback = copy.deepcopy(base)
    bad_fallback["router_settings"]["fallbacks"] = [{"chat": ["missing-group"]}]
    return [
        ("valid", yaml.safe_dump(with_fresh)),
        ("invalid", "model_list: [unclosed\n"),
        ("valid", yaml.safe_dump(retuned)),
        ("invalid", yaml.safe_dump(bad_provider)),
        ("valid", yaml.safe_dump(base)),  # "fresh" removed while a slow request to it is in flight
        ("invalid", yaml.safe_dump(bad_fallback)),
        ("valid", yaml.safe_dump(with_fresh)),
        ("invalid", "model_list: []\n"),
        ("valid", yaml.safe_dump(retuned)),
        ("valid", yaml.safe_dump(base)),
    ]


def _invalid_versions_were_logged(logs: str) -> None:
    assert "model_list[3].litellm_params.model: unknown provider 'nope'" in logs
    assert "router_settings.fallbacks: unknown model group 'missing-group'" in logs
    assert "not valid YAML" in logs and "model_list: at least one deployment is required" in logs
    assert "still serving config" in logs
    assert "key-after-rotation" not in logs and "key-before-rotation" not in logs


class _Slow(threading.Thread):
    result: str | None = None


def _slow_request_to_fresh(client: openai.OpenAI, fresh: FakeProvider) -> _Slow:
    """A request to "fresh" that takes 1.5 s upstream, started just before the config that drops it."""
    fresh.set(latency=1.5)
    thread = _Slow()

    def run() -> None:
        answer = client.chat.completions.with_raw_response.create(model="fresh", messages=[{"role": "user",
                                                                                              "content": "slow"}])
        thread.result = answer.headers["x-sidecar-deployment"]
        fresh.set(latency=0.0)

    thread.run = run  # type: ignore[method-assign]
    thread.start()
    time.sleep(0.3)  # in flight
    return thread


def _answers_from_fresh(client: openai.OpenAI) -> bool:
    try:
        answer = client.chat.completions.with_raw_response.create(model="fresh", messages=[{"role": "user",
                                                                                              "content": "hi"}])
    except openai.NotFoundError:
        return False
    return answer.headers["x-sidecar-deployment"] == "openai/fresh-model"
