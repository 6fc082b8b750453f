"""What the SGLang emulator reports about its load: the ``/v1/loads`` body (reference §5.4) and the
``/metrics`` exposition with SGLang's own names, labels and bucket sets (§6). Never imported by runtime
modules."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sidecar.testing.fake_sglang import Engine

TTFT_BUCKETS = (0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400)
E2E_BUCKETS = (*TTFT_BUCKETS, 600, 1200, 1800, 2400)


def loads_body(engine: Engine) -> dict[str, Any]:
    s, used = engine.settings, engine.cache.used_tokens
    load = {
        "timestamp": time.time(), "dp_rank": 0, "num_running_reqs": engine.running,
        "num_waiting_reqs": engine.waiting, "num_waiting_uncached_tokens": 0, "num_used_tokens": used,
        "num_total_tokens": used, "num_active_tokens": used, "num_prealloc_ready_tokens": 0,
        "max_total_num_tokens": s.max_total_tokens, "max_running_requests": s.max_running,
        "token_usage": round(used / s.max_total_tokens, 4) if s.max_total_tokens else 0.0,
        "gen_throughput": 0.0, "cache_hit_rate": round(engine.hit_rate, 4), "utilization": 0.0,
        "total_prefill_uncached_tokens": engine.stats.prompt_tokens - engine.stats.cached_tokens,
        "total_prefill_busy_us": 0, "decode_moments": None,
        "disaggregation": {"mode": "null", "prefill_bootstrap_queue_reqs": 0, "prefill_inflight_queue_reqs": 0,
                           "decode_prealloc_queue_reqs": 0, "decode_transfer_queue_reqs": 0,
                           "decode_retracted_queue_reqs": 0, "kv_transfer_speed_gb_s": 0.0,
                           "kv_transfer_latency_ms": 0.0},
        "queues": {"waiting": engine.waiting, "grammar": 0, "paused": 0, "retracted": 0, "prealloc_ready": 0},
    }
    return {"timestamp": datetime.now(UTC).isoformat(), "version": "0.5.23", "accelerator": "emulated",
            "num_accelerators": 1, "loads": [load]}


class Histogram:
    """Cumulative bucket counts, sum and count (bounded memory, like prometheus_client's)."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.sum += value
        self.count += 1
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1


def _labels(model: str, **extra: str) -> str:
    labels = {"engine_type": "unified", "model_name": model, "moe_ep_rank": "0", "pp_rank": "0", "tp_rank": "0",
              **extra}
    return ",".join(f'{k}="{labels[k]}"' for k in sorted(labels))


def exposition(engine: Engine) -> str:
    """Prometheus text as SGLang's multiprocess registry writes it (sorted label keys, float values)."""
    s, stats = engine.settings, engine.stats
    used = engine.cache.used_tokens
    lines: list[str] = []

    def sample(kind: str, name: str, help_: str, value: float, **extra: str) -> None:
        lines.extend([f"# HELP sglang:{name} {help_}", f"# TYPE sglang:{name} {kind}",
                      f"sglang:{name}{{{_labels(s.model, **extra)}}} {float(value)}"])

    sample("gauge", "num_running_reqs", "The number of running requests.", engine.running)
    sample("gauge", "num_queue_reqs", "The number of requests in the waiting queue.", engine.waiting)
    sample("gauge", "num_grammar_queue_reqs", "The number of requests in the grammar waiting queue.", 0)
    sample("gauge", "token_usage", "The token usage.",
           round(used / s.max_total_tokens, 4) if s.max_total_tokens else 0)
    sample("gauge", "num_used_tokens", "The number of used tokens.", used)
    sample("gauge", "max_total_num_tokens", "Maximum total number of tokens in the KV cache pool.", s.max_total_tokens)
    sample("gauge", "cache_hit_rate", "The prefix cache hit rate.", round(engine.hit_rate, 4))
    sample("gauge", "gen_throughput", "The generation throughput (token/s).", 0.0)
    sample("counter", "prompt_tokens_total", "Number of prefill tokens processed.", stats.prompt_tokens,
           is_streaming="false")
    sample("counter", "generation_tokens_total", "Number of generation tokens processed.", stats.generation_tokens,
           is_streaming="false")
    sample("counter", "num_requests_total", "Number of requests processed.", stats.requests, is_streaming="false")
    sample("counter", "cached_tokens_total", "Number of cached prompt tokens.", stats.cached_tokens,
           cache_source="device")
    sample("counter", "num_aborted_requests_total", "Number of requests aborted.", stats.aborted)
    _histogram(lines, "time_to_first_token_seconds", "Histogram of time to first token in seconds.", stats.ttft,
               s.model)
    _histogram(lines, "e2e_request_latency_seconds", "Histogram of End-to-end request latency in seconds",
               stats.e2e, s.model)
    return "\n".join(lines) + "\n"


def _histogram(lines: list[str], name: str, help_: str, histogram: Histogram, model: str) -> None:
    lines += [f"# HELP sglang:{name} {help_}", f"# TYPE sglang:{name} histogram"]
    for bound, count in zip(histogram.buckets, histogram.counts, strict=True):
        lines.append(f"sglang:{name}_bucket{{{_labels(model, is_streaming='false', le=str(float(bound)))}}} "
                     f"{float(count)}")
    lines.append(f"sglang:{name}_bucket{{{_labels(model, is_streaming='false', le='+Inf')}}} {float(histogram.count)}")
    lines.append(f"sglang:{name}_sum{{{_labels(model, is_streaming='false')}}} {histogram.sum}")
    lines.append(f"sglang:{name}_count{{{_labels(model, is_streaming='false')}}} {float(histogram.count)}")
