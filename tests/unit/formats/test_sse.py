"""The SSE decoder gives the same events however the bytes are split."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.core.errors import UpstreamServerError
from sidecar.formats.sse import DONE, Event, SSEDecoder, encode_event

payloads = st.lists(st.binary(min_size=1, max_size=40).filter(lambda b: b"\n" not in b and b"\r" not in b),
                    min_size=1, max_size=8)


def decode(stream: bytes, cuts: list[int]) -> list[Event]:
    decoder, events, last = SSEDecoder(), [], 0
    for cut in sorted(set(cuts)):
        events += decoder.feed(stream[last:cut])
        last = cut
    return events + decoder.feed(stream[last:]) + decoder.flush()


@given(payloads, st.lists(st.integers(min_value=0, max_value=400)), st.sampled_from([b"\n", b"\r\n", b"\r"]))
def test_any_split_gives_the_same_events(datas: list[bytes], cuts: list[int], newline: bytes) -> None:
    stream = b"".join(encode_event(d) for d in datas).replace(b"\n", newline)
    assert [e.data for e in decode(stream, cuts)] == datas


def test_named_events_multiline_data_and_comments() -> None:
    stream = b": ping\n\nevent: message_start\ndata: {\"a\":\ndata: 1}\n\ndata: [DONE]\n\n"
    assert SSEDecoder().feed(stream) == [Event(b'{"a":\n1}', "message_start"), Event(DONE)]


def test_unterminated_last_event_is_flushed() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: one\n\ndata: two") == [Event(b"one")]
    assert decoder.pending == len(b"data: two")
    assert decoder.flush() == [Event(b"two")]


def test_encode_named_event() -> None:
    assert encode_event(b"{}", "ping") == b"event: ping\ndata: {}\n\n"


@given(st.lists(st.tuples(st.sampled_from([None, "message_delta"]), payloads), min_size=1, max_size=5),
       st.lists(st.integers(min_value=0, max_value=600)), st.sampled_from([b"\n", b"\r\n", b"\r"]))
def test_named_multiline_events_any_split(events: list[tuple[str | None, list[bytes]]], cuts: list[int],
                                          newline: bytes) -> None:
    stream = b"".join((b"event: %s\n" % name.encode() if name else b"") + b"".join(b"data: %s\n" % d for d in datas)
                      + b"\n" for name, datas in events).replace(b"\n", newline)
    assert decode(stream, cuts) == [Event(b"\n".join(datas), name) for name, datas in events]


def test_an_event_longer_than_the_limit_is_an_upstream_error() -> None:
    decoder = SSEDecoder(max_event=1000)
    assert decoder.feed(b"data: " + b"x" * 900 + b"\n\n") == [Event(b"x" * 900)]  # under the limit: fine
    decoder.feed(b"data: " + b"y" * 500)
    with pytest.raises(UpstreamServerError) as failure:
        decoder.feed(b"y" * 600)
    assert failure.value.cause == "sse_event_too_large" and decoder.pending == 0


def test_a_long_line_is_decoded_in_linear_time() -> None:
    """Issue 13 point 4: a 100 MB line without a newline took 16 s of CPU (each piece re-scanned all before it).
    32 MiB in 16 KiB pieces is 2,048 feeds: quadratic work would copy ~32 GiB; linear work takes well under
    a second. The bound below is generous: it only catches the quadratic case."""
    decoder = SSEDecoder(max_event=64 * 1024 * 1024)
    piece = b"z" * 16384
    started = time.process_time()
    assert decoder.feed(b"data: ") == []
    for _ in range(2048):
        assert decoder.feed(piece) == []
    [event] = decoder.feed(b"\n\n")
    assert len(event.data) == 2048 * 16384
    assert time.process_time() - started < 10


def test_an_event_of_several_data_lines_is_encoded_as_several_data_lines() -> None:
    """A blank line inside an upstream's data must not end the event, nor let a line start another."""
    encoded = encode_event(b"x\n\nevent: error\ndata: {}", "ping")
    assert encoded == b"event: ping\ndata: x\ndata: \ndata: event: error\ndata: data: {}\n\n"
    (event,) = SSEDecoder().feed(encoded)
    assert (event.event, event.data) == ("ping", b"x\n\nevent: error\ndata: {}")
