"""Cases ported from tokio-util's ``length_delimited`` tests and Netty's ``LengthFieldBasedFrameDecoder`` (its
tests and the layouts its documentation walks through), written anew for this API.

Where the originals mean something else by an option, the expectation is translated, and the test says so:
- tokio's ``length_adjustment`` counts from wherever ``num_skip`` leaves the reader; Netty's and fastframe's
  count the bytes after the length field (``adjust``);
- tokio bounds the raw length field, Netty the whole frame, fastframe the bytes after the field
  (``value + adjust``);
- Netty discards a frame that is too long and goes on with the next; fastframe refuses further input (a
  byte stream has no resynchronisation point), as soon as the header arrives (Netty's ``failFast``);
- fastframe strips at most through the length field, tokio's ``num_skip`` may go further.

Every case runs against both implementations, fed whole, byte by byte, at every split point, and through
get_buffer()/buffer_updated().
"""

from __future__ import annotations

import pytest

from fastframe import FrameError, FrameTooLarge, Framing, IncompleteFrame


def pieces(data: bytes):
    """Every way the cases are delivered: whole, one byte at a time, and cut in two at every index."""
    yield [data]
    yield [data[i : i + 1] for i in range(len(data))]
    for cut in range(1, len(data)):
        yield [data[:cut], data[cut:]]


def via_buffer(dec, chunk: bytes) -> list:
    out = []
    pos = 0
    while pos < len(chunk):
        view = dec.get_buffer()
        k = min(len(view), len(chunk) - pos)
        view[:k] = chunk[pos : pos + k]
        view.release()
        out += dec.buffer_updated(k)
        pos += k
    return out


def decode_all_ways(codec, framing: Framing, data: bytes) -> list:
    """The frames of ``data``, checked to be the same however it is delivered; the stream must end cleanly."""
    results = set()
    for parts in pieces(data):
        for use_buffer in (False, True):
            dec = codec.Decoder(framing)
            frames = []
            for part in parts:
                frames += via_buffer(dec, part) if use_buffer else dec.feed(part)
            dec.close()
            results.add(tuple(frames))
    assert len(results) == 1, "the frames depend on how the bytes arrived"
    return list(results.pop())


# ======================================================================================================
# tokio-util: tokio-util/tests/length_delimited.rs
# ======================================================================================================


def test_read_empty_io_yields_nothing(codec):
    dec = codec.Decoder()
    assert dec.feed(b"") == []
    dec.close()


def test_read_single_frame_one_packet(codec):
    assert decode_all_ways(codec, Framing(), b"\x00\x00\x00\x09abcdefghi") == [b"abcdefghi"]


def test_read_single_frame_one_packet_little_endian(codec):
    assert decode_all_ways(codec, Framing("<I"), b"\x09\x00\x00\x00abcdefghi") == [b"abcdefghi"]


def test_read_single_multi_frame_one_packet(codec):
    data = b"\x00\x00\x00\x09abcdefghi" + b"\x00\x00\x00\x03123" + b"\x00\x00\x00\x0bhello world"
    assert decode_all_ways(codec, Framing(), data) == [b"abcdefghi", b"123", b"hello world"]


@pytest.mark.parametrize(
    "packets",
    [
        [b"\x00\x00", b"\x00\x09abc", b"defghi"],
        [b"\x00\x00", b"\x00\x09abc", b"defghi", b"\x00\x00\x00\x0312", b"3\x00\x00\x00\x0bhello world"],
    ],
    ids=["single-frame-multi-packet", "multi-frame-multi-packet"],
)
def test_read_frames_multi_packet_wait(codec, packets):
    """tokio's *_multi_packet and *_multi_packet_wait: nothing is returned until a frame is whole."""
    expected = [b"abcdefghi", b"123", b"hello world"][: 1 if len(packets) == 3 else 3]
    dec = codec.Decoder()
    got = []
    for packet in packets:
        out = dec.feed(packet)
        assert all(frame in expected for frame in out)
        got += out
    assert got == expected
    dec.close()


@pytest.mark.parametrize(
    "packets, received, expected",
    [
        ([b"\x00\x00"], 2, None),
        ([b"\x00"], 1, None),
        ([b"\x00\x00\x00\x09ab", b"cd"], 8, 13),
    ],
    ids=["incomplete-head", "incomplete-head-multi", "incomplete-payload"],
)
def test_read_incomplete(codec, packets, received, expected):
    dec = codec.Decoder()
    for packet in packets:
        assert dec.feed(packet) == []
    with pytest.raises(IncompleteFrame) as info:
        dec.close()
    assert (info.value.received, info.value.expected) == (received, expected)


