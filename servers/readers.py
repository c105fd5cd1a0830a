"""Read strategies: how a connection turns readiness into service calls and replies.  One is chosen when the
connection is made (:func:`make_reader`), the way an asyncio transport picks its read path once.

A strategy is an object with one entry point, :meth:`Reader.on_readable`, shared by all: one receive, then
what was received goes on.  The strategies differ in what they receive and where it goes:

* :class:`FramedReader` -- the general path.  ``decoder.read_from(fd)``: one ``recv_into`` straight into the
  decoder's memory, returning the frames it completed; :meth:`FramedReader.deliver` hands them to the service
  in one call (``frames_received``), and the replies go out encoded into one buffer by one ``send``
  (``write_frames(fd, ...)``); what the kernel does not take is queued on the connection.
* :class:`MirrorReader` -- a service whose replies are its requests, byte for byte (echo).  ``decoder.relay(fd)``
  receives, checks every frame and sends the whole ones back from the decoder's memory, all in one C call:
  no object per frame and no call into the service.  The only path that does this.
* :class:`RawReader` -- unframed (RFC 862 echo, the TCP time service): the bytes of one ``recv`` go to the
  service's ``data_received`` and its reply is sent.
* :class:`DiscardReader` -- after the last reply went out and our side was shut: read and drop what the client
  still sends, until its end of stream.

So one frame's way, from ``recv_into`` to ``send``: :meth:`Reader.on_readable` -> ``decoder.read_from`` ->
:meth:`FramedReader.deliver` -> ``service.frames_received`` -> ``write_frames`` (or
:meth:`~servers.connection.Connection.queue_rest` when the kernel takes only part; the connection's
``flush`` sends the rest when the socket is writable).

Reads never overtake output: while anything is queued on the connection (bytes, or a file being sent),
received frames queue behind it (``receive_behind``; for a mirror, a copy of the checked wire bytes).

Beneath every strategy sits the connection's transport (:mod:`servers.transport`).  On a plain socket
(``transport.direct_fd`` set) the codec reads and writes the descriptor itself, as above.  On a layer that
transforms the bytes (TLS) the framed strategy reads through ``transport.recv_into`` into
``decoder.get_buffer()`` and writes ``encode_many`` through ``transport.send``, and asks again while the layer
holds plaintext (``pending()``); the mirror strategy is not chosen there.  A first-stage strategy -- a TLS
handshake, a PROXY-protocol header -- is a :class:`Reader` too: when it is done it hands over with
``conn.set_reader(make_reader(conn))``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from fastframe import Decoder, encode_many, write_frames
from fastframe.exceptions import FrameError

from .loop import Loop
from .service import Service
from .transport import Transport

if TYPE_CHECKING:  # pragma: no cover
    from .connection import Connection

__all__ = ["DiscardReader", "FramedReader", "MirrorReader", "RawReader", "Reader", "make_reader"]

RAW_READ = 256 * 1024  # bytes asked of one recv by the unframed strategies


class Reader:
    """A read strategy; subclasses set what to receive (``receive``, and ``receive_behind`` for when output is
    queued) and where it goes (``received``).  ``receive(fd)`` returns None at the end of the stream, raises
    BlockingIOError when nothing was ready."""

    __slots__ = ("conn", "loop", "fd", "receive", "receive_behind", "received")

    def __init__(self, conn: Connection, loop: Loop, fd: int | None) -> None:
        self.conn = conn
        self.loop = loop
        self.fd = fd
        self.receive: Callable[[Any], Any]
        self.receive_behind: Callable[[Any], Any]
        self.received: Callable[[Any], None]

    def on_readable(self, events: int) -> None:
        """The socket is readable (or hung up): one receive, and what it brought goes on."""
        conn = self.conn
        try:
            if conn.out or conn.sending is not None:
                got = self.receive_behind(self.fd)
            else:
                got = self.receive(self.fd)
        except BlockingIOError:
            return
        except FrameError as exc:
            self.broken(exc)
            return
        except OSError as exc:
            conn.read_failed(exc)
            return
        if got is None:
            conn.end_of_stream()
            return
        conn.last = self.loop.now
        if got:
            self.received(got)

    def broken(self, exc: FrameError) -> None:
        """The client broke the framing; ``exc.frames`` are the whole frames it sent before."""
        self.conn.frame_error(exc)


class FramedReader(Reader):
    """Frames in, the service's replies out: one receive into the decoder, one call into the service, one send."""

    __slots__ = ("decoder", "transport", "handle", "write", "prefix")

    def __init__(self, conn: Connection, loop: Loop, transport: Transport, decoder: Decoder, service: Service) -> None:
        super().__init__(conn, loop, transport.direct_fd)
        self.decoder = decoder
        self.transport = transport
        self.handle = service.frames_received
        self.prefix = service.prefix
        self.write: Callable[[Any, list[bytes], str], memoryview | None]
        if transport.direct_fd is not None:
            self.receive = decoder.read_from  # the codec recv_into()s its own memory from the descriptor
            self.write = write_frames
        else:
            self.receive = self._receive_layered
            self.write = self._write_layered
        self.receive_behind = self.receive
        self.received = self.deliver

    def deliver(self, frames: list[bytes]) -> None:
        """Hand the frames of one read to the service; send its replies (or queue them behind earlier output)."""
        conn = self.conn
        try:
            replies = self.handle(conn, frames)
        except Exception:
            conn.service_failed("frames_received")
            return
        if not replies or conn.closed:
            return
        conn.frames_out += len(replies)
        if conn.out or conn.sending is not None:
            conn.queue(encode_many(replies, self.prefix))
            return
        try:
            rest = self.write(self.fd, replies, self.prefix)
        except OSError as exc:
            conn.send_failed(exc)
            return
        if rest is not None:
            conn.queue_rest(rest)

    def broken(self, exc: FrameError) -> None:
        if exc.frames:
            self.deliver(exc.frames)
        if not self.conn.closed:
            self.conn.frame_error(exc)

    def _receive_layered(self, fd: None) -> list[bytes] | None:
        decoder = self.decoder
        transport = self.transport
        try:
            with decoder.get_buffer() as view:
                n = transport.recv_into(view)
        except BaseException:
            decoder.buffer_updated(0)  # give the lent buffer back
            raise
        if not n:
            decoder.buffer_updated(0)
            return None
        frames = decoder.buffer_updated(n)
        if transport.pending():
            self.loop.call_soon(self.conn.read_now)  # the poller cannot see what the layer already holds
        return frames

    def _write_layered(self, fd: None, replies: list[bytes], prefix: str) -> memoryview | None:
        data = encode_many(replies, prefix)
        try:
            sent = self.transport.send(data)
        except BlockingIOError:
            sent = 0
        return None if sent == len(data) else memoryview(data)[sent:]


