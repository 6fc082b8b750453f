"""Live config reload: on SIGHUP and when the config file or a key file changes.

Kubernetes updates a mounted ConfigMap or Secret by writing a new directory and swapping the ``..data``
symlink, so the file at the mounted path becomes another inode in one step. The watcher stats the config
file and every ``file:`` key a few times a second (in a worker thread: no file system call on the event loop)
and compares (device, inode, mtime, size):

- the config changed (or SIGHUP): read it, validate it, and if it is valid build the next ``Assembly`` from
  the one being served and swap it in (``AppState.install``); requests in flight finish on the old one, which
  ``assembly.retire`` closes once they are done. An invalid config is logged problem by problem, with
  locations, and the old one keeps serving. /readyz never notices: there is always a router.
- only a key file changed: the secrets are re-read in place (``Router.refresh_credentials``), no reload.

``llm_sidecar_config_reloads_total{result}`` counts outcomes (success, invalid, error) and
``llm_sidecar_config_info{hash}`` names the config served (the sha256 of its bytes, as ``sha256sum`` prints).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Iterable
from time import perf_counter
from typing import TYPE_CHECKING

from sidecar.config import Config, ConfigError, parse_yaml
from sidecar.config.changes import compare, key_files, new_warnings, secret_values
from sidecar.config.redaction import internal_hosts
from sidecar.routing.outcome import Target
from sidecar.server.assembly import Process, assemble, retire
from sidecar.telemetry.logs import REDACT

if TYPE_CHECKING:
    from sidecar.server.keys import AppState

log = logging.getLogger("sidecar.reload")
WATCH_SECONDS = 0.5
RESULTS = ("success", "invalid", "error")
Stamp = tuple[int, int, int, int] | None


def digest_of(text: bytes) -> str:
    return hashlib.sha256(text).hexdigest()


def stamps(paths: Iterable[str]) -> dict[str, Stamp]:
    """What identifies each file's current content without reading it (None: missing)."""
    out: dict[str, Stamp] = {}
    for path in paths:
        try:
            st = os.stat(path)  # follows the ..data symlink: a swap is a new inode
        except OSError:
            out[path] = None
            continue
        out[path] = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
    return out