def test_read_max_frame_len(codec):
    dec = codec.Decoder("!I", 5)
    with pytest.raises(FrameTooLarge) as info:
        dec.feed(b"\x00\x00\x00\x09abcdefghi")
    assert (info.value.size, info.value.limit) == (9, 5)


def test_read_update_max_frame_len_at_rest(codec):
    dec = codec.Decoder()
    assert dec.feed(b"\x00\x00\x00\x09abcdefghi") == [b"abcdefghi"]
    dec.max_frame = 5
    with pytest.raises(FrameTooLarge):
        dec.feed(b"\x00\x00\x00\x09abcdefghi")


@pytest.mark.parametrize("use_buffer", [False, True], ids=["feed", "buffer"])
def test_read_update_max_frame_len_in_flight(codec, use_buffer):
    send = (lambda d, b: via_buffer(d, b)) if use_buffer else (lambda d, b: d.feed(b))
    dec = codec.Decoder()
    assert send(dec, b"\x00\x00\x00\x09abcd") == []
    dec.max_frame = 5
    assert send(dec, b"efghi") == [b"abcdefghi"]
    with pytest.raises(FrameTooLarge):
        send(dec, b"\x00\x00\x00\x09abcdefghi")


def test_read_one_byte_length_field(codec):
    assert decode_all_ways(codec, Framing("!B"), b"\x09abcdefghi") == [b"abcdefghi"]


def test_read_header_offset(codec):
    framing = Framing("!H", offset=4)
    assert decode_all_ways(codec, framing, b"zzzz\x00\x09abcdefghi") == [b"abcdefghi"]


def test_read_single_multi_frame_one_packet_skip_none_adjusted(codec):
    """tokio: offset 2, 2-byte field, num_skip 0, length_adjustment 4 (counted from the frame's start, which
    num_skip 0 leaves in place).  Here: the 9 bytes after the field are the body, adjust 0, strip 0."""
    data = b"xx\x00\x09abcdefghi" + b"yy\x00\x03123" + b"zz\x00\x0bhello world"
    expected = [b"xx\x00\x09abcdefghi", b"yy\x00\x03123", b"zz\x00\x0bhello world"]
    assert decode_all_ways(codec, Framing("!H", offset=2, strip=0), data) == expected


def test_read_single_frame_length_adjusted(codec):
    """tokio: a 3-byte field, then one byte that num_skip=4 skips.  fastframe strips at most through the
    field: the extra byte is counted by adjust=1 and stays in the frame."""
    data = b"\x00\x00\x0b\x0cHello world"
    assert decode_all_ways(codec, Framing("!3", adjust=1), data) == [b"\x0cHello world"]
    assert decode_all_ways(codec, Framing("!3", adjust=1, strip=3), data) == [b"\x0cHello world"]


def test_read_single_multi_frame_one_packet_length_includes_head(codec):
    data = b"\x00\x0babcdefghi" + b"\x00\x05123" + b"\x00\x0dhello world"
    assert decode_all_ways(codec, Framing("!H", adjust=-2), data) == [b"abcdefghi", b"123", b"hello world"]


def test_write_single_frame_length_adjusted(codec):
    assert codec.encode(b"abcdefghi", adjust=-2) == b"\x00\x00\x00\x0babcdefghi"


def test_write_frames(codec):
    assert codec.encode(b"abcdefghi") == b"\x00\x00\x00\x09abcdefghi"
    assert codec.encode_many([b"abcdefghi", b"123", b"hello world"]) == (
        b"\x00\x00\x00\x09abcdefghi\x00\x00\x00\x03123\x00\x00\x00\x0bhello world"
    )
    assert codec.encode(b"abcdefghi", "<I") == b"\x09\x00\x00\x00abcdefghi"
    assert codec.encode(b"abcdefghi", "!B") == b"\x09abcdefghi"
    assert codec.encode_many([]) == b""


def test_write_max_frame_len(codec):
    """tokio's encoder checks its max_frame_length; fastframe's encode() checks what the field can hold."""
    with pytest.raises(FrameTooLarge) as info:
        codec.encode(b"x" * 256, "!B")
    assert (info.value.size, info.value.limit) == (256, 255)
    with pytest.raises(FrameTooLarge):
        codec.encode(b"x" * 256, "!B", adjust=0)


