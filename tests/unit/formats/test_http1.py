"""The HTTP/1.1 response parser gives the same response however the bytes are split, and refuses bad ones."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.formats.http1 import BadResponse, CutOff, Response, ResponseParser, TooLarge


def parse(stream: bytes, cuts: list[int], parser: ResponseParser | None = None) -> Response:
    parser = parser or ResponseParser()
    last, result = 0, None
    for cut in [*sorted(c for c in set(cuts) if c < len(stream)), len(stream)]:
        if cut > last:
            assert result is None, "complete before the last byte"
            result = parser.feed(stream[last:cut])
            last = cut
    return result if result is not None else parser.eof()


def chunked(body: bytes, sizes: list[int]) -> bytes:
    out, i = b"", 0
    for size in sizes:
        if i >= len(body):
            break
        piece, i = body[i:i + size], i + size
        out += b"%x;ext=1\r\n%s\r\n" % (len(piece), piece)
    if i < len(body):
        out += b"%X\r\n%s\r\n" % (len(body) - i, body[i:])
    return out + b"0\r\nx-trailer: 1\r\n\r\n"


bodies = st.binary(max_size=300)
cuts = st.lists(st.integers(min_value=0, max_value=800), max_size=12)


@given(bodies, cuts)
def test_content_length_any_split(body: bytes, where: list[int]) -> None:
    stream = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    response = parse(stream, where)
    assert (response.status, response.body, response.reusable) == (200, body, True)
    assert response.headers == {"content-type": "application/json", "content-length": str(len(body))}


@given(bodies, st.lists(st.integers(min_value=1, max_value=64), max_size=8), cuts)
def test_chunked_any_split(body: bytes, sizes: list[int], where: list[int]) -> None:
    stream = b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(body, sizes)
    response = parse(stream, where)
    assert (response.status, response.body, response.reusable) == (503, body, True)


@given(bodies, cuts)
def test_read_until_close_any_split(body: bytes, where: list[int]) -> None:
    response = parse(b"HTTP/1.0 200 OK\r\nServer: old\r\n\r\n" + body, where)
    assert (response.body, response.reusable) == (body, False)


def test_interim_answers_are_skipped_and_repeated_fields_joined() -> None:
    stream = (b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 429 Too Many\r\nRetry-After: 2\r\n"
              b"X-A: 1\r\nx-a:  2 \r\nContent-Length: 2\r\n\r\nhi")
    response = ResponseParser().feed(stream)
    assert response is not None
    assert (response.status, response.body) == (429, b"hi")
    assert response.headers == {"retry-after": "2", "x-a": "1, 2", "content-length": "2"}


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
])
def test_not_reusable(head: bytes) -> None:
    parser = ResponseParser()
    response = parser.feed(head) or parser.eof()
    assert not response.reusable


def test_bytes_after_the_body_make_the_connection_unusable() -> None:
    response = ResponseParser().feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxHTTP/1.1")
    assert response is not None and (response.body, response.reusable) == (b"x", False)


def test_no_body_statuses() -> None:
    assert ResponseParser().feed(b"HTTP/1.1 204 No Content\r\n\r\n") == Response(204, {}, b"", True)
    assert ResponseParser().feed(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n") == Response(
        304, {"content-length": "9"}, b"", True)


@pytest.mark.parametrize("stream", [
    b"HTTP/1.1 20 OK\r\n\r\n",
    b"HTTP/2 200 OK\r\n\r\n",
    b"HTTP/1.1 2000 OK\r\n\r\n",
    b"ICY 200 OK\r\n\r\n",
    b"garbage\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nName : x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nA: 1\r\n folded\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\n",
    b"HTTP/1.1 101 Switching\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x1\r\na\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n+1\r\na\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nabc\r\n0\r\n\r\n",
    # llhttp's strictness (issue 12 point 6): each of these hung, was misread or reused the connection before
    b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",  # bare LF line ends
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\n\r\nok",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\nok\n0\n\n",
    b"HTTP/1.1 099 Odd\r\nContent-Length: 2\r\n\r\nok",  # a status below 100 is not an interim answer
    b"HTTP/1.1 000 Odd\r\n\r\n",
    b"HTTP/1.1 600 Odd\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: a\x01b\r\nContent-Length: 2\r\n\r\nok",  # control characters in a value
    b"HTTP/1.1 200 OK\r\nX: a\x00b\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nX: a\x7fb\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nX: a\rb\r\nContent-Length: 2\r\n\r\nok",
    # RFC 9112 §6.3: content-length with chunked is an error, not a connection to reuse
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
])
def test_malformed(stream: bytes) -> None:
    with pytest.raises(BadResponse):
        ResponseParser().feed(stream)


def test_limits() -> None:
    with pytest.raises(TooLarge):
        ResponseParser(max_body=10).feed(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n")
    with pytest.raises(TooLarge):
        ResponseParser(max_body=10).feed(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\n123456\r\n6\r\n12345")
    parser = ResponseParser(max_body=10)
    parser.feed(b"HTTP/1.1 200 OK\r\n\r\n123456")
    with pytest.raises(TooLarge):
        parser.feed(b"123456")
    with pytest.raises(TooLarge):
        ResponseParser().feed(b"HTTP/1.1 200 OK\r\n" + b"x-a: b\r\n" * 20000)
    parser = ResponseParser()  # an endless header line, fed piece by piece, is refused at the head limit
    assert parser.feed(b"HTTP/1.1 200 OK\r\nx-a: ") is None
    with pytest.raises(TooLarge):
        for _ in range(100):
            parser.feed(b"b" * 1024)
    parser = ResponseParser()  # so are endless trailers
    assert parser.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\nt: ") is None
    with pytest.raises(TooLarge):
        for _ in range(100):
            parser.feed(b"b" * 1024)


def test_eof_before_the_end_is_a_cut() -> None:
    for partial in (b"", b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab",
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"):
        parser = ResponseParser()
        assert parser.feed(partial) is None
        with pytest.raises(CutOff):
            parser.eof()


def test_reset_reuses_the_parser() -> None:
    parser = ResponseParser()
    for body in (b"one", b"two"):
        parser.reset()
        response = parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n" + body)
        assert response is not None and response.body == body


# ---- stream mode ----------------------------------------------------------------------------------


def parse_stream(stream: bytes, cuts: list[int], parser: ResponseParser) -> tuple[list[bytes], bool]:
    """Feed in pieces, taking the body after each: (what each take gave, complete)."""
    parser.reset(stream=True)
    last, taken, complete = 0, [], False
    for cut in [*sorted(c for c in set(cuts) if c < len(stream)), len(stream)]:
        if cut > last:
            assert not complete, "complete before the last byte"
            complete = parser.feed_stream(stream[last:cut])
            assert parser.pending == sum(len(p) for p in parser._message.pieces)
            taken.append(parser.take())
            last = cut
    return taken, complete


@given(bodies, st.lists(st.integers(min_value=1, max_value=64), max_size=8), cuts, st.booleans())
def test_stream_mode_hands_over_every_split(body: bytes, sizes: list[int], where: list[int], use_chunked: bool) -> None:
    if use_chunked:
        stream = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(body, sizes)
    else:
        stream = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    parser = ResponseParser(max_body=1)  # no limit on streams: their bytes are not held
    taken, complete = parse_stream(stream, where, parser)
    assert complete and b"".join(taken) == body and parser.take() == b""
    assert (parser.status, parser.reusable) == (200, True)
    # Bytes come out as soon as they are in: a piece fed after the head is taken at once, not at the end.
    head = stream.index(b"\r\n\r\n") + 4
    if not use_chunked and len(body) > 1:
        taken, _ = parse_stream(stream[:head + 1], [], parser)
        assert taken == [body[:1]]


def test_stream_mode_end_of_connection() -> None:
    parser = ResponseParser()
    taken, complete = parse_stream(b"HTTP/1.0 200 OK\r\n\r\ndata: x\n\n", [5, 30], parser)
    assert b"".join(taken) == b"data: x\n\n" and not complete
    parser.eof_stream()  # the end of a read-until-close body
    assert not parser.reusable
    taken, complete = parse_stream(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\ndata", [], parser)
    assert taken == [b"data"] and not complete
    with pytest.raises(CutOff):
        parser.eof_stream()
    _, complete = parse_stream(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxHTTP", [], parser)
    assert complete and not parser.reusable  # bytes after the body
