"""fastframe.aio: the BufferedProtocol base class and the stream helpers, over real loopback TCP."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import struct
from types import ModuleType, SimpleNamespace
from typing import Any, List, Optional

import pytest

from fastframe import aio
from fastframe.exceptions import FrameTooLarge, IncompleteFrame

TIMEOUT = 20.0


@pytest.fixture(autouse=True)
def aio_codec(codec: ModuleType, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Run the asyncio layer on the codec under test (both implementations)."""
    monkeypatch.setattr(aio.FrameProtocol, "codec", codec)
    return codec


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT))


def sizes() -> List[int]:
    return [0, 1, 100, 65535, 65536, 70000, 2 * 1024 * 1024 + 3]


def test_protocol_round_trip(ref: SimpleNamespace) -> None:
    payloads = [ref.pseudo_random(n, n) for n in sizes()]

    class Echo(aio.FrameProtocol):
        def frame_received(self, frame: bytes) -> None:
            self.send_frame(frame[::-1])

    class Client(aio.FrameProtocol):
        def __init__(self) -> None:
            super().__init__(max_frame=16 * 1024 * 1024)
            self.got: List[bytes] = []
            self.done = asyncio.get_running_loop().create_future()

        def frame_received(self, frame: bytes) -> None:
            self.got.append(frame)
            if len(self.got) == len(payloads):
                self.done.set_result(None)

    async def main() -> List[bytes]:
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


def test_protocol_frame_error_aborts(ref: SimpleNamespace) -> None:
    errors: List[BaseException] = []

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
        writer.write(ref.encode([b"first"]) + struct.pack("!I", 5000))
        data = await reader.read()  # until the server aborts the connection
        writer.close()
        server.close()
        await server.wait_closed()
        return data

    assert run(main()) == ref.encode([b"ok:first"])
    assert len(errors) == 1 and isinstance(errors[0], FrameTooLarge)
    assert (errors[0].size, errors[0].limit) == (5000, 1000)


def test_streams_echo(ref: SimpleNamespace) -> None:
    payloads = [ref.pseudo_random(n, n + 1) for n in sizes()]

    async def handle(reader: aio.FrameReader, writer: aio.FrameWriter) -> None:
        async for frame in reader:
            writer.write_frame(frame)
            await writer.drain()
        writer.close()

    async def main() -> List[bytes]:
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


def test_streams_incomplete_frame(ref: SimpleNamespace) -> None:
    async def main() -> List[Any]:
        outcome: List[Any] = []
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
        w.write(ref.encode([b"whole"]) + struct.pack("!I", 10) + b"cut")
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


def test_streams_backpressure_loses_nothing(ref: SimpleNamespace) -> None:
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
            payload = ref.pseudo_random(size, i)
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


def test_streams_interoperate_with_framed_socket(ref: SimpleNamespace, framed_cls: Any) -> None:
    payloads = [ref.pseudo_random(n, 7) for n in (0, 5, 100000)]

    def blocking_client(port: int) -> List[bytes]:
        with framed_cls(socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)) as fs:
            fs.send_many(payloads)
            return [fs.recv() for _ in payloads]

    async def handle(reader: aio.FrameReader, writer: aio.FrameWriter) -> None:
        async for frame in reader:
            writer.write_frame(frame + b"!")
        writer.close()

    async def main() -> List[bytes]:
        server = await aio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        got: List[bytes] = await asyncio.get_running_loop().run_in_executor(None, blocking_client, port)
        server.close()
        await server.wait_closed()
        return got

    assert run(main()) == [p + b"!" for p in payloads]


def test_handler_exception_closes_connection() -> None:
    async def handle(reader: aio.FrameReader, writer: aio.FrameWriter) -> None:
        await reader.read_frame()
        raise RuntimeError("handler bug")

    async def main() -> Optional[bytes]:
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
