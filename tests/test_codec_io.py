"""The event-loop helpers: Decoder.read_from(fd) and write_frames(fd, ...), for both implementations."""

from __future__ import annotations

import select
import socket
import struct
import threading
from collections.abc import Iterator
from types import ModuleType

import harness
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastframe.exceptions import FrameTooLarge, IncompleteFrame


@pytest.fixture
def nb_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected non-blocking TCP pair on 127.0.0.1 (what an event loop holds)."""
    a, b = harness.tcp_pair()
    a.setblocking(False)
    b.setblocking(False)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def drain(decoder: object, sock: socket.socket, want: int, rounds: int = 100000) -> list[bytes]:
    """read_from until ``want`` frames arrived (bounded; the data is already in flight on loopback)."""
    got: list[bytes] = []
    for _ in range(rounds):
        try:
            frames = decoder.read_from(sock.fileno())  # type: ignore[attr-defined]
        except BlockingIOError:
            select.select([sock], [], [], 1.0)  # nothing ready yet: wait for it
            continue
        assert frames is not None, "unexpected end of stream"
        got.extend(frames)
        if len(got) >= want:
            return got
    raise AssertionError(f"only {len(got)} of {want} frames arrived")


def test_write_frames_wire_bytes(codec: ModuleType, nb_pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = nb_pair
    payloads = [b"", b"x", harness.pseudo_random(300), harness.pseudo_random(70000, 1)]
    for prefix in ("!I", "<H", "varint"):
        small = [p for p in payloads if len(p) <= 65535]
        assert codec.write_frames(a.fileno(), small, prefix) is None
        expected = harness.encode(small, prefix)
        b.setblocking(True)
        b.settimeout(harness.TIMEOUT)
        assert harness.recv_exactly(b, len(expected)) == expected
        b.setblocking(False)


def test_write_frames_empty_and_types(codec: ModuleType, nb_pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = nb_pair
    assert codec.write_frames(a.fileno(), []) is None
    assert codec.write_frames(a.fileno(), iter([bytearray(b"ab"), memoryview(b"cd")])) is None
    b.settimeout(harness.TIMEOUT)
    assert harness.recv_exactly(b, 12) == harness.encode([b"ab", b"cd"])
    with pytest.raises(ValueError):
        codec.write_frames(a.fileno(), [b"x"], "?Z")
    with pytest.raises(FrameTooLarge):
        codec.write_frames(a.fileno(), [b"x" * 256], "!B")


def test_write_frames_returns_what_the_kernel_did_not_take(
    codec: ModuleType, nb_pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = nb_pair
    payloads = [harness.pseudo_random(50000, i) for i in range(200)]  # ~10 MB: more than loopback buffers hold
    rest = codec.write_frames(a.fileno(), payloads)
    assert isinstance(rest, memoryview)
    expected = harness.encode(payloads)
    assert 0 < len(rest) < len(expected)
    assert bytes(rest) == expected[len(expected) - len(rest) :]
    # While the socket stays full, further calls hand back what the kernel did not take (a suffix of the
    # frame), and whatever was taken is in the stream in order.
    taken = []
    tail = harness.encode([b"tail"])
    for _ in range(100000):
        again = codec.write_frames(a.fileno(), [b"tail"])
        if again is not None:
            assert 0 < len(again) <= len(tail) and bytes(again) == tail[len(tail) - len(again) :]
            taken.append(tail[: len(tail) - len(again)])
            break
        taken.append(tail)
    else:
        pytest.fail("the socket never filled up")
    b.setblocking(True)
    b.settimeout(harness.TIMEOUT)
    stream = expected[: len(expected) - len(rest)] + b"".join(taken)
    assert harness.recv_exactly(b, len(stream)) == stream


def test_write_frames_errors(codec: ModuleType) -> None:
    a, b = socket.socketpair()
    b.close()
    try:
        with pytest.raises(BrokenPipeError):  # no SIGPIPE kills the process
            for _ in range(10):
                codec.write_frames(a.fileno(), [b"x" * 1000])
    finally:
        a.close()
    with pytest.raises(OSError):
        codec.write_frames(-1, [b"x"])


def test_read_from(codec: ModuleType, nb_pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = nb_pair
    decoder = codec.Decoder()
    with pytest.raises(BlockingIOError):
        decoder.read_from(b.fileno())
    payloads = [b"", b"hello", harness.pseudo_random(200000, 3), b"after-large", harness.pseudo_random(70000, 4)]
    a.setblocking(True)
    a.sendall(harness.encode(payloads))
    assert drain(decoder, b, len(payloads)) == payloads
    assert decoder.pending == 0
    a.shutdown(socket.SHUT_WR)
    for _ in range(1000):
        try:
            result = decoder.read_from(b.fileno())
        except BlockingIOError:
            continue
        assert result is None  # end of stream
        break
    else:
        pytest.fail("no end of stream")
    decoder.close()


def test_read_from_agrees_with_feed(codec: ModuleType, nb_pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = nb_pair
    payloads = [harness.pseudo_random(n, n) for n in (0, 1, 3, 4, 5, 1000, 65535, 65536, 65537, 300000)]
    wire = harness.encode(payloads, "varint")
    a.setblocking(True)
    a.sendall(wire)
    via_socket = drain(codec.Decoder("varint"), b, len(payloads))
    assert via_socket == codec.Decoder("varint").feed(wire) == payloads


def test_read_from_frame_errors(codec: ModuleType, nb_pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = nb_pair
    a.setblocking(True)
    a.sendall(harness.encode([b"ok"]) + b"\xff\xff\xff\xff")
    decoder = codec.Decoder(max_frame=1024)
    for _ in range(1000):
        try:
            decoder.read_from(b.fileno())
        except BlockingIOError:
            continue
        except FrameTooLarge as exc:
            assert exc.frames == [b"ok"]
            assert (exc.size, exc.limit) == (0xFFFFFFFF, 1024)
            break
    else:
        pytest.fail("FrameTooLarge not raised")
    with pytest.raises(ValueError):  # FrameError: the decoder refuses further input
        decoder.read_from(b.fileno())


def test_read_from_bad_fd(codec: ModuleType) -> None:
    decoder = codec.Decoder()
    with pytest.raises(OSError):
        decoder.read_from(-1)
    # A failed read lends nothing: buffer_updated cannot account for bytes that never came.
    with pytest.raises(ValueError):
        decoder.buffer_updated(1)


def test_max_frame_can_be_changed(codec: ModuleType) -> None:
    """Servers start a connection with a small limit (an auth handshake) and raise it afterwards."""
    decoder = codec.Decoder(max_frame=16)
    assert decoder.feed(harness.encode([b"x" * 16])) == [b"x" * 16]
    decoder.max_frame = 1000
    assert decoder.max_frame == 1000
    assert decoder.feed(harness.encode([b"y" * 1000])) == [b"y" * 1000]
    decoder.max_frame = 10
    with pytest.raises(FrameTooLarge) as info:
        decoder.feed(harness.encode([b"z" * 11]))
    assert (info.value.size, info.value.limit) == (11, 10)
    other = codec.Decoder()
    with pytest.raises(ValueError):
        other.max_frame = -1
    with pytest.raises(TypeError):
        other.max_frame = 1.5
    assert other.max_frame == codec.DEFAULT_MAX_FRAME


# -- whole frames as they were on the wire: feed_wire() / read_wire_from() -------------------------------

WIRE_PAYLOADS = [b"", b"a", b"bc" * 50, bytes(range(256)) * 300, b"z" * 65536, b"tail"]


def test_feed_wire_every_split(codec: ModuleType) -> None:
    for prefix in ("!I", "<H", "varint"):
        payloads = [p for p in WIRE_PAYLOADS if len(p) <= 65535 or prefix != "<H"]
        wire = harness.encode(payloads, prefix)
        bounds = []  # end offsets of the frames: a wire result must always stop on one of them
        pos = 0
        for p in payloads:
            pos += len(harness.header(len(p), prefix)) + len(p)
            bounds.append(pos)
        for split in list(range(0, 40)) + list(range(40, len(wire), 997)) + [len(wire)]:
            decoder = codec.Decoder(prefix, max_frame=1 << 20)
            first = decoder.feed_wire(wire[:split])
            assert isinstance(first, memoryview) and first.readonly
            assert len(first) == max([0] + [b for b in bounds if b <= split])
            assert decoder.pending == split - len(first)
            second = decoder.feed_wire(bytearray(wire[split:]))
            assert bytes(first) + bytes(second) == wire
            assert decoder.pending == 0
            decoder.close()


def test_feed_wire_byte_at_a_time(codec: ModuleType) -> None:
    payloads = [b"", b"x", b"hello world"]
    wire = harness.encode(payloads, "varint")
    decoder = codec.Decoder("varint")
    out = b"".join(bytes(decoder.feed_wire(wire[i : i + 1])) for i in range(len(wire)))
    assert out == wire


def test_feed_wire_limits_and_errors(codec: ModuleType) -> None:
    decoder = codec.Decoder(max_frame=100)
    with pytest.raises(FrameTooLarge) as info:
        decoder.feed_wire(harness.encode([b"one", b"two"]) + struct.pack("!I", 101))
    assert info.value.frames == [b"one", b"two"]  # the whole frames before the bad header are not lost
    with pytest.raises(ValueError):  # FrameError: refused from now on
        decoder.feed_wire(harness.encode([b"x"]))
    bad_varint = codec.Decoder("varint")
    with pytest.raises(ValueError):
        bad_varint.feed_wire(b"\x80\x00")
    cut = codec.Decoder()
    assert bytes(cut.feed_wire(harness.encode([b"whole"]) + b"\x00\x00\x00\x09part")) == harness.encode([b"whole"])
    with pytest.raises(IncompleteFrame):
        cut.close()


def test_feed_wire_views_are_read_only_and_stable(codec: ModuleType) -> None:
    decoder = codec.Decoder()
    held = []
    for i in range(300):  # enough traffic to wrap, compact and grow the read buffer many times
        payload = harness.pseudo_random((i * 7919) % 5000, i)
        held.append((decoder.feed_wire(harness.encode([payload])), payload))
    for view, payload in held:
        assert bytes(view) == harness.encode([payload])
        with pytest.raises(TypeError):
            view[0] = 0


def test_switching_between_feed_and_feed_wire(codec: ModuleType) -> None:
    decoder = codec.Decoder()
    assert decoder.feed(harness.encode([b"list"])) == [b"list"]
    assert bytes(decoder.feed_wire(harness.encode([b"wire"]))) == harness.encode([b"wire"])
    big = harness.pseudo_random(200000, 9)
    wire = harness.encode([big])
    assert decoder.feed(wire[:1000]) == []  # a large frame begun by feed() ...
    with pytest.raises(ValueError):
        decoder.feed_wire(wire[1000:])  # ... must be finished by feed()
    assert decoder.feed(wire[1000:]) == [big]
    assert bytes(decoder.feed_wire(wire)) == wire  # between frames, either is fine


def test_read_wire_from_zero_copy_relay(codec: ModuleType, nb_pair: tuple[socket.socket, socket.socket]) -> None:
    """Views returned by read_wire_from stay intact while held, even as more data arrives."""
    a, b = nb_pair
    payloads = [harness.pseudo_random((i * 104729) % 70000, i) for i in range(60)]
    wire = harness.encode(payloads)
    sender = threading.Thread(target=lambda: (a.setblocking(True), a.sendall(wire), a.shutdown(socket.SHUT_WR)))
    sender.start()
    decoder = codec.Decoder()
    held = []
    try:
        for _ in range(100000):
            try:
                view = decoder.read_wire_from(b.fileno())
            except BlockingIOError:
                select.select([b], [], [], 1.0)
                continue
            if view is None:
                break
            held.append(view)
        else:
            pytest.fail("no end of stream")
    finally:
        sender.join(10)
    assert b"".join(bytes(v) for v in held) == wire
    decoder.close()


@settings(max_examples=150, deadline=None)
@given(
    payloads=st.lists(st.binary(max_size=300), max_size=12),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=8),
    prefix=st.sampled_from(["!B", "!H", "!I", "<Q", "varint"]),
)
def test_feed_wire_property(payloads: list[bytes], cuts: list[int], prefix: str) -> None:
    from fastframe import _codec, _codec_py

    wire = b"".join(_codec_py.encode(p, prefix) for p in payloads)
    points = sorted({0, len(wire), *[c % (len(wire) + 1) for c in cuts]})
    for module in (_codec, _codec_py):
        decoder = module.Decoder(prefix)
        out = b"".join(bytes(decoder.feed_wire(wire[i:j])) for i, j in zip(points, points[1:]))
        assert out == wire
        assert decoder.pending == 0


def test_relay_echoes_whole_frames(codec: ModuleType, nb_pair: tuple[socket.socket, socket.socket]) -> None:
    """relay(fd) sends the whole frames of each read back to fd, keeps partial ones, and reports EOF."""
    a, b = nb_pair
    payloads = [harness.pseudo_random((i * 7901) % 3000, i) for i in range(40)]
    wire = harness.encode(payloads)
    decoder = codec.Decoder()
    a.setblocking(True)
    a.settimeout(harness.TIMEOUT)
    a.sendall(wire[:-3])  # the last frame is cut short: it must not come back yet
    echoed = b""
    for _ in range(100000):
        if len(echoed) == len(wire) - len(harness.encode(payloads[-1:])):
            break
        try:
            rest = decoder.relay(b.fileno())
        except BlockingIOError:
            select.select([b], [], [], 0.2)
            a.setblocking(False)
            try:
                echoed += a.recv(1 << 20)
            except BlockingIOError:
                pass
            a.setblocking(True)
            continue
        assert rest == b""  # loopback buffers take these small batches whole
    expected = wire[: len(wire) - len(harness.encode(payloads[-1:]))]
    assert echoed == expected
    assert decoder.pending == len(harness.encode(payloads[-1:])) - 3
    assert decoder.completed == len(payloads) - 1
    a.sendall(wire[-3:])
    a.shutdown(socket.SHUT_WR)
    result: object = b""
    for _ in range(100000):
        try:
            result = decoder.relay(b.fileno())
        except BlockingIOError:
            select.select([b], [], [], 0.2)
            continue
        if result is None:
            break
    assert result is None
    assert harness.recv_exactly(a, len(harness.encode(payloads[-1:]))) == harness.encode(payloads[-1:])
    assert decoder.completed == len(payloads)
    decoder.close()


def test_relay_to_another_socket_and_backpressure(codec: ModuleType) -> None:
    """relay(fd, out_fd) forwards to a different socket and hands back what a full socket did not take."""
    src_a, src_b = socket.socketpair()
    dst_a, dst_b = socket.socketpair()
    for s in (src_b, dst_a, dst_b):
        s.setblocking(False)
    try:
        payload = harness.pseudo_random(200000, 5)
        frames = harness.encode([payload] * 40)  # 8 MB: more than a socketpair holds
        decoder = codec.Decoder()
        sender = threading.Thread(target=lambda: (src_a.sendall(frames), src_a.shutdown(socket.SHUT_WR)))
        sender.start()
        stream = bytearray()  # what the destination's reader sees, in order
        refused = 0

        def drain() -> None:
            try:
                while True:
                    stream.extend(dst_b.recv(1 << 20))
            except BlockingIOError:
                pass

        for _ in range(200000):
            try:
                rest = decoder.relay(src_b.fileno(), dst_a.fileno())
            except BlockingIOError:
                select.select([src_b], [], [], 0.2)
                continue
            if rest is None:
                break
            if rest:
                # The destination is full: a real relay queues the rest and sends it once writable.
                refused += 1
                drain()
                stream.extend(rest)
        sender.join(10)
        drain()
        assert refused, "the destination never filled up"
        assert bytes(stream) == frames
        assert decoder.completed == 40
    finally:
        for s in (src_a, src_b, dst_a, dst_b):
            s.close()


def test_relay_frame_error(codec: ModuleType, nb_pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = nb_pair
    a.setblocking(True)
    a.sendall(harness.encode([b"good"]) + struct.pack("!I", 1 << 30))
    decoder = codec.Decoder()
    for _ in range(100000):
        try:
            decoder.relay(b.fileno())
        except BlockingIOError:
            select.select([b], [], [], 0.2)
            continue
        except FrameTooLarge as exc:
            assert exc.frames == [b"good"]  # not sent: the caller decides what to do with them
            break
    else:
        pytest.fail("no FrameTooLarge")
    a.settimeout(0.2)
    with pytest.raises(socket.timeout):
        a.recv(10)  # nothing of that read was echoed


def test_completed_counts_frames(codec: ModuleType) -> None:
    decoder = codec.Decoder()
    assert decoder.completed == 0
    big = harness.pseudo_random(100000, 1)
    wire = harness.encode([b"a", b"", big, b"b"])
    decoder.feed(wire[:10])
    assert decoder.completed == 2
    harness.feed_via_buffer(decoder, wire[10:])
    assert decoder.completed == 4
    decoder.feed_wire(harness.encode([b"c"] * 3))
    assert decoder.completed == 7
    with pytest.raises(FrameTooLarge):
        decoder.feed_wire(harness.encode([b"d"]) + struct.pack("!I", 1 << 30))
    assert decoder.completed == 8  # the whole frame before the error counts once


@pytest.mark.parametrize("method", ["read_from", "relay"])
def test_decoders_reading_in_turn_keep_their_own_data(codec: ModuleType, method: str) -> None:
    """The extension reads into one area shared by every decoder when a decoder holds nothing; the tails it
    keeps must stay with their own decoder however reads interleave."""
    pairs = [harness.tcp_pair() for _ in range(3)]
    try:
        streams = []
        for i, (a, b) in enumerate(pairs):
            b.setblocking(False)
            payloads = [harness.pseudo_random(((i + 1) * 7919 * k) % 9000, i * 1000 + k) for k in range(30)]
            streams.append((a, b, codec.Decoder(), payloads, harness.encode(payloads), bytearray(), []))
        offsets = [0] * len(streams)
        for step in range(10000):
            progressed = False
            for idx, (a, b, decoder, payloads, wire, echoed, got) in enumerate(streams):
                if offsets[idx] < len(wire):
                    chunk = wire[offsets[idx] : offsets[idx] + 1 + (step * 131 + idx * 17) % 5000]
                    a.sendall(chunk)  # arbitrary cuts: most reads leave part of a frame behind
                    offsets[idx] += len(chunk)
                    progressed = True
                select.select([b], [], [], 0.05)
                try:
                    result = getattr(decoder, method)(b.fileno())
                except BlockingIOError:
                    continue
                assert result is not None
                if method == "read_from":
                    got.extend(result)
                else:
                    assert result == b""
                    a.settimeout(5)
                    while len(echoed) < sum(len(harness.encode([p])) for p in payloads[: decoder.completed]):
                        echoed.extend(a.recv(1 << 20))
            if not progressed and all(s[2].pending == 0 and s[2].completed == len(s[3]) for s in streams):
                break
        for _a, _b, _decoder, payloads, wire, echoed, got in streams:
            if method == "read_from":
                assert got == payloads
            else:
                assert bytes(echoed) == wire
    finally:
        for a, b in pairs:
            a.close()
            b.close()
