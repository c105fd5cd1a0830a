"""Length-field options (offset, adjust, strip, 24-bit fields) and the Framing that bundles them.

Every test that takes ``codec`` runs against the extension and the twin.  Expected bytes are built with the
reference encoder (tests/reference.py: struct and a hand-written LEB128), never with the code under test.
"""

from __future__ import annotations

import pickle
import random
import socket
import struct
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import SPEC_PREFIXES, WIDTH_OF
from reference import header as ref_header

import fastframe
from fastframe import FrameError, FrameTooLarge, Framing, IncompleteFrame, _codec, _codec_py

HYPOTHESIS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LARGE = 64 * 1024

#: Real and textbook layouts: (prefix, options).
LAYOUTS = {
    "default": ("!I", {}),
    "postgres": ("!I", {"offset": 1, "adjust": -4, "strip": 0}),
    "postgres-body": ("!I", {"offset": 1, "adjust": -4}),
    "mysql": ("<3", {"adjust": 1}),
    "mysql-whole": ("<3", {"adjust": 1, "strip": 0}),
    "be24-whole": ("!3", {"strip": 0}),
    "counts-itself": ("!H", {"adjust": -2}),
    "hdr1-len-hdr2": ("!H", {"offset": 1, "adjust": 1, "strip": 3}),
    "keep-field": ("!H", {"offset": 1, "strip": 1}),
    "varint-offset": ("varint", {"offset": 2}),
    "varint-whole": ("varint", {"offset": 1, "adjust": 3, "strip": 0}),
    "strip-through-field": ("!I", {"strip": 4}),
}


def frame_of(body: bytes, prefix: str, options: dict, lead: bytes = b"") -> bytes:
    """A wire frame: ``offset`` leading bytes, the length field (body length - adjust), the body."""
    offset = options.get("offset", 0)
    lead = (lead + bytes(range(7, 7 + offset)))[:offset]
    return lead + ref_header(len(body) - options.get("adjust", 0), prefix) + body


def decoded(body: bytes, prefix: str, options: dict, lead: bytes = b"") -> bytes:
    """What a decoder returns for frame_of(body, ...)."""
    wire = frame_of(body, prefix, options, lead)
    strip = options.get("strip")
    return body if strip is None else wire[strip:]


def payload_of(body: bytes, options: dict, lead: bytes = b"") -> bytes:
    """What encode() takes for that frame: the leading bytes, then the body."""
    offset = options.get("offset", 0)
    return (lead + bytes(range(7, 7 + offset)))[:offset] + body


def min_body(options: dict) -> int:
    return max(0, options.get("adjust", 0))


def bodies_for(options: dict, sizes=(0, 1, 5, 40, 300)) -> list:
    return [bytes(random.Random(n).randbytes(max(n, min_body(options)))) for n in sizes]


def encode_options(options: dict) -> dict:
    return {k: v for k, v in options.items() if k in ("offset", "adjust")}


# ======================================================================================================
# Framing, and the option checks shared by every entry point
# ======================================================================================================


def test_framing_is_one_class_everywhere():
    assert fastframe.Framing is _codec.Framing is _codec_py.Framing
    assert "Framing" in fastframe.__all__ and "Framing" in _codec.__all__ and "Framing" in _codec_py.__all__


def test_framing_fields_repr_equality_and_pickle():
    pg = Framing("!I", offset=1, adjust=-4, strip=0, max_frame=16 << 20)
    assert (pg.prefix, pg.offset, pg.adjust, pg.strip, pg.max_frame) == ("!I", 1, -4, 0, 16 << 20)
    assert pg.header_size == 5 and Framing("varint").header_size is None
    assert repr(pg) == "Framing('!I', offset=1, adjust=-4, strip=0, max_frame=16777216)"
    assert Framing() == Framing("!I", max_frame=8 << 20) and hash(Framing()) == hash(Framing("!I"))
    assert pg != Framing("!I", offset=1, adjust=-4, strip=0)
    assert pickle.loads(pickle.dumps(pg)) == pg
    assert pg.replace(max_frame=5) == Framing("!I", offset=1, adjust=-4, strip=0, max_frame=5)
    with pytest.raises(TypeError):
        pg.replace(bogus=1)
    with pytest.raises(AttributeError):
        pg.offset = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        type("Sub", (Framing,), {})


