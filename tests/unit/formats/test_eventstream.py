"""AWS event-stream framing read with a cap: the same frames botocore reads, in any split, and every malformed
frame a ``FrameError`` (never a parser's own exception), with the whole frames before it kept."""

from __future__ import annotations

import struct
from zlib import crc32

import pytest
from botocore.eventstream import EventStreamBuffer
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.formats.eventstream import FrameDecoder, FrameError, TooLarge
from sidecar.testing.fake_aws import event, exception, frame

MIB = 1024 * 1024


def _raw(headers: bytes, payload: bytes, total: int | None = None) -> bytes:
    """A frame with these header bytes, right CRCs, and ``total`` as its claimed length if given."""
    prelude = struct.pack(">II", total if total is not None else 16 + len(headers) + len(payload), len(headers))
    prelude += struct.pack(">I", crc32(prelude))
    body = prelude + headers + payload
    return body + struct.pack(">I", crc32(body))


STREAM = [event("messageStart", {"role": "assistant"}),
          event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hello"}}),
          frame({":message-type": "error", ":error-code": "x", ":error-message": "ü"}, b""),
          exception("throttlingException", "slow down"),
          _raw(b"\x01a\x00\x01b\x01\x01c\x02\xff\x01d\x03\x00\x02\x01e\x04\x00\x00\x00\x03\x01f\x05" + b"\x00" * 7
               + b"\x04\x01g\x06\x00\x02hi\x01h\x08" + b"\x00" * 8 + b"\x01i\x09" + b"\x01" * 16, b"{}")]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 64), min_size=1, max_size=40))
def test_the_same_frames_as_botocore_in_any_split(cuts: list[int]) -> None:
    data = b"".join(STREAM)
    ours, decoder, at = [], FrameDecoder(MIB), 0
    for cut in [*cuts, len(data)]:
        ours += decoder.feed(data[at:at + cut])
        at += cut
    theirs = EventStreamBuffer()
    theirs.add_data(data)
    assert ours == [(dict(m.headers), m.payload) for m in theirs] and decoder.pending == 0


@pytest.mark.parametrize("bad", [
    _raw(b"\x01a\x63", b"{}"),  # an unknown header value type
    _raw(b"\x02\xff\xfe\x07\x00\x01x", b"{}"),  # a header name that is not UTF-8
    _raw(b"\x01a\x07\x00\x09ab", b"{}"),  # a string header running past the headers
    _raw(b"\x05abc", b"{}"),  # a name running past the headers
    _raw(b"", b"", total=0),  # a total length shorter than a frame can be
    event("x", {})[:-1] + b"\x00",  # a wrong message checksum
    b"\x00\x00\x00\x10\x00\x00\x00\x00\x00\x00\x00\x00" + b"\x00" * 4,  # a wrong prelude checksum
])
def test_a_malformed_frame_is_a_frame_error_after_the_good_ones(bad: bytes) -> None:
    good = event("messageStart", {"role": "assistant"})
    with pytest.raises(FrameError) as caught:
        FrameDecoder(MIB).feed(good + bad)
    assert caught.value.frames == [({":event-type": "messageStart", ":content-type": "application/json",
                                     ":message-type": "event"}, b'{"role":"assistant"}')]


def test_a_frame_over_the_limit_is_refused_from_its_prelude() -> None:
    big = event("contentBlockDelta", {"delta": {"text": "x" * 5000}})
    decoder = FrameDecoder(4096)
    with pytest.raises(TooLarge):
        decoder.feed(big[:12])  # the prelude is enough: the rest is never waited for, nor held
