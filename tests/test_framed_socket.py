"""FramedSocket over real sockets: a socketpair and a 127.0.0.1 TCP connection, with both codecs.

Every socket has a timeout and every helper thread is joined with one, so a bug shows up as a failure, never
as a hung run.  Expected wire bytes are built with struct, independently of the codec.
"""

from __future__ import annotations

import array
import select
import socket
import struct
import time

import pytest
from harness import Background, recv_exactly
from reference import leb128 as _leb128

from fastframe import FrameError, FrameTooLarge, IncompleteFrame

MiB = 1024 * 1024


def frame(data: bytes) -> bytes:
    return struct.pack("!I", len(data)) + bytes(data)


class RecordingSocket:
    """Wraps a socket and records how FramedSocket writes to it."""

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self.calls = []

    def sendall(self, data, *args):
        self.calls.append(("sendall", [memoryview(data).nbytes]))
        return self._sock.sendall(data, *args)

    def sendmsg(self, buffers, *args):
        buffers = list(buffers)
        self.calls.append(("sendmsg", [memoryview(b).nbytes for b in buffers]))
        return self._sock.sendmsg(buffers, *args)

    def send(self, data, *args):
        self.calls.append(("send", [memoryview(data).nbytes]))
        return self._sock.send(data, *args)

    def __getattr__(self, name):
        return getattr(self._sock, name)


def payloads_of(sizes, seed=0):
    import random

    rng = random.Random(seed)
    return [rng.randbytes(n) for n in sizes]


def assert_nothing_readable(sock: socket.socket, wait: float = 0.2) -> None:
    readable, _, _ = select.select([sock], [], [], wait)
    assert not readable, "the peer received bytes it should not have"


# ======================================================================================================
# Basics
# ======================================================================================================


SIZES = [0, 1, 100, 16384, 65535, 65536, 70000, 300_000]


def test_send_recv_roundtrip(framed_cls, sock_pair):
    a, b = sock_pair
    tx, rx = framed_cls(a), framed_cls(b)
    data = payloads_of(SIZES)
    sender = Background(lambda: [tx.send(p) for p in data])
    got = [rx.recv() for _ in data]
    sender.join()
    assert got == data
    assert all(type(g) is bytes for g in got)


def test_both_directions_interleaved(framed_cls, sock_pair):
    a, b = sock_pair
    left, right = framed_cls(a), framed_cls(b)
    for p in payloads_of([5, 0, 1000, 70000, 3]):
        bg = Background(left.send, p)
        assert right.recv() == p
        bg.join()
        bg = Background(right.send, p[::-1])
        assert left.recv() == p[::-1]
        bg.join()


def test_sock_is_reachable(framed_cls, sock_pair):
    a, b = sock_pair
    fs = framed_cls(a)
    assert fs.sock is a
    assert fs.fileno() == a.fileno()
    assert fs.prefix == "!I"
    assert fs.max_frame == 8 * MiB
    fs.sock.settimeout(3.0)
    assert a.gettimeout() == 3.0
    assert framed_cls(b, max_frame=123).max_frame == 123
    with framed_cls(b) as ctx:
        assert ctx.sock is b
    assert b.fileno() == -1  # the context manager closed the socket


def test_bound_codec_is_used(framed_cls, codec, sock_pair):
    a, _ = sock_pair
    fs = framed_cls(a)
    assert type(fs._decoder) is codec.Decoder
    assert framed_cls.codec is codec


# ======================================================================================================
# What goes on the wire
# ======================================================================================================


@pytest.mark.parametrize("size", [0, 1, 1000, 65535, 65536, 3 * MiB])
def test_send_wire_bytes(framed_cls, sock_pair, size):
    a, b = sock_pair
    rec = RecordingSocket(a)
    fs = framed_cls(rec)
    data = payloads_of([size], size)[0]
    reader = Background(lambda: recv_exactly(b, 4 + size))
    fs.send(data)
    wire = reader.join()
    assert wire == struct.pack("!I", size) + data
    if size >= 64 * 1024:
        # Scatter-gather: header and payload handed to sendmsg side by side, never concatenated.
        assert rec.calls[0][0] == "sendmsg"
        assert rec.calls[0][1][:2] == [4, size]
        assert all(max(sizes) < size for kind, sizes in rec.calls if kind != "sendmsg")
    else:
        assert rec.calls == [("sendall", [4 + size])]


