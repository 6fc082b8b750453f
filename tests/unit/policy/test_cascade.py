"""Cascade checks: each check accepts a good answer and rejects exactly the bad one."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.config.rules import CascadeSettings
from sidecar.policy.cascade import Checks

SCHEMA = {"type": "json_schema", "json_schema": {"name": "city", "schema": {
    "type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}}}}


def answer(text: str | None, finish: str = "stop", **message: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "finish_reason": finish,
                         "message": {"role": "assistant", "content": text, **message}}]}


CHECKS = Checks(CascadeSettings(("big",), refusal_patterns=(r"I can(no|')t help", "as an AI"), min_length=10))


@pytest.mark.parametrize(("request_body", "reply", "verdict"), [
    ({}, answer("A perfectly fine answer."), None),
    ({}, answer("A perfectly fine answer, cut", finish="length"), "length"),
    ({}, answer("   "), "empty"),
    ({}, answer(None), "empty"),
    ({}, answer(None, tool_calls=[{"id": "c", "type": "function"}]), None),
    ({}, answer("Sorry, I can't help with that."), "refusal"),
    ({}, answer("sorry, i cannot help with that request"), "refusal"),
    ({}, answer("Speaking AS AN AI, no."), "refusal"),
    ({}, answer("Fine text here.", refusal="I refuse"), "refusal"),
    ({}, answer("Too short"), "too_short"),
    ({"response_format": {"type": "json_object"}}, answer('{"city": "Oslo", "x": 1}'), None),
    ({"response_format": {"type": "json_object"}}, answer("city: Oslo, surely"), "invalid_json"),
    ({"response_format": SCHEMA}, answer('{"city": "Oslo"}'), None),
    ({"response_format": SCHEMA}, answer('{"town": "Oslo"}'), "schema"),
    ({"response_format": SCHEMA}, answer('{"city": 42, "pad": 1}'), "schema"),
    ({"response_format": {"type": "text"}}, answer("plain text, not JSON"), None),
])
def test_checks(request_body: dict[str, Any], reply: dict[str, Any], verdict: str | None) -> None:
    assert CHECKS.verdict(request_body, reply) == verdict


def test_checks_can_be_turned_off() -> None:
    lenient = Checks(CascadeSettings(("big",), finish_reason=False, non_empty=False, json=False))
    assert lenient.verdict({}, answer("cut", finish="length")) is None
    assert lenient.verdict({}, answer("")) is None
    assert lenient.verdict({"response_format": {"type": "json_object"}}, answer("not json")) is None
    assert lenient.verdict({}, {"choices": []}) is None


def test_a_broken_schema_is_not_the_answers_fault() -> None:
    broken = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "no-such-type"}}}
    assert CHECKS.verdict({"response_format": broken}, answer('{"a": 1, "pad": 2}')) is None