BAD_OPTIONS = [
    ({"prefix": "!i"}, ValueError, "unknown prefix '!i'"),
    ({"prefix": "!3", "offset": -1}, ValueError, "offset must be between 0 and 65535, not -1"),
    ({"prefix": "!3", "offset": 65536}, ValueError, "offset must be between 0 and 65535, not 65536"),
    ({"prefix": "!3", "offset": 1.0}, TypeError, "offset must be an integer, not float"),
    ({"prefix": "!I", "adjust": 2**31}, ValueError, "adjust must be between -2147483648 and 2147483647"),
    ({"prefix": "!I", "adjust": "1"}, TypeError, "adjust must be an integer, not str"),
    ({"prefix": "!I", "strip": 5}, ValueError, "strip must be between 0 and offset + 4 = 4, not 5"),
    ({"prefix": "!I", "offset": 2, "strip": 7}, ValueError, "strip must be between 0 and offset + 4 = 6, not 7"),
    ({"prefix": "!I", "strip": -1}, ValueError, "strip must be between 0 and offset + 4 = 4, not -1"),
    ({"prefix": "varint", "strip": 1}, ValueError, "strip must be None or 0, not 1"),
    ({"prefix": "!I", "max_frame": -1}, ValueError, "max_frame must not be negative"),
    ({"prefix": "!I", "max_frame": sys.maxsize + 1}, OverflowError, "max_frame is too large"),
]


@pytest.mark.parametrize("kwargs, exc, message", BAD_OPTIONS)
def test_bad_options_same_error_everywhere(codec, kwargs, exc, message):
    """Each option is checked at construction, with the same exception and message in Framing and in both
    implementations (the extension calls the same checks)."""
    kwargs = dict(kwargs)
    prefix = kwargs.pop("prefix")
    with pytest.raises(exc, match=message.replace("(", r"\(").replace("+", r"\+")):
        Framing(prefix, **kwargs)
    with pytest.raises(exc, match=message.replace("(", r"\(").replace("+", r"\+")):
        codec.Decoder(prefix, **kwargs)
    enc = {k: v for k, v in kwargs.items() if k in ("offset", "adjust")}
    if message.startswith(("unknown prefix", "offset", "adjust")):  # the options encode() takes
        for call in (
            lambda: codec.encode(b"abcdef", prefix, **enc),
            lambda: codec.encode_many([b"abcdef"], prefix, **enc),
        ):
            with pytest.raises(exc, match=message.replace("(", r"\(").replace("+", r"\+")):
                call()


@pytest.mark.parametrize(
    "call",
    [
        lambda m, f: m.Decoder(f, offset=1),
        lambda m, f: m.Decoder(f, 100),
        lambda m, f: m.Decoder(f, strip=0),
        lambda m, f: m.encode(b"ab", f, adjust=1),
        lambda m, f: m.encode_many([b"ab"], f, offset=1),
        lambda m, f: m.header(2, f, adjust=1),
        lambda m, f: m.write_frames(0, [b"ab"], f, offset=1),
    ],
    ids=["Decoder-offset", "Decoder-max_frame", "Decoder-strip", "encode", "encode_many", "header", "write_frames"],
)
def test_framing_and_options_together_is_a_typeerror(codec, call):
    with pytest.raises(TypeError, match="in the Framing or as keywords, not both"):
        call(codec, Framing("!I", offset=1))


def test_decoder_reports_its_layout(codec):
    pg = Framing("!I", offset=1, adjust=-4, strip=0, max_frame=1 << 20)
    for dec in (codec.Decoder(pg), codec.Decoder("!I", 1 << 20, offset=1, adjust=-4, strip=0)):
        assert (dec.prefix, dec.offset, dec.adjust, dec.strip, dec.max_frame) == ("!I", 1, -4, 0, 1 << 20)
        assert dec.framing == pg
        assert repr(dec) == "<Decoder prefix='!I' offset=1 adjust=-4 strip=0 max_frame=1048576 pending=0>"
        dec.max_frame = 10
        assert dec.framing == pg.replace(max_frame=10)
    plain = codec.Decoder()
    assert (plain.offset, plain.adjust, plain.strip, plain.framing) == (0, 0, None, Framing())
    assert repr(plain) == "<Decoder prefix='!I' max_frame=8388608 pending=0>"


