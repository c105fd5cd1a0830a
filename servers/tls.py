"""TLS in the engine: the first stage that runs the server-side handshake, and the transport it leaves behind.

A TCP listener given a server context (``fastframe serve --tls-cert --tls-key [--tls-client-ca]``) gets
:func:`tls_stage` appended to its :attr:`~servers.listen.Listener.stages`; each accepted connection then runs
the handshake before the service hears of it, and the read strategies read and write through
:class:`TLSTransport` instead of the socket.

Theory of operation
===================

* **The handshake stage** (:class:`HandshakeReader`) wraps the connection's socket in a
  :class:`~servers.tlslayer.TLSLayer` as soon as it starts, and makes the connection's transport the TLS one at
  once (so that a close during the handshake -- its deadline, a graceful stop -- closes the wrapped socket).
  Each readiness event drives ``do_handshake`` one step.  When OpenSSL wants to write (a full send buffer
  under a large certificate chain), the stage moves the loop's interest for the descriptor to WRITE and back
  to READ afterwards, keeping ``conn.events`` what the loop has.  The deadline is the connection's stage
  deadline (``frame_timeout`` after the accept, enforced by the engine's sweep): a client that connects and
  says nothing costs one connection slot until then.  A failed handshake logs one line naming the peer and
  the reason (:func:`fastframe._tls.describe`) and closes that connection only, the way a graceful close does
  (our side shut, then a short linger reading and dropping plain bytes), so that the client reads the TLS
  alert rather than a reset caused by its own unread request.
* **The transport** (:class:`TLSTransport`) has ``direct_fd=None``: the framed strategy reads through
  ``recv_into`` into the decoder's window and asks again while ``pending()`` (records OpenSSL already
  decrypted are invisible to the poller); the C mirror relay is never chosen.  ``recv(n)`` (the raw
  strategy: RFC 862 echo, TCP time) returns everything already decrypted, so nothing is stranded in the layer
  for the raw services either.  ``send_many`` joins small buffers into one TLS write (one record rather than
  one per buffer).  ``sendfile`` reads the file in ``FILE_BLOCK`` blocks into the TLS socket, several per call
  until the socket is full, never the whole file (kernel TLS is not used: see :data:`DOWNLOAD_PATH`).
  ``shutdown_write`` sends ``close_notify`` and then ends the TCP write side, keeping the TLS session to read
  the client's reply to it; a close without that (a frame error, a timeout) sends it first too, unless the
  close is a reset.  A TLS failure after the handshake is an ``OSError``
  (:class:`~servers.tlslayer.TLSFailure`), so the connection handles it as any failed socket; it is logged
  here, once, with the peer.
"""

from __future__ import annotations

import logging
import socket
import ssl
from typing import TYPE_CHECKING, Any

from . import tlslayer
from .loop import READ, WRITE
from .readers import Reader
from .tlslayer import TLSFailure, TLSLayer
from .transport import SocketTransport

if TYPE_CHECKING:  # pragma: no cover
    from .connection import Connection, Stage

__all__ = ["DOWNLOAD_PATH", "HandshakeReader", "TLSTransport", "tls_stage"]

log = logging.getLogger("fastframe.server")

#: How files cross TLS in this server, for the start-up log and the bench: the userspace block path.  Kernel TLS
#: (``os.sendfile`` on a socket whose kernel encrypts) needs Python 3.12's ``OP_ENABLE_KTLS`` and a kernel
#: with its ``tls`` module, and is not implemented.
DOWNLOAD_PATH = f"userspace blocks of {tlslayer.FILE_BLOCK // 1024} KiB (no kernel TLS)"

_JOIN = 64 * 1024  # send_many joins queued buffers up to this many bytes into one TLS write
_RECV = 64 * 1024  # the most one recv(n) returns (four records)


