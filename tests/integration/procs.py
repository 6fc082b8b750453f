"""Real processes for integration tests: fake providers and the sidecar, each on a free port."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import requests
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROVIDER_KEY = "sk-provider-SECRET-4242"
APP_KEY = "sk-app-key-should-not-travel"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PortTaken(RuntimeError):
    """The port ``free_port`` gave was taken by another process (another test's client) before ours bound it."""


PORT_ATTEMPTS = 3  # fresh ports for a process whose port was taken in the meantime


def _wait_http(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            text = log.read_text()
            error = PortTaken if "Address already in use" in text else RuntimeError
            raise error(f"process exited with {process.returncode}:\n{text}")
        try:
            if requests.get(url, timeout=0.5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.05)
    process.kill()  # nobody will stop a process whose start failed
    process.wait(10)
    raise RuntimeError(f"{url} not ready in {timeout}s:\n{log.read_text()}")


class FakeProvider:
    """``llm-sidecar fake-provider`` in its own process, driven through its control route."""

    def __init__(self, name: str, workdir: Path) -> None:
        self.name = name
        self.log = workdir / f"fake-{name}.log"
        for attempt in range(PORT_ATTEMPTS):
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sidecar", "fake-provider", "--port", str(self.port), "--name", name],
                stdout=self.log.open("wb"), stderr=subprocess.STDOUT, cwd=ROOT,
            )
            try:
                _wait_http(f"{self.url}/_control", self.process, self.log)
                return
            except PortTaken:
                if attempt == PORT_ATTEMPTS - 1:
                    raise

    @property
    def api_base(self) -> str:
        return f"{self.url}/v1"

    def set(self, **faults: Any) -> None:
        requests.post(f"{self.url}/_control/faults", json=faults).raise_for_status()

    def clear(self) -> None:
        self.set(error_rate=0.0, fail_next=0, error_status=429, error_code=None, error_message=None,
                 error_param=None, error_event_at=None, endless=False, retry_after=None, latency=0.0,
                 ttft=0.0, chunk_delay=0.0, hang=False, reset=False, drop_after=None, stall_after=None,
                 malformed=False, malformed_event_at=None, odd_event=None, ping_every=0.0,
                 no_done=False, chunks=5, text="",
                 require_key=None, reject_prefill=False, stream_exception=None, tool_call=None,
                 tool_arguments=None, reasoning="", quota_requests=None, finish_reason=None,
                 embedding_model="digest")
        requests.post(f"{self.url}/_control/reset").raise_for_status()

    def stats(self) -> dict[str, Any]:
        return requests.get(f"{self.url}/_control").json()["stats"]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


class Sidecar:
    """``llm-sidecar serve`` with a config written to a temp file; logs captured for inspection."""

    def __init__(self, config: dict[str, Any] | Path, workdir: Path, name: str = "sidecar",
                 env: dict[str, str] | None = None) -> None:
        """``config``: a dict written to a temp file, or the path of a config file to serve as it is."""
        if isinstance(config, Path):
            self.config_path = config
        else:
            self.config_path = workdir / f"{name}.yaml"
            self.config_path.write_text(yaml.safe_dump(config))
        self.log = workdir / f"{name}.log"
        for attempt in range(PORT_ATTEMPTS):
            self.port, self.admin_port = free_port(), free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            self.admin_url = f"http://127.0.0.1:{self.admin_port}"
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sidecar", "serve", "--config", str(self.config_path), "--port",
                 str(self.port), "--admin-host", "127.0.0.1", "--admin-port", str(self.admin_port)],
                stdout=self.log.open("wb"), stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, **(env or {})},
            )
            try:
                _wait_http(f"{self.admin_url}/readyz", self.process, self.log)
                return
            except PortTaken:
                if attempt == PORT_ATTEMPTS - 1:
                    raise

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def request_log(self, request_id: str, timeout: float = 5.0) -> dict[str, Any]:
        """The request's log line (written just after its answer), parsed; waits up to ``timeout`` for it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.logs().splitlines():
                if request_id in line and '"sidecar.request"' in line:
                    return orjson.loads(line)  # type: ignore[no-any-return]
            time.sleep(0.1)
        raise AssertionError(f"no log line for {request_id}")

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.terminate()
        return self.process.wait(30)


class RedisServer:
    """A real ``redis-server`` on a free port (no persistence), optionally with a password."""

    def __init__(self, workdir: Path, name: str = "redis", password: str | None = None,
                 port: int | None = None) -> None:
        """``port``: a given one (a Redis restarted where its clients expect it), else a free one."""
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed: run `make test` (it installs it) or "
                               "`apt-get install -y redis-server`")
        self.port = port or free_port()
        self.password = password
        self.log = workdir / f"{name}.log"
        args = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(workdir)]
        if password:
            args += ["--requirepass", password]
        self.process = subprocess.Popen(args, stdout=self.log.open("wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start:\n{self.log.read_text()}")
            time.sleep(0.02)

    def keys(self) -> int:
        """How many keys the server holds (DBSIZE)."""
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=2)
        try:
            return int(client.dbsize())
        finally:
            client.close()

    def wait_for_keys(self, count: int = 1, timeout: float = 10.0) -> None:
        """Until the server holds ``count`` keys (background stores land after the answer is sent)."""
        deadline = time.monotonic() + timeout
        while self.keys() < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"redis holds fewer than {count} keys after {timeout:g} s")
            time.sleep(0.02)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                auth = f"AUTH {self.password}\r\n" if self.password else ""
                conn.sendall(f"{auth}PING\r\n".encode())
                data = b""
                while b"PONG" not in data and b"-" not in data:
                    data += conn.recv(256) or b"-"
                return b"PONG" in data
        except OSError:
            return False

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@contextlib.contextmanager
def fake_providers(workdir: Path, *names: str) -> Iterator[dict[str, FakeProvider]]:
    """Fake providers by name, stopped on the way out (a test module's ``fakes`` fixture)."""
    started = {name: FakeProvider(name, workdir) for name in names}
    try:
        yield started
    finally:
        for fake in started.values():
            fake.stop()


def deployment(group: str, provider: FakeProvider, **params: Any) -> dict[str, Any]:
    return {"model_name": group, "litellm_params": {"model": f"openai/{provider.name}-model",
                                                    "api_base": provider.api_base, "api_key": PROVIDER_KEY,
                                                    **params}}
