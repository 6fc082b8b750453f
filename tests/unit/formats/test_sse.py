"""The SSE decoder gives the same events however the bytes are split."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

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
