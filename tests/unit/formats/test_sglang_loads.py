"""An SGLang replica's /v1/loads and /metrics read into a load (the emulator's own output as fixtures)."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.formats.sglang import MAX_COUNT, parse_loads, parse_metrics

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


@pytest.mark.parametrize("count", [1.7e308, -1, 2_000_000, float("inf")])
def test_a_count_out_of_range_is_a_bad_answer(count: float) -> None:
    """Two ranks at 1.7e308 would sum to infinity: the pool's mean, and every bound, with it."""
    ranks = [{"num_running_reqs": count, "num_waiting_reqs": 0}] * 2
    with pytest.raises(ValueError):
        body = orjson.dumps({"loads": ranks}) if count != float("inf") else b'{"loads": [{"num_running_reqs": 1e99}]}'
        parse_loads(body)
    with pytest.raises(ValueError):
        parse_metrics(f"sglang:num_running_reqs {count}\n".encode())
    with pytest.raises(ValueError):
        parse_metrics(b"sglang:num_running_reqs 1e999\n")


def test_odd_ratios_and_limits_read_as_nothing_not_as_errors() -> None:
    load = parse_loads(orjson.dumps({"loads": [{"num_running_reqs": True, "token_usage": 7.5, "cache_hit_rate": -2,
                                                "max_running_requests": 0}]}))
    assert (load.running, load.token_usage, load.cache_hit_rate, load.max_running) == (0.0, 1.0, 0.0, None)
    assert parse_loads(orjson.dumps({"loads": [{"max_running_requests": True}]})).max_running is None
    with pytest.raises(ValueError):
        parse_loads(orjson.dumps({"loads": [{}] * 1025}))


def test_a_label_set_never_spans_lines() -> None:
    """An unclosed '{' must not let the pattern scan on through the body (quadratic in its size)."""
    body = b'sglang:num_running_reqs{a="1"\n} 5\n' + b"sglang:num_queue_reqs{x=\n" * 1000 + b"sglang:num_queue_reqs 2\n"
    load = parse_metrics(body)
    assert (load.running, load.waiting) == (0.0, 2.0)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(["num_running_reqs", "num_waiting_reqs", "token_usage",
                                                 "cache_hit_rate", "max_running_requests"]),
                                st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text()),
                min_size=1, max_size=4))
def test_any_loads_answer_is_a_plausible_load_or_a_bad_answer(ranks: list[dict[str, object]]) -> None:
    try:
        load = parse_loads(orjson.dumps({"loads": ranks}, option=orjson.OPT_NON_STR_KEYS))
    except (ValueError, orjson.JSONEncodeError):
        return
    assert 0 <= load.running <= 4 * MAX_COUNT and 0 <= load.waiting <= 4 * MAX_COUNT
    assert 0 <= load.token_usage <= 1 and 0 <= load.cache_hit_rate <= 1
    assert load.max_running is None or 0 < load.max_running <= 4 * MAX_COUNT