class Reloader:
    """Watches the served config's files and replaces the assembly when the config changes."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self.path = state.config_path
        self._stamps: dict[str, Stamp] = {}
        self._lock = asyncio.Lock()
        self._background: set[asyncio.Task[object]] = set()
        self._secrets = set(secret_values(state.config))
        self._hosts = set(internal_hosts(state.config))

    # ---- triggers -------------------------------------------------------------------------------

    def request(self) -> None:
        """SIGHUP: reload now (the signal handler runs on the loop; the reload runs as a task)."""
        self._spawn(self.reload("SIGHUP"))

    async def run(self) -> None:
        """The watch loop (a task for the server's lifetime)."""
        loop = asyncio.get_running_loop()
        self._stamps = await loop.run_in_executor(None, stamps, self._watched())
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            await self.check()

    async def check(self) -> None:
        """Compare the watched files with what was seen last; reload or refresh keys on a change."""
        current = await asyncio.get_running_loop().run_in_executor(None, stamps, self._watched())
        changed = {p for p, stamp in current.items() if stamp != self._stamps.get(p, stamp)}
        self._stamps = {**self._stamps, **current}
        if self.path is not None and self.path in changed:
            await self.reload("file change")
        elif changed:
            await self.refresh_keys()

    def _watched(self) -> list[str]:
        config = self.state.config
        return ([self.path] if self.path is not None else []) + key_files(config)

    # ---- acting -----------------------------------------------------------------------------------

    async def reload(self, cause: str) -> bool:
        """Load, validate and swap in the config file; False (and the old config kept) when it is invalid."""
        if self.path is None:
            log.warning("config reload (%s) ignored: the config was not read from a file", cause)
            return False
        async with self._lock:  # one reload at a time; a change seen meanwhile is read by the next
            return await self._reload(self.path, cause)

    async def _reload(self, path: str, cause: str) -> bool:
        state, loop = self.state, asyncio.get_running_loop()
        started = perf_counter()
        try:
            text = await loop.run_in_executor(None, _read, path)
            if cause == "file change" and digest_of(text) == state.digest:
                return True  # touched, or swapped for the same content
            config = await loop.run_in_executor(None, lambda: parse_yaml(text, path))
        except ConfigError as error:
            self._invalid(path, cause, error.problems)
            return False
        old = state.assembly
        try:
            assert old is not None and state.session is not None
            self._redact(config)  # before any request can log a new key
            new = await assemble(config, digest_of(text), Process(state.session, state.metrics, state.tracing), old)
        except Exception:
            state.reloads["error"] += 1
            log.exception("config reload (%s) failed; still serving config %s", cause, state.digest[:12])
            return False
        changes = compare(old.config, config)
        state.install(new)
        state.reloads["success"] += 1
        logging.getLogger().setLevel(config.sidecar.log_level.upper())
        log.info("config reloaded (%s) in %.0f ms: %s; config %s", cause, (perf_counter() - started) * 1000,
                 changes.summary, new.digest[:12])
        for warning in new_warnings(config, old.config):
            log.warning("config: %s", warning)
        if changes.restart_only:
            log.warning("config reload: %s changed; that takes effect when the sidecar restarts",
                        ", ".join(f"sidecar_settings.{name}" for name in changes.restart_only))
        self._stamps.update(await loop.run_in_executor(None, stamps, key_files(config)))
        self._spawn(retire(old, new))
        return True

    def _invalid(self, path: str, cause: str, problems: list[str]) -> None:
        self.state.reloads["invalid"] += 1
        for problem in problems:
            log.error("config reload: %s: %s", path, problem)
        log.error("config reload (%s): %d problem(s) in %s; still serving config %s", cause, len(problems), path,
                  self.state.digest[:12])

    async def refresh_keys(self) -> None:
        """A key file changed: re-read every ``file:`` secret in place (no reload)."""
        state = self.state
        router = state.router
        if router is None:
            return
        config = state.config

        def refresh() -> list[Target]:
            changed = router.refresh_credentials()  # a carried-over target may hold the previous config's Secret
            for key in (*config.sidecar.inbound_api_keys, *(d.api_key for d in config.deployments)):
                if key is not None:
                    key.refresh()
            return changed

        loop = asyncio.get_running_loop()
        changed = await loop.run_in_executor(None, refresh)
        self._redact(config)
        log.info("key files changed: credentials re-read")
        for target in changed:  # what the breaker learned was learned with the old key
            target.rate_limited = False
            transition = target.breaker.reset(router.clock(), "key_changed")
            if transition is not None:
                log.warning("breaker %s: %s -> %s (%s)", transition.deployment, transition.old, transition.new,
                            transition.reason)

    def _redact(self, config: Config) -> None:
        """The redactor masks the new secrets and hosts and, for requests still in flight, the previous ones."""
        current, hosts = set(secret_values(config)), set(internal_hosts(config))
        REDACT.configure(current | self._secrets, hosts | self._hosts)
        self._secrets, self._hosts = current, hosts

    # ---- lifecycle ----------------------------------------------------------------------------------

    def _spawn(self, work: object) -> None:
        task: asyncio.Task[object] = asyncio.ensure_future(work)  # type: ignore[arg-type]
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def aclose(self) -> None:
        """At shutdown: finish retiring replaced configs (their requests are done by now)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None


def render(state: AppState) -> str:
    """The reload counters and the info metric, in Prometheus text."""
    lines = ["# HELP llm_sidecar_config_reloads_total Config reloads, by result (success, invalid, error).",
             "# TYPE llm_sidecar_config_reloads_total counter"]
    lines += [f'llm_sidecar_config_reloads_total{{result="{r}"}} {state.reloads[r]}' for r in RESULTS]
    lines += ["# HELP llm_sidecar_config_info The config being served: the sha256 of its file.",
              "# TYPE llm_sidecar_config_info gauge", f'llm_sidecar_config_info{{hash="{state.digest}"}} 1', ""]
    return "\n".join(lines)
