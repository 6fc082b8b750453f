"""The SGLang emulator (``llm-sidecar fake-provider --sglang``) in its own process, driven through its control
route; one process serves several replicas on consecutive ports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import requests

from tests.integration.procs import ROOT, _wait_http, free_port


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive free ports."""
    while True:
        first = free_port()
        if all(_free(first + i) for i in range(1, count)):
            return first


def _free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class SGLangReplicas:
    def __init__(self, workdir: Path, count: int = 1, *args: str, name: str = "sglang", host: str = "127.0.0.1",
                 port: int | None = None) -> None:
        self.port = port or free_ports(count)
        self.urls = [f"http://{host}:{self.port + i}" for i in range(count)]
        self.log = workdir / f"{name}.log"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "fake-provider", "--sglang", "--port", str(self.port), "--replicas",
             str(count), "--name", name, "--host", host, *args],
            stdout=self.log.open("wb"), stderr=subprocess.STDOUT, cwd=ROOT)
        for url in self.urls:
            _wait_http(f"{url}/_control", self.process, self.log)

    @property
    def api_bases(self) -> list[str]:
        return [f"{url}/v1" for url in self.urls]

    def set(self, index: int, **settings: Any) -> None:
        requests.post(f"{self.urls[index]}/_control/faults", json=settings, timeout=5).raise_for_status()

    def state(self, index: int) -> dict[str, Any]:
        return requests.get(f"{self.urls[index]}/_control", timeout=5).json()

    def reset(self) -> None:
        for url in self.urls:
            requests.post(f"{url}/_control/reset", timeout=5).raise_for_status()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
