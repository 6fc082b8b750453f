"""Golden translation tests: each direction against recorded inputs and hand-checked expected outputs."""

from __future__ import annotations

import json

import pytest

from tests.unit.formats.golden import CASES, GOLDEN


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name: str) -> None:
    expected = json.loads((GOLDEN / f"{name}.json").read_text())
    assert json.loads(json.dumps(CASES[name]())) == expected


def test_translation_never_mutates_the_canonical_request() -> None:
    from sidecar.formats import anthropic, gemini
    from tests.unit.formats.golden import load

    body = load("openai_request.json")
    before = json.dumps(body, sort_keys=True)
    anthropic.to_messages_body(body, "m")
    gemini.to_generate_body(body)
    assert json.dumps(body, sort_keys=True) == before
