"""The session affinity table: per group, bounded, forgetting after the ttl (fake clock)."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar import config
from sidecar.config import ConfigError
from sidecar.policy.affinity import AffinityTable


def test_remembers_per_group_and_session() -> None:
    table = AffinityTable(max_entries=10, ttl=60)
    table.put("g", "s1", "d1", now=0)
    table.put("h", "s1", "d2", now=0)
    assert table.get("g", "s1", 1) == "d1" and table.get("h", "s1", 1) == "d2"
    assert table.get("g", "s2", 1) is None
    table.put("g", "s1", "d3", now=2)  # another deployment answered the session: the affinity moved
    assert table.get("g", "s1", 3) == "d3"


def test_forgets_after_the_ttl_and_past_the_bound() -> None:
    table = AffinityTable(max_entries=2, ttl=10)
    table.put("g", "a", "d1", now=0)
    assert table.get("g", "a", 10) == "d1"
    assert table.get("g", "a", 10.5) is None and len(table) == 0
    for i, session in enumerate("abc"):
        table.put("g", session, "d", now=i)
    assert len(table) == 2 and table.get("g", "a", 3) is None and table.get("g", "c", 3) == "d"


def entry(group: str) -> dict[str, Any]:
    return {"model_name": group, "litellm_params": {"model": "openai/m", "api_base": "http://127.0.0.1:9",
                                                    "api_key": "sk-test"}}


def test_affinity_config() -> None:
    settings = config.parse({"model_list": [entry("g")], "sidecar_settings": {
        "affinity": {"header": "X-Session-Id", "metadata_key": "session", "ttl_seconds": 60, "groups": ["g"]}}})
    affinity = settings.sidecar.affinity
    assert affinity is not None and affinity.header == "x-session-id" and affinity.groups == {"g"}
    assert config.parse({"model_list": [entry("g")]}).sidecar.affinity is None
    with pytest.raises(ConfigError) as bad:
        config.parse({"model_list": [entry("g")], "sidecar_settings": {"affinity": {"groups": ["nope"],
                                                                                    "ttl": 3}}})
    text = "\n".join(bad.value.problems)
    assert "sidecar_settings.affinity: needs header or metadata_key" in text
    assert "sidecar_settings.affinity.groups: unknown model group 'nope'" in text
    assert "sidecar_settings.affinity.ttl: unknown key" in text
