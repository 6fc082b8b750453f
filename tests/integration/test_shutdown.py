"""SIGTERM: stop accepting, let the in-flight stream finish, exit 0."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests

from tests.integration.procs import FakeProvider, Sidecar, deployment


def test_sigterm_lets_a_stream_finish_then_exits_zero(workdir: Path, primary: FakeProvider) -> None:
    primary.set(chunks=20, chunk_delay=0.05, text="abcdefghijklmnopqrst")
    sidecar = Sidecar({"model_list": [deployment("m", primary)],
                       "sidecar_settings": {"shutdown_grace_seconds": 10}}, workdir, "sigterm")
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with requests.post(f"{sidecar.base_url}/chat/completions", json=body, stream=True, timeout=10) as response:
        lines = response.iter_lines()
        first = next(line for line in lines if line)
        assert first.startswith(b"data: ")
        sidecar.terminate()
        rest = [line for line in lines if line]
    assert rest[-1] == b"data: [DONE]"
    assert len(rest) >= 20
    assert sidecar.process.wait(15) == 0
    assert "draining" in sidecar.logs()


def test_the_grace_is_honoured_once(workdir: Path, primary: FakeProvider) -> None:
    """A stream longer than the grace is cut when the grace ends, counted from SIGTERM — not at twice the
    grace (aiohttp's own shutdown waits its timeout, then as long again after cancelling), which would outlast
    the chart's terminationGracePeriodSeconds. New connections are refused meanwhile."""
    primary.set(chunks=200, chunk_delay=0.05, text="x" * 200)
    sidecar = Sidecar({"model_list": [deployment("m", primary)],
                       "sidecar_settings": {"shutdown_grace_seconds": 3}}, workdir, "grace-once")
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with requests.post(f"{sidecar.base_url}/chat/completions", json=body, stream=True, timeout=20) as response:
        lines = response.iter_lines()
        assert next(line for line in lines if line).startswith(b"data: ")
        sidecar.terminate()
        signalled = time.monotonic()
        time.sleep(0.5)
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{sidecar.url}/healthz", timeout=2)
        try:
            for _ in lines:
                pass
        except requests.RequestException:
            pass  # cut: what the grace's end does to a stream still running
        cut = time.monotonic() - signalled
    assert 2.5 < cut < 5.0  # the grace is 3 s; twice it would be 6 s
    assert sidecar.process.wait(10) == 0
