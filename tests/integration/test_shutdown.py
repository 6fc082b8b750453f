"""SIGTERM: stop accepting, let the in-flight stream finish, exit 0."""

from __future__ import annotations

from pathlib import Path

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