def test_send_many_wire_bytes(framed_cls, sock_pair):
    a, b = sock_pair
    rec = RecordingSocket(a)
    fs = framed_cls(rec)
    data = payloads_of([0, 10, 70000, 3, 5, 3 * MiB, 1, 65536])
    expected = b"".join(frame(p) for p in data)
    reader = Background(lambda: recv_exactly(b, len(expected)))
    fs.send_many(data)
    assert reader.join() == expected
    assert all(kind == "sendmsg" for kind, _ in rec.calls)
    first = rec.calls[0][1]
    # small frames batched together, large payloads passed as their own buffers
    assert first[:4] == [len(frame(b"")) + len(frame(data[1])), 4, 70000, len(frame(data[3])) + len(frame(data[4]))]


def test_send_many_small_is_one_write(framed_cls, sock_pair):
    a, b = sock_pair
    rec = RecordingSocket(a)
    fs = framed_cls(rec)
    data = payloads_of([0, 1, 2, 300, 60000])
    expected = b"".join(frame(p) for p in data)
    reader = Background(lambda: recv_exactly(b, len(expected)))
    fs.send_many(iter(data))
    assert reader.join() == expected
    assert rec.calls == [("sendall", [len(expected)])]


def test_send_many_more_buffers_than_iov_max(framed_cls, sock_pair):
    """Hundreds of large payloads: the scatter-gather vector is longer than one sendmsg() may take."""
    a, b = sock_pair
    rec = RecordingSocket(a)
    fs = framed_cls(rec)
    big = memoryview(payloads_of([64 * 1024])[0])
    data = []
    for i in range(700):  # 700 small batches + 700 headers + 700 payloads = 2100 buffers
        data += [bytes([i % 256]), big]
    expected_len = sum(4 + len(p) for p in data)
    reader = Background(lambda: recv_exactly(b, expected_len))
    fs.send_many(data)
    wire = reader.join(60)
    assert len(rec.calls) > 1 and all(kind == "sendmsg" for kind, _ in rec.calls)
    assert max(len(sizes) for _, sizes in rec.calls) <= 1024
    pos = 0
    for p in data:
        (n,) = struct.unpack_from("!I", wire, pos)
        assert n == len(p)
        assert wire[pos + 4 : pos + 4 + n] == bytes(p)
        pos += 4 + n
    assert pos == len(wire)


def test_send_bytes_like_payloads(framed_cls, sock_pair):
    a, b = sock_pair
    tx, rx = framed_cls(a), framed_cls(b)
    raw_small, raw_big = payloads_of([400, 80000])
    items = [
        bytearray(raw_small),
        memoryview(raw_small),
        array.array("i", raw_small),
        bytearray(raw_big),
        memoryview(raw_big),
        array.array("i", raw_big),
    ]

    def send_all():
        for p in items:
            tx.send(p)
        tx.send_many(items)

    sender = Background(send_all)
    got = [rx.recv() for _ in range(2 * len(items))]
    sender.join()
    assert got == [raw_small] * 3 + [raw_big] * 3 + [raw_small] * 3 + [raw_big] * 3


@pytest.mark.parametrize(
    "prefix, header",
    [("varint", lambda n: _leb128(n)), ("<H", lambda n: struct.pack("<H", n)), ("!Q", lambda n: struct.pack("!Q", n))],
)
def test_other_prefixes(framed_cls, sock_pair, prefix, header):
    a, b = sock_pair
    sizes = [0, 1, 200, 65535] + ([70000] if prefix != "<H" else [])
    data = payloads_of(sizes)
    tx = framed_cls(a, prefix=prefix)
    expected = b"".join(header(len(p)) + p for p in data)
    reader = Background(lambda: recv_exactly(b, len(expected)))
    for p in data:
        tx.send(p)
    assert reader.join() == expected
    rx = framed_cls(b, prefix=prefix)
    sender = Background(lambda: tx.send_many(data))
    assert [rx.recv() for _ in data] == data
    sender.join()


