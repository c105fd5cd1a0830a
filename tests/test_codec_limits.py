"""Limits and errors: oversized headers, bad varints, cut-off streams, refusal after errors, pickling.

"Allocates nothing" is measured, not assumed: tracemalloc traces PyMem_Malloc/PyObject_Malloc, which both
implementations use, and a legitimate large header shows the measurement does see the allocation.
"""

from __future__ import annotations

import pickle
import struct
import sys
import tracemalloc

import pytest
from reference import MAX_OF, SPEC_PREFIXES, leb128
from reference import header as ref_header

from fastframe import FrameError, FrameTooLarge, IncompleteFrame, _codec, _codec_py

MiB = 1024 * 1024


def hdr(n: int, prefix: str) -> bytes:
    return ref_header(n, prefix)


def via_buffer(dec, chunk: bytes):
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


def deliver(dec, chunk: bytes, mode: str):
    return via_buffer(dec, chunk) if mode == "buffer" else dec.feed(chunk)


MODES = ("feed", "buffer")


# ======================================================================================================
# max_frame
# ======================================================================================================


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("prefix", SPEC_PREFIXES)
def test_header_over_max_frame_raises_at_once(codec, prefix, mode):
    dec = codec.Decoder(prefix, max_frame=100)
    with pytest.raises(FrameTooLarge) as info:
        deliver(dec, hdr(101, prefix), mode)  # the header alone: no payload has arrived
    assert (info.value.size, info.value.limit) == (101, 100)
    assert isinstance(info.value, FrameError) and isinstance(info.value, ValueError)
    assert info.value.frames == []


@pytest.mark.parametrize("prefix", SPEC_PREFIXES)
def test_frame_of_exactly_max_frame_is_accepted(codec, prefix):
    data = bytes(range(100))
    for mode in MODES:
        dec = codec.Decoder(prefix, max_frame=100)
        assert deliver(dec, hdr(100, prefix) + data, mode) == [data]


def test_max_frame_zero_allows_only_empty_frames(codec):
    dec = codec.Decoder("!I", max_frame=0)
    assert dec.feed(b"\x00\x00\x00\x00" * 3) == [b""] * 3
    with pytest.raises(FrameTooLarge) as info:
        dec.feed(b"\x00\x00\x00\x01")
    assert (info.value.size, info.value.limit) == (1, 0)


def test_default_max_frame_is_8_mib(codec):
    dec = codec.Decoder("!I")
    with pytest.raises(FrameTooLarge) as info:
        dec.feed(struct.pack("!I", 8 * MiB + 1))
    assert (info.value.size, info.value.limit) == (8 * MiB + 1, 8 * MiB)
    assert codec.Decoder("!I").feed(struct.pack("!I", 8 * MiB)) == []


# -- nothing is allocated for a refused payload -------------------------------------------------------


def _peak_traced(fn) -> int:
    """Peak traced memory (bytes) while fn() runs."""
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        if not was_tracing:
            tracemalloc.stop()


def _refused(dec, header: bytes, mode: str):
    def run():
        with pytest.raises(FrameTooLarge) as info:
            deliver(dec, header, mode)
        run.exc = info.value

    return run


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "prefix, max_frame, header, size",
    [
        ("!I", None, b"\xff\xff\xff\xff", 0xFFFFFFFF),
        ("!I", 0xFFFFFFFE, b"\xff\xff\xff\xff", 0xFFFFFFFF),
        ("!Q", sys.maxsize, struct.pack("!Q", 2**63), 2**63),
        ("<Q", sys.maxsize, struct.pack("<Q", 2**64 - 1), 2**64 - 1),
        ("varint", sys.maxsize, b"\xff" * 9 + b"\x01", 2**64 - 1),
        ("!I", 64 * MiB, struct.pack("!I", 64 * MiB + 1), 64 * MiB + 1),
    ],
    ids=["I-max-default-limit", "I-max-big-limit", "Q-2**63", "Q-le-max", "varint-max", "I-64MiB+1"],
)
def test_refused_header_allocates_nothing(codec, prefix, max_frame, header, size, mode):
    dec = codec.Decoder(prefix) if max_frame is None else codec.Decoder(prefix, max_frame)
    limit = dec.max_frame
    run = _refused(dec, header, mode)
    peak = _peak_traced(run)
    assert (run.exc.size, run.exc.limit) == (size, limit)
    assert peak < MiB, f"{peak} bytes allocated while refusing a {size}-byte frame"