# ======================================================================================================
# Netty: LengthFieldBasedFrameDecoderTest and the layouts of LengthFieldBasedFrameDecoder's documentation
# ======================================================================================================

HELLO = b"HELLO, WORLD"


@pytest.mark.parametrize(
    "framing, wire, frame",
    [
        # 2-byte field at offset 0, the whole frame kept
        (Framing("!H", strip=0), b"\x00\x0c" + HELLO, b"\x00\x0c" + HELLO),
        # ... the field stripped
        (Framing("!H", strip=2), b"\x00\x0c" + HELLO, HELLO),
        # ... the field counts the whole frame
        (Framing("!H", adjust=-2, strip=0), b"\x00\x0e" + HELLO, b"\x00\x0e" + HELLO),
        # a 3-byte field at the end of a 5-byte header
        (Framing("!3", offset=2, strip=0), b"\xca\xfe\x00\x00\x0c" + HELLO, b"\xca\xfe\x00\x00\x0c" + HELLO),
        # a 3-byte field at the start of a 5-byte header
        (Framing("!3", adjust=2, strip=0), b"\x00\x00\x0c\xca\xfe" + HELLO, b"\x00\x00\x0c\xca\xfe" + HELLO),
        # HDR1, a 2-byte field, HDR2; HDR1 and the field stripped
        (Framing("!H", offset=1, adjust=1, strip=3), b"\xca\x00\x0c\xfe" + HELLO, b"\xfe" + HELLO),
        # ... the field counting the whole frame
        (Framing("!H", offset=1, adjust=-3, strip=3), b"\xca\x00\x10\xfe" + HELLO, b"\xfe" + HELLO),
    ],
    ids=[
        "keep-all",
        "strip-field",
        "counts-itself",
        "field-ends-header",
        "field-starts-header",
        "hdr1-len-hdr2",
        "hdr1-len-hdr2-whole",
    ],  # fmt: skip
)
def test_netty_documented_layouts(codec, framing, wire, frame):
    assert decode_all_ways(codec, framing, wire * 3) == [frame] * 3
    # and back: the encoder writes the same bytes from the frame's leading bytes and body
    lead = wire[: framing.offset]
    body = wire[framing.header_size :]
    assert codec.encode(lead + body, framing) == wire


def _too_long_stream() -> bytes:
    return (32).to_bytes(4, "big") + bytes(range(32)) + (1).to_bytes(4, "big") + b"a"


def test_discard_too_long_frame_1(codec):
    """Netty: maxFrameLength 16, a 32-byte frame, then a good one.  fastframe refuses the long one as soon
    as its header is read, and refuses the rest (no resynchronisation)."""
    dec = codec.Decoder("!I", 16)
    with pytest.raises(FrameTooLarge) as info:
        dec.feed(_too_long_stream())
    assert (info.value.size, info.value.limit, info.value.frames) == (32, 16, [])
    with pytest.raises(FrameError, match="refuses input"):
        dec.feed((1).to_bytes(4, "big") + b"a")


def test_discard_too_long_frame_2(codec):
    """Netty: the first 14 bytes alone already fail (fail fast), before the frame's end arrives."""
    dec = codec.Decoder("!I", 16)
    with pytest.raises(FrameTooLarge):
        dec.feed(_too_long_stream()[:14])
    dec = codec.Decoder("!I", 16)
    with pytest.raises(FrameTooLarge):
        via_buffer(dec, _too_long_stream()[:4])


def test_frames_before_a_too_long_one_are_kept(codec):
    dec = codec.Decoder("!I", 16)
    with pytest.raises(FrameTooLarge) as info:
        dec.feed((1).to_bytes(4, "big") + b"a" + _too_long_stream())
    assert info.value.frames == [b"a"]


@pytest.mark.parametrize(
    "kwargs",
    [{"offset": -1}, {"strip": -1}, {"max_frame": -1}, {"strip": 7, "offset": 2}],
    ids=["negative-offset", "negative-strip", "negative-max", "strip-past-field"],
)
def test_netty_constructor_checks(codec, kwargs):
    """Netty refuses a negative offset or strip and a bad maximum at construction; so does fastframe."""
    with pytest.raises(ValueError):
        codec.Decoder("!I", **kwargs)
    with pytest.raises(ValueError):
        Framing("!I", **kwargs)
