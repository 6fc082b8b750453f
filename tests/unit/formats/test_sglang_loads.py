"""An SGLang replica's /v1/loads and /metrics read into a load (the emulator's own output as fixtures)."""

from __future__ import annotations

import orjson
import pytest

from sidecar.formats.sglang import parse_loads, parse_metrics

LOADS = {"timestamp": "2026-08-01T12:00:00+00:00", "version": "0.5.23", "loads": [
    {"dp_rank": 0, "num_running_reqs": 12, "num_waiting_reqs": 3, "token_usage": 0.1, "cache_hit_rate": 0.6,
     "max_running_requests": 256},
    {"dp_rank": 1, "num_running_reqs": 2, "num_waiting_reqs": 1, "token_usage": 0.3, "cache_hit_rate": 0.2,
     "max_running_requests": 256}]}

METRICS = b"""# HELP sglang:num_running_reqs The number of running requests.
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{engine_type="unified",model_name="m",moe_ep_rank="0",pp_rank="0",tp_rank="0"} 12.0
sglang:num_queue_reqs{engine_type="unified",model_name="m",moe_ep_rank="0",pp_rank="0",tp_rank="0"} 3.0
sglang:token_usage{engine_type="unified",model_name="m",moe_ep_rank="0",pp_rank="0",tp_rank="0"} 0.25
sglang:cache_hit_rate{engine_type="unified",model_name="m",moe_ep_rank="0",pp_rank="0",tp_rank="0"} 0.5
sglang:num_running_reqs_total{x="1"} 99.0
"""


def test_loads_sum_over_ranks() -> None:
    load = parse_loads(orjson.dumps(LOADS))
    assert (load.running, load.waiting, load.max_running) == (14.0, 4.0, 512)
    assert load.token_usage == 0.3 and load.cache_hit_rate == pytest.approx(0.4)


def test_loads_without_loads_is_an_error() -> None:
    for body in (b"{}", b'{"loads": []}', b"[1]", b"not json"):
        with pytest.raises(ValueError):
            parse_loads(body)


def test_metrics_gauges_with_either_prefix() -> None:
    load = parse_metrics(METRICS)
    assert (load.running, load.waiting, load.token_usage, load.cache_hit_rate) == (12.0, 3.0, 0.25, 0.5)
    assert load.max_running is None
    assert parse_metrics(b'sglang_num_running_reqs{dp_rank="0"} 4\nsglang_num_queue_reqs{dp_rank="0"} 1\n').waiting == 1
    with pytest.raises(ValueError):
        parse_metrics(b"# nothing here\n")
