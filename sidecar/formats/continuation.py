"""Continuing a cut stream on another upstream without the app seeing a seam (pure, no I/O).

``StreamProgress`` records what the app already received. When the stream breaks, the router asks the next
deployment either to *continue* that text (the partial answer sent as an assistant prefill) or to answer
again from scratch; ``Splicer`` turns the new upstream's chunks into exactly the part the app is missing:

* prefill: the new stream is only the continuation — drop its role chunk, keep the rest;
* splice: the new stream repeats the answer — hold it back until it has reproduced the sent text exactly,
  then forward only what comes after; if it says something else, raise ``Diverged`` (the router ends the
  stream with an explicit error rather than a stitched answer that never existed).

Either way chunk ids are rewritten to the first stream's id, so the app sees one completion.
"""

from __future__ import annotations

from typing import Any

import orjson

from sidecar.core.types import StreamChunk


class Diverged(Exception):
    """The replacement answer does not reproduce what the app already has."""


class StreamProgress:
    """What the app has received of choice 0, and whether that is enough to continue elsewhere.

    The text is kept as its pieces and joined when asked for (``text``): appending to one string copied the
    whole answer on every chunk — quadratic in the answer's length.
    """

    __slots__ = ("_pieces", "continuable", "finish_reason", "id", "model")

    def __init__(self) -> None:
        self._pieces: list[str] = []
        self.id: str | None = None
        self.model: str | None = None
        self.continuable = True
        self.finish_reason: str | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def text(self) -> str:
        pieces = self._pieces
        if len(pieces) > 1:
            pieces[:] = ["".join(pieces)]
        return pieces[0] if pieces else ""

    def observe(self, chunks: list[StreamChunk]) -> None:
        for chunk in chunks:
            data = chunk.data
            if self.id is None and isinstance(data.get("id"), str):
                self.id = data["id"]
                self.model = data.get("model") if isinstance(data.get("model"), str) else None
            for choice in data.get("choices") or ():
                if isinstance(choice, dict) and isinstance(choice.get("finish_reason"), str):
                    self.finish_reason = choice["finish_reason"]
                delta = choice.get("delta") if isinstance(choice, dict) else None
                if not isinstance(delta, dict) or choice.get("index", 0) != 0:
                    self.continuable = False  # n > 1 or legacy completions: no single text to continue
                    continue
                if delta.get("tool_calls") or delta.get("function_call"):
                    self.continuable = False  # a half-sent tool call cannot be resumed faithfully
                content = delta.get("content")
                if isinstance(content, str) and content:
                    self._pieces.append(content)


def prefill_body(body: dict[str, Any], sent: str) -> dict[str, Any]:
    """The original request plus the partial answer as a trailing assistant message."""
    return {**body, "messages": [*body["messages"], {"role": "assistant", "content": sent}]}


class Splicer:
    """Adapts a replacement stream so that it continues exactly where the app's stream broke.

    The replacement's text is compared with the sent text piece by piece at a moving offset (``_matched``),
    never re-joined: linear in the answer's length."""

    __slots__ = ("_forwarding", "_matched", "id", "prefilled", "sent")

    def __init__(self, sent: str, *, prefilled: bool, stream_id: str | None) -> None:
        self.sent = sent
        self.prefilled = prefilled
        self.id = stream_id
        self._matched = 0  # characters of ``sent`` the replacement has reproduced
        self._forwarding = prefilled

    def feed(self, chunks: list[StreamChunk]) -> list[StreamChunk]:
        out: list[StreamChunk] = []
        for chunk in chunks:
            kept = self._one(chunk)
            if kept is not None:
                out.append(kept)
        return out

    def _one(self, chunk: StreamChunk) -> StreamChunk | None:
        data = dict(chunk.data)
        if self.id is not None:
            data["id"] = self.id
        choices = data.get("choices") or []
        choice = choices[0] if choices and isinstance(choices[0], dict) else None
        delta = choice.get("delta") if choice else None
        content = delta.get("content") if isinstance(delta, dict) else None
        finish = choice.get("finish_reason") if choice else None
        if isinstance(delta, dict) and "role" in delta and not content and not finish:
            return None  # the app already has the role chunk
        if self._forwarding:
            return _encode(data, chunk)
        if not isinstance(content, str):
            if finish:
                raise Diverged("the replacement answer ended before reproducing the text already sent")
            return None
        sent, matched = self.sent, self._matched
        reached = matched + len(content)
        if reached <= len(sent):
            if not sent.startswith(content, matched):
                raise Diverged("the replacement answer differs from the text already sent")
            self._matched = reached
            if reached < len(sent) or not finish:
                if reached == len(sent):
                    self._forwarding = True
                return None
            rest = ""
        else:
            missing = len(sent) - matched
            if not sent.endswith(content[:missing]):
                raise Diverged("the replacement answer differs from the text already sent")
            self._matched = len(sent)
            rest = content[missing:]
        self._forwarding = True
        data["choices"] = [{**choice, "delta": {**delta, "content": rest}}, *choices[1:]]  # type: ignore[dict-item]
        return _encode(data, chunk)


def _encode(data: dict[str, Any], chunk: StreamChunk) -> StreamChunk:
    return StreamChunk(orjson.dumps(data), data, chunk.usage)
