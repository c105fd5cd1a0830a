"""Misuse never exposes memory, limits hold in flight, and memory follows the bytes that arrive.

- a view kept past the call that lent it, or bytes reported without being written, give zeros (as the twin's
  bytearray does), never what the heap held before;
- writing into a view after the frame it lent was returned never changes the immutable bytes returned;
- the receive area the extension shares between decoders is never overwritten by a call that runs while
  another one works in it (a garbage collection's callbacks, another thread);
- lowering ``max_frame`` never aborts a frame whose header was already accepted;
- a header announcing a huge frame costs nothing until its bytes arrive.
"""

from __future__ import annotations

import gc
import os
import socket
import struct
import sys
import threading
import time
import tracemalloc

import pytest

from fastframe import FrameTooLarge, _codec, _codec_py

MiB = 1024 * 1024
LARGE = 64 * 1024


def dirty_heap(sizes=(60_000, 64 * 1024, 70_000, 131_072, 140_000, 200_000, 300_000)) -> None:
    """Leave freed blocks full of 0xAB around, so that memory allocated next is likely to hold them."""
    for _ in range(3):
        junk = [bytes([0xAB]) * n for n in sizes]
        del junk


# ======================================================================================================
# Bytes nobody wrote are zeros
# ======================================================================================================


def test_stale_view_across_growth_gives_zeros_not_heap(codec):
    """The reported case: a view kept across get_buffer(100000) (which moves the decoder to fresh memory),
    written, then buffer_updated() for the new window.  The new window was never written: it must read as
    zeros (empty "!I" frames), never as leftover heap bytes."""
    for _ in range(30):
        dirty_heap()
        dec = codec.Decoder()
        stale = dec.get_buffer()
        fresh = dec.get_buffer(100_000)
        k = len(fresh)
        fresh.release()
        stale[:9] = struct.pack("!I", 5) + b"hello"
        frames = dec.buffer_updated(k)
        assert frames == [b""] * (k // 4), f"{sum(map(len, frames))} bytes of never-written memory returned"
        stale.release()


@pytest.mark.parametrize("sizehint", [-1, 100, 200_000])
def test_reporting_unwritten_bytes_gives_zeros(codec, sizehint):
    for _ in range(10):
        dirty_heap()
        dec = codec.Decoder("!B")
        view = dec.get_buffer(sizehint)
        n = len(view)
        view.release()
        assert dec.buffer_updated(n) == [b""] * n


def test_unwritten_large_frame_is_zeros(codec):
    size = 200_000
    for _ in range(5):
        dirty_heap()
        dec = codec.Decoder()
        assert dec.feed(struct.pack("!I", size) + b"abc") == []
        frames = []
        while not frames:
            view = dec.get_buffer()
            n = len(view)
            view.release()
            frames = dec.buffer_updated(n)
        # (the last window also lends the next header's 4 bytes: reported unwritten, they are an empty frame)
        assert frames == [b"abc" + bytes(size - 3), b""]


# ======================================================================================================
# A view used after its frame was returned never changes it
# ======================================================================================================


@pytest.mark.parametrize("keep", ["first", "last", "all"])
def test_writing_into_a_kept_view_never_changes_a_returned_frame(codec, keep):
    size = 300_000
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    dec = codec.Decoder()
    assert dec.feed(struct.pack("!I", size)) == []
    views = []
    frames = []
    pos = 0
    while not frames:
        view = dec.get_buffer()
        k = min(len(view), size - pos)
        view[:k] = data[pos : pos + k]
        views.append(view)
        frames = dec.buffer_updated(k)
        pos += k
    (frame,) = frames
    assert frame == data
    kept = {"first": views[:1], "last": views[-1:], "all": views}[keep]
    for v in views:
        if all(v is not w for w in kept):
            v.release()
    digest = hash(frame)
    for v in kept:
        v[: min(len(v), 64)] = b"\xee" * min(len(v), 64)  # a caller writing late into memory it was lent
    assert frame == data and hash(frame) == digest, "a returned bytes object changed"
    for v in kept:
        v.release()


def test_transport_style_view_alive_during_buffer_updated_keeps_zero_copy():
    """asyncio's transport holds the view while it calls buffer_updated(); the extension still returns the
    object the kernel wrote into (the last window lies in the read buffer, not in that object)."""
    size = 300_000
    data = os.urandom(size)
    dec = _codec.Decoder()
    assert dec.feed(struct.pack("!I", size)) == []
    frames = []
    pos = 0
    first_address = None
    import ctypes

    while not frames:
        view = dec.get_buffer()  # held, like the transport's local, across buffer_updated()
        address = ctypes.addressof(ctypes.c_char.from_buffer(view))
        first_address = first_address or address
        k = min(len(view), size - pos)
        view[:k] = data[pos : pos + k]
        frames = dec.buffer_updated(k)
        pos += k
        del view
    (frame,) = frames
    assert frame == data
    assert id(frame) + sys.getsizeof(b"") - 1 == first_address, "the frame was copied"


# ======================================================================================================
# The shared receive area
# ======================================================================================================


class Reenter:
    """A gc callback that, once, runs ``action`` in the middle of whatever allocated (a read_from call)."""

    def __init__(self, action) -> None:
        self.action = action
        self.armed = False
        self.fired = 0

    def __call__(self, phase, info) -> None:
        if phase == "start" and self.armed:
            self.armed = False
            self.fired += 1
            self.action()

    def __enter__(self):
        self.threshold = gc.get_threshold()
        gc.callbacks.append(self)
        gc.set_threshold(1, 1, 1)
        return self

    def __exit__(self, *exc) -> None:
        gc.callbacks.remove(self)
        gc.set_threshold(*self.threshold)


def _pair():
    a, b = socket.socketpair()
    b.setblocking(False)
    a.settimeout(5)
    return a, b


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="3.12+ collects only between bytecodes, not inside read_from")
def test_read_from_reentered_by_gc_callback_keeps_each_decoders_bytes():
    """A gc callback reads with another decoder while read_from() is cutting frames out of the shared
    area (3.9-3.11 collect at allocation time, inside the call): each decoder must get its own bytes."""
    a1, b1 = _pair()
    a2, b2 = _pair()
    try:
        one = [b"1" * 10] * 50
        two = [b"2" * 10] * 50
        a1.sendall(b"".join(struct.pack("!I", 10) + p for p in one))
        a2.sendall(b"".join(struct.pack("!I", 10) + p for p in two))
        d1, d2 = _codec.Decoder(), _codec.Decoder()
        inner = []
        with Reenter(lambda: inner.extend(d2.read_from(b2.fileno()))) as hook:
            gc.collect()
            hook.armed = True
            outer = d1.read_from(b1.fileno())
        assert hook.fired == 1
        assert outer == one
        assert inner == two
    finally:
        for s in (a1, b1, a2, b2):
            s.close()


