"""fastframe.aio: the BufferedProtocol base class and the stream helpers, over real loopback TCP."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import struct
from types import ModuleType
from typing import Any

import harness
import pytest

from fastframe import aio
from fastframe._aio_streams import _StreamProtocol
from fastframe.exceptions import FrameTooLarge, IncompleteFrame

TIMEOUT = 20.0


@pytest.fixture(autouse=True)
def aio_codec(codec: ModuleType, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Run the asyncio layer on the codec under test (both implementations)."""
    monkeypatch.setattr(aio.FrameProtocol, "codec", codec)
    return codec


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT))


def sizes() -> list[int]:
    return [0, 1, 100, 65535, 65536, 70000, 2 * 1024 * 1024 + 3]


def test_protocol_round_trip() -> None:
    payloads = [harness.pseudo_random(n, n) for n in sizes()]

    class Echo(aio.FrameProtocol):
        def frame_received(self, frame: bytes) -> None:
            self.send_frame(frame[::-1])

    class Client(aio.FrameProtocol):
        def __init__(self) -> None:
            super().__init__(max_frame=16 * 1024 * 1024)
            self.got: list[bytes] = []
            self.done = asyncio.get_running_loop().create_future()

        def frame_received(self, frame: bytes) -> None:
            self.got.append(frame)
            if len(self.got) == len(payloads):
                self.done.set_result(None)

    async def main() -> list[bytes]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: Echo(max_frame=16 * 1024 * 1024), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport, client = await loop.create_connection(Client, "127.0.0.1", port)
        for p in payloads:
            client.send_frame(p)
        await client.done
        transport.close()
        server.close()
        await server.wait_closed()
        return client.got

    assert run(main()) == [p[::-1] for p in payloads]


def test_protocol_frame_error_aborts() -> None:
    errors: list[BaseException] = []

    class Strict(aio.FrameProtocol):
        def frame_received(self, frame: bytes) -> None:
            self.send_frame(b"ok:" + frame)

        def frame_error(self, exc: Any) -> None:
            errors.append(exc)
            super().frame_error(exc)

    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: Strict(max_frame=1000), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(harness.encode([b"first"]) + struct.pack("!I", 5000))
        data = await reader.read()  # until the server aborts the connection
        writer.close()
        server.close()
        await server.wait_closed()
        return data

    assert run(main()) == harness.encode([b"ok:first"])
    assert len(errors) == 1 and isinstance(errors[0], FrameTooLarge)
    assert (errors[0].size, errors[0].limit) == (5000, 1000)


def test_streams_echo() -> None:
    payloads = [harness.pseudo_random(n, n + 1) for n in sizes()]

    async def handle(reader: aio.FrameReader, writer: aio.FrameWriter) -> None:
        async for frame in reader:
            writer.write_frame(frame)
            await writer.drain()
        writer.close()

    async def main() -> list[bytes]:
        server = await aio.start_server(handle, "127.0.0.1", 0, max_frame=16 * 1024 * 1024)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await aio.open_connection("127.0.0.1", port, max_frame=16 * 1024 * 1024)
        writer.write_frames(payloads[:3])
        for p in payloads[3:]:
            writer.write_frame(p)
        await writer.drain()
        got = [await reader.read_frame() for _ in payloads]
        writer.write_eof()
        with pytest.raises(EOFError):
            await reader.read_frame()
        assert reader.at_eof()
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return got

    assert run(main()) == payloads


def test_streams_incomplete_frame() -> None:
    async def main() -> list[Any]:
        outcome: list[Any] = []
        done = asyncio.get_running_loop().create_future()

        async def handle(reader: aio.FrameReader, writer: aio.FrameWriter) -> None:
            try:
                while True:
                    outcome.append(await reader.read_frame())
            except Exception as exc:  # the outcome under test
                outcome.append(exc)
            writer.close()
            done.set_result(None)

        server = await aio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(harness.encode([b"whole"]) + struct.pack("!I", 10) + b"cut")
        await w.drain()
        w.close()
        await done
        server.close()
        await server.wait_closed()
        return outcome

    outcome = run(main())
    assert outcome[0] == b"whole"
    assert isinstance(outcome[1], IncompleteFrame)
    assert (outcome[1].received, outcome[1].expected) == (7, 14)


