"""fastframe.aio with ``ssl=`` on both ends (trustme certificates), on asyncio's loop and uvloop, both codecs."""

from __future__ import annotations

import asyncio
import ssl
from types import ModuleType, SimpleNamespace
from typing import Any

import harness
import pytest

from fastframe import _tls, aio

TIMEOUT = 20.0


@pytest.fixture(autouse=True)
def aio_codec(codec: ModuleType, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setattr(aio.FrameProtocol, "codec", codec)
    return codec


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_factory(request: pytest.FixtureRequest) -> Any:
    if request.param == "uvloop":
        return pytest.importorskip("uvloop").new_event_loop
    return asyncio.new_event_loop


def run_on(factory: Any, coro: Any) -> Any:
    loop = factory()
    try:
        return loop.run_until_complete(asyncio.wait_for(coro, TIMEOUT))
    finally:
        loop.close()


def payloads_of() -> list[bytes]:
    return [harness.pseudo_random(n, i) for i, n in enumerate([5, 0, 64, 70000, 3, 16384, 1, 300000, 9] * 10)]


async def echo(reader: aio.FrameReader, writer: aio.FrameWriter) -> None:
    async for frame in reader:
        writer.write_frame(frame[::-1])
        await writer.drain()
    writer.close()


def test_streams_over_tls(loop_factory: Any, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
    payloads = payloads_of()

    async def main() -> list[bytes]:
        server = await aio.start_server(echo, "127.0.0.1", 0, ssl=server_ctx, max_frame=1 << 20)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await aio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost", max_frame=1 << 20
        )
        assert writer.get_extra_info("ssl_object").version() == "TLSv1.3"
        writer.write_frames(payloads)  # many frames per TLS record, large ones across records
        await writer.drain()
        got = [await reader.read_frame() for _ in payloads]
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return got

    assert run_on(loop_factory, main()) == [p[::-1] for p in payloads]


def test_frame_protocol_over_tls(loop_factory: Any, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
    """A FrameProtocol server behind ``ssl=``: the TLS transport hands it decrypted bytes through
    get_buffer/buffer_updated, and one read's replies still go out in one write."""
    payloads = payloads_of()

    class Reverse(aio.FrameProtocol):
        def __init__(self) -> None:
            super().__init__(max_frame=1 << 20)

        def frames_received(self, frames: list[bytes]) -> None:
            self.send_frames([f[::-1] for f in frames])

    async def main() -> list[bytes]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Reverse, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await aio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost", max_frame=1 << 20
        )
        writer.write_frames(payloads)
        got = [await reader.read_frame() for _ in payloads]
        writer.close()
        server.close()
        await server.wait_closed()
        return got

    assert run_on(loop_factory, main()) == [p[::-1] for p in payloads]


def test_tls_with_layout_options(loop_factory: Any, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
    pg = dict(offset=1, adjust=-4, strip=0)

    async def handle(reader: aio.FrameReader, writer: aio.FrameWriter) -> None:
        frame = await reader.read_frame()
        writer.write_frame(b"R" + frame)
        writer.close()

    async def main() -> bytes:
        server = await aio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx, **pg)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await aio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname="localhost", **pg)
        writer.write_frame(b"Qx")
        reply = await reader.read_frame()
        writer.close()
        server.close()
        await server.wait_closed()
        return reply

    # the server read b"Q" + len 5 + b"x" (strip=0) and sent b"R" + that; the client reads it as on the wire
    assert run_on(loop_factory, main()) == b"R\x00\x00\x00\x0aQ\x00\x00\x00\x05x"


def test_tls_certificate_checked(loop_factory: Any, server_ctx: ssl.SSLContext, pki: SimpleNamespace) -> None:
    async def main() -> None:
        server = await aio.start_server(echo, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(ssl.SSLCertVerificationError):
                await aio.open_connection("127.0.0.1", port, ssl=_tls.client_context(pki.other_ca),
                                          server_hostname="localhost")  # fmt: skip
            with pytest.raises(ssl.SSLCertVerificationError):
                await aio.open_connection("127.0.0.1", port, ssl=_tls.client_context(pki.ca),
                                          server_hostname="wrong.example")  # fmt: skip
            reader, writer = await aio.open_connection("127.0.0.1", port, ssl=_tls.client_context(pki.ca),
                                                       server_hostname="localhost")  # fmt: skip
            writer.write_frame(b"ok")
            assert await reader.read_frame() == b"ko"
            writer.close()
        finally:
            server.close()
            await server.wait_closed()

    run_on(loop_factory, main())


def test_unix_socket_with_tls(
    loop_factory: Any, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, tmp_path: Any
) -> None:
    path = str(tmp_path / "tls.sock")

    async def main() -> bytes:
        server = await aio.start_unix_server(echo, path, ssl=server_ctx)
        reader, writer = await aio.open_unix_connection(path, ssl=client_ctx, server_hostname="localhost")
        writer.write_frame(b"unix+tls")
        reply = await reader.read_frame()
        writer.close()
        server.close()
        await server.wait_closed()
        return reply

    assert run_on(loop_factory, main()) == b"slt+xinu"
