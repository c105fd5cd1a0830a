"""The server side of TLS on one accepted, non-blocking connection: a layer beneath the read strategies.

Theory of operation
===================

The layer wraps the accepted socket in an ``ssl.SSLSocket`` (``server_side=True``,
``do_handshake_on_connect=False``) and gives the connection a socket-like face: ``recv_into``, ``send``,
``pending`` and a graceful ``close_notify``.  OpenSSL then reads and writes the socket itself, in C: one
``recv_into`` is one ``SSL_read`` (one record, at most 16 KiB of plaintext), one ``send`` is one ``SSL_write``.
That was measured against the other way, ``SSLObject`` over two ``MemoryBIO`` (what asyncio and uvloop use),
where every read and write goes through Python twice more (the BIO, then the socket): in a quick two-run check
(minimal selectors loops, one TLS 1.3 connection, 20,000 echoes of 64-byte frames, server CPU per request on a
shared 2-core machine) SSLSocket took 12.4-13.0 us against 13.9-15.1 us with MemoryBIO at depth 1, and
0.78-1.03 us against 0.88-0.99 us at depth 16; a uvloop ``Protocol`` server with ``ssl=`` took 27.3 and 1.9 us.
The bench's TLS rows come with the engine integration.

Readiness.  TLS does not map one socket event to one operation: a read may need to write first (a key
update), a handshake step may wait for either.  Every operation that cannot go on now raises
``BlockingIOError`` (as a non-blocking socket does) and leaves in :attr:`TLSLayer.wants` the event to wait for
(``READ`` or ``WRITE``); the handshake returns it instead.  One rule follows from OpenSSL keeping its own
buffer: bytes it already decrypted are invisible to epoll, so after a read a loop must call ``recv_into``
again while :meth:`~TLSLayer.pending` is non-zero, before it waits.

Writes.  A write that raised ``BlockingIOError`` has been partly encrypted and sent: OpenSSL requires the
retry to pass the same bytes again (at least as many).  The layer keeps that count and, on the next call,
writes exactly that many bytes from the front of what it is given: a caller that keeps its output queue in
order (any queue does) satisfies the rule without knowing it.  One ``send`` writes at most ``MAX_WRITE`` bytes
so that one large reply cannot hold the loop for long.

Files.  ``sendfile`` cannot cross TLS in user space, so :meth:`~TLSLayer.sendfile` reads the file in
``FILE_BLOCK`` blocks (``os.preadv`` into one buffer kept per connection, never the whole file) and writes
each block; a block cut short by ``BlockingIOError`` is finished from the same buffer.

Ends.  ``recv_into`` returns 0 at the end of the stream: after the peer's ``close_notify`` (then
:attr:`~TLSLayer.clean_eof` is True) or a plain TCP close (False: a truncated stream, which the decoder above
tells apart from a close between frames).  :meth:`~TLSLayer.close_notify` sends ours without waiting for the
peer's.  Every other failure raises :class:`TLSFailure`, whose message is one line for the log
(:func:`fastframe._tls.describe`): plaintext on a TLS port, an untrusted or expired certificate, a missing
client certificate, a peer that vanished mid-record.

The handshake has a deadline (``deadline``, a ``time.monotonic()`` value, checked by the caller's timer
through :meth:`~TLSLayer.check_deadline`): a client that connects and says nothing costs one connection slot
until then, and nothing else.
"""

from __future__ import annotations

import os
import selectors
import socket
import ssl
import time
from typing import Union

from fastframe._tls import describe

__all__ = ["FILE_BLOCK", "MAX_WRITE", "READ", "WRITE", "TLSFailure", "TLSLayer"]

Buffer = Union[bytes, bytearray, memoryview]

READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE
#: The most plaintext one ``send`` hands to OpenSSL (16 records).
MAX_WRITE = 256 * 1024
#: The block size in which a file is read and written through TLS.
FILE_BLOCK = 256 * 1024
#: Seconds a client gets to complete the handshake, by default.
HANDSHAKE_TIMEOUT = 10.0


class TLSFailure(ConnectionError):
    """The TLS connection failed; the message is one line for the log.  An ``OSError``: whoever handles a
    failed socket (the engine's connection) handles it the same way."""