class TLSTransport(SocketTransport):
    """A connection's transport over an established (or establishing) :class:`TLSLayer`."""

    __slots__ = ("layer", "peer", "_rbuf", "_plain", "_notified")

    def __init__(self, layer: TLSLayer, peer: Any) -> None:
        sock = layer.sock
        self.layer = layer
        self.peer = peer
        self.sock = sock
        self.fileno = sock.fileno()
        self.direct_fd = None
        self.recv = self._recv
        self.recv_into = self._recv_into
        self.send = self._send
        self.send_many = self._send_many
        self._rbuf: bytearray | None = None
        self._plain = False  # the handshake failed: only the plain socket is left
        self._notified = False  # our close_notify went out (or must not: a reset)

    def _failed(self, exc: TLSFailure) -> TLSFailure:
        log.info("TLS: %s: %s", self.peer, exc)
        return exc

    def _recv_into(self, buffer: Any) -> int:
        try:
            n = self.layer.recv_into(buffer)
        except TLSFailure as exc:
            raise self._failed(exc) from None
        if not n and not self.layer.clean_eof:
            # Many clients (Python's ssl among them) close without close_notify: worth a line only at debug.
            # A stream cut inside a frame is logged by the connection ("closed inside a frame").
            log.debug("TLS: %s: ended the stream without a TLS close_notify", self.peer)
        return n

    def _recv(self, n: int) -> bytes:
        buf = self._rbuf
        if buf is None:
            buf = self._rbuf = bytearray(_RECV)
        view = memoryview(buf)
        want = min(n, _RECV)
        got = self._recv_into(view[:want])
        layer = self.layer
        try:
            while got < want and layer.pending():  # hand out all that is decrypted: the poller cannot see it
                more = self._recv_into(view[got:want])
                if not more:
                    break
                got += more
        except BlockingIOError:
            pass  # (what was received goes out; the next read waits as usual)
        return bytes(view[:got])

    def _send(self, data: Any) -> int:
        try:
            return self.layer.send(data)
        except TLSFailure as exc:
            raise self._failed(exc) from None

    def _send_many(self, buffers: list[Any]) -> int:
        head = buffers[0]
        if len(head) >= _JOIN or len(buffers) == 1:
            return self._send(head)
        joined = []
        size = 0
        for buf in buffers:  # the same bytes at the front every time: a retried TLS write gets what it needs
            joined.append(buf)
            size += len(buf)
            if size >= _JOIN:
                break
        return self._send(b"".join(joined))

    def failed(self) -> None:
        """The handshake failed (OpenSSL queued its alert): from now on, read and end the plain socket only."""
        sock = self.sock
        self.recv = lambda n: socket.socket.recv(sock, n)
        self._plain = True

    def pending(self) -> int:
        return self.layer.pending()

    def sendfile(self, fd: int, offset: int, count: int) -> int:
        """Blocks of the file through TLS until ``count`` bytes went or the socket is full."""
        sent = 0
        layer = self.layer
        try:
            while sent < count:
                n = layer.sendfile(fd, offset + sent, count - sent)
                if not n:
                    break
                sent += n
        except BlockingIOError:
            if not sent:
                raise
        except TLSFailure as exc:
            raise self._failed(exc) from None
        return sent

    def shutdown_write(self) -> None:
        self._close_notify()  # (if the socket is full it is skipped: the client sees a TCP end only)
        socket.socket.shutdown(self.sock, socket.SHUT_WR)  # the TCP end, keeping the TLS session for reading

    def _close_notify(self) -> None:
        if not (self._plain or self._notified):
            self._notified = True
            self.layer.close_notify()

    def reset_on_close(self) -> None:
        self._notified = True  # a reset says it all: no close_notify before it
        super().reset_on_close()

    def close(self) -> None:
        """Close; a session the server ends without a graceful close (a frame error, an idle client) still
        says ``close_notify`` first, if the socket takes it now, so that the client sees a clean TLS end."""
        try:
            self._close_notify()
        except OSError:
            pass
        super().close()

    def has_input(self) -> bool:
        if self.layer.pending():
            return True
        try:
            socket.socket.recv(self.sock, 1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True
        return True


class HandshakeReader(Reader):
    """The TLS handshake as a connection's first-stage read strategy (see the module docstring)."""

    __slots__ = ("layer", "transport")

    def __init__(self, conn: Connection, context: ssl.SSLContext) -> None:
        super().__init__(conn, conn.loop, conn.fd)
        transport = conn.transport
        sock = getattr(transport, "sock", None)
        if not isinstance(sock, socket.socket) or isinstance(sock, ssl.SSLSocket):
            raise TypeError(f"a TLS handshake needs a plain socket transport, not {transport!r}")
        self.layer = TLSLayer(sock, context, now=conn.loop.now)
        self.transport = conn.transport = TLSTransport(self.layer, conn.peer)

    def on_readable(self, events: int) -> None:
        conn = self.conn
        if conn.closed or conn.reader is not self:
            return
        try:
            wants = self.layer.handshake()
        except TLSFailure as exc:
            log.info("%s: TLS: %s: %s", conn.service.name, conn.peer, exc)
            self.transport.failed()
            conn._finish_close()  # shut our side, read and drop what still comes: the client reads our alert
            return
        mask = WRITE if wants == tlslayer.WRITE else READ
        if mask != conn.events:
            conn.events = mask
            conn.loop.modify(conn.fd, mask, self.on_readable)
        if wants:
            return
        self.transport.peer = conn.peer  # (a PROXY header may have changed it)
        log.debug("%s: %s: %s", conn.service.name, conn.peer, self.layer.describe())
        conn.stage_done()


def tls_stage(context: ssl.SSLContext) -> Stage:
    """A first stage (for ``Listener.stages``) that runs the TLS handshake with ``context``."""

    def handshake(conn: Connection) -> Reader:
        reader = HandshakeReader(conn, context)
        conn.loop.call_soon(lambda: reader.on_readable(READ))  # the server speaks first only when asked, but a
        return reader  # ClientHello that came with the PROXY header is already in the socket: try at once

    handshake.name = "TLS handshake"  # type: ignore[attr-defined]
    return handshake