def test_relay_error_path_reentered_by_gc_callback():
    """relay() re-reads the shared area after a FrameError to hand out the frames before it; building the
    exception runs Python code (a gc callback here), which relays on another decoder in between."""
    a1, b1 = _pair()
    a2, b2 = _pair()
    try:
        good = struct.pack("!I", 3) + b"one"
        a1.sendall(good + struct.pack("!I", 1000))  # a header over max_frame=100 follows a good frame
        a2.sendall(struct.pack("!I", 3) + b"TWO")
        d1, d2 = _codec.Decoder("!I", 100), _codec.Decoder()
        error = None
        with Reenter(lambda: d2.relay(b2.fileno())) as hook:
            gc.collect()
            hook.armed = True  # (armed right before the call: the next allocation is inside it)
            try:
                d1.relay(b1.fileno())
            except FrameTooLarge as exc:
                error = exc
        assert hook.fired == 1
        assert error is not None and error.frames == [b"one"]
        assert a2.recv(100) == struct.pack("!I", 3) + b"TWO"
    finally:
        for s in (a1, b1, a2, b2):
            s.close()


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="3.12+ collects only between bytecodes, not inside read_from")
def test_another_thread_reads_while_read_from_is_mid_call():
    """The reported race, made deterministic: thread A's read_from() triggers a collection after its recv;
    A's gc callback lets thread B run read_from() on its own decoder (A waits, without the GIL), then A goes
    on cutting its frames.  Each thread must get its own bytes."""
    a1, b1 = _pair()
    a2, b2 = _pair()
    try:
        a1.sendall((struct.pack("!I", 5) + b"AAAAA") * 30)
        a2.sendall((struct.pack("!I", 5) + b"BBBBB") * 30)
        d1, d2 = _codec.Decoder(), _codec.Decoder()
        go, done = threading.Event(), threading.Event()
        results = {}

        def thread_b() -> None:
            if go.wait(10):
                results["B"] = d2.read_from(b2.fileno())
            done.set()

        def in_a(phase, info) -> None:
            if phase == "start" and threading.current_thread() is main and not go.is_set():
                go.set()
                done.wait(10)

        main = threading.current_thread()
        tb = threading.Thread(target=thread_b)
        tb.start()
        threshold = gc.get_threshold()
        gc.collect()
        gc.callbacks.append(in_a)
        gc.set_threshold(1, 1, 1)
        try:
            results["A"] = d1.read_from(b1.fileno())
        finally:
            gc.callbacks.remove(in_a)
            gc.set_threshold(*threshold)
            go.set()
            tb.join(10)
        assert go.is_set() and done.is_set()
        assert results["A"] == [b"AAAAA"] * 30
        assert results["B"] == [b"BBBBB"] * 30
    finally:
        for s in (a1, b1, a2, b2):
            s.close()


