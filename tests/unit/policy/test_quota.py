"""Upstream rate-limit headers as buckets the router checks before a call (fake clock)."""

from __future__ import annotations

import pytest

from sidecar.policy.quota import Quota, Reading, duration, readings


@pytest.mark.parametrize(("text", "seconds"), [
    ("1s", 1.0), ("20ms", 0.02), ("6m0s", 360.0), ("1h2m3.5s", 3723.5), ("0s", 0.0), ("2.5", 2.5),
    ("", None), ("soon", None), ("1s junk", None), ("-3", 0.0),
])
def test_go_durations(text: str, seconds: float | None) -> None:
    assert duration(text) == seconds


def test_openai_and_azure_headers() -> None:
    headers = {"x-ratelimit-limit-requests": "500", "x-ratelimit-remaining-requests": "499",
               "x-ratelimit-reset-requests": "120ms", "x-ratelimit-limit-tokens": "30000",
               "x-ratelimit-remaining-tokens": "29000", "x-ratelimit-reset-tokens": "2s"}
    assert readings(headers, 0.0) == (Reading(499, 500, 0.12), Reading(29000, 30000, 2.0))
    azure = {"x-ratelimit-remaining-requests": "9", "x-ratelimit-remaining-tokens": "-1"}  # -1: not known
    assert readings(azure, 0.0) == (Reading(9), None)
    assert readings({"content-type": "application/json"}, 0.0) == (None, None)


def test_anthropic_headers_reset_at_an_rfc3339_time() -> None:
    wall = 1_700_000_000.0  # 2023-11-14T22:13:20Z
    headers = {"anthropic-ratelimit-requests-limit": "50", "anthropic-ratelimit-requests-remaining": "0",
               "anthropic-ratelimit-requests-reset": "2023-11-14T22:13:30Z",
               "anthropic-ratelimit-input-tokens-limit": "40000", "anthropic-ratelimit-input-tokens-remaining": "1000",
               "anthropic-ratelimit-input-tokens-reset": "2023-11-14T22:13:21+00:00"}
    assert readings(headers, wall) == (Reading(0, 50, 10.0), Reading(1000, 40000, 1.0))


def test_a_spent_quota_holds_requests_back_until_it_refills() -> None:
    quota = Quota()
    quota.observe(Reading(2, 10, 8.0), None, now=0.0)  # 8 missing, full in 8 s: one request a second
    assert quota.admit(100, 0.0) is None
    assert quota.admit(100, 0.0) is None
    assert quota.admit(100, 0.0) == "upstream_rpm"  # spent locally before the upstream said so: no 429
    assert quota.ready(None, 0.5) == "upstream_rpm"
    assert quota.admit(100, 1.0) is None  # refilled by one
    assert quota.admit(100, 1.0) == "upstream_rpm"


def test_the_latest_answer_resets_the_level() -> None:
    quota = Quota()
    quota.observe(Reading(0, 10, 10.0), None, now=0.0)
    assert quota.admit(None, 0.0) == "upstream_rpm"
    quota.observe(Reading(5, 10, 5.0), None, now=0.1)  # another pod's requests finished: the upstream says 5
    assert quota.admit(None, 0.1) is None


def test_token_quota_checks_the_estimate() -> None:
    quota = Quota()
    quota.observe(None, Reading(1000, 10_000, 9.0), now=0.0)  # 1000 tokens a second
    assert quota.admit(800, 0.0) is None
    assert quota.admit(800, 0.0) == "upstream_tpm"
    assert quota.admit(None, 0.0) is None  # unknown size: only the request count could hold it back
    assert quota.admit(800, 1.0) is None
    huge = Quota()
    huge.observe(None, Reading(10_000, 10_000, 1.0), now=0.0)
    assert huge.admit(50_000, 0.0) is None  # larger than the whole bucket: allowed when full (as TokenBucket)


def test_headers_that_are_not_a_quota_are_ignored_and_resets_are_capped() -> None:
    """inf or 1e400 made a bucket of infinite rate (a ValueError: every request a 500); a reset a million hours
    off left the deployment out for good (no request could correct it): it counts as the cap."""
    for odd in ("inf", "1e400", "nan", "-1", "1e16"):
        assert readings({"x-ratelimit-remaining-requests": odd}, 0.0) == (None, None)
        assert readings({"x-ratelimit-remaining-requests": "5", "x-ratelimit-limit-requests": odd},
                        0.0) == (Reading(5), None)
    wedge = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1000000h"}
    (requests, _) = readings(wedge, 0.0, longest=60.0)
    assert requests == Reading(0, None, 60.0)
    far = {"anthropic-ratelimit-requests-remaining": "0", "anthropic-ratelimit-requests-reset": "2999-01-01T00:00:00Z"}
    assert readings(far, 0.0, longest=30.0)[0] == Reading(0, None, 30.0)
    quota = Quota()
    quota.observe(requests, None, 0.0)
    assert quota.admit(None, 0.0) is not None and quota.admit(None, 61.0) is None  # back within the cap
