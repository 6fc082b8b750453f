"""Claude Code's request to Bedrock: Claude takes thinking, context management, effort and beta flags natively;
other models drop them (named); system turns join the system prompt; max_tokens capped; tool results of any
blocks."""

from __future__ import annotations

from typing import Any

from sidecar.formats.bedrock_anthropic import converse_request

CLAUDE = "us.anthropic.claude-sonnet-4-5-v1:0"
NOVA = "amazon.nova-lite-v1:0"


def body(**changes: Any) -> dict[str, Any]:
    return {"model": "m", "max_tokens": 64000, "system": "top",
            "messages": [{"role": "user", "content": "hi"}, {"role": "system", "content": "env"},
                         {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "Read",
                                                            "input": {"file_path": "/a"}}]},
                         {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [
                             {"type": "text", "text": "line"}, {"type": "tool_reference", "tool_name": "Later"},
                             {"x": 1}]}]}],
            "tools": [{"name": "Read", "input_schema": {"type": "object"}}],
            "thinking": {"type": "adaptive"}, "context_management": {"edits": []},
            "output_config": {"effort": "high"}, **changes}


def test_claude_takes_the_fields_natively() -> None:
    out, dropped = converse_request(body(), CLAUDE, beta="context-management-2025-06-27,effort-2025-11-24",
                                    max_output_tokens=32000)
    assert dropped == ()
    assert out["additionalModelRequestFields"] == {
        "thinking": {"type": "adaptive"}, "context_management": {"edits": []},
        "anthropic_beta": ["context-management-2025-06-27", "effort-2025-11-24"]}
    assert out["outputConfig"] == {"effort": "high"}
    assert out["inferenceConfig"] == {"maxTokens": 32000}
    assert out["system"] == [{"text": "top"}, {"text": "env"}]
    assert [m["role"] for m in out["messages"]] == ["user", "assistant", "user"]
    result = out["messages"][2]["content"][0]["toolResult"]
    assert result["content"] == [{"text": "line"}, {"text": "Later"}, {"text": '{"x":1}'}]


def test_other_models_drop_and_name_them() -> None:
    out, dropped = converse_request(body(), NOVA, beta="context-management-2025-06-27")
    assert dropped == ("thinking", "context_management", "output_config.effort")
    assert "additionalModelRequestFields" not in out and "outputConfig" not in out
    assert out["inferenceConfig"] == {"maxTokens": 64000}


def test_no_beta_no_field() -> None:
    out, _ = converse_request(body(thinking=None, context_management=None), CLAUDE, beta=None)
    assert "additionalModelRequestFields" not in out
