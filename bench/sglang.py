#!/usr/bin/env python3
"""`make bench-sglang`: how well independent sidecars fill a shared SGLang pool, against SGLang's own router.

    python bench/sglang.py [--pods 4] [--conversations 16] [--turns 4] [--concurrency 6] [--think 0.05]
                           [--ramp 0] [--no-smg] [--explain]
                           [--variant 'replica_key=shared, replica_spread=2' ...]

Four emulated SGLang replicas (``fake-provider --sglang``: the prefix-cache model, TTFT growing with uncached
tokens), each with a prefix cache of about a third of the workload's working set. Four "pods", each with its
own conversations (several turns; groups of conversations share long system prompts), run them with
``--concurrency`` conversations at once and a short think time between turns. The same workload, replayed with
fresh caches, under each policy:

- round-robin and least-loaded: per pod, client-side (each pod knows only its own requests), straight to the
  replicas;
- ours: one sidecar process per pod, each with ``replicas: [the 4 URLs]``: the defaults (the bounded-load
  ring), ``replica_key: shared``, and ``replica_share: redis`` (a ``redis-server`` on loopback, started here and
  emptied before each run);
- SGLang's router ``smg`` (PyPI, installed into ``.bench-cache/smg``, never a project dependency) in front of the
  replicas, with ``--policy cache_aware`` and with ``--policy prefix_hash``; every pod sends to it;
- the ideal: one replica with the combined cache capacity (for the hit ratio; its latency is one replica's).

Reported per policy: prefix-cache hit ratio (cached prompt tokens / prompt tokens, as the replicas count them),
max/mean requests across replicas, p50/p99 time to first token as the pods see it; with ``--explain``, where the
uncached prompt tokens went (a system prompt's first request anywhere, its first contact with one more replica,
conversations moved between replicas, ...; from the replicas' per-request traces). Then spill-over: with every
replica's queue above ``max_queue_per_replica``, the latency of a request that spills to the remote provider
through a sidecar against a direct call to that provider.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from run import Processes, free_port, http_status, wait_until

from sidecar.testing.sglang_cache import PAGE, page_keys, prompt_tokens

ROOT = Path(__file__).resolve().parents[1]
SMG_VENV = ROOT / ".bench-cache" / "smg"
PREFILL_PER_TOKEN = 0.00005  # 50 µs per uncached prompt token: 2,000 uncached tokens add 100 ms to the TTFT
DECODE_PER_TOKEN = 0.002
MAX_RUNNING = 8
POLL_SECONDS = 0.5  # the sidecars' replica_poll_seconds


# ---- the workload ------------------------------------------------------------------------------------


def workload(pods: int, conversations: int, turns: int, groups: int, seed: int) -> list[list[list[list[dict]]]]:
    """Per pod, per conversation, the message list of each turn (the app resends its whole history)."""
    rng = random.Random(seed)
    systems = [" ".join(f"sys{g}-{i}" for i in range(rng.randint(600, 1000))) for g in range(groups)]
    out = []
    for pod in range(pods):
        convs = []
        for c in range(conversations):
            messages: list[dict] = [{"role": "system", "content": systems[rng.randrange(groups)]}]
            per_turn = []
            for t in range(turns):
                words = rng.randint(20, 60)
                messages.append({"role": "user", "content": " ".join(f"p{pod}c{c}t{t}-{i}" for i in range(words))})
                per_turn.append(list(messages))
                messages.append({"role": "assistant", "content": " ".join(f"a{pod}c{c}t{t}-{i}" for i in range(
                    rng.randint(20, 80)))})
            convs.append(per_turn)
        out.append(convs)
    return out


def working_set(load: list[list[list[list[dict]]]]) -> int:
    """Distinct prompt tokens (whole pages) the workload touches."""
    pages = {key for pod in load for conv in pod for messages in conv
             for key in page_keys(prompt_tokens({"messages": messages}))}
    return len(pages) * PAGE


# ---- processes ---------------------------------------------------------------------------------------


class Replicas:
    def __init__(self, procs: Processes, workdir: Path, count: int, cache_tokens: int, name: str) -> None:
        self.port = free_port()
        while any(http_status(self.port + i, "GET", "/health") for i in range(count)):
            self.port = free_port()
        self.urls = [f"http://127.0.0.1:{self.port + i}" for i in range(count)]
        log = workdir / f"{name}.log"
        child = procs.start([sys.executable, "-m", "sidecar", "fake-provider", "--sglang", "--port", str(self.port),
                             "--replicas", str(count), "--name", name, "--cache-tokens", str(cache_tokens),
                             "--max-running", str(MAX_RUNNING), "--prefill-per-token", str(PREFILL_PER_TOKEN),
                             "--decode-per-token", str(DECODE_PER_TOKEN)], log)
        for i in range(count):
            wait_until(lambda i=i: http_status(self.port + i, "GET", "/health") == 200, child, log)

    async def reset(self, session: aiohttp.ClientSession) -> None:
        for url in self.urls:
            async with session.post(f"{url}/_control/reset") as answer:
                answer.raise_for_status()

    async def set(self, session: aiohttp.ClientSession, **settings: Any) -> None:
        for url in self.urls:
            async with session.post(f"{url}/_control/faults", json=settings) as answer:
                answer.raise_for_status()

    async def stats(self, session: aiohttp.ClientSession, trace: bool = False) -> list[dict[str, Any]]:
        out = []
        for url in self.urls:
            async with session.get(f"{url}/_control", params={"trace": "1"} if trace else None) as answer:
                out.append((await answer.json())["stats"])
        return out


def start_sidecar(procs: Processes, workdir: Path, name: str, config: dict[str, Any]) -> str:
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    port, admin = free_port(), free_port()
    log = workdir / f"{name}.log"
    child = procs.start([sys.executable, "-m", "sidecar", "serve", "--config", str(path), "--port", str(port),
                         "--admin-host", "127.0.0.1", "--admin-port", str(admin)], log)
    wait_until(lambda: http_status(admin, "GET", "/readyz") == 200, child, log)
    return f"http://127.0.0.1:{port}"


def pool_config(urls: list[str], redis: str | None = None, **extra: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {"log_level": "warning"}
    if extra.get("replica_share") == "redis":
        settings["redis"] = {"url": redis}
    return {"model_list": [{"model_name": "bench-model", "litellm_params": {
        "model": "sglang/bench-model", "replicas": [f"{u}/v1" for u in urls], "replica_poll_seconds": POLL_SECONDS,
        **extra}}], "router_settings": {"timeout": 60}, "sidecar_settings": settings}


class Redis:
    """A redis-server on loopback for ``replica_share: redis`` (Debian's package; emptied before each run)."""

    def __init__(self, procs: Processes, workdir: Path) -> None:
        import shutil

        self.port = free_port()
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("replica_share: redis needs redis-server (apt-get install -y redis-server)")
        log = workdir / "redis.log"
        child = procs.start([exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], log)
        wait_until(self._ping, child, log)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def _ping(self) -> bool:
        return self.flush() is None

    def flush(self) -> Exception | None:
        import redis

        try:
            redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2).flushall()
        except redis.RedisError as error:
            return error
        return None