@pytest.mark.parametrize("mode", MODES)
def test_accepted_large_header_allocation_is_honest(codec, mode):
    """The contrast that shows the measurement works.  The extension allocates an accepted 4 MiB frame's
    object at its header (zero-filled: the pages cost nothing until written, see the RSS test below), and
    tracemalloc sees it; the twin allocates nothing until the bytes arrive."""
    dec = codec.Decoder("!I")
    peak = _peak_traced(lambda: deliver(dec, struct.pack("!I", 4 * MiB), mode))
    if codec is _codec:
        assert peak >= 4 * MiB
    else:
        assert peak < MiB
    assert dec.pending == 4


def test_max_frame_sys_maxsize_is_allowed_but_2_63_refused(codec):
    dec = codec.Decoder("!Q", max_frame=sys.maxsize)
    assert dec.max_frame == sys.maxsize
    with pytest.raises(FrameTooLarge) as info:
        dec.feed(struct.pack("!Q", 2**63))
    assert info.value.size == 2**63 > sys.maxsize == info.value.limit


# ======================================================================================================
# Encoding limits
# ======================================================================================================


@pytest.mark.parametrize("prefix", ["!B", ">B", "<B", "!H", ">H", "<H"])
def test_payload_too_long_for_prefix(codec, prefix):
    limit = MAX_OF[prefix]
    ok = bytes(limit)
    assert codec.encode(ok, prefix) == hdr(limit, prefix) + ok
    too_long = bytes(limit + 1)
    for call in (
        lambda: codec.encode(too_long, prefix),
        lambda: codec.encode(bytearray(too_long), prefix),
        lambda: codec.encode_many([b"fine", too_long], prefix),
        lambda: codec.header(limit + 1, prefix),
    ):
        with pytest.raises(FrameTooLarge) as info:
            call()
        assert isinstance(info.value, FrameError) and isinstance(info.value, ValueError)
        assert (info.value.size, info.value.limit) == (limit + 1, limit)


@pytest.mark.parametrize("prefix", ["!I", "<I", "!Q", "<Q", "varint"])
def test_header_too_large_for_wide_prefixes(codec, prefix):
    limit = MAX_OF[prefix]
    assert codec.header(limit, prefix) == hdr(limit, prefix)
    for n in (limit + 1, 2**80):
        with pytest.raises(FrameTooLarge) as info:
            codec.header(n, prefix)
        assert (info.value.size, info.value.limit) == (n, limit)


@pytest.mark.parametrize("prefix", SPEC_PREFIXES)
def test_negative_header_length(codec, prefix):
    for n in (-1, -(2**70)):
        with pytest.raises(ValueError) as info:
            codec.header(n, prefix)
        assert not isinstance(info.value, FrameTooLarge)


def test_header_length_must_be_an_integer(codec):
    for bad in (1.0, "3", None, b"\x01"):
        with pytest.raises(TypeError):
            codec.header(bad)
    assert codec.header(True, "!B") == b"\x01"  # bool is an int, like struct.pack("!B", True)


# ======================================================================================================
# varints
# ======================================================================================================

