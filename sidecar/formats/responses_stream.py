"""OpenAI chunks → the Responses API's SSE event sequence (reference §B3, §B4 "Stream"), sans I/O.

``response.created`` and ``response.in_progress`` open the stream; each output item (reasoning, message,
function call) is added, filled by deltas and done, in order; ``response.completed`` (or ``.incomplete``) closes
it with the full ``output`` and ``usage``, so ``client.responses.stream(...).get_final_response()`` works.
``end`` waits for the usage chunk, which a Chat stream sends after its finish chunk. When an OpenAI deployment
streamed its own events (passed through verbatim), ``observe`` follows them, so that a replacement upstream after
a cut continues the same response, item and sequence numbers.
"""

from __future__ import annotations

from typing import Any

import orjson

from sidecar.formats import responses as shapes
from sidecar.formats.sse import encode_event


class ChatToResponses:
    """One Responses stream rendered from Chat chunks (and, after a passthrough, from the events observed)."""

    def __init__(self, source: dict[str, Any]) -> None:
        self.source = source
        self.response: dict[str, Any] | None = None  # the skeleton, once started
        self.sequence = 0
        self.output: list[dict[str, Any]] = []
        self.message: dict[str, Any] | None = None  # the open message item
        self.reasoning: dict[str, Any] | None = None  # the open reasoning item
        self.calls: dict[int, dict[str, Any]] = {}  # Chat tool-call index → its function_call item (open or done)
        self.open_calls: list[int] = []
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.ended = False

    # ---- rendering -------------------------------------------------------------------------------

    def _event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return encode_event(orjson.dumps(data), kind)

    def _start(self, chunk: dict[str, Any]) -> bytes:
        model = str(chunk.get("model") or self.source.get("model") or "")
        self.response = shapes.skeleton(self.source, shapes.new_id("resp_"), int(chunk.get("created") or 0), model)
        return self._event("response.created", response=self.response) + \
            self._event("response.in_progress", response=self.response)

    def feed(self, chunk: dict[str, Any]) -> bytes:
        out = [] if self.response is not None else [self._start(chunk)]
        if isinstance(chunk.get("usage"), dict):
            self.usage = shapes.usage_of(chunk["usage"])
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
            if delta.get("reasoning_content"):
                out.append(self._reasoning(str(delta["reasoning_content"])))
            if delta.get("content"):
                out.append(self._text(str(delta["content"])))
            for call in delta.get("tool_calls") or ():
                if isinstance(call, dict):
                    out.append(self._call(call))
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])
                out.append(self._close_all())
        return b"".join(out)

    def end(self) -> bytes:
        """Close what is open and complete the response (``response.completed`` / ``.incomplete``)."""
        if self.ended:
            return b""
        out = [] if self.response is not None else [self._start({})]
        out.append(self._close_all())
        assert self.response is not None
        final = shapes.finish({**self.response, "output": self.output, "usage": self.usage}, self.finish_reason)
        self.ended = True
        kind = "response.completed" if final["status"] == "completed" else "response.incomplete"
        return b"".join(out) + self._event(kind, response=final)

    def fail(self, status: int, type_: str, code: str | None, message: str) -> bytes:
        """An upstream failure after the stream started: the ``error`` event, then ``response.failed``."""
        if self.ended:
            return b""
        out = [] if self.response is not None else [self._start({})]
        data = shapes.error_event_data(self.sequence, type_, code, message)
        self.sequence += 1
        out.append(encode_event(orjson.dumps(data), "error"))
        assert self.response is not None
        final = shapes.failed({**self.response, "output": self.output, "usage": self.usage}, status, message)
        self.ended = True
        return b"".join(out) + self._event("response.failed", response=final)

    # ---- items -----------------------------------------------------------------------------------

    def _add(self, item: dict[str, Any]) -> bytes:
        self.output.append(item)
        return self._event("response.output_item.added", output_index=len(self.output) - 1,
                           item={**item, "status": "in_progress"} if item["type"] != "reasoning" else item)

    def _position(self, item: dict[str, Any]) -> int:
        return next(i for i, other in enumerate(self.output) if other is item)

    def _reasoning(self, text: str) -> bytes:
        opened = b""
        if self.reasoning is None:
            opened = self._close_all()
            self.reasoning = shapes.reasoning_item(shapes.new_id("rs_"), "")
            opened += self._add({**self.reasoning, "content": []})
            self.output[-1] = self.reasoning
            opened += self._event("response.content_part.added", item_id=self.reasoning["id"],
                                  output_index=len(self.output) - 1, content_index=0,
                                  part={"type": "reasoning_text", "text": ""})
        self.reasoning["content"][0]["text"] += text
        return opened + self._event("response.reasoning_text.delta", item_id=self.reasoning["id"],
                                    output_index=self._position(self.reasoning), content_index=0, delta=text)

    def _text(self, text: str) -> bytes:
        opened = b""
        if self.message is None:
            opened = self._close_all()
            self.message = shapes.message_item(shapes.new_id("msg_"), "", status="in_progress")
            opened += self._add({**self.message, "content": []})
            self.output[-1] = self.message
            opened += self._event("response.content_part.added", item_id=self.message["id"],
                                  output_index=len(self.output) - 1, content_index=0,
                                  part={"type": "output_text", "text": "", "annotations": [], "logprobs": []})
        self.message["content"][0]["text"] += text
        return opened + self._event("response.output_text.delta", item_id=self.message["id"],
                                    output_index=self._position(self.message), content_index=0, delta=text,
                                    logprobs=[])

    def _call(self, call: dict[str, Any]) -> bytes:
        index = call.get("index", 0) if isinstance(call.get("index"), int) else 0
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        opened = b""
        item = self.calls.get(index)
        if item is None:
            opened = self._close_text()
            item = self.calls[index] = shapes.call_item(shapes.new_id("fc_"), str(call.get("id") or f"call_{index}"),
                                                        str(function.get("name") or ""), "", status="in_progress")
            self.open_calls.append(index)
            opened += self._add(item)
        fragment = function.get("arguments")
        if not fragment or item["status"] != "in_progress":
            return opened
        item["arguments"] += str(fragment)
        return opened + self._event("response.function_call_arguments.delta", item_id=item["id"],
                                    output_index=self._position(item), delta=str(fragment))

    def _close_text(self) -> bytes:
        out = []
        for item, kind in ((self.reasoning, "reasoning_text"), (self.message, "output_text")):
            if item is None:
                continue
            index, part = self._position(item), item["content"][0]
            item["status"] = "completed"
            if kind == "output_text":
                out.append(self._event("response.output_text.done", item_id=item["id"], output_index=index,
                                       content_index=0, text=part["text"], logprobs=[]))
            else:
                out.append(self._event("response.reasoning_text.done", item_id=item["id"], output_index=index,
                                       content_index=0, text=part["text"]))
            out.append(self._event("response.content_part.done", item_id=item["id"], output_index=index,
                                   content_index=0, part=part))
            done = {k: v for k, v in item.items() if k != "status"} if kind == "reasoning_text" else item
            out.append(self._event("response.output_item.done", output_index=index, item=done))
        self.reasoning = self.message = None
        return b"".join(out)

    def _close_all(self) -> bytes:
        out = [self._close_text()]
        for index in self.open_calls:
            item = self.calls[index]
            item["status"] = "completed"
            position = self._position(item)
            out.append(self._event("response.function_call_arguments.done", item_id=item["id"],
                                   output_index=position, name=item["name"], arguments=item["arguments"]))
            out.append(self._event("response.output_item.done", output_index=position, item=item))
        self.open_calls = []
        return b"".join(out)

    # ---- following a passthrough stream -----------------------------------------------------------

    def observe(self, data: dict[str, Any]) -> None:
        """An event an OpenAI deployment sent (forwarded verbatim): keep numbering and items in step."""
        if isinstance(data.get("sequence_number"), int):
            self.sequence = data["sequence_number"] + 1
        kind = data.get("type")
        if kind in ("response.created", "response.in_progress") and isinstance(data.get("response"), dict):
            self.response = {**data["response"], "output": []}
        elif kind == "response.output_item.added" and isinstance(data.get("item"), dict):
            item = data["item"]
            if item.get("type") == "message":
                self.message = {**item, "content": [{"type": "output_text", "text": "", "annotations": [],
                                                     "logprobs": []}]}
                self.output.append(self.message)
            else:
                self.output.append(dict(item))
        elif kind == "response.output_text.delta" and self.message is not None:
            self.message["content"][0]["text"] += str(data.get("delta") or "")
        elif kind == "response.output_item.done" and isinstance(data.get("output_index"), int):
            if data["output_index"] < len(self.output):
                self.output[data["output_index"]] = data["item"]
            if self.message is not None and data["item"].get("id") == self.message.get("id"):
                self.message = None
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            self.ended = True