@pytest.mark.skipif(sys.version_info < (3, 12), reason="a Python class can export a buffer only from 3.12 (__buffer__)")
def test_write_frames_reentered_while_encoding():
    a1, b1 = _pair()
    a2, b2 = _pair()
    try:
        b1.setblocking(True)

        class Sneaky:
            def __buffer__(self, flags):
                _codec.write_frames(a2.fileno(), [b"Z" * 100])
                return memoryview(b"inner")

        a1.setblocking(False)
        assert _codec.write_frames(a1.fileno(), [b"x" * 50, Sneaky(), b"y" * 50]) is None
        expected = b"".join(struct.pack("!I", len(p)) + p for p in (b"x" * 50, b"inner", b"y" * 50))
        assert b1.recv(1000) == expected
    finally:
        for s in (a1, b1, a2, b2):
            s.close()


# ======================================================================================================
# max_frame in flight
# ======================================================================================================


def _via_buffer(dec, data: bytes) -> list:
    view = dec.get_buffer()
    view[: len(data)] = data
    view.release()
    return dec.buffer_updated(len(data))


@pytest.mark.parametrize("mode", ["feed", "buffer"])
@pytest.mark.parametrize("first", [b"\x00\x00\x00\x09abcd", b"\x00\x00\x00\x09"], ids=["part-payload", "header-only"])
def test_lowering_max_frame_finishes_the_accepted_frame(codec, mode, first):
    """tokio-util's read_update_max_frame_len_in_flight: the limit applies to headers not yet accepted."""
    send = (lambda d, b: d.feed(b)) if mode == "feed" else _via_buffer
    dec = codec.Decoder()
    assert send(dec, first) == []
    dec.max_frame = 5
    assert send(dec, b"abcdefghi"[len(first) - 4 :]) == [b"abcdefghi"]
    with pytest.raises(FrameTooLarge) as info:
        send(dec, b"\x00\x00\x00\x09abcdefghi")
    assert (info.value.size, info.value.limit) == (9, 5)


def test_lowering_max_frame_with_options_and_partial_header(codec):
    dec = codec.Decoder("!I", offset=1, adjust=-4, strip=0)
    assert dec.feed(b"D\x00\x00\x00\x0dabc") == []  # a 9-byte body accepted
    dec.max_frame = 2
    assert dec.feed(b"defghi") == [b"D\x00\x00\x00\x0dabcdefghi"]
    assert dec.feed(b"D\x00\x00") == []  # a header not yet complete is not accepted yet ...
    with pytest.raises(FrameTooLarge):
        dec.feed(b"\x00\x07")  # ... and meets the new limit (3 > 2)


def test_raising_max_frame_applies_to_the_next_header(codec):
    dec = codec.Decoder("!I", 4)
    assert dec.feed(b"\x00\x00\x00\x04ab") == []
    dec.max_frame = 9
    assert dec.feed(b"cd\x00\x00\x00\x09abcdefghi") == [b"abcd", b"abcdefghi"]


# ======================================================================================================
# Memory follows the bytes that arrive
# ======================================================================================================


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.timing
@pytest.mark.parametrize("mode", ["feed", "buffer"])
def test_huge_header_costs_only_what_arrives(codec, mode):
    """A header announcing 1 GiB (accepted: max_frame 2 GiB), then 2 MiB of it: resident memory grows by
    about the 2 MiB, not the gigabyte, and quickly.  The twin allocates nothing ahead (tracemalloc sees about
    what arrived); the extension's zero-filled object is paged in only where written."""
    announced = 1 << 30
    chunk = os.urandom(64 * 1024)
    dec = codec.Decoder("!Q", 2 << 30)
    gc.collect()
    rss0 = _rss()
    tracemalloc.start()
    try:
        t0 = time.monotonic()
        assert dec.feed(struct.pack("!Q", announced)) == []
        for _ in range(32):
            if mode == "feed":
                assert dec.feed(chunk) == []
            else:
                pos = 0
                while pos < len(chunk):
                    view = dec.get_buffer()
                    k = min(len(view), len(chunk) - pos)
                    view[:k] = chunk[pos : pos + k]
                    view.release()
                    assert dec.buffer_updated(k) == []
                    pos += k
        elapsed = time.monotonic() - t0
        traced = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    grown = _rss() - rss0
    assert dec.pending == 8 + 32 * len(chunk)
    assert grown < 64 * MiB, f"resident memory grew by {grown / MiB:.0f} MiB for 2 MiB received"
    assert elapsed < 2.0, f"{elapsed:.1f} s to take 2 MiB of a 1 GiB frame"
    if codec is _codec_py:
        assert traced < 16 * MiB, f"the twin allocated {traced / MiB:.0f} MiB for 2 MiB received"
