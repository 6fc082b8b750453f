"""Gemini generateContent: canonical (OpenAI-shaped) request → Gemini body; answers and SSE chunks → OpenAI.

Gemini keys function responses by *name*, OpenAI by call id: the name is looked up from the assistant turn
that made the call. Gemini call ids are optional, so missing ones are synthesised as ``call_<n>``. A function
call ends with ``finishReason: STOP``; ``tool_calls`` is derived from the presence of ``functionCall`` parts.
"""

from __future__ import annotations

import mimetypes
from typing import Any

import orjson

from sidecar.core.errors import InvalidRequest
from sidecar.core.types import Usage, token_count
from sidecar.formats import common
from sidecar.formats.sse import MAX_EVENT, Event, SSEDecoder

FINISH_REASONS = {"STOP": "stop", "MAX_TOKENS": "length", **dict.fromkeys(
    ("SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY",
     "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION", "LANGUAGE", "MODEL_ARMOR"), "content_filter")}
UNTRANSLATABLE: dict[str, object] = {"logit_bias": None, "parallel_tool_calls": True, "audio": None,
                                     "prediction": None, "web_search_options": None, "functions": None,
                                     "function_call": None, "modalities": None,
                                     "verbosity": None, "user": None, "n": 1, "logprobs": False,
                                     "top_logprobs": None}
GENERATION = {"temperature": "temperature", "top_p": "topP", "top_k": "topK", "seed": "seed",
              "presence_penalty": "presencePenalty", "frequency_penalty": "frequencyPenalty"}
TRANSLATED = frozenset({*GENERATION, "max_tokens", "max_completion_tokens", "stop", "tools", "tool_choice",
                        "response_format", "reasoning_effort"})
#: ``reasoning_effort`` → ``thinkingConfig.thinkingBudget`` (the budgets of Gemini's own OpenAI compatibility).
THINKING_BUDGETS = {"none": 0, "minimal": 512, "low": 1024, "medium": 8192, "high": 24576, "xhigh": 32768,
                    "max": 32768}


def to_generate_body(body: dict[str, Any]) -> dict[str, Any]:
    """The canonical body → a generateContent request (the model goes in the URL). Never mutates ``body``."""
    common.reject(body, UNTRANSLATABLE, "Gemini")
    for name in body:
        if name not in TRANSLATED and name not in common.HINT_FIELDS and name not in UNTRANSLATABLE:
            raise InvalidRequest(f"'{name}' cannot be translated for Gemini upstreams", param=name)
    system, contents = _contents(body["messages"])
    out: dict[str, Any] = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": [{"text": system}]}
    config = {key: body[name] for name, key in GENERATION.items() if body.get(name) is not None}
    limit = common.max_tokens_of(body)
    if limit:
        config["maxOutputTokens"] = limit
    stops = common.stop_list(body.get("stop"))
    if stops:
        config["stopSequences"] = stops
    _response_format(body.get("response_format"), config)
    effort = body.get("reasoning_effort")
    if effort is not None:
        if effort not in THINKING_BUDGETS:
            raise InvalidRequest(f"reasoning_effort '{effort}' cannot be translated for Gemini upstreams",
                                 param="reasoning_effort")
        config["thinkingConfig"] = {"thinkingBudget": THINKING_BUDGETS[effort]}
    if config:
        out["generationConfig"] = config
    _tools(body, out)
    return out


def _contents(messages: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    system: list[str] = []
    out: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool-call id → function name, for functionResponse
    for i, message in enumerate(messages):
        role, where = message["role"], f"messages[{i}]"
        if role in ("system", "developer"):
            system.append(common.text_of(message.get("content"), f"{where}.content"))
            continue
        if role == "user":
            parts, role = _user_parts(message.get("content"), f"{where}.content"), "user"
        elif role == "assistant":
            parts, role = _model_parts(message, where, names), "model"
        elif role == "tool":
            call_id = message["tool_call_id"]
            if call_id not in names:
                raise InvalidRequest("a tool result must answer a tool call of an earlier assistant message",
                                     param=f"{where}.tool_call_id")
            output = common.text_of(message.get("content"), f"{where}.content")
            parts = [{"functionResponse": {"name": names[call_id], "response": {"output": output}}}]
            if not call_id.startswith("call_gemini_"):
                parts[0]["functionResponse"]["id"] = call_id
            role = "user"
        else:
            raise InvalidRequest(f"role '{role}' cannot be translated for Gemini upstreams", param=f"{where}.role")
        common.append_turn(out, role, "parts", parts)
    return "\n\n".join(system), out


def _user_parts(content: object, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}]
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content if isinstance(content, list) else ()):
        kind = part.get("type")
        if kind == "text":
            parts.append({"text": str(part.get("text", ""))})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str) or not url:
                raise InvalidRequest("'image_url.url' is required", param=f"{where}[{j}].image_url.url")
            inline = common.parse_data_url(url)
            if inline is not None:
                parts.append({"inlineData": {"mimeType": inline[0], "data": inline[1]}})
            else:  # a URI Gemini fetches itself (gs://, Files API; https support is model-dependent)
                mime = mimetypes.guess_type(url.split("?")[0])[0] or "image/jpeg"
                parts.append({"fileData": {"mimeType": mime, "fileUri": url}})
        elif kind == "input_audio":
            audio = part.get("input_audio") or {}
            parts.append({"inlineData": {"mimeType": f"audio/{audio.get('format', 'wav')}",
                                         "data": audio.get("data", "")}})
        else:
            raise InvalidRequest(f"content part type '{kind}' cannot be translated for Gemini upstreams",
                                 param=f"{where}[{j}]")
    return parts


