"""asyncio integration: a BufferedProtocol that speaks frames, and stream-style helpers.

Two ways in:

* subclass :class:`FrameProtocol` and implement ``frame_received(frame)``; the event loop reads straight into
  the decoder's memory (``get_buffer``/``buffer_updated``), and ``send_frame()`` writes one frame;
* or use :func:`open_connection` / :func:`start_server`, which hand out a :class:`FrameReader`
  (``await read_frame()``) and a :class:`FrameWriter` (``write_frame()``, ``await drain()``), shaped like
  asyncio's own streams.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from types import ModuleType
from typing import Any, AsyncIterator, Awaitable, Callable, ClassVar, Deque, Iterable, Optional, Tuple, Union

from ._codec_choice import codec as _impl
from ._framed import SCATTER_THRESHOLD, Buffer, _nbytes
from .exceptions import FrameError

__all__ = ["FrameProtocol", "FrameReader", "FrameWriter", "open_connection", "start_server"]

log = logging.getLogger("fastframe.aio")

#: The reader pauses the transport once this many payload bytes are queued and not yet read.
DEFAULT_HIGH_WATER = 4 * 1024 * 1024


class FrameProtocol(asyncio.BufferedProtocol):
    """A protocol whose unit is the frame.

    Override :meth:`frame_received`; override :meth:`frame_error` to change what happens when the peer
    breaks the framing (the default logs and aborts the connection).  ``transport`` is set by
    ``connection_made``.
    """

    codec: ClassVar[ModuleType] = _impl

    def __init__(self, prefix: str = "!I", max_frame: Optional[int] = None) -> None:
        codec = self.codec
        self.prefix = prefix
        self._decoder = codec.Decoder(prefix, codec.DEFAULT_MAX_FRAME if max_frame is None else max_frame)
        self._encode = codec.encode
        self._encode_many = codec.encode_many
        self._header = codec.header
        self.transport: Optional[asyncio.Transport] = None

    # -- asyncio.BufferedProtocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._decoder.get_buffer(sizehint)  # type: ignore[no-any-return]

    def buffer_updated(self, nbytes: int) -> None:
        try:
            frames = self._decoder.buffer_updated(nbytes)
        except FrameError as exc:
            for frame in exc.frames:
                self.frame_received(frame)
            self.frame_error(exc)
            return
        for frame in frames:
            self.frame_received(frame)

    def eof_received(self) -> Optional[bool]:
        try:
            self._decoder.close()
        except FrameError as exc:
            self.frame_error(exc)
        return None

    # -- frames ---------------------------------------------------------------------------------------

    def frame_received(self, frame: bytes) -> None:
        """Called once per complete incoming frame, in order."""
        raise NotImplementedError

    def frame_error(self, exc: FrameError) -> None:
        """Called when the incoming stream breaks the framing (oversized, malformed or cut-off frame)."""
        log.warning("closing connection: %s", exc)
        if self.transport is not None:
            self.transport.abort()

    def send_frame(self, payload: Buffer) -> None:
        """Write one frame (large payloads are not copied behind their header)."""
        assert self.transport is not None, "send_frame() before connection_made()"
        n = _nbytes(payload)
        if n < SCATTER_THRESHOLD:
            self.transport.write(self._encode(payload, self.prefix))
        else:
            self.transport.writelines([self._header(n, self.prefix), payload])

    def send_frames(self, payloads: Iterable[Buffer]) -> None:
        """Write several frames in one transport write."""
        assert self.transport is not None, "send_frames() before connection_made()"
        self.transport.write(self._encode_many(payloads, self.prefix))


class FrameReader:
    """Incoming frames of one connection; created by :func:`open_connection` and :func:`start_server`."""

    def __init__(self, high_water: int = DEFAULT_HIGH_WATER) -> None:
        self._frames: Deque[bytes] = collections.deque()
        self._queued = 0
        self._high_water = high_water
        self._waiter: Optional[asyncio.Future[None]] = None
        self._exception: Optional[BaseException] = None
        self._eof = False
        self._transport: Optional[asyncio.Transport] = None
        self._paused = False

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _feed(self, frame: bytes) -> None:
        self._frames.append(frame)
        self._queued += len(frame)
        if not self._paused and self._queued > self._high_water and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def _set_exception(self, exc: BaseException) -> None:
        if self._exception is None:
            self._exception = exc
        self._wake()

    def _feed_eof(self) -> None:
        self._eof = True
        self._wake()

    def at_eof(self) -> bool:
        """True when the peer has closed and every received frame was read."""
        return self._eof and not self._frames

    async def read_frame(self) -> bytes:
        """Return the next frame.

        Raises EOFError when the peer closed between frames, IncompleteFrame when it closed inside one, or
        the error that broke the connection (FrameTooLarge, ConnectionResetError, ...).
        """
        while not self._frames:
            if self._exception is not None:
                raise self._exception
            if self._eof:
                raise EOFError("connection closed by the peer")
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        frame = self._frames.popleft()
        self._queued -= len(frame)
        if self._paused and self._queued <= self._high_water // 2 and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        return frame

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.read_frame()
        except EOFError:
            raise StopAsyncIteration from None


class FrameWriter:
    """Outgoing frames of one connection; created by :func:`open_connection` and :func:`start_server`."""

    def __init__(self, transport: asyncio.Transport, protocol: "_StreamProtocol") -> None:
        self._transport = transport
        self._protocol = protocol

    @property
    def transport(self) -> asyncio.Transport:
        return self._transport

    def write_frame(self, payload: Buffer) -> None:
        """Queue one frame; ``await drain()`` to respect the transport's flow control."""
        self._protocol.send_frame(payload)

    def write_frames(self, payloads: Iterable[Buffer]) -> None:
        """Queue several frames as one write."""
        self._protocol.send_frames(payloads)

    async def drain(self) -> None:
        """Wait until the transport's buffer is below its high-water mark (raises if the connection died)."""
        await self._protocol._drain()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def write_eof(self) -> None:
        self._transport.write_eof()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def close(self) -> None:
        self._transport.close()

    async def wait_closed(self) -> None:
        await self._protocol._closed

    async def __aenter__(self) -> "FrameWriter":
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        self.close()
        await self.wait_closed()


