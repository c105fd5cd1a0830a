"""The stream side of :mod:`fastframe.aio`: :class:`FrameReader`, :class:`FrameWriter`, the protocol between
them and the transport, and the four ways in (:func:`open_connection`, :func:`open_unix_connection`,
:func:`start_server`, :func:`start_unix_server`).  Import them from :mod:`fastframe.aio`; its docstring is the
theory of operation (how a stream writer's frames are collected and written together).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncIterator, Awaitable, Iterable
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Union,
)

from ._aio_protocol import DEFAULT_HIGH_WATER, WRITE_BATCH_LIMIT, FrameProtocol
from ._framed import SCATTER_THRESHOLD, _flat, _nbytes
from .exceptions import FrameError

if TYPE_CHECKING:  # pragma: no cover
    import ssl as _ssl

    from ._framed import Buffer, Prefix  # (annotations only: _framed defines them for type checkers)

__all__ = [
    "ConnectedCallback",
    "FrameReader",
    "FrameWriter",
    "open_connection",
    "open_unix_connection",
    "start_server",
    "start_unix_server",
]

log = logging.getLogger("fastframe.aio")


class FrameReader:
    """Incoming frames of one connection; created by :func:`open_connection` and :func:`start_server`."""

    def __init__(self, high_water: int = DEFAULT_HIGH_WATER) -> None:
        self._frames: collections.deque[bytes] = collections.deque()
        self._queued = 0
        self._high_water = high_water
        self._waiter: asyncio.Future[None] | None = None
        self._exception: BaseException | None = None
        self._eof = False
        self._transport: asyncio.Transport | None = None
        self._paused = False
        # Set by the protocol: asyncio.get_running_loop() costs a getpid() system call on every wait.
        self._loop: asyncio.AbstractEventLoop | None = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _feed(self, frame: bytes) -> None:
        self._feed_many([frame])

    def _feed_many(self, frames: list[bytes]) -> None:
        self._frames.extend(frames)
        self._queued += sum(map(len, frames))
        if not self._paused and self._queued > self._high_water and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        if self._waiter is not None:
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

    async def _wait(self) -> None:
        """Return once a frame is queued; raise what ended the stream (EOFError for a clean close)."""
        while not self._frames:
            if self._exception is not None:
                raise self._exception
            if self._eof:
                raise EOFError("connection closed by the peer")
            self._waiter = (self._loop or asyncio.get_running_loop()).create_future()
            await self._waiter

    def _taken(self, nbytes: int) -> None:
        self._queued -= nbytes
        if self._paused and self._queued <= self._high_water // 2 and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()

    async def read_frame(self) -> bytes:
        """Return the next frame.

        Raises EOFError when the peer closed between frames, IncompleteFrame when it closed inside one, or
        the error that broke the connection (FrameTooLarge, ConnectionResetError, ...).
        """
        if not self._frames:
            await self._wait()
        frame = self._frames.popleft()
        self._queued -= len(frame)
        if self._paused:
            self._taken(0)
        return frame

    async def read_frames(self) -> list[bytes]:
        """Return every frame received so far, waiting for at least one (errors as :meth:`read_frame`)."""
        if not self._frames:
            await self._wait()
        frames = list(self._frames)
        self._frames.clear()
        self._taken(sum(map(len, frames)))
        return frames

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        # read_frame() inlined: one coroutine per frame instead of two
        if not self._frames:
            try:
                await self._wait()
            except EOFError:
                raise StopAsyncIteration from None
        frame = self._frames.popleft()
        self._queued -= len(frame)
        if self._paused:
            self._taken(0)
        return frame


class FrameWriter:
    """Outgoing frames of one connection; created by :func:`open_connection` and :func:`start_server`.

    While frames received are still waiting to be read, frames written are collected and handed to the
    transport together: once the last waiting frame is answered, when the event loop next gets control (the
    task awaits something that waits), or once 64 KiB are collected, whichever comes first.  With nothing
    waiting to be read (the usual request-reply turn) a frame is written at once.  ``close()``,
    ``write_eof()`` and the ``transport`` property write the collected frames first; ``drain()`` waits as
    asyncio's does.
    """

    def __init__(self, transport: asyncio.Transport, protocol: _StreamProtocol) -> None:
        self._transport = transport
        self._protocol = protocol

    @property
    def transport(self) -> asyncio.Transport:
        """The transport; reading it first hands over the frames collected so far."""
        self._protocol._flush_out()
        return self._transport

    def write_frame(self, payload: Buffer) -> None:
        """Queue one frame; ``await drain()`` to respect the transport's flow control.

        A payload that is not ``bytes`` is copied now (it may be reused at once); a large one (64 KiB or
        more) goes to the transport at once, next to its header, uncopied.
        """
        protocol = self._protocol
        if type(payload) is bytes and len(payload) < SCATTER_THRESHOLD:
            if not protocol._out and not protocol._reader._frames and protocol._lost is None:
                self._transport.write(protocol._encode(payload, protocol._layout))  # the request-reply turn
                return
            protocol._out.append(payload)
            protocol._out_size += len(payload)
        else:
            protocol._add(payload)
        if not protocol._reader._frames or protocol._out_size >= WRITE_BATCH_LIMIT:
            protocol._flush_out()  # nothing else is waiting to be answered (or enough is collected)
        elif protocol._flush_handle is None and protocol._out:
            protocol._schedule_flush()

    def write_frames(self, payloads: Iterable[Buffer]) -> None:
        """Queue several frames (written together)."""
        protocol = self._protocol
        for payload in payloads:
            protocol._add(payload)
        if not protocol._reader._frames or protocol._out_size >= WRITE_BATCH_LIMIT:
            protocol._flush_out()
        elif protocol._flush_handle is None and protocol._out:
            protocol._schedule_flush()

    async def drain(self) -> None:
        """Wait until the transport's buffer is below its high-water mark (raises if the connection died)."""
        protocol = self._protocol
        if protocol._paused or protocol._closed.done() or self._transport.is_closing():
            await protocol._drain()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def write_eof(self) -> None:
        self._protocol._flush_out()
        self._transport.write_eof()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def close(self) -> None:
        self._protocol._flush_out()
        self._transport.close()

    async def wait_closed(self) -> None:
        await self._protocol._closed

    async def __aenter__(self) -> FrameWriter:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        self.close()
        await self.wait_closed()


