"""``litellm_params.anthropic_betas``: read at load, strict, only for Anthropic deployments."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar import config
from sidecar.config import ConfigError
from sidecar.config.deployments import BetaRules


def parse(model: str, betas: Any) -> config.Config:
    return config.parse({"model_list": [{"model_name": "m", "litellm_params": {
        "model": model, "api_key": "k", "api_base": "http://x", "anthropic_betas": betas}}]})


def test_rules_are_read() -> None:
    loaded = parse("anthropic/claude", {"allow": ["claude-code-*", " effort-2025-11-24 "], "deny": ["x"]})
    (deployment,) = loaded.groups["m"].deployments
    assert deployment.anthropic_betas == BetaRules(("claude-code-*", "effort-2025-11-24"), ("x",))
    assert loaded.warnings == ()
    (plain,) = parse("anthropic/claude", None).groups["m"].deployments
    assert plain.anthropic_betas is None


@pytest.mark.parametrize(("betas", "where"), [
    ({"allow": "claude-code-*"}, "anthropic_betas.allow"),
    ({"deny": ["a,b"]}, "anthropic_betas.deny"),
    ({"allow": [""]}, "anthropic_betas.allow"),
    ({"alow": ["a"]}, "anthropic_betas.alow"),
    (["a"], "anthropic_betas"),
], ids=["not-a-list", "comma", "empty", "unknown-key", "not-a-mapping"])
def test_bad_rules_are_problems_with_their_place(betas: Any, where: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse("anthropic/claude", betas)
    assert any(f"model_list[0].litellm_params.{where}" in p for p in caught.value.problems)


def test_other_providers_warn_that_it_is_ignored() -> None:
    loaded = parse("openai/gpt-4o", {"deny": ["x"]})
    assert loaded.groups["m"].deployments[0].anthropic_betas is None
    assert any("anthropic_betas" in w and "ignored" in w for w in loaded.warnings)