def test_streams_backpressure_loses_nothing() -> None:
    """A reader that stops reading pauses the transport; the writer's drain() waits; nothing is lost."""
    count, size = 400, 50000  # 20 MB, well past every high-water mark on both sides

    async def main() -> str:
        digest = hashlib.sha256()
        release = asyncio.Event()
        finished = asyncio.get_running_loop().create_future()

        async def handle(reader: aio.FrameReader, writer: aio.FrameWriter) -> None:
            await release.wait()  # do not read at first: the client must be held back by drain()
            for _ in range(count):
                digest.update(await reader.read_frame())
            writer.close()
            finished.set_result(None)

        server = await aio.start_server(handle, "127.0.0.1", 0, high_water=256 * 1024)
        port = server.sockets[0].getsockname()[1]
        _, writer = await aio.open_connection("127.0.0.1", port)
        sent = hashlib.sha256()
        blocked = False
        for i in range(count):
            payload = harness.pseudo_random(size, i)
            sent.update(payload)
            writer.write_frame(payload)
            try:
                await asyncio.wait_for(writer.drain(), 0.05 if not release.is_set() else TIMEOUT)
            except asyncio.TimeoutError:
                blocked = True
                release.set()
                await writer.drain()
        release.set()
        await finished
        writer.close()
        server.close()
        await server.wait_closed()
        assert blocked, "drain() never waited although the peer was not reading"
        assert digest.hexdigest() == sent.hexdigest()
        return "ok"

    assert run(main()) == "ok"


def test_streams_interoperate_with_framed_socket(framed_cls: Any) -> None:
    payloads = [harness.pseudo_random(n, 7) for n in (0, 5, 100000)]

    def blocking_client(port: int) -> list[bytes]:
        with framed_cls(socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)) as fs:
            fs.send_many(payloads)
            return [fs.recv() for _ in payloads]

    async def handle(reader: aio.FrameReader, writer: aio.FrameWriter) -> None:
        async for frame in reader:
            writer.write_frame(frame + b"!")
        writer.close()

    async def main() -> list[bytes]:
        server = await aio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        got: list[bytes] = await asyncio.get_running_loop().run_in_executor(None, blocking_client, port)
        server.close()
        await server.wait_closed()
        return got

    assert run(main()) == [p + b"!" for p in payloads]


def test_handler_exception_closes_connection() -> None:
    async def handle(reader: aio.FrameReader, writer: aio.FrameWriter) -> None:
        await reader.read_frame()
        raise RuntimeError("handler bug")

    async def main() -> bytes | None:
        server = await aio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await aio.open_connection("127.0.0.1", port)
        writer.write_frame(b"boom")
        with pytest.raises(EOFError):
            await reader.read_frame()
        writer.close()
        server.close()
        await server.wait_closed()
        return None

    run(main())


# -- batching: what a read's callbacks send goes out in one write --------------------------------------