# ======================================================================================================
# Encoding with options
# ======================================================================================================


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_encode_matches_reference(codec, layout):
    prefix, options = LAYOUTS[layout]
    framing = Framing(prefix, **options)
    bodies = bodies_for(options)
    payloads = [payload_of(b, options, lead=bytes([i])) for i, b in enumerate(bodies)]
    wires = [frame_of(b, prefix, options, lead=bytes([i])) for i, b in enumerate(bodies)]
    opts = encode_options(options)
    for p, w in zip(payloads, wires):
        assert codec.encode(p, prefix, **opts) == w
        assert codec.encode(p, framing) == w
        assert codec.encode(bytearray(p), framing) == w
    assert codec.encode_many(payloads, prefix, **opts) == b"".join(wires)
    assert codec.encode_many(iter(payloads), framing) == b"".join(wires)
    if not options.get("offset"):
        for b, w in zip(bodies, wires):
            assert codec.header(len(b), framing) + b == w
            assert codec.header(len(b), prefix, adjust=options.get("adjust", 0)) + b == w


def test_postgres_query_message(codec):
    sql = b"SELECT 1\x00"
    expected = b"Q" + struct.pack("!I", 4 + len(sql)) + sql
    assert codec.encode(b"Q" + sql, offset=1, adjust=-4) == expected
    assert codec.encode(sql, adjust=-4) == struct.pack("!I", 4 + len(sql)) + sql  # a startup message: no type


def test_encode_errors_with_options(codec):
    with pytest.raises(FrameError, match="a payload of 0 bytes is shorter than offset=1"):
        codec.encode(b"", offset=1)
    with pytest.raises(FrameError, match="a body of 0 bytes cannot carry adjust=1: the length field would be -1"):
        codec.encode(b"", "<3", adjust=1)
    with pytest.raises(FrameTooLarge) as info:
        codec.encode(b"x" * 300, "!B", adjust=40)  # 300 - 40 = 260 does not fit one byte
    assert (info.value.size, info.value.limit) == (260, 255)
    assert codec.encode(b"x" * 300, "!B", adjust=45) == bytes([255]) + b"x" * 300
    with pytest.raises(FrameTooLarge):
        codec.header(2**24, "<3")
    with pytest.raises(FrameError, match="the length field would be -2"):
        codec.header(0, "!I", adjust=2)
    with pytest.raises(ValueError, match="header\\(\\) writes the length field alone: with offset=1"):
        codec.header(5, "!I", offset=1)
    with pytest.raises(ValueError, match="with offset=1"):
        codec.header(5, Framing("!I", offset=1))
    with pytest.raises(FrameError):
        codec.encode_many([b"ok", b""], "!I", offset=1)


def test_encode_with_default_options_is_unchanged(codec):
    for prefix in SPEC_PREFIXES:
        for n in (0, 1, 200):
            p = bytes(n)
            assert codec.encode(p, prefix, offset=0, adjust=0) == codec.encode(p, prefix) == ref_header(n, prefix) + p
            assert codec.encode(p, Framing(prefix)) == codec.encode(p, prefix)


def test_write_frames_with_options(codec):
    a, b = socket.socketpair()
    try:
        a.setblocking(False)
        pg = Framing("!I", offset=1, adjust=-4)
        assert codec.write_frames(a.fileno(), [b"Qab", b"Xc"], pg) is None
        assert codec.write_frames(a.fileno(), [b"\x00hi"], "<3", adjust=1) is None
        b.settimeout(5)
        expected = frame_of(b"ab", "!I", {"offset": 1, "adjust": -4}, b"Q")
        expected += frame_of(b"c", "!I", {"offset": 1, "adjust": -4}, b"X") + frame_of(b"\x00hi", "<3", {"adjust": 1})
        got = b""
        while len(got) < len(expected):
            got += b.recv(100)
        assert got == expected
    finally:
        a.close()
        b.close()


# ======================================================================================================
# Decoding with options
# ======================================================================================================


def deliver(dec, data: bytes, mode: str, step: int = 1) -> list:
    out = []
    for i in range(0, len(data), step):
        chunk = data[i : i + step]
        if mode != "buffer":
            out += dec.feed(chunk)
            continue
        pos = 0
        while pos < len(chunk):
            view = dec.get_buffer()
            k = min(len(view), len(chunk) - pos)
            view[:k] = chunk[pos : pos + k]
            view.release()
            out += dec.buffer_updated(k)
            pos += k
    return out