class MirrorReader(Reader):
    """A mirror service's path: the whole frames of one read go back as they came, in one C call."""

    __slots__ = ("read_wire", "prefix")

    def __init__(self, conn: Connection, loop: Loop, transport: Transport, decoder: Decoder, service: Service) -> None:
        super().__init__(conn, loop, transport.direct_fd)
        self.receive = decoder.relay  # recv, check, send back: what the kernel did not take comes back
        self.read_wire = decoder.read_wire_from
        self.receive_behind = self._copy_behind
        self.received = conn.queue_rest
        self.prefix = service.prefix

    def _copy_behind(self, fd: int) -> bytes | None:
        wire = self.read_wire(fd)
        return None if wire is None else bytes(wire)

    def broken(self, exc: FrameError) -> None:
        conn = self.conn
        if exc.frames:  # the whole frames before the bad one still go back
            conn.send_now(encode_many(exc.frames, self.prefix))
        if not conn.closed:
            conn.frame_error(exc)


class RawReader(Reader):
    """Unframed: the bytes of one read go to the service, and its reply is sent."""

    __slots__ = ("recv", "handle")

    def __init__(self, conn: Connection, loop: Loop, transport: Transport, service: Service) -> None:
        super().__init__(conn, loop, transport.fileno)
        self.recv = transport.recv
        self.handle = service.data_received
        self.receive = self.receive_behind = self._recv
        self.received = self.deliver

    def _recv(self, fd: int) -> bytes | None:
        return self.recv(RAW_READ) or None

    def deliver(self, data: bytes) -> None:
        conn = self.conn
        try:
            reply = self.handle(conn, data)
            if reply and not conn.closed:
                conn.send_now(reply)  # (never raises: a failed send closes the connection)
        except Exception:
            conn.service_failed("data_received")


class DiscardReader(RawReader):
    """Our side is shut and every reply went out: what the client still sends is read and dropped."""

    __slots__ = ()

    def deliver(self, data: bytes) -> None:
        pass


def make_reader(conn: Connection) -> Reader:
    """The strategy for ``conn``'s service over ``conn``'s transport."""
    service = conn.service
    decoder = conn.decoder
    if decoder is None:
        return RawReader(conn, conn.loop, conn.transport, service)
    if service.mirror and conn.transport.direct_fd is not None:
        return MirrorReader(conn, conn.loop, conn.transport, decoder, service)
    return FramedReader(conn, conn.loop, conn.transport, decoder, service)
