"""The redactor masks secrets, key shapes, URLs, deployment hosts and internal addresses, and keeps the rest."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.core.redact import ADDRESS, HOST, REDACTED, URL, Redactor, clip

SECRET = "sk-secret-TEST-123"
PLAIN = "correct-horse-battery"  # a configured secret with no key shape
redact = Redactor([SECRET, PLAIN, "abc"], ["llm.corp.example", "api.openai.com"])


@pytest.mark.parametrize(("text", "expected"), [
    (f"key {SECRET} rejected", f"key {REDACTED} rejected"),
    (f"Incorrect API key provided: {PLAIN}.", f"Incorrect API key provided: {REDACTED}."),
    ("Authorization: Bearer abcdefghijk", f"Authorization: {REDACTED}"),
    ("sent Basic dXNlcjpwYXNz", f"sent Basic {REDACTED}"),
    ('{"x-api-key": "anything-at-all"}', f'{{"x-api-key": "{REDACTED}"}}'),
    ("gsk_0123456789abcdef and AIzaSyA0123456789abcdefghijkl", f"{REDACTED} and {REDACTED}"),
    ("see https://platform.openai.com/docs/errors.", f"see {URL}."),
    ("at http://10.0.0.5:8000/v1/chat (retry)", f"at {URL} (retry)"),
    ("host llm.corp.example:443 and API.OPENAI.COM", f"host {HOST} and {HOST}"),
    ("from redis.default.svc.cluster.local:6379 and localhost:11434", f"from {HOST} and {HOST}"),
    ("peer 10.1.2.3:9000, 192.168.0.7, 172.20.1.1, 127.0.0.1, 100.64.0.1",
     ", ".join([f"peer {ADDRESS}"] + [ADDRESS] * 4)),
    ("peer [fd00::1]:80 and ::1 and fe80::1", f"peer {ADDRESS} and {ADDRESS} and {ADDRESS}"),
])
def test_masks(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize("text", [
    "This model's maximum context length is 8192 tokens. However, you requested 9000 tokens.",
    "max_tokens: 4096 is larger than the model allows",
    "Invalid value for 'temperature': 3.5 (version 1.2.3.4, at 12:30:45, public 8.8.8.8)",
    "messages[0].content: Input should be a valid string",
    "a short secret like abc is not masked inside words: abcdef",  # shorter than 4 characters: ignored
])
def test_keeps_useful_text(text: str) -> None:
    assert redact(text) == text


def test_a_secret_cut_by_clipping_is_masked() -> None:
    assert redact(clip(f"the key {SECRET} is bad", 17)) == f"the key {REDACTED}…"
    assert redact(clip(f"the key {PLAIN} is bad", 20)) == f"the key {REDACTED}…"


def test_rotated_secrets_recompile_and_keep_hosts() -> None:
    redactor = Redactor(["old-secret-value"], ["llm.corp.example"])
    redactor.update_secrets(["new-secret-value"])
    assert redactor("new-secret-value old-secret-value llm.corp.example") == \
        f"{REDACTED} old-secret-value {HOST}"


@given(prefix=st.text(max_size=40), suffix=st.text(max_size=40),
       secret=st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=8, max_size=40))
def test_a_configured_secret_never_survives(prefix: str, suffix: str, secret: str) -> None:
    assert secret not in Redactor([secret])(prefix + secret + suffix)


@given(st.text(max_size=200))
def test_never_fails(text: str) -> None:
    assert isinstance(redact(text), str)