@pytest.mark.parametrize("mode", ["feed", "buffer"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_decode_byte_at_a_time_and_every_split(codec, layout, mode):
    prefix, options = LAYOUTS[layout]
    bodies = bodies_for(options, sizes=(0, 3, 17, 200))
    stream = b"".join(frame_of(b, prefix, options, bytes([i])) for i, b in enumerate(bodies))
    expected = [decoded(b, prefix, options, bytes([i])) for i, b in enumerate(bodies)]
    assert deliver(codec.Decoder(prefix, **options), stream, mode) == expected
    for cut in range(len(stream) + 1):
        dec = codec.Decoder(Framing(prefix, **options))
        assert deliver(dec, stream[:cut], mode, step=max(cut, 1)) + deliver(dec, stream[cut:], mode, 10**6) == expected
        assert dec.pending == 0
        dec.close()


@pytest.mark.parametrize("layout", [k for k, (p, _) in LAYOUTS.items() if WIDTH_OF[p] != 2])  # 16 bits: no large
def test_large_frames_with_options(codec, layout):
    prefix, options = LAYOUTS[layout]
    bodies = [bytes(random.Random(n).randbytes(n)) for n in (LARGE + 1, 5, 200_000, LARGE - 7)]
    stream = b"".join(frame_of(b, prefix, options, bytes([i])) for i, b in enumerate(bodies))
    expected = [decoded(b, prefix, options, bytes([i])) for i, b in enumerate(bodies)]
    for chunk in (1000, 65536, 100_003):
        for mode in ("feed", "buffer"):
            dec = codec.Decoder(prefix, **options)
            assert deliver(dec, stream, mode, chunk) == expected, (chunk, mode)
            assert dec.pending == 0


def test_negative_body_is_frame_error(codec):
    dec = codec.Decoder("!I", offset=1, adjust=-4)
    with pytest.raises(FrameError, match=r"the length field \(3\) plus adjust \(-4\) is negative") as info:
        dec.feed(b"Q" + struct.pack("!I", 4) + b"Q" + struct.pack("!I", 3))
    assert info.value.frames == [b""]
    with pytest.raises(FrameError, match="refuses input"):
        dec.feed(b"x")


def test_max_frame_bounds_value_plus_adjust(codec):
    dec = codec.Decoder("<3", 10, adjust=1)
    assert dec.feed(struct.pack("<I", 9)[:3] + b"\x00" + b"x" * 9) == [b"\x00" + b"x" * 9]
    with pytest.raises(FrameTooLarge) as info:
        dec.feed(struct.pack("<I", 10)[:3])
    assert (info.value.size, info.value.limit) == (11, 10)
    dec = codec.Decoder("!I", 4, adjust=-4)
    assert dec.feed(struct.pack("!I", 8) + b"abcd") == [b"abcd"]
    with pytest.raises(FrameTooLarge):
        dec.feed(struct.pack("!I", 9))


def test_huge_field_with_positive_adjust(codec):
    dec = codec.Decoder("!Q", sys.maxsize, adjust=5)
    with pytest.raises(FrameTooLarge) as info:
        dec.feed(struct.pack("!Q", 2**64 - 1))
    assert info.value.size == 2**64 - 1 + 5


def test_pending_needed_and_close_with_options(codec):
    prefix, options = LAYOUTS["postgres"]
    frame = frame_of(b"hello", prefix, options, b"D")
    dec = codec.Decoder(prefix, **options)
    assert dec.needed == 5
    assert dec.feed(frame[:3]) == []
    assert (dec.pending, dec.needed) == (3, 2)
    assert dec.feed(frame[3:6]) == []
    assert (dec.pending, dec.needed) == (6, len(frame) - 6)
    with pytest.raises(IncompleteFrame) as info:
        dec.close()
    assert (info.value.received, info.value.expected) == (6, len(frame))
    dec = codec.Decoder("varint", offset=2)
    assert dec.needed == 3
    assert dec.feed(b"ab\x80") == [] and dec.needed == 1
    assert dec.feed(b"\x01") == [] and dec.needed == 128


def test_feed_wire_and_relay_with_options(codec):
    """Wire mode works with options: whole frames as they were on the wire, whatever strip says."""
    prefix, options = LAYOUTS["postgres-body"]
    frames = [frame_of(b, prefix, options, b"D") for b in (b"", b"abc", b"x" * 1000)]
    stream = b"".join(frames)
    dec = codec.Decoder(prefix, **options)
    got = b""
    for i in range(0, len(stream), 7):
        got += bytes(dec.feed_wire(stream[i : i + 7]))
    assert got == stream
    a, b = socket.socketpair()
    try:
        b.setblocking(False)
        a.settimeout(5)
        dec = codec.Decoder(prefix, **options)
        a.sendall(stream[:10])
        assert dec.relay(b.fileno()) == b""
        a.sendall(stream[10:])
        while dec.pending or dec.completed < 3:
            try:
                assert dec.relay(b.fileno()) == b""
            except BlockingIOError:
                pass
        echoed = b""
        while len(echoed) < len(stream):
            echoed += a.recv(65536)
        assert echoed == stream
        a.sendall(frames[1])
        wire = None
        while wire is None:
            try:
                wire = dec.read_wire_from(b.fileno())
            except BlockingIOError:
                pass
        assert bytes(wire) == frames[1]
    finally:
        a.close()
        b.close()


# ======================================================================================================
# Parity and properties
# ======================================================================================================

layout_strategy = st.sampled_from(list(LAYOUTS))


@HYPOTHESIS
@given(
    layout=layout_strategy,
    sizes=st.lists(st.integers(0, 3000), max_size=8),
    cuts=st.lists(st.integers(1, 4000), max_size=12),
    use_buffer=st.booleans(),
)
def test_parity_random_chunks(layout, sizes, cuts, use_buffer):
    prefix, options = LAYOUTS[layout]
    if WIDTH_OF[prefix] == 2:
        sizes = [min(s, 60000) for s in sizes]
    bodies = [bytes(random.Random(n).randbytes(max(n, min_body(options)))) for n in sizes]
    stream = b"".join(frame_of(b, prefix, options, bytes([i % 256])) for i, b in enumerate(bodies))
    expected = [decoded(b, prefix, options, bytes([i % 256])) for i, b in enumerate(bodies)]
    results = []
    for m in (_codec, _codec_py):
        dec = m.Decoder(prefix, **options)
        out, pos = [], 0
        for c in cuts + [len(stream)]:
            chunk = stream[pos : pos + c]
            pos += len(chunk)
            out += deliver(dec, chunk, "buffer" if use_buffer else "feed", max(len(chunk), 1))
        results.append(out)
    assert results[0] == results[1] == expected


def _outcome(dec, chunk):
    try:
        return ("ok", dec.feed(chunk), dec.pending, dec.needed)
    except FrameError as exc:
        return (type(exc).__name__, str(exc), exc.frames)


@HYPOTHESIS
@given(
    layout=layout_strategy,
    max_frame=st.integers(0, 300),
    garbage=st.lists(st.binary(max_size=30), max_size=10),
)
def test_parity_on_arbitrary_input_with_options(layout, max_frame, garbage):
    prefix, options = LAYOUTS[layout]
    dc, dp = _codec.Decoder(prefix, max_frame, **options), _codec_py.Decoder(prefix, max_frame, **options)
    for chunk in garbage:
        oc, op = _outcome(dc, chunk), _outcome(dp, chunk)
        assert oc == op
        if oc[0] != "ok":
            return
    closes = []
    for d in (dc, dp):
        try:
            d.close()
            closes.append(None)
        except IncompleteFrame as exc:
            closes.append((exc.received, exc.expected))
    assert closes[0] == closes[1]


@HYPOTHESIS
@given(layout=layout_strategy, data=st.lists(st.binary(max_size=300), max_size=6))
def test_encode_then_decode_round_trip(layout, data):
    prefix, options = LAYOUTS[layout]
    offset = options.get("offset", 0)
    payloads = [bytes(offset) + d + bytes(min_body(options)) for d in data]
    framing = Framing(prefix, **options)
    for m in (_codec, _codec_py):
        wire = m.encode_many(payloads, framing)
        assert wire == b"".join(m.encode(p, framing) for p in payloads)
        frames = m.Decoder(framing).feed(wire)
        strip = options.get("strip")
        if strip is None:
            assert frames == [p[offset:] for p in payloads]
        else:
            assert b"".join(frames) == b"".join(m.encode(p, framing)[strip:] for p in payloads)
