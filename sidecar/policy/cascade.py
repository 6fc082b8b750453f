"""Cascade checks: is a cheap model's answer good enough to give the app? (Pure; no I/O.)

A cascade (``sidecar_settings.cascade``) tries a model group and accepts its answer only when every configured
check passes, else escalates to the next group. ``Checks.verdict`` gives the first failed check's reason, or
None: ``length`` (cut at the token limit), ``empty`` (no text and no tool call), ``refusal`` (the answer's
``refusal`` field, or a configured pattern), ``invalid_json`` / ``schema`` (JSON was asked for: the text must
parse, and fit the ``json_schema`` when one was given), ``too_short`` (fewer characters than ``min_length``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from sidecar.config.rules import CascadeSettings


@dataclass(frozen=True, slots=True)
class CascadeStep:
    """A trail value: ``group`` answered (by ``deployment``) but ``reason`` failed, so the request escalated."""

    group: str
    deployment: str | None
    reason: str


class Checks:
    """One cascade's checks, compiled once (the refusal patterns into one case-insensitive expression)."""

    __slots__ = ("refusal", "settings")

    def __init__(self, settings: CascadeSettings) -> None:
        self.settings = settings
        patterns = settings.refusal_patterns
        self.refusal = re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE) if patterns else None

    def verdict(self, request: Mapping[str, Any], answer: Mapping[str, Any]) -> str | None:
        """Why ``answer`` (OpenAI chat completion) is not accepted for ``request`` (its body); None: accepted."""
        settings = self.settings
        choices = answer.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
        message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
        text = message.get("content") if isinstance(message.get("content"), str) else ""
        if settings.finish_reason and choice.get("finish_reason") == "length":
            return "length"
        if settings.non_empty and not text.strip() and not message.get("tool_calls"):
            return "empty"
        if message.get("refusal") or (self.refusal is not None and self.refusal.search(text)):
            return "refusal"
        if settings.json and not message.get("tool_calls"):
            failed = _json_verdict(request.get("response_format"), text)
            if failed is not None:
                return failed
        if settings.min_length and len(text.strip()) < settings.min_length and not message.get("tool_calls"):
            return "too_short"
        return None


def _json_verdict(response_format: object, text: str) -> str | None:
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind not in ("json_object", "json_schema"):
        return None
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return "invalid_json"
    spec = response_format.get("json_schema") if isinstance(response_format, dict) else None
    schema = spec.get("schema") if kind == "json_schema" and isinstance(spec, dict) else None
    if isinstance(schema, dict):
        import jsonschema  # only a cascade checking a json_schema answer needs it

        try:
            jsonschema.validate(value, schema)
        except jsonschema.ValidationError:
            return "schema"
        except jsonschema.SchemaError:
            return None  # the app's schema itself is broken: the upstream took it; not the answer's fault
    return None