ConnectedCallback = Callable[[FrameReader, FrameWriter], Union[None, Awaitable[None]]]


class _StreamProtocol(FrameProtocol):
    """Feeds a FrameReader; collects a FrameWriter's frames and implements its drain()."""

    def __init__(
        self,
        reader: FrameReader,
        prefix: Prefix,
        max_frame: int | None,
        on_connect: ConnectedCallback | None = None,
        **options: Any,
    ) -> None:
        super().__init__(prefix, max_frame, **options)
        self._reader = reader
        self._on_connect = on_connect
        loop = asyncio.get_running_loop()
        self._loop = loop
        reader._loop = loop
        self._closed: asyncio.Future[None] = loop.create_future()
        self._drain_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._paused = False
        self._lost: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        self.writer: FrameWriter | None = None
        self._out: list[bytes] = []  # small payloads written by the FrameWriter, not yet given to the transport
        self._out_size = 0
        self._flush_handle: asyncio.Handle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._reader._transport = transport  # type: ignore[assignment]
        self.writer = FrameWriter(transport, self)  # type: ignore[arg-type]
        if self._on_connect is not None:
            result = self._on_connect(self._reader, self.writer)
            if asyncio.iscoroutine(result):
                self._task = self._loop.create_task(result)
                self._task.add_done_callback(self._callback_done)

    def _callback_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("connection handler failed: %r", exc, exc_info=exc)
            if self.transport is not None:
                self.transport.close()

    # -- writing: the FrameWriter's frames, collected ---------------------------------------------------

    def _schedule_flush(self) -> None:
        self._flush_handle = self._loop.call_soon(self._flush_out)

    def _flush_out(self) -> None:
        """Give the collected frames to the transport, in one write."""
        handle = self._flush_handle
        if handle is not None:
            self._flush_handle = None
            handle.cancel()
        out = self._out
        if not out:
            return
        self._out = []
        self._out_size = 0
        if self._lost is not None or self._transport is None:
            return  # the connection is gone: asyncio drops late writes too
        if len(out) == 1:
            self._transport.write(self._encode(out[0], self._layout))
        else:
            self._transport.write(self._encode_many(out, self._layout))

    def _add(self, payload: Buffer) -> None:
        """Collect one frame (a large one flushes what is collected and goes out at once, uncopied)."""
        n = _nbytes(payload)
        if n >= SCATTER_THRESHOLD:
            self._flush_out()
            self.send_frame(payload)
            return
        self._out.append(payload if type(payload) is bytes else bytes(_flat(payload)))
        self._out_size += n
        if self._out_size >= WRITE_BATCH_LIMIT:
            self._flush_out()

    # -- reading ------------------------------------------------------------------------------------------

    def frames_received(self, frames: list[bytes]) -> None:
        self._reader._feed_many(frames)

    def frame_received(self, frame: bytes) -> None:
        self._reader._feed(frame)

    def frame_error(self, exc: FrameError) -> None:
        self._reader._set_exception(exc)
        if self._transport is not None:
            self._transport.abort()

    def eof_received(self) -> bool | None:
        try:
            self._decoder.close()
        except FrameError as exc:
            self._reader._set_exception(exc)
        self._reader._feed_eof()
        return None

    def connection_lost(self, exc: BaseException | None) -> None:
        if exc is not None:
            self._reader._set_exception(exc)
        self._reader._feed_eof()
        self._lost = exc if exc is not None else ConnectionResetError("connection lost")
        self._flush_out()  # drops what was collected: nobody can receive it now
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
        if self._closed.done() or (self._transport is not None and self._transport.is_closing()):
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


