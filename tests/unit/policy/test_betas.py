"""Which anthropic-beta flags a deployment receives: allow and deny lists, prefixes, the deployment's own flags."""

from __future__ import annotations

from sidecar.policy.betas import MAX_REMEMBERED, OPEN, BetaPolicy

CLAUDE_CODE = ("claude-code-20250219,interleaved-thinking-2025-05-14,context-management-2025-06-27,"
               "effort-2025-11-24")


def test_open_policy_passes_every_flag_as_sent() -> None:
    assert OPEN.header(CLAUDE_CODE) == CLAUDE_CODE
    assert OPEN.header(None) is None and OPEN.header("") is None
    assert OPEN.header(" a , b,,a ") == "a,b"  # blanks and repeats gone


def test_allow_list_with_prefixes() -> None:
    policy = BetaPolicy.compile(allow=["claude-code-*", "effort-2025-11-24"])
    assert policy.header(CLAUDE_CODE) == "claude-code-20250219,effort-2025-11-24"
    assert policy.header("interleaved-thinking-2025-05-14") is None


def test_deny_wins_over_allow_and_matches_any_case() -> None:
    policy = BetaPolicy.compile(allow=["*"], deny=["context-management-*", "EFFORT-2025-11-24"])
    assert policy.header(CLAUDE_CODE) == "claude-code-20250219,interleaved-thinking-2025-05-14"
    assert not policy.permits("Context-Management-2026-01-01")


def test_the_deployment_flags_always_go_first() -> None:
    policy = BetaPolicy.compile(allow=[], fixed="ops-1, ops-2")
    assert policy.header(CLAUDE_CODE) == "ops-1,ops-2"
    assert policy.header(None) == "ops-1,ops-2"
    assert BetaPolicy.compile(fixed="ops-1").header("ops-1,x") == "ops-1,x"


def test_remembered_values_are_bounded() -> None:
    policy = BetaPolicy.compile(deny=["x"])
    for i in range(MAX_REMEMBERED * 3):
        assert policy.header(f"flag-{i},x") == f"flag-{i}"
    assert len(policy.remembered) <= MAX_REMEMBERED


def _deployment(provider: str, **fields: object):
    from sidecar.config import Deployment

    return Deployment(id="d", model_name="m", provider=provider, model="x", api_base="http://x", **fields)


def test_policies_by_deployment() -> None:
    from sidecar.config.deployments import BetaRules
    from sidecar.policy.betas import BEDROCK, for_deployment

    assert for_deployment(_deployment("anthropic")) is OPEN
    assert for_deployment(_deployment("bedrock")) is BEDROCK
    assert BEDROCK.header(CLAUDE_CODE) == ("interleaved-thinking-2025-05-14,context-management-2025-06-27,"
                                           "effort-2025-11-24")
    pinned = for_deployment(_deployment("anthropic", extra_headers=(("Anthropic-Beta", "ops-1"),),
                                        anthropic_betas=BetaRules(deny=("effort-*",))))
    assert pinned.header(CLAUDE_CODE) == ("ops-1,claude-code-20250219,interleaved-thinking-2025-05-14,"
                                          "context-management-2025-06-27")
    own = for_deployment(_deployment("bedrock", anthropic_betas=BetaRules(allow=("claude-code-*",))))
    assert own.header(CLAUDE_CODE) == "claude-code-20250219"
