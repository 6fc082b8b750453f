"""The fake upstream's AWS Bedrock surface: ``POST /model/{id}/converse`` and ``/converse-stream``.

Requests must be signed with SigV4 by one of the test credentials (checked by botocore, ``fake_aws``) or carry
the test API key; the body is validated as Bedrock does (alternating roles starting with a user, one member per
content block, no blank text, tool blocks need ``toolConfig``, temperature ≤ 1). Answers: text in pieces,
a ``toolUse`` of the first tool when tools are offered and no result came back yet, a reasoning block first
when ``thinking`` is on. Streams are real event-stream frames, each written in two parts split at an odd
offset. Faults (``Faults``): injected JSON errors by status (429 throttling, 400 validation — ``error_code:
"context"`` for "Input is too long" —, 403, 404, 408, 424, 500, 503), ``drop_after`` N frames (the cut lands
mid-frame), or at that point an in-stream exception frame (``stream_exception``), ``malformed_event_at`` (a
frame with a bad CRC), ``stall_after``, ``ttft``, ``chunk_delay``.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import unquote

import orjson
from aiohttp import web

from sidecar.testing.fake_aws import aws_error, check_auth, corrupt, event, exception, sts
from sidecar.testing.faults import FAULTS_KEY, STATS_KEY, Faults, Stats, answer_pieces, common_faults, sleep_watching

ERRORS = {429: ("ThrottlingException", "Too many requests, please wait before trying again."),
          400: ("ValidationException", "Malformed input request, please reformat your input and try again."),
          403: ("AccessDeniedException", "You don't have access to the model with the specified model ID."),
          404: ("ResourceNotFoundException", "Could not resolve the foundation model from the provided model "
                "identifier."),
          408: ("ModelTimeoutException", "Model has timed out in processing the request."),
          424: ("ModelErrorException", "The model encountered an error processing the request."),
          500: ("InternalServerException", "The server encountered an internal error."),
          503: ("ServiceUnavailableException", "Bedrock is unable to process your request.")}
CONTEXT_MESSAGE = "Input is too long for requested model."
TOOL_INPUT = {"city": "Oslo"}
KNOWN_MODELS = ("fake", "anthropic.", "amazon.", "meta.", "arn:aws:bedrock:")  # base ids, profiles, ARNs


def injected(faults: Faults, stats: Stats) -> web.Response:
    name, message = ERRORS.get(faults.error_status, ERRORS[500])
    if faults.error_code == "context":
        message = CONTEXT_MESSAGE
    elif faults.error_code:
        name = faults.error_code
    response = aws_error(name, faults.error_status, message, stats)
    if faults.retry_after is not None:
        response.headers["retry-after"] = f"{faults.retry_after:g}"
    return response


async def converse(request: web.Request) -> web.StreamResponse:
    raw_path = request.raw_path.split("?", 1)[0]
    encoded, _, operation = raw_path.removeprefix("/model/").rpartition("/")
    early = await common_faults(request, injected=injected)
    if early is not None:
        return early
    faults, stats = request.app[FAULTS_KEY], request.app[STATS_KEY]
    denied = check_auth(request, await request.read())
    if denied is not None:
        return denied
    model_id = unquote(encoded)
    if operation not in ("converse", "converse-stream") or not any(k in model_id for k in KNOWN_MODELS) \
            or "/" in encoded:  # a '/' must arrive encoded, as botocore sends it
        return aws_error("ResourceNotFoundException", 404, ERRORS[404][1], stats)
    body = stats.last_body if isinstance(stats.last_body, dict) else {}
    problem = validate(body)
    if problem is not None:
        return aws_error("ValidationException", 400, problem, stats)
    await asyncio.sleep(faults.latency)
    blocks, stop = _answer(request.app, body)
    usage = _usage(body, blocks)
    if operation == "converse-stream":
        return await _stream(request, blocks, stop, usage, body)
    await sleep_watching(request, faults.ttft)
    if faults.malformed:
        return web.Response(body=b'{"output": {"message": ', content_type="application/json")
    stats.completed += 1
    answer: dict[str, Any] = {"output": {"message": {"role": "assistant", "content": [_whole(b) for b in blocks]}},
                              "stopReason": stop, "usage": usage, "metrics": {"latencyMs": 42}}
    if body.get("additionalModelResponseFieldPaths"):
        answer["additionalModelResponseFields"] = {"stop_sequence": None}
    return web.Response(body=orjson.dumps(answer), content_type="application/json",
                        headers={"x-amzn-RequestId": "fake-request-id"})


# ---- validation, as Bedrock answers it ------------------------------------------------------------


def validate(body: dict[str, Any]) -> str | None:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "The messages field is required."
    if messages[0].get("role") != "user":
        return "A conversation must start with a user message. Try again with a conversation that starts with a " \
               "user message."
    tools = bool((body.get("toolConfig") or {}).get("tools"))
    for i, message in enumerate(messages):
        if i and message.get("role") == messages[i - 1].get("role"):
            return "A conversation must alternate between user and assistant roles. Make sure the conversation " \
                   "alternates between user and assistant roles and try again."
        content = message.get("content")
        if not isinstance(content, list) or not content:
            return f"The content field in the Message object at messages.{i} is empty. Add a ContentBlock object " \
                   "to the content field and try again."
        for j, block in enumerate(content):
            problem = _block_problem(block, f"messages.{i}.content.{j}", tools)
            if problem:
                return problem
    temperature = (body.get("inferenceConfig") or {}).get("temperature")
    if isinstance(temperature, int | float) and not 0 <= temperature <= 1:
        return "1 validation error detected: Value at 'inferenceConfig.temperature' failed to satisfy constraint: " \
               "Member must have value less than or equal to 1"
    return None


def _block_problem(block: object, where: str, tools: bool) -> str | None:
    if not isinstance(block, dict) or len(block) != 1:
        return f"The ContentBlock object at {where} must have one and only one member set."
    if "text" in block and not str(block["text"]).strip():
        return f"The text field in the ContentBlock object at {where} is blank. Add text to the text field, and " \
               "try again."
    if ("toolUse" in block or "toolResult" in block) and not tools:
        return "The toolConfig field must be defined when using toolUse and toolResult content blocks."
    return None


# ---- answers ----------------------------------------------------------------------------------------


def _prefill(body: dict[str, Any]) -> str:
    last = body["messages"][-1]
    if last.get("role") != "assistant":
        return ""
    return "".join(str(b.get("text", "")) for b in last["content"] if "text" in b)


def _answer(app: web.Application, body: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    last = body["messages"][-1]
    answered = any("toolResult" in b for b in last.get("content") or ())
    tools = (body.get("toolConfig") or {}).get("tools") or []
    blocks: list[dict[str, Any]] = []
    if (body.get("additionalModelRequestFields") or {}).get("thinking"):
        blocks.append({"reasoning": ["Let me ", "think."], "signature": "sig-fake-1"})
    named = [t["toolSpec"]["name"] for t in tools if "toolSpec" in t]
    if app[FAULTS_KEY].tool_call == "":  # the fault that calls no tool
        named = []
    if named and not answered:
        blocks.append({"toolUse": {"toolUseId": "tooluse_fakeAbCdEfGhIjKlMnOpQr", "name": named[0],
                                   "input": TOOL_INPUT}})
        return blocks, "tool_use"
    prefill = _prefill(body)
    shaped = {"messages": [{"role": "assistant", "content": prefill}]} if prefill else {}
    blocks.append({"pieces": answer_pieces(app, shaped)})
    return blocks, "end_turn"


def _whole(block: dict[str, Any]) -> dict[str, Any]:
    if "pieces" in block:
        return {"text": "".join(block["pieces"])}
    if "reasoning" in block:
        return {"reasoningContent": {"reasoningText": {"text": "".join(block["reasoning"]),
                                                       "signature": block["signature"]}}}
    return block


def _usage(body: dict[str, Any], blocks: list[dict[str, Any]]) -> dict[str, int]:
    prompt = max(1, len(orjson.dumps(body.get("messages", []))) // 16)
    output = sum(len(b.get("pieces", ())) for b in blocks) or 1
    cached = 7 if b'"cachePoint"' in orjson.dumps(body) else 0
    return {"inputTokens": prompt, "outputTokens": output, "totalTokens": prompt + output + cached,
            "cacheReadInputTokens": cached, "cacheWriteInputTokens": 0}


def frames(blocks: list[dict[str, Any]], stop: str, usage: dict[str, int]) -> list[bytes]:
    """The event sequence of §A4: no contentBlockStart for text or reasoning; padding ``p`` on deltas."""
    out = [event("messageStart", {"role": "assistant"})]
    for index, block in enumerate(blocks):
        if "pieces" in block:
            out += [event("contentBlockDelta", {"contentBlockIndex": index, "delta": {"text": piece},
                                                "p": "abcdefghij"[: 1 + n % 9]})
                    for n, piece in enumerate(block["pieces"])]
        elif "reasoning" in block:
            out += [event("contentBlockDelta", {"contentBlockIndex": index,
                                                "delta": {"reasoningContent": {"text": piece}}})
                    for piece in block["reasoning"]]
            out.append(event("contentBlockDelta", {"contentBlockIndex": index,
                                                   "delta": {"reasoningContent": {"signature": block["signature"]}}}))
        else:
            use = block["toolUse"]
            out.append(event("contentBlockStart", {"contentBlockIndex": index, "start": {
                "toolUse": {"toolUseId": use["toolUseId"], "name": use["name"]}}}))
            encoded = orjson.dumps(use["input"]).decode()
            out += [event("contentBlockDelta", {"contentBlockIndex": index, "delta": {"toolUse": {"input": part}}})
                    for part in (encoded[:5], encoded[5:])]
        out.append(event("contentBlockStop", {"contentBlockIndex": index}))
    out.append(event("messageStop", {"stopReason": stop}))
    out.append(event("metadata", {"usage": usage, "metrics": {"latencyMs": 42}}))
    return out


async def _stream(request: web.Request, blocks: list[dict[str, Any]], stop: str, usage: dict[str, int],
                  body: dict[str, Any]) -> web.StreamResponse:
    faults, stats = request.app[FAULTS_KEY], request.app[STATS_KEY]
    messages = frames(blocks, stop, usage)
    if body.get("additionalModelResponseFieldPaths"):
        messages[-2] = event("messageStop", {"stopReason": stop, "additionalModelResponseFields": {
            "stop_sequence": None}})
    response = web.StreamResponse(headers={"content-type": "application/vnd.amazon.eventstream",
                                           "x-amzn-RequestId": "fake-request-id"})
    await response.prepare(request)
    await sleep_watching(request, faults.ttft)
    finished = False
    try:
        for i, message in enumerate(messages):
            if faults.drop_after is not None and i >= faults.drop_after:
                if faults.stream_exception:
                    await response.write(exception(faults.stream_exception, "The model is overloaded, try again."))
                    break
                await response.write(message[: len(message) // 2 | 1])  # cut mid-frame
                assert request.transport is not None
                request.transport.abort()
                return response
            if faults.stall_after is not None and i >= faults.stall_after:
                await asyncio.sleep(3600)
            if faults.malformed_event_at == i:
                message = corrupt(message)
            split = len(message) // 3 | 1  # frames arrive in pieces, split at odd offsets
            await response.write(message[:split])
            await response.write(message[split:])
            if faults.chunk_delay:
                await asyncio.sleep(faults.chunk_delay)
        await response.write_eof()
        finished = True
        stats.completed += 1
    finally:
        if not finished:
            stats.disconnects += 1
    return response


ROUTES = [web.post("/model/{tail:.+}", converse), web.post("/", sts)]