def test_send_errors_write_nothing(framed_cls, sock_pair):
    a, b = sock_pair
    with pytest.raises(TypeError):
        framed_cls(a).send("text")
    with pytest.raises(FrameTooLarge) as info:
        framed_cls(a, prefix="!B").send(bytes(256))
    assert (info.value.size, info.value.limit) == (256, 255)
    with pytest.raises(FrameTooLarge):
        framed_cls(a, prefix="!H").send(bytes(70000))
    with pytest.raises(FrameTooLarge):
        framed_cls(a, prefix="!H").send_many([b"ok", bytes(70000)])
    with pytest.raises(FrameTooLarge):
        framed_cls(a, prefix="!B").send_many([b"ok", bytes(256)])
    assert_nothing_readable(b)


@pytest.mark.parametrize("size", [100, 100_000], ids=["small", "large"])
def test_non_contiguous_payload_is_buffererror_at_any_size(framed_cls, sock_pair, size):
    """Like encode(): a strided view is a BufferError, whether the payload is small or goes by sendmsg."""
    a, b = sock_pair
    strided = memoryview(bytes(2 * size))[::2]
    fs = framed_cls(a)
    with pytest.raises(BufferError):
        fs.send(strided)
    with pytest.raises(BufferError):
        fs.send_many([b"ok", strided])
    assert_nothing_readable(b)


# ======================================================================================================
# Receiving
# ======================================================================================================


def test_iteration_until_eof(framed_cls, sock_pair):
    a, b = sock_pair
    data = payloads_of([3, 0, 70000, 1, 500, 1 * MiB])

    def send_then_close():
        for p in data:
            a.sendall(frame(p))
        a.shutdown(socket.SHUT_WR)

    sender = Background(send_then_close)
    rx = framed_cls(b)
    assert list(rx) == data
    sender.join()
    with pytest.raises(EOFError):
        rx.recv()
    assert list(rx) == []


def test_recv_many(framed_cls, sock_pair):
    a, b = sock_pair
    data = payloads_of([1, 2, 3, 0, 400])
    a.sendall(b"".join(frame(p) for p in data))
    _wait_until_queued(b, sum(4 + len(p) for p in data))
    rx = framed_cls(b)
    assert rx.recv_many() == data  # everything that had arrived, in one call
    a.sendall(frame(b"later"))
    assert rx.recv_many() == [b"later"]  # waits for at least one
    a.shutdown(socket.SHUT_WR)
    with pytest.raises(EOFError):
        rx.recv_many()


def test_recv_many_then_recv_keep_order(framed_cls, sock_pair):
    a, b = sock_pair
    data = payloads_of([7] * 10)
    a.sendall(b"".join(frame(p) for p in data[:4]))
    _wait_until_queued(b, 4 * 11)
    rx = framed_cls(b)
    assert rx.recv() == data[0]
    assert rx.recv_many() == data[1:4]
    a.sendall(b"".join(frame(p) for p in data[4:]))
    got = []
    while len(got) < 6:
        got += rx.recv_many()
    assert got == data[4:]


def test_eof_between_frames(framed_cls, sock_pair):
    a, b = sock_pair
    a.sendall(frame(b"one") + frame(b""))
    a.shutdown(socket.SHUT_WR)
    rx = framed_cls(b)
    assert rx.recv() == b"one"
    assert rx.recv() == b""
    with pytest.raises(EOFError):
        rx.recv()
    with pytest.raises(EOFError):  # and it stays that way
        rx.recv()


def test_eof_on_fresh_connection(framed_cls, sock_pair):
    a, b = sock_pair
    a.shutdown(socket.SHUT_WR)
    with pytest.raises(EOFError):
        framed_cls(b).recv()


