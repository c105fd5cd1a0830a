"""The transport layer: what carries a connection's bytes, beneath its read strategy.

Two implement it: :class:`SocketTransport`, a plain TCP or Unix stream socket, and
:class:`servers.tls.TLSTransport`, TLS over one.  The seam costs a plain connection nothing:

``direct_fd``
    The descriptor whose bytes *are* the stream, or None.  A plain socket gives it, and the strategies then
    let the codec work on the descriptor itself -- ``decoder.read_from(fd)`` receives straight into the
    decoder's memory, ``decoder.relay(fd)`` is the echo's one C call, ``write_frames(fd, ...)`` encodes and
    sends in one call, ``os.sendfile`` copies a file in the kernel.  A layer that transforms the bytes on the
    way (TLS) gives None: the framed strategy then reads with ``recv_into(decoder.get_buffer())`` /
    ``buffer_updated`` and writes with ``send(encode_many(...))``, and the mirror strategy is not chosen (the
    C relay cannot run under TLS; a mirror service is served by the framed strategy, whose replies are the
    frames).
``fileno``
    The descriptor to poll, whatever the layer.
``recv(n)``, ``recv_into(buffer)``, ``send(data)``, ``send_many(buffers)``
    Socket semantics, never blocking: ``BlockingIOError`` when nothing can move now (a TLS layer turns
    ``SSLWantReadError``/``SSLWantWriteError`` into it), ``b""``/0 at the end of the stream, ``OSError`` on
    failure.  ``send_many`` may take less than offered (a TLS layer sends one buffer at a time).
``pending()``
    Bytes the layer holds that the descriptor no longer shows (TLS records already decrypted): the framed
    strategy reads again while it is non-zero, since the poller will not report them.
``sendfile(fd, offset, count)``
    Bytes of a file sent; the plain socket uses ``os.sendfile``, a TLS layer reads blocks into ``send``.
``shutdown_write()``, ``reset_on_close()``, ``close()``
    End our side of the stream (TLS: ``close_notify`` first); make the coming close a reset; release it.
``has_input()``, ``unsent()``
    For a graceful stop (would a read find anything?) and the stalled-output check (the kernel's send queue).

How the layers get there: a listener's first stages (:class:`servers.connection.Connection`) run before
the service's strategy.  The PROXY-protocol stage (:mod:`servers.proxystage`) reads exactly the header off the
plain socket (``proxyproto.ProxyParser.wanted`` bytes at a time, so nothing of the stream behind it is taken)
and records the real peer; the TLS stage (:mod:`servers.tls`) then runs the handshake and leaves a
``TLSTransport`` in ``conn.transport``, over which the connection picks its strategy.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import termios
from typing import Any, Callable, Protocol

__all__ = ["SocketTransport", "Transport"]

_ABORT_LINGER = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets the connection


class Transport(Protocol):
    """The interface of a transport (see the module docstring); :class:`SocketTransport` is the plain one."""

    fileno: int
    direct_fd: int | None
    recv: Callable[[int], bytes]
    recv_into: Callable[[Any], int]
    send: Callable[[Any], int]
    send_many: Callable[[list[Any]], int]

    def pending(self) -> int: ...
    def sendfile(self, fd: int, offset: int, count: int) -> int: ...
    def shutdown_write(self) -> None: ...
    def reset_on_close(self) -> None: ...
    def close(self) -> None: ...
    def has_input(self) -> bool: ...
    def unsent(self) -> int: ...


class SocketTransport:
    """A plain stream socket: the bytes on the wire are the stream, so the codec may use the descriptor."""

    __slots__ = ("sock", "fileno", "direct_fd", "recv", "recv_into", "send", "send_many")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fileno = sock.fileno()
        self.direct_fd: int | None = self.fileno
        # The socket's own methods, not wrappers: a plain connection pays no layer.
        self.recv: Callable[[int], bytes] = sock.recv
        self.recv_into: Callable[[Any], int] = sock.recv_into
        self.send: Callable[[Any], int] = sock.send
        self.send_many: Callable[[list[Any]], int] = sock.sendmsg

    def pending(self) -> int:
        return 0

    def sendfile(self, fd: int, offset: int, count: int) -> int:
        return os.sendfile(self.fileno, fd, offset, count)

    def shutdown_write(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def reset_on_close(self) -> None:
        """Make close() reset the connection: what the kernel still holds for the peer is thrown away, not sent."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _ABORT_LINGER)
        except OSError:
            pass

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def has_input(self) -> bool:
        """True if a read would not block: bytes waiting, an end of stream or an error."""
        try:
            self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True
        return True

    def unsent(self) -> int:
        """Bytes in the socket's send queue, not yet acknowledged by the peer (-1 if the kernel will not say)."""
        try:
            return struct.unpack("i", fcntl.ioctl(self.fileno, termios.TIOCOUTQ, b"\0\0\0\0"))[0]  # type: ignore[no-any-return]
        except OSError:
            return -1
