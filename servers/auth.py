"""Shared-secret authentication in front of a service: a mutual HMAC-SHA256 challenge-response on connect.

:class:`AuthenticatedService` wraps any framed TCP service.  The wire format is specified in
:mod:`fastframe.wire.auth` (the client side lives there too).  In short: the server sends a fresh 32-byte
nonce, the client answers with its own nonce and an HMAC over both, the server checks it in constant time and
answers with its own HMAC (or ``!auth ...`` and a close).

Until the client's proof checks out, the inner service does not even know the connection exists: its
``connection_made`` is called only afterwards, and request frames are neither run nor answered before.  A
client has ``timeout`` seconds (5 by default) to complete the handshake, and its first frame must be a
response of exactly the handshake's size.  A client need not wait for the server's proof before it sends its
requests (that is its own risk): they may follow the response in the same segment, so the decoder's limit
while the handshake runs is the inner service's request limit, not the handshake's -- a length header above
it is still refused before anything is allocated, and until the handshake succeeds a client can make the
server hold at most one frame of that size (the command and file services take 16 and 32 KiB) for at most
``timeout`` seconds.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from fastframe.wire.auth import (
    HANDSHAKE_MAX_FRAME,
    HANDSHAKE_TIMEOUT,
    accept_frame,
    challenge_frame,
    check_response,
    new_nonce,
    refusal_frame,
)

from .service import Conn, Service, Timer

if TYPE_CHECKING:  # pragma: no cover
    from fastframe.exceptions import FrameError

__all__ = ["HANDSHAKE_TIMEOUT", "AuthenticatedService"]

log = logging.getLogger("fastframe.server")


class _Pending:
    __slots__ = ("nonce", "timer", "failed")

    def __init__(self, nonce: bytes, timer: Timer | None) -> None:
        self.nonce = nonce
        self.timer = timer
        self.failed = False


class AuthenticatedService(Service):
    """``inner``, reachable only by clients that prove they hold ``secret`` (and to whom it proves it back)."""

    def __init__(self, inner: Service, secret: bytes, timeout: float = HANDSHAKE_TIMEOUT) -> None:
        if not secret:
            raise ValueError("an empty shared secret")
        if not inner.framed or inner.transport != "tcp":
            raise ValueError("only framed TCP services can be authenticated")
        self.inner = inner
        self.secret = bytes(secret)
        self.timeout = timeout
        self.name = inner.name
        self.transport = inner.transport
        self.framed = True
        self.prefix = inner.prefix
        self.max_request = inner.max_request
        # Connections still in the handshake.  The inner service owns ``conn.state``, so ours lives here.
        self._pending: dict[Conn, _Pending] = {}

    def connection_made(self, conn: Conn) -> None:
        # Not HANDSHAKE_MAX_FRAME: requests pipelined behind the response arrive through the same decoder,
        # which refuses for good the first frame over its limit.  The response's size is checked exactly below.
        conn.set_max_frame(max(HANDSHAKE_MAX_FRAME, self.inner.max_request))
        nonce = new_nonce()
        pending = _Pending(nonce, None)
        self._pending[conn] = pending
        pending.timer = conn.call_later(self.timeout, lambda: self._expired(conn))
        conn.send_frames([challenge_frame(nonce)])

    def _expired(self, conn: Conn) -> None:
        pending = self._pending.get(conn)
        if pending is not None and not pending.failed:
            log.info("%s: %s did not complete the handshake within %g s", self.name, conn.peer, self.timeout)
            self._refuse(conn, pending, "handshake timed out")

    def _refuse(self, conn: Conn, pending: _Pending, reason: str) -> None:
        pending.failed = True
        if pending.timer is not None:
            pending.timer.cancel()
        conn.send_frames([refusal_frame(reason)])
        conn.close(flush=True)

    def frames_received(self, conn: Conn, frames: list[bytes]) -> list[bytes] | None:
        pending = self._pending.get(conn)
        if pending is None:
            return self.inner.frames_received(conn, frames)
        if pending.failed:
            return None  # refused: whatever else the client sends is dropped unread
        client_nonce = check_response(self.secret, pending.nonce, frames[0])
        if client_nonce is None:
            log.info("%s: %s failed authentication", self.name, conn.peer)
            self._refuse(conn, pending, "denied")
            return None
        del self._pending[conn]
        if pending.timer is not None:
            pending.timer.cancel()
        conn.set_max_frame(self.inner.max_request)
        conn.send_frames([accept_frame(self.secret, client_nonce, pending.nonce)])
        self.inner.connection_made(conn)
        rest = frames[1:]
        if rest:  # the client did not wait for our proof: its loss if we were an impostor, not ours
            return self.inner.frames_received(conn, rest)
        return None

    def frame_error(self, conn: Conn, exc: FrameError) -> list[bytes] | None:
        pending = self._pending.get(conn)
        if pending is None:
            return self.inner.frame_error(conn, exc)
        if pending.failed:
            return None  # the refusal is already on its way
        pending.failed = True
        return [refusal_frame("bad handshake")]

    def eof_received(self, conn: Conn) -> None:
        if conn not in self._pending:
            self.inner.eof_received(conn)

    def output_drained(self, conn: Conn) -> None:
        if conn not in self._pending:
            self.inner.output_drained(conn)

    def connection_lost(self, conn: Conn) -> None:
        pending = self._pending.pop(conn, None)
        if pending is None:
            self.inner.connection_lost(conn)
        elif pending.timer is not None:
            pending.timer.cancel()

    def shutdown(self) -> None:
        self.inner.shutdown()

    def describe(self) -> str:
        return f"{self.inner.describe()}, shared secret required"

    def take_events(self) -> dict[str, int]:
        return self.inner.take_events()