@pytest.mark.parametrize(
    "wire, received, expected",
    [
        (b"\x00\x00", 2, None),
        (frame(b"hello")[:-2], 7, 9),
        (struct.pack("!I", 200_000) + bytes(100_000), 100_004, 200_004),
    ],
    ids=["in-header", "in-payload", "in-large-payload"],
)
def test_incomplete_frame_on_close(framed_cls, sock_pair, wire, received, expected):
    a, b = sock_pair
    sender = Background(lambda: (a.sendall(frame(b"ok") + wire), a.shutdown(socket.SHUT_WR)))
    rx = framed_cls(b)
    assert rx.recv() == b"ok"
    with pytest.raises(IncompleteFrame) as info:
        rx.recv()
    sender.join()
    assert (info.value.received, info.value.expected) == (received, expected)
    with pytest.raises(IncompleteFrame):
        rx.recv()


def test_iteration_raises_on_incomplete_frame(framed_cls, sock_pair):
    a, b = sock_pair
    a.sendall(frame(b"x") + frame(b"cut")[:5])
    a.shutdown(socket.SHUT_WR)
    got = []
    with pytest.raises(IncompleteFrame):
        for p in framed_cls(b):
            got.append(p)
    assert got == [b"x"]


@pytest.mark.timing
def test_frame_too_large_raised_before_payload(framed_cls, sock_pair):
    a, b = sock_pair
    b.settimeout(3.0)
    rx = framed_cls(b, max_frame=1000)
    a.sendall(struct.pack("!I", 1001))  # the header only; the payload never comes and a stays open
    start = time.monotonic()
    with pytest.raises(FrameTooLarge) as info:
        rx.recv()
    assert time.monotonic() - start < 2.0
    assert (info.value.size, info.value.limit) == (1001, 1000)


def test_frames_before_error_come_first(framed_cls, sock_pair):
    a, b = sock_pair
    good = payloads_of([5, 0, 70000])
    a.sendall(b"".join(frame(p) for p in good) + struct.pack("!I", 2 * MiB) + b"junk")
    rx = framed_cls(b, max_frame=MiB)
    assert [rx.recv() for _ in good] == good
    with pytest.raises(FrameTooLarge) as info:
        rx.recv()
    assert (info.value.size, info.value.limit) == (2 * MiB, MiB)
    with pytest.raises(FrameTooLarge):  # the stream is unusable from here on
        rx.recv()
    with pytest.raises(FrameError):
        rx.recv_many()


def test_frames_before_bad_varint_come_first(framed_cls, sock_pair):
    a, b = sock_pair
    a.sendall(b"\x03abc\x00\x01z\x80\x00rest")
    rx = framed_cls(b, prefix="varint")
    assert rx.recv_many() == [b"abc", b"", b"z"]
    with pytest.raises(FrameError):
        rx.recv()


def test_recv_timeout_loses_nothing(framed_cls, sock_pair):
    a, b = sock_pair
    b.settimeout(0.1)
    rx = framed_cls(b)
    small, big = payloads_of([300, 200_000])
    with pytest.raises(socket.timeout):
        rx.recv()
    wire = frame(small) + frame(big)
    a.sendall(wire[:150])  # header + part of the first payload
    with pytest.raises(socket.timeout):
        rx.recv()
    a.sendall(wire[150 : 304 + 100_000])  # the rest of frame 1 and half of the large frame 2
    assert rx.recv() == small
    with pytest.raises(socket.timeout):
        rx.recv()
    a.sendall(wire[304 + 100_000 :])
    b.settimeout(10)
    assert rx.recv() == big
    b.settimeout(0.1)
    with pytest.raises(socket.timeout):
        rx.recv_many()
    a.sendall(frame(b"after"))
    assert rx.recv_many() == [b"after"]