def _options(prefix: Prefix, max_frame: int | None, offset: int, adjust: int, strip: int | None) -> dict[str, Any]:
    """The layout options, checked now (a mistake raises here, before any connection, with the codec's message)."""
    FrameProtocol.codec.Decoder(prefix, max_frame, offset=offset, adjust=adjust, strip=strip)
    return {"prefix": prefix, "max_frame": max_frame, "offset": offset, "adjust": adjust, "strip": strip}


def _tls_kwds(kwds: dict[str, Any], ssl: Any, server_hostname: str | None = None) -> dict[str, Any]:
    if ssl is not None:
        kwds["ssl"] = ssl
    if server_hostname is not None:
        kwds["server_hostname"] = server_hostname
    return kwds


async def _open(create: Callable[..., Awaitable[Any]], target: tuple[Any, ...], high_water: int,
                options: dict[str, Any], kwds: dict[str, Any]) -> tuple[FrameReader, FrameWriter]:  # fmt: skip
    """The client side of :func:`open_connection` and :func:`open_unix_connection`: ``create`` is the loop's."""
    reader = FrameReader(high_water)
    _, protocol = await create(lambda: _StreamProtocol(reader, **options), *target, **kwds)
    assert protocol.writer is not None
    return reader, protocol.writer


def _serving(callback: ConnectedCallback, high_water: int, options: dict[str, Any]) -> Callable[[], _StreamProtocol]:
    """The protocol factory of :func:`start_server` and :func:`start_unix_server`."""
    return lambda: _StreamProtocol(FrameReader(high_water), on_connect=callback, **options)