def ensure_smg() -> Path | None:
    """SGLang's router from PyPI in its own venv under .bench-cache (kept between runs)."""
    binary = SMG_VENV / "bin" / "smg"
    if binary.exists():
        return binary
    try:
        subprocess.run([sys.executable, "-m", "venv", str(SMG_VENV)], check=True)
        subprocess.run([str(SMG_VENV / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", "smg"],
                       check=True, timeout=900)
    except (subprocess.SubprocessError, OSError) as exc:
        print(f"smg could not be installed ({exc}); its rows are left out", file=sys.stderr)
        return None
    return binary if binary.exists() else None


def start_smg(procs: Processes, workdir: Path, binary: Path, urls: list[str], policy: str) -> str | None:
    port = free_port()
    log = workdir / f"smg-{policy}.log"
    child = procs.start([str(binary), "launch", "--host", "127.0.0.1", "--port", str(port), "--policy", policy,
                         "--worker-urls", *urls, "--prometheus-port", str(free_port())], log)
    try:
        wait_until(lambda: _smg_ready(port), child, log, timeout=30)
    except RuntimeError as exc:
        print(f"smg --policy {policy} did not start: {str(exc)[-800:]}", file=sys.stderr)
        procs.stop(child)
        return None
    return f"http://127.0.0.1:{port}"


def _smg_ready(port: int) -> bool:
    body = b'{"model":"bench-model","messages":[{"role":"user","content":"warm up"}],"max_tokens":1}'
    return http_status(port, "POST", "/v1/chat/completions", body) == 200


# ---- running the workload ------------------------------------------------------------------------------


Target = Callable[[int, list[dict]], Awaitable[tuple[str, Callable[[], None]]]]  # pod, messages → url, done


async def run_workload(session: aiohttp.ClientSession, load: list[list[list[list[dict]]]], target: Target,
                       concurrency: int, seed: int, think: float = 0.05, ramp: float = 0.0) -> list[float]:
    """Every pod's conversations, ``concurrency`` at a time per pod; the TTFT of every request. ``think``: the
    longest pause between a conversation's turns; ``ramp``: each of a pod's ``concurrency`` slots starts at a
    random moment within it (0: every slot at once, a cold start's burst)."""
    ttfts: list[float] = []
    rng = random.Random(seed)

    async def conversation(pod: int, turns: list[list[dict]]) -> None:
        for messages in turns:
            url, done = await target(pod, messages)
            try:
                ttfts.append(await stream_ttft(session, url, messages))
            finally:
                done()
            await asyncio.sleep(rng.uniform(0.0, think))  # the user reads, types

    async def pod_worker(pod: int, queue: asyncio.Queue[list[list[dict]]]) -> None:
        await asyncio.sleep(rng.uniform(0.0, ramp))
        while not queue.empty():
            await conversation(pod, queue.get_nowait())

    workers = []
    for pod, convs in enumerate(load):
        queue: asyncio.Queue[list[list[dict]]] = asyncio.Queue()
        for conv in convs:
            queue.put_nowait(conv)
        workers += [pod_worker(pod, queue) for _ in range(concurrency)]
    await asyncio.gather(*workers)
    return ttfts


async def stream_ttft(session: aiohttp.ClientSession, url: str, messages: list[dict]) -> float:
    body = {"model": "bench-model", "messages": messages, "stream": True}
    started = time.perf_counter()
    first = None
    async with session.post(f"{url}/v1/chat/completions", json=body) as answer:
        if answer.status != 200:
            raise RuntimeError(f"{url}: {answer.status} {await answer.text()}")
        async for line in answer.content:
            if first is None and line.startswith(b"data: {"):
                first = time.perf_counter() - started
    return first if first is not None else time.perf_counter() - started


def fixed(url: str) -> Target:
    async def target(pod: int, messages: list[dict]) -> tuple[str, Callable[[], None]]:
        return url, lambda: None
    return target


def per_pod(urls: list[str]) -> Target:
    async def target(pod: int, messages: list[dict]) -> tuple[str, Callable[[], None]]:
        return urls[pod], lambda: None
    return target


def round_robin(pods: int, urls: list[str]) -> Target:
    turns = [pod for pod in range(pods)]  # each pod starts elsewhere, as independent clients would

    async def target(pod: int, messages: list[dict]) -> tuple[str, Callable[[], None]]:
        turns[pod] += 1
        return urls[turns[pod] % len(urls)], lambda: None
    return target


def least_loaded(pods: int, urls: list[str]) -> Target:
    inflight = [[0] * len(urls) for _ in range(pods)]  # each pod counts only its own requests

    async def target(pod: int, messages: list[dict]) -> tuple[str, Callable[[], None]]:
        mine = inflight[pod]
        index = min(range(len(urls)), key=lambda i: (mine[i], (i + pod) % len(urls)))
        mine[index] += 1

        def done() -> None:
            mine[index] -= 1
        return urls[index], done
    return target


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else 0.0


async def measure(session: aiohttp.ClientSession, replicas: Replicas, load: Any, target: Target,
                  args: argparse.Namespace, redis: Redis | None = None) -> dict[str, Any]:
    await replicas.reset(session)
    if redis is not None:
        redis.flush()  # the fleet's placements of the previous run: their caches are gone too
    ttfts = await run_workload(session, load, target, args.concurrency, args.seed, args.think, args.ramp)
    stats = await replicas.stats(session, trace=args.explain)
    prompt = sum(s["prompt_tokens"] for s in stats)
    cached = sum(s["cached_tokens"] for s in stats)
    requests = [s["requests"] for s in stats]
    mean = sum(requests) / len(requests)
    out = {"hit_ratio": round(cached / prompt, 3) if prompt else 0.0,
           "max_mean_load": round(max(requests) / mean, 2) if mean else 0.0, "requests": requests,
           "ttft_p50_ms": round(_pct(ttfts, 50) * 1000, 1), "ttft_p99_ms": round(_pct(ttfts, 99) * 1000, 1)}
    if args.explain:
        out["explain"] = explain([s["trace"] for s in stats])
    return out


MISSES = ("cold", "first_contact", "system_evicted", "moved", "new_tokens")


def explain(traces: list[list[list[Any]]]) -> dict[str, Any]:
    """Where the uncached prompt tokens went, from the replicas' traces (``--explain``), as shares of all
    prompt tokens (they add up to 1 - hit ratio): the system prompt's part of a request missed ``cold`` (its
    first request anywhere: the ideal pays it too), at its ``first_contact`` with this replica (another replica
    had it), or ``system_evicted`` (this replica had it before); the rest of the prompt missed on a conversation
    ``moved`` from the replica of its previous turn, or ``new_tokens`` (the new turn, or history evicted).
    Also: (system prompt, replica) pairs, replicas per system prompt, conversations that moved; the run's length
    (first to last arrival) and the pairs that appeared in its first ``POLL_SECONDS`` (one poll interval: each
    sidecar knew its own requests, the ring and at most one poll of what its peers had sent)."""
    rows = sorted((t, replica, head, first, shared, tokens, cached)
                  for replica, trace in enumerate(traces) for t, head, first, shared, tokens, cached in trace)
    missed = dict.fromkeys(MISSES, 0)
    pairs: set[tuple[str, int]] = set()
    where: dict[str, int] = {}
    moved: set[str] = set()
    total = 0
    start = rows[0][0] if rows else 0.0
    early: set[tuple[str, int]] = set()
    for arrived, replica, head, first, shared, tokens, cached in rows:
        total += tokens
        miss = tokens - cached
        system = min(miss, max(0, shared - cached)) if head else 0
        if system:
            kind = "system_evicted" if (head, replica) in pairs else "first_contact" if any(
                h == head for h, _ in pairs) else "cold"
            missed[kind] += system
        if (head, replica) not in pairs and arrived - start < POLL_SECONDS:
            early.add((head, replica))
        pairs.add((head, replica))
        conversation = head + first
        before = where.get(conversation)
        if before is not None and before != replica:
            missed["moved"] += miss - system
            moved.add(conversation)
        else:
            missed["new_tokens"] += miss - system
        where[conversation] = replica
    heads = {head for head, _ in pairs}
    return {**{k: round(v / total, 4) if total else 0.0 for k, v in missed.items()}, "pairs": len(pairs),
            "system_prompts": len(heads), "conversations": len(where), "conversations_moved": len(moved),
            "early_pairs": len(early), "seconds": round(rows[-1][0] - start, 2) if rows else 0.0}


# ---- spill-over ------------------------------------------------------------------------------------------


async def spill_over(session: aiohttp.ClientSession, procs: Processes, workdir: Path, replicas: Replicas,
                     samples: int) -> dict[str, Any]:
    """Every replica's queue above the threshold: a spilled request via a sidecar vs a direct remote call."""
    remote_port = free_port()
    log = workdir / "remote.log"
    child = procs.start([sys.executable, "-m", "sidecar", "fake-provider", "--port", str(remote_port), "--name",
                         "remote"], log)
    wait_until(lambda: http_status(remote_port, "GET", "/_control") == 200, child, log)
    remote = f"http://127.0.0.1:{remote_port}"
    config = pool_config(replicas.urls, max_queue_per_replica=1)
    config["model_list"].append({"model_name": "remote", "litellm_params": {
        "model": "openai/remote-model", "api_base": f"{remote}/v1", "api_key": "sk-bench"}})
    config["router_settings"]["fallbacks"] = [{"bench-model": ["remote"]}]
    sidecar = start_sidecar(procs, workdir, "spill-sidecar", config)
    await replicas.reset(session)
    await replicas.set(session, max_running=1, decode_per_token=0.5)
    busy = [asyncio.create_task(stream_ttft(session, url, [{"role": "user", "content": f"busy {i}"}]))
            for url in replicas.urls for i in range(3)]  # each replica: 1 running, 2 waiting
    await asyncio.sleep(1.5)  # a poll sees the queues
    body = {"model": "bench-model", "messages": [{"role": "user", "content": "spill me"}]}
    via, direct = [], []
    for _ in range(samples):
        for url, model, out in ((sidecar, "bench-model", via), (remote, "remote-model", direct)):
            started = time.perf_counter()
            async with session.post(f"{url}/v1/chat/completions", json={**body, "model": model}) as answer:
                await answer.read()
                if answer.status != 200 or (url == sidecar and answer.headers.get("x-sidecar-fallback") != "remote"):
                    raise RuntimeError(f"spill-over request: {answer.status} {dict(answer.headers)}")
            out.append(time.perf_counter() - started)
    await asyncio.gather(*busy, return_exceptions=True)
    await replicas.set(session, max_running=MAX_RUNNING, decode_per_token=DECODE_PER_TOKEN)
    return {"samples": samples, "direct_p50_ms": round(_pct(direct, 50) * 1000, 2),
            "spilled_p50_ms": round(_pct(via, 50) * 1000, 2),
            "added_p50_ms": round((_pct(via, 50) - _pct(direct, 50)) * 1000, 2),
            "added_p99_ms": round((_pct(via, 99) - _pct(direct, 99)) * 1000, 2)}


# ---- main --------------------------------------------------------------------------------------------------


async def bench(args: argparse.Namespace, procs: Processes, workdir: Path) -> dict[str, Any]:
    """Every policy on ``--repeat`` workloads (seeds ``--seed``, ``--seed``+1, …): the rows are their means."""
    loads = [workload(args.pods, args.conversations, args.turns, args.groups, args.seed + r)
             for r in range(args.repeat)]
    sets = [working_set(load) for load in loads]
    replicas = Replicas(procs, workdir, 4, sets[0] // 3, "replica")
    ideal = Replicas(procs, workdir, 1, sets[0] // 3 * 4, "ideal")
    runs: dict[str, list[dict[str, Any]]] = {}
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        await replicas.set(session, model="bench-model")  # the served name SMG matches requests against
        await ideal.set(session, model="bench-model")
        tuning = {"replica_load_factor": args.load_factor}
        targets: dict[str, Callable[[], Target]] = {} if args.no_baselines else {
            "round-robin (per pod)": lambda: round_robin(args.pods, replicas.urls),
            "least-loaded (per pod)": lambda: least_loaded(args.pods, replicas.urls)}
        variants = [(f"ours, {v}", yaml.safe_load("{" + v.replace("=", ": ") + "}")) for v in args.variant] or [
            (f"ours ({args.pods} sidecars, ring)", {}), ("ours, replica_key: shared", {"replica_key": "shared"}),
            ("ours, replica_share: redis", {"replica_share": "redis"})]
        redis = Redis(procs, workdir) if any(v.get("replica_share") == "redis" for _, v in variants) else None
        for name, extra in variants:
            config = pool_config(replicas.urls, redis.url if redis is not None else None, **{**tuning, **extra})
            pods = [start_sidecar(procs, workdir, f"pod-{len(targets)}-{i}", config) for i in range(args.pods)]
            targets[name] = lambda pods=pods: per_pod(pods)
        smg = None if args.no_smg else ensure_smg()
        for policy in ("cache_aware", "prefix_hash"):
            url = start_smg(procs, workdir, smg, replicas.urls, policy) if smg is not None else None
            if url is not None:
                targets[f"smg --policy {policy}"] = lambda url=url: fixed(url)
        await asyncio.sleep(1.0)  # the sidecars' first polls
        for load, ws in zip(loads, sets, strict=True):
            await replicas.set(session, cache_tokens=ws // 3)
            await ideal.set(session, cache_tokens=ws // 3 * 4)
            for name, target in targets.items():
                runs.setdefault(name, []).append(await measure(session, replicas, load, target(), args, redis))
            runs.setdefault("ideal (1 replica, 4x cache)", []).append(
                await measure(session, ideal, load, fixed(ideal.urls[0]), args))
        spill = await spill_over(session, procs, workdir, replicas, args.spill_samples)
    return {"working_set_tokens": sets[0], "cache_tokens_per_replica": sets[0] // 3, "pods": args.pods,
            "conversations_per_pod": args.conversations, "turns": args.turns, "concurrency_per_pod": args.concurrency,
            "repeat": args.repeat, "policies": {name: _mean(rows) for name, rows in runs.items()},
            "spill_over": spill}


def _mean(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The mean of each number over the repeats, and the range of the hit ratio and the balance."""
    out: dict[str, Any] = {key: round(sum(r[key] for r in rows) / len(rows), 3)
                           for key in ("hit_ratio", "max_mean_load", "ttft_p50_ms", "ttft_p99_ms")}
    for key in ("hit_ratio", "max_mean_load"):
        out[f"{key}_range"] = (min(r[key] for r in rows), max(r[key] for r in rows))
    if all("explain" in r for r in rows):
        out["explain"] = {key: round(sum(r["explain"][key] for r in rows) / len(rows), 4)
                          for key in rows[0]["explain"]}
    out["runs"] = rows
    return out


def render(result: dict[str, Any]) -> str:
    lines = [f"working set {result['working_set_tokens']} tokens, cache {result['cache_tokens_per_replica']} tokens "
             f"per replica; {result['pods']} pods x {result['conversations_per_pod']} conversations x "
             f"{result['turns']} turns, {result['concurrency_per_pod']} conversations at once per pod", "",
             f"means of {result['repeat']} workloads (seeds); ranges in brackets", "",
             "| policy | hit ratio | max/mean load | TTFT p50 | TTFT p99 |", "| --- | --- | --- | --- | --- |"]
    for name, row in result["policies"].items():
        hits, loads = row["hit_ratio_range"], row["max_mean_load_range"]
        lines.append(f"| {name} | {row['hit_ratio']:.3f} [{hits[0]:.3f} to {hits[1]:.3f}] "
                     f"| {row['max_mean_load']:.2f} [{loads[0]:.2f} to {loads[1]:.2f}] "
                     f"| {row['ttft_p50_ms']:.1f} ms | {row['ttft_p99_ms']:.1f} ms |")
    explained = {name: row["explain"] for name, row in result["policies"].items() if "explain" in row}
    if explained:
        lines += ["", "where the uncached prompt tokens went (shares of all prompt tokens; `--explain`), and "
                  "(system prompt, replica) pairs (in the first poll interval), conversations moved, the run's length",
                  "", "| policy | " + " | ".join(MISSES) + " | pairs | moved | run |",
                  "| --- " * (len(MISSES) + 4) + "|"]
        for name, row in explained.items():
            lines.append(f"| {name} | " + " | ".join(f"{row[k]:.4f}" for k in MISSES) +
                         f" | {row['pairs']:.1f} / {row['system_prompts']:.0f} ({row['early_pairs']:.1f}) | "
                         f"{row['conversations_moved']:.1f} / {row['conversations']:.0f} | {row['seconds']:.2f} s |")
    spill = result["spill_over"]
    lines += ["", f"spill-over ({spill['samples']} requests): direct to the remote {spill['direct_p50_ms']} ms p50, "
                  f"through a sidecar past the saturated pool {spill['spilled_p50_ms']} ms p50: "
                  f"+{spill['added_p50_ms']} ms p50, +{spill['added_p99_ms']} ms p99"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pods", type=int, default=4)
    parser.add_argument("--conversations", type=int, default=16, help="per pod")
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--groups", type=int, default=6, help="distinct long system prompts")
    parser.add_argument("--concurrency", type=int, default=6, help="conversations at once per pod")
    parser.add_argument("--think", type=float, default=0.05, help="the longest pause between turns (seconds)")
    parser.add_argument("--ramp", type=float, default=0.0,
                        help="each conversation slot starts within this many seconds (0: all at once)")
    parser.add_argument("--spill-samples", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=3, help="workloads (seeds) each policy runs; rows are means")
    parser.add_argument("--load-factor", type=float, default=1.25, help="the sidecars' replica_load_factor")
    parser.add_argument("--no-smg", action="store_true", help="leave SGLang's router out")
    parser.add_argument("--variant", action="append", default=[], metavar="SETTINGS",
                        help="instead of the two default rows of ours: a row with these litellm_params, e.g. "
                             "'replica_key=shared, replica_load_factor=1.5' (repeatable)")
    parser.add_argument("--no-baselines", action="store_true", help="leave round-robin and least-loaded out")
    parser.add_argument("--explain", action="store_true", help="where the uncached tokens went, per policy")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    procs = Processes()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-sglang-") as tmp:
            result = asyncio.run(bench(args, procs, Path(tmp)))
    finally:
        procs.stop_all()
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