ConnectedCallback = Callable[[FrameReader, FrameWriter], Union[None, Awaitable[None]]]


class _StreamProtocol(FrameProtocol):
    """Feeds a FrameReader and implements FrameWriter.drain()."""

    def __init__(
        self,
        reader: FrameReader,
        prefix: str,
        max_frame: Optional[int],
        on_connect: Optional[ConnectedCallback] = None,
    ) -> None:
        super().__init__(prefix, max_frame)
        self._reader = reader
        self._on_connect = on_connect
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._closed: asyncio.Future[None] = loop.create_future()
        self._drain_waiters: Deque[asyncio.Future[None]] = collections.deque()
        self._paused = False
        self._lost: Optional[BaseException] = None
        self._task: Optional[asyncio.Task[None]] = None
        self.writer: Optional[FrameWriter] = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._reader._transport = transport  # type: ignore[assignment]
        self.writer = FrameWriter(transport, self)  # type: ignore[arg-type]
        if self._on_connect is not None:
            result = self._on_connect(self._reader, self.writer)
            if asyncio.iscoroutine(result):
                self._task = self._loop.create_task(result)
                self._task.add_done_callback(self._callback_done)

    def _callback_done(self, task: "asyncio.Task[None]") -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("connection handler failed: %r", exc, exc_info=exc)
            if self.transport is not None:
                self.transport.close()

    def frame_received(self, frame: bytes) -> None:
        self._reader._feed(frame)

    def frame_error(self, exc: FrameError) -> None:
        self._reader._set_exception(exc)
        if self.transport is not None:
            self.transport.abort()

    def eof_received(self) -> Optional[bool]:
        try:
            self._decoder.close()
        except FrameError as exc:
            self._reader._set_exception(exc)
        self._reader._feed_eof()
        return None

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        if exc is not None:
            self._reader._set_exception(exc)
        self._reader._feed_eof()
        self._lost = exc if exc is not None else ConnectionResetError("connection lost")
        if not self._closed.done():
            self._closed.set_result(None)
        self._wake_drainers()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake_drainers()

    def _wake_drainers(self) -> None:
        while self._drain_waiters:
            waiter = self._drain_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    async def _drain(self) -> None:
        if self._closed.done() or (self.transport is not None and self.transport.is_closing()):
            # Let the loop run once so a closing transport can report connection_lost.
            await asyncio.sleep(0)
            if self._lost is not None:
                raise ConnectionResetError("connection lost") from self._lost
        if not self._paused:
            return
        waiter = self._loop.create_future()
        self._drain_waiters.append(waiter)
        await waiter
        if self._lost is not None and self._paused:
            raise ConnectionResetError("connection lost") from self._lost


async def open_connection(
    host: Optional[str] = None,
    port: Optional[int] = None,
    *,
    prefix: str = "!I",
    max_frame: Optional[int] = None,
    high_water: int = DEFAULT_HIGH_WATER,
    **kwds: Any,
) -> Tuple[FrameReader, FrameWriter]:
    """Connect to ``host:port`` and return a (FrameReader, FrameWriter) pair.

    Extra keyword arguments go to ``loop.create_connection`` (``ssl``, ``local_addr``, ...).
    """
    loop = asyncio.get_running_loop()
    reader = FrameReader(high_water)
    _, protocol = await loop.create_connection(
        lambda: _StreamProtocol(reader, prefix, max_frame), host, port, **kwds  # type: ignore[arg-type]
    )
    assert protocol.writer is not None
    return reader, protocol.writer


async def start_server(
    client_connected_cb: ConnectedCallback,
    host: Optional[str] = None,
    port: Optional[int] = None,
    *,
    prefix: str = "!I",
    max_frame: Optional[int] = None,
    high_water: int = DEFAULT_HIGH_WATER,
    **kwds: Any,
) -> asyncio.AbstractServer:
    """Start a server calling ``client_connected_cb(reader, writer)`` for every connection.

    The callback may be a plain function or a coroutine function (then it runs as a task).  Extra keyword
    arguments go to ``loop.create_server``.
    """
    loop = asyncio.get_running_loop()
    if port is not None:  # by keyword: older typeshed (mypy 1.x) types create_server's port as int, not Optional
        kwds["port"] = port
    return await loop.create_server(
        lambda: _StreamProtocol(FrameReader(high_water), prefix, max_frame, client_connected_cb), host, **kwds
    )