def _model_parts(message: dict[str, Any], where: str, names: dict[str, str]) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    text = common.text_of(message.get("content"), f"{where}.content")
    if text:
        parts.append({"text": text})
    for j, call in enumerate(message.get("tool_calls") or ()):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise InvalidRequest("a tool call needs 'function.name'", param=f"{where}.tool_calls[{j}]")
        call_id = str(call.get("id") or "")
        names[call_id] = function["name"]
        args = common.tool_arguments(function.get("arguments"), f"{where}.tool_calls[{j}].function.arguments")
        fc: dict[str, Any] = {"name": function["name"], "args": args}
        if call_id and not call_id.startswith("call_gemini_"):
            fc["id"] = call_id
        parts.append({"functionCall": fc})
    return parts or [{"text": ""}]


def _tools(body: dict[str, Any], out: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools:
        declarations = []
        for name, description, parameters in common.functions(tools, "Gemini"):
            declaration: dict[str, Any] = {"name": name}
            if description:
                declaration["description"] = description
            if parameters:
                declaration["parametersJsonSchema"] = parameters
            declarations.append(declaration)
        out["tools"] = [{"functionDeclarations": declarations}]
    choice = body.get("tool_choice")
    config: dict[str, Any]
    if choice is None:
        return
    if choice in ("auto", "required", "none"):
        config = {"mode": {"auto": "AUTO", "required": "ANY", "none": "NONE"}[choice]}
    elif isinstance(choice, dict) and isinstance((choice.get("function") or {}).get("name"), str):
        config = {"mode": "ANY", "allowedFunctionNames": [choice["function"]["name"]]}
    else:
        raise InvalidRequest(f"'tool_choice' value '{choice}' cannot be translated", param="tool_choice")
    out["toolConfig"] = {"functionCallingConfig": config}


def _response_format(fmt: object, config: dict[str, Any]) -> None:
    if not isinstance(fmt, dict) or fmt.get("type") in (None, "text"):
        return
    if fmt["type"] not in ("json_object", "json_schema"):
        raise InvalidRequest(f"response_format '{fmt['type']}' cannot be translated", param="response_format")
    config["responseMimeType"] = "application/json"
    if fmt["type"] == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise InvalidRequest("'response_format.json_schema.schema' is required",
                                 param="response_format.json_schema.schema")
        config["responseJsonSchema"] = schema


# ---- answers ----------------------------------------------------------------------------------------


def usage_of(data: object) -> Usage | None:
    """``usageMetadata`` → Usage; completion tokens include thoughts (reference §9)."""
    if not isinstance(data, dict):
        return None

    def count(name: str) -> int:
        return token_count(data.get(name))

    prompt = count("promptTokenCount") + count("toolUsePromptTokenCount")
    return Usage(prompt_tokens=prompt, completion_tokens=count("candidatesTokenCount") + count("thoughtsTokenCount"),
                 cached_tokens=min(count("cachedContentTokenCount"), prompt))


class _Parts:
    """Reads the parts of one candidate; ``first_call`` numbers synthesised call ids across a stream."""

    def __init__(self, candidate: dict[str, Any], first_call: int) -> None:
        content = candidate.get("content") if isinstance(candidate.get("content"), dict) else {}
        self.text, self.thoughts, self.calls = [], [], []
        for part in content.get("parts") or ():
            if not isinstance(part, dict):
                continue
            if isinstance(part.get("functionCall"), dict):
                call = part["functionCall"]
                n = first_call + len(self.calls)
                self.calls.append({"index": n, "id": str(call.get("id") or f"call_gemini_{n}"), "type": "function",
                                   "function": {"name": call.get("name"),
                                                "arguments": orjson.dumps(call.get("args") or {}).decode()}})
            elif isinstance(part.get("text"), str):
                (self.thoughts if part.get("thought") else self.text).append(part["text"])


def _finish(candidate: dict[str, Any] | None, data: dict[str, Any], called: bool) -> str | None:
    if candidate is None:
        return "content_filter" if (data.get("promptFeedback") or {}).get("blockReason") else None
    reason = candidate.get("finishReason")
    if reason is None:
        return None
    return "tool_calls" if called and reason == "STOP" else FINISH_REASONS.get(str(reason), "stop")


def _candidate(data: dict[str, Any]) -> dict[str, Any] | None:
    candidates = data.get("candidates")
    if isinstance(candidates, list) and candidates and isinstance(candidates[0], dict):
        return candidates[0]
    return None


def to_openai_completion(data: dict[str, Any], model: str, created: int) -> dict[str, Any]:
    """A generateContent answer → an OpenAI ``chat.completion``. ``ValueError`` when it is not one."""
    if not isinstance(data.get("candidates"), list) and not data.get("promptFeedback"):
        raise ValueError("the answer has neither 'candidates' nor 'promptFeedback'")
    candidate = _candidate(data)
    parts = _Parts(candidate or {}, 0)
    message: dict[str, Any] = {"role": "assistant",
                               "content": "".join(parts.text) if parts.text or not parts.calls else None,
                               "refusal": None}
    if parts.thoughts:
        message["reasoning_content"] = "".join(parts.thoughts)
    if parts.calls:
        message["tool_calls"] = [{k: v for k, v in c.items() if k != "index"} for c in parts.calls]
    finish = _finish(candidate, data, bool(parts.calls)) or "stop"
    return common.completion(str(data.get("responseId") or "gemini"), str(data.get("modelVersion") or model),
                             created, message, finish, usage_of(data.get("usageMetadata")))


class GeminiToOpenAI:
    """``streamGenerateContent?alt=sse`` bytes → OpenAI chunk dicts, however the bytes are split.

    Gemini has no end marker: the chunk with ``finishReason`` sets ``done`` and brings the finish chunk and,
    when ``include_usage``, the usage chunk. ``{"error": …}`` raises ``StreamErrorEvent``.
    """

    def __init__(self, *, model: str, created: int, include_usage: bool, max_event: int = MAX_EVENT) -> None:
        self.decoder = SSEDecoder(max_event)
        self.model, self.created, self.include_usage = model, created, include_usage
        self.id = "gemini"
        self.usage: Usage | None = None
        self.done = False
        self.skipped = 0
        self.started = False
        self.calls = 0

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        return self._each(self.decoder.feed(data))

    def finish(self) -> list[dict[str, Any]]:
        return self._each(self.decoder.flush())

    def _each(self, events: list[Event]) -> list[dict[str, Any]]:
        """Every event's chunks; an error event keeps the chunks before it (``StreamErrorEvent.partial``)."""
        try:
            return [c for group in common.translate_each(events, lambda e: self._translate(e.data)) for c in group]
        except common.StreamErrorEvent as exc:
            exc.partial = [c for group in exc.partial for c in group]
            raise

    def _translate(self, raw: bytes) -> list[dict[str, Any]]:
        if self.done or not raw:
            return []
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self.skipped += 1
            return []
        if isinstance(data, list) and len(data) == 1:
            data = data[0]
        if not isinstance(data, dict):
            self.skipped += 1
            return []
        if "error" in data:
            raise common.StreamErrorEvent(data)
        self.id = str(data.get("responseId") or self.id)
        self.model = str(data.get("modelVersion") or self.model)
        self.usage = usage_of(data.get("usageMetadata")) or self.usage
        out = []
        if not self.started:
            self.started = True
            out.append(common.chunk(self.id, self.model, self.created, {"role": "assistant", "content": ""}))
        candidate = _candidate(data)
        parts = _Parts(candidate or {}, self.calls)
        self.calls += len(parts.calls)
        if "".join(parts.thoughts):
            out.append(self._chunk({"reasoning_content": "".join(parts.thoughts)}))
        if "".join(parts.text):
            out.append(self._chunk({"content": "".join(parts.text)}))
        for call in parts.calls:
            out.append(self._chunk({"tool_calls": [call]}))
        finish = _finish(candidate, data, self.calls > 0)
        if finish is not None:
            self.done = True
            out.append(self._chunk({}, finish))
            if self.include_usage and self.usage is not None:
                out.append(common.usage_chunk(self.id, self.model, self.created, self.usage))
        return out

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return common.chunk(self.id, self.model, self.created, delta, finish)