async def open_connection(
    host: str | None = None,
    port: int | None = None,
    *,
    prefix: Prefix = "!I",
    max_frame: int | None = None,
    offset: int = 0,
    adjust: int = 0,
    strip: int | None = None,
    high_water: int = DEFAULT_HIGH_WATER,
    ssl: _ssl.SSLContext | bool | None = None,
    server_hostname: str | None = None,
    **kwds: Any,
) -> tuple[FrameReader, FrameWriter]:
    """Connect to ``host:port`` and return a (FrameReader, FrameWriter) pair.

    ``prefix`` (or a :class:`~fastframe.Framing`), ``max_frame``, ``offset``, ``adjust`` and ``strip`` describe
    the layout as for :class:`~fastframe.FramedSocket`.  ``ssl``: an ``ssl.SSLContext`` for TLS (see
    ``fastframe._tls.client_context`` for one that verifies); ``server_hostname``: the name the certificate
    must carry (default: ``host``).  Other keyword arguments go to ``loop.create_connection``
    (``local_addr``, ``ssl_handshake_timeout``, ...).
    """
    options = _options(prefix, max_frame, offset, adjust, strip)
    loop = asyncio.get_running_loop()
    return await _open(loop.create_connection, (host, port), high_water, options, _tls_kwds(kwds, ssl, server_hostname))


async def open_unix_connection(
    path: str | None = None,
    *,
    prefix: Prefix = "!I",
    max_frame: int | None = None,
    offset: int = 0,
    adjust: int = 0,
    strip: int | None = None,
    high_water: int = DEFAULT_HIGH_WATER,
    ssl: _ssl.SSLContext | bool | None = None,
    server_hostname: str | None = None,
    **kwds: Any,
) -> tuple[FrameReader, FrameWriter]:
    """:func:`open_connection` for a Unix domain socket at ``path`` (``loop.create_unix_connection``).

    With ``ssl``, ``server_hostname`` is required (a Unix socket has no host name to default to)."""
    options = _options(prefix, max_frame, offset, adjust, strip)
    loop = asyncio.get_running_loop()
    return await _open(loop.create_unix_connection, (path,), high_water, options, _tls_kwds(kwds, ssl, server_hostname))


async def start_server(
    client_connected_cb: ConnectedCallback,
    host: str | None = None,
    port: int | None = None,
    *,
    prefix: Prefix = "!I",
    max_frame: int | None = None,
    offset: int = 0,
    adjust: int = 0,
    strip: int | None = None,
    high_water: int = DEFAULT_HIGH_WATER,
    ssl: _ssl.SSLContext | None = None,
    **kwds: Any,
) -> asyncio.AbstractServer:
    """Start a server calling ``client_connected_cb(reader, writer)`` for every connection.

    The callback may be a plain function or a coroutine function (then it runs as a task).  The layout
    options are :func:`open_connection`'s; ``ssl``: an ``ssl.SSLContext`` to serve TLS (see
    ``fastframe._tls.server_context``).  Other keyword arguments go to ``loop.create_server``
    (``ssl_handshake_timeout``, ``reuse_port``, ...).
    """
    factory = _serving(client_connected_cb, high_water, _options(prefix, max_frame, offset, adjust, strip))
    if port is not None:  # by keyword: older typeshed (mypy 1.x) types create_server's port as int, not Optional
        kwds["port"] = port
    return await asyncio.get_running_loop().create_server(factory, host, **_tls_kwds(kwds, ssl))


async def start_unix_server(
    client_connected_cb: ConnectedCallback,
    path: str | None = None,
    *,
    prefix: Prefix = "!I",
    max_frame: int | None = None,
    offset: int = 0,
    adjust: int = 0,
    strip: int | None = None,
    high_water: int = DEFAULT_HIGH_WATER,
    ssl: _ssl.SSLContext | None = None,
    **kwds: Any,
) -> asyncio.AbstractServer:
    """:func:`start_server` on a Unix domain socket at ``path`` (``loop.create_unix_server``)."""
    factory = _serving(client_connected_cb, high_water, _options(prefix, max_frame, offset, adjust, strip))
    return await asyncio.get_running_loop().create_unix_server(factory, path, **_tls_kwds(kwds, ssl))