class TLSLayer:
    """TLS on one accepted non-blocking socket (see the module's docstring).

    ``sock`` is taken over: use :attr:`sock` (an ``ssl.SSLSocket`` on the same descriptor) from now on.
    """

    __slots__ = ("sock", "deadline", "wants", "established", "clean_eof", "_owed", "_block", "_block_key")

    def __init__(
        self,
        sock: socket.socket,
        context: ssl.SSLContext,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        now: float | None = None,
    ) -> None:
        sock.setblocking(False)
        self.sock: ssl.SSLSocket = context.wrap_socket(
            sock, server_side=True, do_handshake_on_connect=False, suppress_ragged_eofs=False
        )
        self.deadline = (time.monotonic() if now is None else now) + handshake_timeout
        self.wants = READ
        self.established = False
        self.clean_eof = False
        self._owed = 0  # bytes the next write must repeat (a write cut short by want-read/want-write)
        self._block: bytearray | None = None  # the file block being written (sendfile)
        self._block_key = (-1, -1, 0, 0)  # (fd, file offset of the block, bytes in it, bytes of it written)

    def fileno(self) -> int:
        return self.sock.fileno()

    # -- handshake ------------------------------------------------------------------------------------

    def handshake(self) -> int:
        """Go on with the handshake: 0 once it is complete, else the event to wait for (READ or WRITE).

        Raises TLSFailure (a one-line reason) when it fails."""
        try:
            self.sock.do_handshake()
        except ssl.SSLWantReadError:
            self.wants = READ
            return READ
        except ssl.SSLWantWriteError:
            self.wants = WRITE
            return WRITE
        except (ssl.SSLError, OSError) as exc:
            raise TLSFailure(f"TLS handshake failed: {describe(exc, 'server')}") from None
        self.established = True
        self.wants = READ
        return 0

    def check_deadline(self, now: float | None = None) -> None:
        """Raise TLSFailure if the handshake is still under way past its deadline."""
        if not self.established and (time.monotonic() if now is None else now) >= self.deadline:
            raise TLSFailure("TLS handshake timed out")

    # -- reading --------------------------------------------------------------------------------------

    def recv_into(self, buffer: Buffer, nbytes: int = 0) -> int:
        """Decrypt into ``buffer`` (at most ``nbytes`` bytes, 0 = its size): the count, or 0 at the end of
        the stream.  Raises BlockingIOError when nothing can be read now (wait for :attr:`wants`)."""
        try:
            return self.sock.recv_into(buffer, nbytes)
        except ssl.SSLWantReadError:
            self.wants = READ
            raise BlockingIOError from None
        except ssl.SSLWantWriteError:
            self.wants = WRITE
            raise BlockingIOError from None
        except ssl.SSLZeroReturnError:
            self.clean_eof = True
            return 0
        except ssl.SSLEOFError:
            return 0  # a TCP close without close_notify: clean_eof stays False
        except (ssl.SSLError, OSError) as exc:
            if getattr(exc, "reason", None) == "UNEXPECTED_EOF_WHILE_READING":
                return 0  # the same, as Python before 3.12 reports it (a plain SSLError)
            raise TLSFailure(describe(exc, "server")) from None

    def pending(self) -> int:
        """Bytes OpenSSL has decrypted and not yet handed out: epoll cannot see them."""
        return self.sock.pending()

    # -- writing --------------------------------------------------------------------------------------

    def send(self, data: Buffer) -> int:
        """Encrypt and send the front of ``data``; return how many of its bytes went out (all of a piece of at
        most MAX_WRITE bytes).  Raises BlockingIOError when the socket is full: call again, with the same bytes
        at the front of ``data``, once :attr:`wants` is ready."""
        owed = self._owed
        if owed:
            if len(data) < owed:
                raise ValueError(f"a TLS write must be retried with the same {owed} bytes, got {len(data)}")
            chunk: Buffer = memoryview(data)[:owed]
        elif len(data) > MAX_WRITE:
            chunk = memoryview(data)[:MAX_WRITE]
        else:
            chunk = data
        try:
            sent = self.sock.send(chunk)
        except ssl.SSLWantWriteError:
            self._owed = len(chunk)
            self.wants = WRITE
            raise BlockingIOError from None
        except ssl.SSLWantReadError:
            self._owed = len(chunk)
            self.wants = READ
            raise BlockingIOError from None
        except ssl.SSLEOFError:
            raise TLSFailure("the client closed the connection while a reply was being sent") from None
        except (ssl.SSLError, OSError) as exc:
            raise TLSFailure(describe(exc, "server")) from None
        self._owed = 0
        return sent

    @property
    def write_owed(self) -> int:
        """Bytes a write cut short must repeat (0 when the last write went out whole)."""
        return self._owed

    def sendfile(self, fd: int, offset: int, count: int) -> int:
        """Send up to ``count`` bytes of file ``fd`` from ``offset``; return how many went out (0 at the end
        of the file).  Raises BlockingIOError when the socket is full: call again with ``offset`` advanced by
        what the earlier calls returned.  One buffer of FILE_BLOCK bytes per connection, whatever the file."""
        if count <= 0:
            return 0
        block = self._block
        if block is None:
            block = self._block = bytearray(FILE_BLOCK)
        bfd, boff, bsize, bdone = self._block_key
        if bfd != fd or boff + bdone != offset or bdone >= bsize:
            bsize = os.preadv(fd, [memoryview(block)[: min(count, FILE_BLOCK)]], offset)
            if not bsize:
                return 0
            boff, bdone = offset, 0
            self._block_key = (fd, boff, bsize, 0)
        view = memoryview(block)[bdone : min(bsize, bdone + count)]
        sent = self.send(view)  # a BlockingIOError leaves the block as it is, for the retry
        self._block_key = (fd, boff, bsize, bdone + sent)
        return sent

    # -- closing --------------------------------------------------------------------------------------

    def close_notify(self) -> int:
        """Send our close_notify (without waiting for the peer's): 0 when it went out, or could not and never
        will (a failed connection, a handshake not complete), else the event to wait for before calling again."""
        if not self.established or self._owed:
            return 0  # nothing to say, or a record half-written: no clean end is possible
        try:
            self.sock.unwrap()
        except ssl.SSLWantWriteError:
            self.wants = WRITE
            return WRITE
        except (ssl.SSLError, OSError, ValueError):
            pass  # sent, the peer's not here yet (want-read), or the connection is gone: either way, done
        return 0

    def close(self) -> None:
        self.sock.close()
        self._block = None

    # -- what was negotiated ------------------------------------------------------------------------------

    def describe(self) -> str:
        """``TLSv1.3 TLS_AES_256_GCM_SHA384`` (after the handshake)."""
        cipher = self.sock.cipher()
        return f"{self.sock.version()} {cipher[0]}" if cipher else "no TLS session"
