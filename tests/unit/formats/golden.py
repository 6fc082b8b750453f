"""Every translation direction applied to the recorded inputs in ``fixtures/``.

``python -m tests.unit.formats.golden`` rewrites ``fixtures/golden/*.json`` from the current translators;
review the diff before committing — the goldens were checked by hand against the provider reference.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sidecar.formats import anthropic, anthropic_ingress, gemini
from sidecar.formats.anthropic_stream import AnthropicToOpenAI, OpenAIToAnthropic

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = FIXTURES / "golden"
CREATED = 1767225600


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def raw(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def anthropic_stream_chunks() -> list[dict[str, Any]]:
    translator = AnthropicToOpenAI(created=CREATED, include_usage=True)
    return [c for t in translator.feed(raw("anthropic_stream.sse")) + translator.finish() for c in t.chunks]


def gemini_stream_chunks() -> list[dict[str, Any]]:
    translator = gemini.GeminiToOpenAI(model="gemini-x", created=CREATED, include_usage=True)
    return translator.feed(raw("gemini_stream.sse")) + translator.finish()


def openai_stream_events() -> list[str]:
    translator = OpenAIToAnthropic("m")
    out = b"".join(translator.feed(json.loads(line)) for line in raw("openai_stream.jsonl").splitlines())
    return (out + translator.end()).decode().split("\n\n")[:-1]


def ingress_request() -> dict[str, Any]:
    request = anthropic_ingress.parse_request(raw("anthropic_request.json"))
    return {"model": request.model, "stream": request.stream, "include_usage": request.include_usage,
            "wire": str(request.wire), "native_only": list(request.native_only), "body": request.body}


CASES: dict[str, Callable[[], Any]] = {
    "openai_to_anthropic_request": lambda: anthropic.to_messages_body(load("openai_request.json"), "claude-x"),
    "openai_to_gemini_request": lambda: gemini.to_generate_body(load("openai_request.json")),
    "anthropic_to_openai_response": lambda: anthropic.to_openai_completion(load("anthropic_response.json"),
                                                                           CREATED),
    "gemini_to_openai_response": lambda: gemini.to_openai_completion(load("gemini_response.json"), "gemini-x",
                                                                     CREATED),
    "anthropic_to_openai_stream": anthropic_stream_chunks,
    "gemini_to_openai_stream": gemini_stream_chunks,
    "anthropic_to_openai_request": ingress_request,
    "openai_to_anthropic_response": lambda: anthropic_ingress.to_message(load("openai_tool_completion.json")),
    "openai_to_anthropic_stream": openai_stream_events,
}


if __name__ == "__main__":
    GOLDEN.mkdir(exist_ok=True)
    for name, case in CASES.items():
        (GOLDEN / f"{name}.json").write_text(json.dumps(case(), indent=1, ensure_ascii=False) + "\n")