BAD_VARINTS = {
    "non-minimal-0": b"\x80\x00",
    "non-minimal-127": b"\xff\x00",
    "non-minimal-3-bytes": b"\x81\x80\x00",
    "non-minimal-10-bytes": b"\x80" * 9 + b"\x00",
    "overlong-11-bytes": b"\x80" * 10 + b"\x01",
    "overlong-10-with-continuation": b"\xff" * 10,
    "overflow-10th-byte-2": b"\xff" * 9 + b"\x02",
    "overflow-10th-byte-7f": b"\x80" * 9 + b"\x7f",
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bad", list(BAD_VARINTS.values()), ids=list(BAD_VARINTS))
def test_bad_varint_is_frame_error(codec, bad, mode):
    dec = codec.Decoder("varint", max_frame=sys.maxsize)
    with pytest.raises(FrameError) as info:
        deliver(dec, bad + b"payload", mode)
    assert not isinstance(info.value, (FrameTooLarge, IncompleteFrame))
    # byte at a time: the error comes as soon as it is certain, never later than the 10th byte
    dec = codec.Decoder("varint", max_frame=sys.maxsize)
    with pytest.raises(FrameError) as info:
        for i in range(len(bad)):
            assert deliver(dec, bad[i : i + 1], mode) == []
    assert not isinstance(info.value, (FrameTooLarge, IncompleteFrame))
    assert i <= 9


def test_varint_errors_after_good_frames_in_the_buffer(codec):
    """A bad varint that starts mid-chunk, after frames and a partial header already buffered."""
    good = leb128(3) + b"abc" + leb128(0)
    for bad in BAD_VARINTS.values():
        dec = codec.Decoder("varint")
        assert dec.feed(good + bad[:1]) == [b"abc", b""]
        with pytest.raises(FrameError) as info:
            dec.feed(bad[1:])
        assert info.value.frames == []


def test_varint_largest_value(codec):
    top = b"\xff" * 9 + b"\x01"
    assert leb128(2**64 - 1) == top  # the reference agrees with the spec
    assert codec.header(2**64 - 1, "varint") == top
    with pytest.raises(FrameTooLarge):
        codec.header(2**64, "varint")
    for mode in MODES:
        dec = codec.Decoder("varint", max_frame=sys.maxsize)
        with pytest.raises(FrameTooLarge) as info:
            deliver(dec, top, mode)
        assert (info.value.size, info.value.limit) == (2**64 - 1, sys.maxsize)


def test_ten_byte_varints_that_are_valid(codec):
    for n in (2**63, 2**63 + 12345, 2**64 - 2):
        enc = leb128(n)
        assert len(enc) == 10
        assert codec.header(n, "varint") == enc
        with pytest.raises(FrameTooLarge) as info:
            codec.Decoder("varint", max_frame=sys.maxsize).feed(enc)
        assert info.value.size == n


# ======================================================================================================
# End of stream
# ======================================================================================================


@pytest.mark.parametrize("prefix", [p for p in SPEC_PREFIXES if not p.endswith("B")])  # 1-byte headers can't be cut
def test_close_inside_header(codec, prefix):
    full = hdr(200, prefix)
    assert len(full) >= 2
    for cut in range(1, len(full)):
        for mode in MODES:
            dec = codec.Decoder(prefix)
            assert deliver(dec, full[:cut], mode) == []
            assert dec.pending == cut
            with pytest.raises(IncompleteFrame) as info:
                dec.close()
            assert (info.value.received, info.value.expected) == (cut, None)
            assert dec.closed


@pytest.mark.parametrize("prefix", SPEC_PREFIXES)
def test_close_inside_payload(codec, prefix):
    h = hdr(200, prefix)
    for mode in MODES:
        dec = codec.Decoder(prefix)
        assert deliver(dec, h + bytes(57), mode) == []
        with pytest.raises(IncompleteFrame) as info:
            dec.close()
        assert (info.value.received, info.value.expected) == (len(h) + 57, len(h) + 200)


@pytest.mark.parametrize("prefix", ["!I", "<Q", "varint"])
def test_close_inside_large_payload(codec, prefix):
    n = 100_000
    h = hdr(n, prefix)
    for mode in MODES:
        dec = codec.Decoder(prefix)
        assert deliver(dec, h + bytes(70_000), mode) == []
        with pytest.raises(IncompleteFrame) as info:
            dec.close()
        assert (info.value.received, info.value.expected) == (len(h) + 70_000, len(h) + n)
    dec = codec.Decoder(prefix)
    assert dec.feed(h) == []
    with pytest.raises(IncompleteFrame) as info:
        dec.close()
    assert (info.value.received, info.value.expected) == (len(h), len(h) + n)


def test_close_with_nothing_pending_is_silent(codec):
    dec = codec.Decoder()
    dec.close()
    dec.close()
    assert dec.closed
    dec = codec.Decoder()
    assert dec.feed(b"\x00\x00\x00\x02hi\x00\x00\x00\x00") == [b"hi", b""]
    dec.close()
    assert dec.closed


def test_close_twice_after_incomplete_is_silent(codec):
    dec = codec.Decoder()
    dec.feed(b"\x00\x00")
    with pytest.raises(IncompleteFrame):
        dec.close()
    dec.close()


def test_close_after_error_is_silent(codec):
    dec = codec.Decoder(max_frame=1)
    with pytest.raises(FrameTooLarge):
        dec.feed(b"\x00\x00\x00\x02xx")
    dec.close()
    assert dec.closed


# ======================================================================================================
# After an error, input is refused
# ======================================================================================================


def _errors(codec):
    def too_large():
        d = codec.Decoder("!I", max_frame=10)
        with pytest.raises(FrameTooLarge):
            d.feed(struct.pack("!I", 11))
        return d

    def bad_varint():
        d = codec.Decoder("varint")
        with pytest.raises(FrameError):
            d.feed(b"\x80\x00")
        return d

    def incomplete():
        d = codec.Decoder("!I")
        d.feed(b"\x00\x00\x00\x05ab")
        with pytest.raises(IncompleteFrame):
            d.close()
        return d

    def closed():
        d = codec.Decoder("!I")
        d.close()
        return d

    def too_large_via_buffer():
        d = codec.Decoder("!H", max_frame=10)
        with pytest.raises(FrameTooLarge):
            via_buffer(d, b"\x00\x01x\x00\x0b")
        return d

    return {f.__name__: f for f in (too_large, bad_varint, incomplete, closed, too_large_via_buffer)}


@pytest.mark.parametrize("kind", ["too_large", "bad_varint", "incomplete", "closed", "too_large_via_buffer"])
def test_decoder_refuses_input_after_error(codec, kind):
    dec = _errors(codec)[kind]()
    good = hdr(1, dec.prefix) + b"x"
    with pytest.raises(FrameError):
        dec.feed(good)
    with pytest.raises(FrameError):
        dec.feed(b"")
    with pytest.raises(FrameError):
        dec.get_buffer()
    with pytest.raises(FrameError):
        dec.buffer_updated(0)
    with pytest.raises(FrameError):
        dec.buffer_updated(1)


@pytest.mark.parametrize("mode", MODES)
def test_payload_that_cannot_be_allocated_is_not_a_resync_point(codec, mode):
    """max_frame=sys.maxsize allows a 2**63-1 byte header, which no machine can hold.  The extension cannot
    allocate it and fails; the twin, which allocates only what arrives, waits for the bytes.  Either way the
    decoder must never read the refused (or pending) frame's payload as the next header."""
    dec = codec.Decoder("!Q", max_frame=sys.maxsize)
    try:
        deliver(dec, struct.pack("!Q", sys.maxsize), mode)
    except (MemoryError, OverflowError, FrameError):
        assert codec is _codec
        with pytest.raises(FrameError):
            dec.feed(struct.pack("!Q", 2) + b"hi")  # bytes of the refused payload, not a frame
    else:
        assert codec is _codec_py
        assert dec.feed(struct.pack("!Q", 2) + b"hi") == []  # bytes of the pending payload, not a frame
        assert dec.pending == 8 + 10


def test_refusal_when_view_was_lent_before_the_error(codec):
    dec = codec.Decoder("!I", max_frame=10)
    view = dec.get_buffer()
    view[:4] = struct.pack("!I", 11)
    with pytest.raises(FrameTooLarge):
        dec.buffer_updated(4)
    view.release()
    with pytest.raises(FrameError):
        dec.get_buffer()
    with pytest.raises(FrameError):
        dec.buffer_updated(4)


# ======================================================================================================
# Frames completed before an error travel with it
# ======================================================================================================


@pytest.mark.parametrize("mode", MODES)
def test_error_carries_frames_from_the_same_call(codec, mode):
    good = struct.pack("!I", 3) + b"abc" + struct.pack("!I", 0)
    bad = struct.pack("!I", 1000)
    dec = codec.Decoder("!I", max_frame=999)
    with pytest.raises(FrameTooLarge) as info:
        deliver(dec, good + bad, mode)
    assert info.value.frames == [b"abc", b""]
    assert (info.value.size, info.value.limit) == (1000, 999)


def test_error_frames_include_a_frame_finished_from_buffered_bytes(codec):
    dec = codec.Decoder("!I", max_frame=999)
    assert dec.feed(struct.pack("!I", 5) + b"he") == []
    with pytest.raises(FrameTooLarge) as info:
        dec.feed(b"llo" + struct.pack("!I", 7) + b"goodbye" + struct.pack("!I", 5000))
    assert info.value.frames == [b"hello", b"goodbye"]


def test_error_frames_exclude_earlier_calls(codec):
    dec = codec.Decoder("varint")
    assert dec.feed(b"\x02hi") == [b"hi"]
    with pytest.raises(FrameError) as info:
        dec.feed(b"\x01!\x80\x00")
    assert info.value.frames == [b"!"]


def test_error_frames_with_large_frame_before(codec):
    big = bytes(range(256)) * 300
    dec = codec.Decoder("!I", max_frame=len(big))
    assert dec.feed(struct.pack("!I", len(big)) + big[:1000]) == []
    with pytest.raises(FrameTooLarge) as info:
        dec.feed(big[1000:] + struct.pack("!I", len(big) + 1))
    assert info.value.frames == [big]


# ======================================================================================================
# buffer_updated accounting
# ======================================================================================================


def test_buffer_updated_more_than_lent_is_valueerror(codec):
    dec = codec.Decoder()
    view = dec.get_buffer()
    lent = len(view)
    view[:5] = b"\x00\x00\x00\x01z"
    view.release()
    for n in (lent + 1, 2 * lent, 2**31):
        with pytest.raises(ValueError) as info:
            dec.buffer_updated(n)
        assert not isinstance(info.value, FrameError), n
    with pytest.raises(ValueError):
        dec.buffer_updated(-1)
    # Refusing a bad count does not poison the decoder: the window is still there.
    assert dec.buffer_updated(5) == [b"z"]


@pytest.mark.parametrize("n", [2**63, 2**64, -(2**63) - 1])
def test_buffer_updated_beyond_ssize_t_is_valueerror(codec, n):
    """Any count the window cannot hold is the same ValueError, however large the integer."""
    dec = codec.Decoder()
    view = dec.get_buffer()
    view.release()
    with pytest.raises(ValueError):
        dec.buffer_updated(n)


def test_buffer_updated_without_get_buffer(codec):
    dec = codec.Decoder()
    assert dec.buffer_updated(0) == []
    with pytest.raises(ValueError):
        dec.buffer_updated(1)
    view = dec.get_buffer()
    view[:4] = b"\x00\x00\x00\x00"
    view.release()
    assert dec.buffer_updated(4) == [b""]
    with pytest.raises(ValueError):  # the window was used up
        dec.buffer_updated(1)


def test_buffer_updated_bounded_by_large_window(codec):
    n = 70_000
    data = bytes(range(250)) * 280
    dec = codec.Decoder()
    assert dec.feed(struct.pack("!I", n) + data[:100]) == []
    view = dec.get_buffer()
    k = len(view)
    assert 0 < k <= n - 100
    view[:] = data[100 : 100 + k]
    view.release()
    with pytest.raises(ValueError):
        dec.buffer_updated(k + 1)
    assert dec.buffer_updated(k) == []
    assert dec.feed(data[100 + k :]) == [data]


# ======================================================================================================
# Exceptions
# ======================================================================================================


@pytest.mark.parametrize(
    "exc",
    [FrameError("boom"), FrameTooLarge(10, 5), IncompleteFrame(3), IncompleteFrame(7, 12)],
    ids=["FrameError", "FrameTooLarge", "IncompleteFrame-header", "IncompleteFrame-payload"],
)
def test_exceptions_pickle_round_trip(exc):
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        copy = pickle.loads(pickle.dumps(exc, proto))
        assert type(copy) is type(exc)
        assert str(copy) == str(exc)
        assert copy.args == exc.args
        for attr in ("size", "limit", "received", "expected"):
            assert getattr(copy, attr, "absent") == getattr(exc, attr, "absent")
        assert copy.frames == []


def test_exception_messages():
    assert "10" in str(FrameTooLarge(10, 5)) and "5" in str(FrameTooLarge(10, 5))
    assert IncompleteFrame(3).expected is None
    assert (IncompleteFrame(7, 12).received, IncompleteFrame(7, 12).expected) == (7, 12)


def _raised_with_frames(codec):
    out = []
    d = codec.Decoder("!I", max_frame=5)
    try:
        d.feed(b"\x00\x00\x00\x01a\x00\x00\x00\x09")
    except FrameTooLarge as exc:
        out.append(exc)
    d = codec.Decoder("varint")
    try:
        d.feed(b"\x01b\x80\x00")
    except FrameError as exc:
        out.append(exc)
    assert len(out) == 2
    return out


def test_raised_exceptions_pickle_with_their_frames(codec):
    """An error sent to another process (multiprocessing pickles it) keeps the frames that came with it."""
    for exc in _raised_with_frames(codec):
        assert exc.frames
        copy = pickle.loads(pickle.dumps(exc))
        assert type(copy) is type(exc)
        assert str(copy) == str(exc)
        assert copy.frames == exc.frames, f"{type(exc).__name__}.frames lost in pickling"


def test_constructed_exceptions_pickle_with_frames():
    for exc in (FrameError("x"), FrameTooLarge(10, 5), IncompleteFrame(7, 12)):
        exc.frames = [b"kept"]
        copy = pickle.loads(pickle.dumps(exc))
        assert copy.frames == [b"kept"], f"{type(exc).__name__}.frames lost in pickling"