class FakeTransport(asyncio.Transport):
    """Records what a protocol does with its transport, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[Any] = []
        self.closing = False

    def write(self, data: Any) -> None:
        self.calls.append(("write", bytes(data)))

    def writelines(self, items: Any) -> None:
        self.calls.append(("writelines", list(items)))

    def close(self) -> None:
        self.closing = True
        self.calls.append(("close",))

    def abort(self) -> None:
        self.closing = True
        self.calls.append(("abort",))

    def write_eof(self) -> None:
        self.calls.append(("write_eof",))

    def can_write_eof(self) -> bool:
        return True

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        self.calls.append(("pause_reading",))

    def resume_reading(self) -> None:
        self.calls.append(("resume_reading",))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def wire(self) -> bytes:
        """Every byte written, in order (writelines flattened)."""
        out = b""
        for call in self.calls:
            if call[0] == "write":
                out += call[1]
            elif call[0] == "writelines":
                out += b"".join(bytes(x) for x in call[1])
        return out


def deliver(protocol: asyncio.BufferedProtocol, data: bytes) -> None:
    """What an event loop does with one recv() of ``data``: get_buffer(), copy, buffer_updated()."""
    pos = 0
    while pos < len(data):
        view = protocol.get_buffer(len(data) - pos)
        n = min(len(view), len(data) - pos)
        view[:n] = data[pos : pos + n]
        protocol.buffer_updated(n)
        pos += n


class Upper(aio.FrameProtocol):
    def frame_received(self, frame: bytes) -> None:
        self.send_frame(frame.upper())


def test_protocol_writes_one_reads_replies_in_one_write() -> None:
    proto, transport = Upper(), FakeTransport()
    proto.connection_made(transport)
    requests = [b"a", b"bc", b"", b"def"] * 4
    deliver(proto, harness.encode(requests))
    assert transport.calls == [("write", harness.encode([r.upper() for r in requests]))]
    deliver(proto, harness.encode([b"x"]))
    assert transport.calls[1:] == [("write", harness.encode([b"X"]))]


def test_protocol_frames_received_gets_each_reads_frames() -> None:
    got: list[list[bytes]] = []

    class Batch(aio.FrameProtocol):
        def frames_received(self, frames: list[bytes]) -> None:
            got.append(list(frames))
            self.send_frames([f[::-1] for f in frames])

    proto, transport = Batch(), FakeTransport()
    proto.connection_made(transport)
    wire = harness.encode([b"one", b"two", b"three"])
    deliver(proto, wire[:9])  # "one" complete, "two" cut inside its payload
    deliver(proto, wire[9:])
    assert got == [[b"one"], [b"two", b"three"]]
    assert transport.calls == [("write", harness.encode([b"eno"])), ("write", harness.encode([b"owt", b"eerht"]))]


def test_protocol_default_frames_received_calls_frame_received() -> None:
    seen: list[bytes] = []

    class Both(aio.FrameProtocol):
        def frame_received(self, frame: bytes) -> None:
            seen.append(frame)

    proto = Both()
    proto.connection_made(FakeTransport())
    aio.FrameProtocol.frames_received(proto, [b"p", b"q"])  # the documented default, called as a subclass would
    deliver(proto, harness.encode([b"r", b"s"]))
    assert seen == [b"p", b"q", b"r", b"s"]


def test_protocol_transport_use_comes_after_the_frames_sent_before() -> None:
    class Mixed(aio.FrameProtocol):
        def frame_received(self, frame: bytes) -> None:
            self.send_frame(b"before")
            assert self.transport is not None
            self.transport.write(b"raw")
            self.send_frame(b"after")
            if frame == b"bye":
                self.send_frame(b"last")
                self.transport.close()

    proto, transport = Mixed(), FakeTransport()
    proto.connection_made(transport)
    deliver(proto, harness.encode([b"hi", b"bye"]))
    assert transport.calls == [
        ("write", harness.encode([b"before"])),
        ("write", b"raw"),
        ("write", harness.encode([b"after", b"before"])),
        ("write", b"raw"),
        ("write", harness.encode([b"after", b"last"])),
        ("close",),
    ]


def test_protocol_subclass_that_sets_transport_itself() -> None:
    class Own(aio.FrameProtocol):
        def connection_made(self, transport: Any) -> None:  # no super(): an older subclass's habit
            self.transport = transport

        def frame_received(self, frame: bytes) -> None:
            self.send_frame(frame)

    proto, transport = Own(), FakeTransport()
    proto.connection_made(transport)
    assert proto.transport is transport
    deliver(proto, harness.encode([b"a", b"b"]))
    assert transport.wire() == harness.encode([b"a", b"b"])


def test_protocol_non_bytes_payload_is_copied_when_sent() -> None:
    class Reuse(aio.FrameProtocol):
        def __init__(self) -> None:
            super().__init__()
            self.scratch = bytearray(3)

        def frame_received(self, frame: bytes) -> None:
            self.scratch[:] = frame[:3]
            self.send_frame(self.scratch)  # reused for the next frame before the batch is written
            self.send_frame(memoryview(self.scratch)[1:])

    proto, transport = Reuse(), FakeTransport()
    proto.connection_made(transport)
    deliver(proto, harness.encode([b"abc", b"xyz"]))
    assert transport.wire() == harness.encode([b"abc", b"bc", b"xyz", b"yz"])


def test_protocol_large_frame_keeps_its_place_uncopied() -> None:
    big = harness.pseudo_random(aio.SCATTER_THRESHOLD, 3)

    class Mixed(aio.FrameProtocol):
        def frame_received(self, frame: bytes) -> None:
            self.send_frames([b"s1", big, b"s2"])

    proto, transport = Mixed(), FakeTransport()
    proto.connection_made(transport)
    deliver(proto, harness.encode([b"go"]))
    assert [c[0] for c in transport.calls] == ["write", "writelines", "write"]
    assert transport.calls[1][1][1] is big  # next to its header, not copied behind it
    assert transport.wire() == harness.encode([b"s1", big, b"s2"])


def test_protocol_sends_outside_callbacks_at_once() -> None:
    proto, transport = Upper(), FakeTransport()
    proto.connection_made(transport)
    proto.send_frame(b"one")
    proto.send_frames([b"two", bytearray(b"three")])
    assert transport.calls == [("write", harness.encode([b"one"])), ("write", harness.encode([b"two", b"three"]))]


def test_protocol_callback_error_writes_what_was_sent_and_recovers() -> None:
    class Flaky(aio.FrameProtocol):
        def frame_received(self, frame: bytes) -> None:
            if frame == b"boom":
                raise RuntimeError("handler bug")
            self.send_frame(frame)

    proto, transport = Flaky(), FakeTransport()
    proto.connection_made(transport)
    with pytest.raises(RuntimeError):
        deliver(proto, harness.encode([b"a", b"boom", b"b"]))
    assert transport.calls == [("write", harness.encode([b"a"]))]
    proto.send_frame(b"later")  # no batch is left open: written at once
    assert transport.calls[-1] == ("write", harness.encode([b"later"]))


def test_protocol_overridden_get_buffer_is_used() -> None:
    hints: list[int] = []

    class Counting(Upper):
        def get_buffer(self, sizehint: int) -> memoryview:
            hints.append(sizehint)
            return super().get_buffer(sizehint)

    proto, transport = Counting(), FakeTransport()
    proto.connection_made(transport)
    deliver(proto, harness.encode([b"q"]))
    assert hints and transport.wire() == harness.encode([b"Q"])


def test_protocol_eof_inside_a_frame_is_a_frame_error() -> None:
    errors: list[BaseException] = []

    class Strict(Upper):
        def frame_error(self, exc: Any) -> None:
            errors.append(exc)
            super().frame_error(exc)

    proto, transport = Strict(), FakeTransport()
    proto.connection_made(transport)
    deliver(proto, harness.encode([b"whole"]) + struct.pack("!I", 10) + b"cut")
    proto.eof_received()
    assert transport.calls == [("write", harness.encode([b"WHOLE"])), ("abort",)]
    assert len(errors) == 1 and isinstance(errors[0], IncompleteFrame)


def test_protocol_frames_before_a_bad_header_are_answered_in_one_write() -> None:
    class Strict(Upper):
        def frame_error(self, exc: Any) -> None:
            self.send_frame(b"error")
            super().frame_error(exc)

    proto, transport = Strict(max_frame=100), FakeTransport()
    proto.connection_made(transport)
    deliver(proto, harness.encode([b"a", b"b"]) + struct.pack("!I", 101))
    assert transport.calls == [
        ("write", harness.encode([b"A", b"B"])),
        ("write", harness.encode([b"error"])),
        ("abort",),
    ]


# -- the stream writer: frames written in one task step go out together ------------------------------


async def stream_pair(high_water: int = aio.DEFAULT_HIGH_WATER) -> Any:
    reader = aio.FrameReader(high_water)
    proto = _StreamProtocol(reader, "!I", None)
    transport = FakeTransport()
    proto.connection_made(transport)
    assert proto.writer is not None
    return proto, reader, proto.writer, transport


def test_writer_answers_a_reads_frames_in_one_write() -> None:
    async def main() -> None:
        proto, reader, writer, transport = await stream_pair()
        deliver(proto, harness.encode([b"r1", b"r2", b"r3"]))
        for _ in range(3):
            frame = await reader.read_frame()
            writer.write_frame(frame.upper())
            await writer.drain()
            if reader._frames:
                assert transport.calls == []  # collected while requests are still waiting
        assert transport.calls == [("write", harness.encode([b"R1", b"R2", b"R3"]))]

    run(main())


def test_writer_collected_frames_go_out_when_the_loop_gets_control() -> None:
    async def main() -> None:
        proto, reader, writer, transport = await stream_pair()
        deliver(proto, harness.encode([b"r1", b"r2", b"r3"]))
        writer.write_frame(await reader.read_frame())  # two requests still wait: collected
        writer.write_frames([b"x", memoryview(b"yz")])
        assert transport.calls == []
        await asyncio.sleep(0)  # e.g. the handler awaits something else before reading on
        assert transport.calls == [("write", harness.encode([b"r1", b"x", b"yz"]))]

    run(main())


def test_writer_writes_at_once_when_nothing_else_waits() -> None:
    async def main() -> None:
        proto, reader, writer, transport = await stream_pair()
        deliver(proto, harness.encode([b"only"]))
        frame = await reader.read_frame()
        writer.write_frame(frame)
        assert transport.calls == [("write", harness.encode([b"only"]))]

    run(main())


def test_writer_close_write_eof_and_transport_come_after_collected_frames() -> None:
    async def main() -> None:
        proto, reader, writer, transport = await stream_pair()
        writer.write_frame(b"first")  # written at once
        writer.write_frames([b"a", bytearray(b"b")])
        writer.transport.write(b"raw")
        writer.write_frame(b"c")
        writer.write_eof()
        writer.write_frame(b"d")
        writer.close()
        await asyncio.sleep(0)
        assert transport.calls == [
            ("write", harness.encode([b"first"])),
            ("write", harness.encode([b"a", b"b"])),
            ("write", b"raw"),
            ("write", harness.encode([b"c"])),
            ("write_eof",),
            ("write", harness.encode([b"d"])),
            ("close",),
        ]

    run(main())


def test_writer_hands_over_at_the_batch_limit_and_sends_large_frames_uncopied() -> None:
    async def main() -> None:
        proto, reader, writer, transport = await stream_pair()
        writer.write_frame(b"x")  # nothing waits to be read: at once
        deliver(proto, harness.encode([b"waiting"]))  # from now on frames are collected
        chunk = b"y" * 1000
        n = aio.WRITE_BATCH_LIMIT // len(chunk) + 1
        for _ in range(n):
            writer.write_frame(chunk)
        assert [c[0] for c in transport.calls] == ["write", "write"]  # the limit flushed, no await needed
        big = harness.pseudo_random(aio.SCATTER_THRESHOLD, 5)
        writer.write_frame(b"z")
        writer.write_frame(big)
        assert transport.calls[-2] == ("write", harness.encode([b"z"]))
        assert transport.calls[-1][0] == "writelines" and transport.calls[-1][1][1] is big
        assert transport.wire() == harness.encode([b"x"] + [chunk] * n + [b"z", big])
        assert await reader.read_frame() == b"waiting"

    run(main())


def test_writer_after_connection_lost_drops_quietly() -> None:
    async def main() -> None:
        proto, reader, writer, transport = await stream_pair()
        deliver(proto, harness.encode([b"a", b"b"]))
        writer.write_frame(b"queued")
        proto.connection_lost(None)
        await asyncio.sleep(0)
        assert transport.calls == []
        with pytest.raises(ConnectionResetError):
            await writer.drain()

    run(main())


def test_reader_pauses_on_a_batch_over_high_water_and_read_frames() -> None:
    async def main() -> None:
        proto, reader, writer, transport = await stream_pair(high_water=1000)
        frames = [bytes([i]) * 300 for i in range(5)]  # 1500 bytes in one read: over the mark
        deliver(proto, harness.encode(frames))
        assert transport.calls == [("pause_reading",)]
        assert await reader.read_frame() == frames[0]  # 1200 left: still above half the mark
        assert transport.calls == [("pause_reading",)]
        assert await reader.read_frames() == frames[1:]
        assert transport.calls == [("pause_reading",), ("resume_reading",)]
        deliver(proto, harness.encode([b"more"]))
        proto.eof_received()
        assert await reader.read_frames() == [b"more"]
        with pytest.raises(EOFError):
            await reader.read_frames()

    run(main())


# -- real loopback, both loops: pipelined frames come back complete and in order ---------------------


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_factory(request: pytest.FixtureRequest) -> Any:
    if request.param == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        return uvloop.new_event_loop
    return asyncio.new_event_loop


def run_on(factory: Any, coro: Any) -> Any:
    loop = factory()
    try:
        return loop.run_until_complete(asyncio.wait_for(coro, TIMEOUT))
    finally:
        loop.close()


@pytest.mark.parametrize("kind", ["frame_received", "frames_received", "streams"])
def test_pipelined_frames_come_back_in_order(loop_factory: Any, kind: str) -> None:
    """Many frames per read (small, 16 KiB and large ones mixed): every reply, in order, on both loops."""
    payloads = [harness.pseudo_random(n, i) for i, n in enumerate([5, 0, 64, 70000, 3, 16384, 1, 200000, 9] * 30)]
    wire = harness.encode(payloads)

    class PerFrame(aio.FrameProtocol):
        def __init__(self) -> None:
            super().__init__(max_frame=1 << 20)

        def frame_received(self, frame: bytes) -> None:
            self.send_frame(frame[::-1])

    class PerRead(PerFrame):
        def frames_received(self, frames: list[bytes]) -> None:
            self.send_frames([f[::-1] for f in frames])

    async def handle(reader: aio.FrameReader, writer: aio.FrameWriter) -> None:
        async for frame in reader:
            writer.write_frame(frame[::-1])
            await writer.drain()
        writer.close()

    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        if kind == "streams":
            server = await aio.start_server(handle, "127.0.0.1", 0, max_frame=1 << 20)
        else:
            server = await loop.create_server(PerFrame if kind == "frame_received" else PerRead, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(wire)
        await writer.drain()
        got = await reader.readexactly(len(wire))
        writer.close()
        server.close()
        await server.wait_closed()
        return got

    assert run_on(loop_factory, main()) == harness.encode([p[::-1] for p in payloads])


def test_protocol_pause_reading_holds_the_peer_back_and_loses_nothing(loop_factory: Any) -> None:
    """A FrameProtocol that pauses reading mid-batch: nothing arrives while paused, nothing is lost, order kept."""
    payloads = [harness.pseudo_random(1000 + i % 7, i) for i in range(3000)]  # ~3 MB, past the socket buffers

    async def main() -> list[bytes]:
        loop = asyncio.get_running_loop()
        got: list[bytes] = []
        paused = asyncio.Event()
        done = loop.create_future()
        protocols: list[aio.FrameProtocol] = []

        class Slow(aio.FrameProtocol):
            def frame_received(self, frame: bytes) -> None:
                got.append(frame)
                self.send_frame(frame[:1])  # collected in the batch; the pause below must not lose it
                if len(got) == 100:
                    assert self.transport is not None
                    self.transport.pause_reading()
                    paused.set()
                if len(got) == len(payloads):
                    done.set_result(None)

        def factory() -> Slow:
            protocols.append(Slow())
            return protocols[-1]

        server = await loop.create_server(factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(harness.encode(payloads))
        await paused.wait()
        seen = len(got)  # the rest of the read that paused is still delivered, then nothing
        await asyncio.sleep(0.3)
        assert len(got) == seen < len(payloads)
        transport = protocols[0].transport
        assert transport is not None
        transport.resume_reading()
        await writer.drain()
        await done
        replies = await reader.readexactly(5 * len(payloads))
        assert replies == harness.encode([p[:1] for p in payloads])
        writer.close()
        server.close()
        await server.wait_closed()
        return got

    assert run_on(loop_factory, main()) == payloads


# -- layout options (offset, adjust, strip, Framing) -----------------------------------------------------------


PG = dict(offset=1, adjust=-4, strip=0)  # PostgreSQL: a type byte, then a length that counts itself


def pg_wire(message: bytes) -> bytes:
    """A PostgreSQL message as the frame ``message`` (type byte + body) goes on the wire, built with struct."""
    return message[:1] + struct.pack("!I", len(message) - 1 + 4) + message[1:]


def test_protocol_options_wire_bytes_small_and_large() -> None:
    """The frames a FrameProtocol sends with offset/adjust (batched, at once, and large ones next to their
    header with the leading byte in front), and what it receives with strip=0: the frame as on the wire."""
    from fastframe import Framing

    big = b"D" + harness.pseudo_random(aio.SCATTER_THRESHOLD + 10, 9)
    got: list[bytes] = []

    class Pg(aio.FrameProtocol):
        def frame_received(self, frame: bytes) -> None:
            got.append(frame)
            self.send_frames([b"Zreply", big])

    for proto in (Pg("!I", **PG), Pg(Framing("!I", **PG))):  # keywords or a Framing: one layout
        got.clear()
        transport = FakeTransport()
        proto.connection_made(transport)
        assert proto.prefix == "!I" and proto.framing == Framing("!I", **PG)
        deliver(proto, pg_wire(b"Qselect 1\x00") + pg_wire(b"X"))
        assert got == [pg_wire(b"Qselect 1\x00"), pg_wire(b"X")]  # strip=0: type byte and length kept
        proto.send_frame(b"S")
        assert transport.wire() == (pg_wire(b"Zreply") + pg_wire(big)) * 2 + pg_wire(b"S")
        large = [c for c in transport.calls if c[0] == "writelines"]
        assert large and all(bytes(c[1][1]) == big[1:] for c in large)  # the body was not copied behind


def test_protocol_options_are_checked_like_the_codec() -> None:
    from fastframe import Framing

    with pytest.raises(TypeError, match="not both"):
        aio.FrameProtocol(Framing("!I", offset=1), offset=1)
    with pytest.raises(ValueError, match="strip"):
        aio.FrameProtocol("!H", strip=9)


@pytest.mark.parametrize(
    "layout",
    [
        {"prefix": "!I", **PG},
        {"prefix": "<3", "adjust": 1},  # MySQL: a 3-byte little-endian length that leaves out the sequence byte
        {"prefix": "varint"},
        {"prefix": "!H", "max_frame": 70000, "offset": 2, "strip": 2},
    ],
    ids=["postgres", "mysql", "varint", "offset2"],
)
def test_streams_with_options_round_trip(layout: Any) -> None:
    """Both stream ends configured with the same options, an echo between them: what comes back is what the
    layout makes of a frame sent twice (with ``strip`` the server echoes the frame as it received it)."""
    from fastframe import Framing

    framing = Framing(**layout)
    limit = 60000 if framing.prefix == "!H" else 200_000
    payloads = [b"\x01" * framing.offset + harness.pseudo_random(n, n) for n in (1, 2, 300, limit)]

    async def handle(reader: aio.FrameReader, writer: aio.FrameWriter) -> None:
        async for frame in reader:
            writer.write_frame(frame)
            await writer.drain()
        writer.close()

    async def main() -> list[bytes]:
        server = await aio.start_server(handle, "127.0.0.1", 0, prefix=framing)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await aio.open_connection("127.0.0.1", port, **layout)
        writer.write_frames(payloads[:2])
        for p in payloads[2:]:
            writer.write_frame(p)
        got = [await reader.read_frame() for _ in payloads]
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return got

    codec = aio.FrameProtocol.codec
    received = codec.Decoder(framing).feed(codec.encode_many(payloads, framing))  # what the server reads
    expected = codec.Decoder(framing).feed(codec.encode_many(received, framing))  # what comes back
    assert run(main()) == expected


def test_bad_options_fail_before_connecting() -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="offset"):
            await aio.open_connection("127.0.0.1", 9, offset=-1)  # (port 9 is never reached)
        with pytest.raises(ValueError, match="unknown prefix"):
            await aio.start_server(lambda r, w: None, "127.0.0.1", 0, prefix="!X")

    run(main())


# -- Unix domain sockets --------------------------------------------------------------------------------------


def test_unix_streams_round_trip(loop_factory: Any, tmp_path: Any) -> None:
    path = str(tmp_path / "echo.sock")
    payloads = [harness.pseudo_random(n, n) for n in (0, 5, 70000, 3)]

    async def handle(reader: aio.FrameReader, writer: aio.FrameWriter) -> None:
        async for frame in reader:
            writer.write_frame(frame[::-1])
        writer.close()

    async def main() -> list[bytes]:
        server = await aio.start_unix_server(handle, path, max_frame=1 << 20)
        reader, writer = await aio.open_unix_connection(path, max_frame=1 << 20)
        assert writer.get_extra_info("peername") in (path, "")  # a Unix socket, not TCP
        writer.write_frames(payloads)
        got = [await reader.read_frame() for _ in payloads]
        writer.write_eof()
        with pytest.raises(EOFError):
            await reader.read_frame()
        writer.close()
        server.close()
        await server.wait_closed()
        return got

    assert run_on(loop_factory, main()) == [p[::-1] for p in payloads]


def test_unix_streams_with_options(tmp_path: Any) -> None:
    path = str(tmp_path / "pg.sock")

    async def handle(reader: aio.FrameReader, writer: aio.FrameWriter) -> None:
        writer.write_frame(b"R" + await reader.read_frame())
        writer.close()

    async def main() -> bytes:
        server = await aio.start_unix_server(handle, path, **PG)
        reader, writer = await aio.open_unix_connection(path, **PG)
        writer.write_frame(b"Qx")
        reply = await reader.read_frame()
        writer.close()
        server.close()
        await server.wait_closed()
        return reply

    # the server received pg_wire(b"Qx") (strip=0) and sent b"R" + that as one frame
    assert run(main()) == pg_wire(b"R" + pg_wire(b"Qx"))