def test_large_payloads_both_ends(framed_cls, sock_pair):
    a, b = sock_pair
    tx, rx = framed_cls(a), framed_cls(b)
    data = payloads_of([3 * MiB, 64 * 1024, 5 * MiB, 0])
    sender = Background(lambda: (tx.send(data[0]), tx.send_many(data[1:])))
    got = [rx.recv() for _ in data]
    sender.join()
    assert got == data


# ======================================================================================================
# helpers
# ======================================================================================================


def _wait_until_queued(sock: socket.socket, n: int, timeout: float = 5.0) -> None:
    """Wait until n bytes sit in sock's receive queue (so one recv_into sees them all)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            queued = len(sock.recv(n, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except BlockingIOError:
            queued = 0
        if queued >= n:
            return
        assert time.monotonic() < deadline, f"only {queued} of {n} bytes arrived"
        time.sleep(0.01)


# ======================================================================================================
# Event loops: pending(), poll(), recv_into()
# ======================================================================================================


def test_select_cannot_see_buffered_frames_but_poll_can(framed_cls, sock_pair):
    """Three frames arrive together; recv() takes the first.  select() reports nothing readable while two
    frames wait in the decoder: pending() counts them, poll() says recv() will not block."""
    a, b = sock_pair
    a.sendall(frame(b"one") + frame(b"two") + frame(b""))
    fs = framed_cls(b)
    assert fs.recv() == b"one"
    assert select.select([fs], [], [], 0.05)[0] == []
    assert fs.pending() == len(frame(b"two") + frame(b""))
    assert fs.poll() is True
    assert fs.recv() == b"two"
    assert fs.pending() == 4 and fs.poll() is True  # an empty frame still counts its header
    assert fs.recv() == b""
    assert fs.pending() == 0 and fs.poll() is False


def test_select_loop_pattern(framed_cls, sock_pair):
    """The documented loop: drain what poll() reports, then wait in select() -- never a hang."""
    a, b = sock_pair
    fs = framed_cls(b)
    sent = [bytes([i]) * i for i in range(40)]

    def sender():
        for i in range(0, 40, 8):
            a.sendall(b"".join(frame(p) for p in sent[i : i + 8]))
            time.sleep(0.01)
        a.shutdown(socket.SHUT_WR)

    bg = Background(sender)
    got = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        while fs.poll():
            try:
                got.append(fs.recv())
            except EOFError:
                break
        else:
            select.select([fs], [], [], 1.0)
            continue
        break
    bg.join()
    assert got == sent


def test_poll_waits_at_most_timeout_and_reads_partial_frames(framed_cls, sock_pair):
    a, b = sock_pair
    fs = framed_cls(b)
    assert fs.poll(0.0) is False
    a.sendall(frame(b"hello")[:6])
    assert fs.poll(0.05) is False  # a partial frame is read, but recv() would still block
    assert fs.pending() == 6
    bg = Background(lambda: (time.sleep(0.1), a.sendall(b"llo")))
    assert fs.poll(10) is True
    bg.join()
    assert fs.recv() == b"hello"
    a.close()
    assert fs.poll(None) is True  # end of stream: recv() raises at once
    with pytest.raises(EOFError):
        fs.recv()


@pytest.mark.timing
def test_poll_never_blocks_longer_than_timeout(framed_cls, sock_pair):
    a, b = sock_pair
    fs = framed_cls(b)
    a.sendall(b"\x00\x00")  # half a header, then nothing
    t0 = time.monotonic()
    assert fs.poll(0.2) is False
    assert time.monotonic() - t0 < 2.0
    t0 = time.monotonic()
    assert fs.poll() is False
    assert time.monotonic() - t0 < 0.5


def test_poll_reports_errors_without_blocking(framed_cls, sock_pair):
    a, b = sock_pair
    fs = framed_cls(b, max_frame=10)
    a.sendall(frame(b"ok") + struct.pack("!I", 11))
    assert fs.poll() is True
    assert fs.recv() == b"ok"
    assert fs.poll() is True
    with pytest.raises(FrameTooLarge):
        fs.recv()


def test_recv_into(framed_cls, sock_pair):
    from fastframe import BufferTooSmall

    a, b = sock_pair
    a.sendall(frame(b"hello world") + frame(b"x" * 100_000))
    fs = framed_cls(b)
    buf = bytearray(16)
    assert fs.recv_into(buf) == 11 and bytes(buf[:11]) == b"hello world"
    small = array.array("B", bytes(1000))
    with pytest.raises(BufferTooSmall) as info:
        fs.recv_into(small)
    assert (info.value.size, info.value.capacity) == (100_000, 1000)
    with pytest.raises(TypeError):
        fs.recv_into(bytes(200_000))
    big = memoryview(bytearray(200_000))
    assert fs.recv_into(big) == 100_000  # the frame stayed queued
    assert big[:100_000] == b"x" * 100_000
    a.close()
    with pytest.raises(EOFError):
        fs.recv_into(buf)


# ======================================================================================================
# Never reading ahead
# ======================================================================================================


@pytest.mark.parametrize("prefix", ["!I", "varint"])
def test_read_ahead_false_leaves_what_follows_in_the_socket(framed_cls, sock_pair, prefix):
    a, b = sock_pair
    first, second = b"hello", b"y" * 200_000
    hdr = (lambda n: _leb128(n)) if prefix == "varint" else (lambda n: struct.pack("!I", n))
    rest = hdr(len(second)) + second + b"RAW BYTES AFTER"
    bg = Background(a.sendall, hdr(len(first)) + first + rest)
    fs = framed_cls(b, prefix, read_ahead=False)
    assert fs.read_ahead is False
    assert fs.recv() == first
    assert fs.pending() == 0
    bg.join()
    got = b""
    while len(got) < len(rest):
        got += b.recv(1 << 20)
    assert got == rest, "FramedSocket read past the frame it returned"


def test_read_ahead_false_large_frame_and_handover(framed_cls, sock_pair):
    a, b = sock_pair
    data = b"z" * 300_000
    bg = Background(a.sendall, frame(b"hi") + frame(data) + b"tail")
    fs = framed_cls(b, read_ahead=False)
    assert fs.recv() == b"hi"
    assert fs.poll(10) is True  # poll() reads the next frame, and nothing past it
    assert fs.pending() == len(frame(data))
    assert fs.recv() == data
    bg.join()
    assert b.recv(100) == b"tail"


# ======================================================================================================
# Length-field options
# ======================================================================================================


def test_options_round_trip_and_wire_bytes(framed_cls, sock_pair):
    from fastframe import Framing

    a, b = sock_pair
    pg = Framing("!I", offset=1, adjust=-4, strip=0)
    tx, rx = framed_cls(a, pg), framed_cls(b, "!I", offset=1, adjust=-4, strip=0)
    assert tx.framing == pg and rx.framing == pg
    big = b"D" + bytes(range(256)) * 1000
    bg = Background(lambda: (tx.send(b"Qselect\x00"), tx.send_many([b"X", big, b"Sab"]), tx.send(big)))
    expected = [b"Q" + struct.pack("!I", 4 + 7) + b"select\x00", b"X" + struct.pack("!I", 4)]
    expected += [b"D" + struct.pack("!I", len(big) + 3) + big[1:], b"S" + struct.pack("!I", 6) + b"ab"]
    expected += [expected[2]]
    got = [rx.recv() for _ in expected]
    bg.join()
    assert got == expected
    assert rx.pending() == 0


def test_mysql_layout_pending_counts_wire_bytes(framed_cls, sock_pair):
    a, b = sock_pair
    packets = [struct.pack("<I", len(p) - 1)[:3] + p for p in (b"\x00abc", b"\x01", b"\x02" + b"x" * 300)]
    a.sendall(b"".join(packets))
    fs = framed_cls(b, "<3", adjust=1)
    assert fs.recv() == b"\x00abc"
    assert fs.poll()
    assert fs.pending() == len(packets[1]) + len(packets[2])
    assert fs.recv_many() == [b"\x01", b"\x02" + b"x" * 300]
