"""The connection room on its own, in this process: which read strategy a connection picks, and the transport seam.

A transport that hides its descriptor from the codec (as TLS will) must still serve every framed service --
a mirror service through the framed strategy, since the C relay cannot run there -- with reads handed out a
few bytes at a time and the rest held back as ``pending()`` (as TLS holds decrypted records), and sends that
take only part of what they are offered.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable

import pytest

from fastframe.servers.connection import Connection
from fastframe.servers.echo import EchoService, RawEchoService
from fastframe.servers.limits import Limits
from fastframe.servers.loop import Loop
from fastframe.servers.readers import FramedReader, MirrorReader, RawReader, Reader
from fastframe.servers.service import Service
from fastframe.servers.transport import SocketTransport, Transport


class LayeredTransport(SocketTransport):
    """A plain socket dressed as a layer: no descriptor for the codec, ``chunk`` bytes per receive and send."""

    def __init__(self, sock: socket.socket, chunk: int) -> None:
        super().__init__(sock)
        self.direct_fd = None
        self.chunk = chunk
        self.held = bytearray()
        self.recv_into = self._recv_into
        self.send = self._send
        self.send_many = lambda buffers: self._send(buffers[0])

    def _recv_into(self, view: memoryview) -> int:
        if not self.held:
            data = self.sock.recv(65536)
            if not data:
                return 0
            self.held += data
        n = min(len(view), self.chunk, len(self.held))
        view[:n] = self.held[:n]
        del self.held[:n]
        return n

    def _send(self, data: bytes | memoryview) -> int:
        return self.sock.send(memoryview(data)[: self.chunk])

    def pending(self) -> int:
        return len(self.held)


def frame(payload: bytes) -> bytes:
    return struct.pack("!I", len(payload)) + payload


def serve_one(service: Service, transport_for: Callable[[socket.socket], Transport], data: bytes) -> tuple[type, bytes]:
    """Serve one connection in this process until it closes; (its strategy's class, everything it sent)."""
    loop = Loop()
    ours, theirs = socket.socketpair()
    theirs.settimeout(10)
    ours.setblocking(False)
    conn = Connection(loop, transport_for(ours), ("peer",), service)
    strategy = type(conn.reader)  # (it reads with another once its last byte went out: DiscardReader)
    received = bytearray()

    def client() -> None:  # sends everything, then reads to the end (while the loop runs here)
        theirs.sendall(data)
        theirs.shutdown(socket.SHUT_WR)
        while chunk := theirs.recv(65536):
            received.extend(chunk)

    thread = threading.Thread(target=client, daemon=True)
    try:
        conn.start()
        thread.start()
        loop.add_check(lambda: loop.stop() if conn.closed else None)
        loop.call_later(10.0, loop.stop)
        loop.run()
        assert conn.closed, "the connection did not close after the client's end of stream"
        thread.join(10)
        assert not thread.is_alive(), "the client never saw the end of the stream"
        return strategy, bytes(received)
    finally:
        conn.close_now()
        loop.close()
        theirs.close()


PAYLOADS = [b"", b"a", b"hello world", bytes(range(256)) * 40, b"x" * 70000]


@pytest.mark.parametrize("upper", [False, True], ids=["mirror", "upper"])
def test_a_layered_transport_serves_framed_services_through_the_framed_strategy(upper):
    request = b"".join(frame(p) for p in PAYLOADS)
    strategy, reply = serve_one(EchoService(upper=upper), lambda s: LayeredTransport(s, chunk=7), request)
    assert strategy is FramedReader
    assert reply == b"".join(frame(p.upper() if upper else p) for p in PAYLOADS)


@pytest.mark.parametrize(
    "service, strategy",
    [(EchoService(), MirrorReader), (EchoService(upper=True), FramedReader), (RawEchoService(), RawReader)],
    ids=["mirror", "framed", "raw"],
)
def test_a_plain_socket_gets_the_strategy_of_its_service(service, strategy):
    request = b"".join(frame(p) for p in PAYLOADS)
    chosen, reply = serve_one(service, SocketTransport, request)
    assert chosen is strategy
    if isinstance(service, RawEchoService):
        assert reply == request
    else:
        assert reply == b"".join(frame(p.upper() if service.upper else p) for p in PAYLOADS)


# -- first stages (what a listener runs before its service: a PROXY header, a TLS handshake) ------------------


class TokenStage(Reader):
    """A first stage that reads exactly ``token`` (never a byte more) and hands over."""

    def __init__(self, conn: Connection, token: bytes, seen: list[bytes]) -> None:
        super().__init__(conn, conn.loop, conn.fd)
        self.token = token
        self.got = b""
        self.seen = seen

    def on_readable(self, events: int) -> None:
        data = self.conn.transport.recv(len(self.token) - len(self.got))
        if not data:
            self.conn.close_now()
            return
        self.got += data
        if len(self.got) == len(self.token):
            self.seen.append(self.got)
            self.conn.stage_done()


def token_stage(token: bytes, seen: list[bytes]) -> Callable[[Connection], Reader]:
    def make(conn: Connection) -> Reader:
        return TokenStage(conn, token, seen)

    make.name = f"token {token!r}"  # type: ignore[attr-defined]
    return make


class Recording(EchoService):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def connection_made(self, conn) -> None:
        self.calls.append("made")
        super().connection_made(conn)

    def connection_lost(self, conn) -> None:
        self.calls.append("lost")
        super().connection_lost(conn)


def test_stages_run_in_order_then_the_service_reads_what_follows():
    seen: list[bytes] = []
    service = Recording()
    request = b"".join(frame(p) for p in PAYLOADS)
    stages = [token_stage(b"FIRST", seen), token_stage(b"2nd", seen)]
    loop = Loop()
    ours, theirs = socket.socketpair()
    theirs.settimeout(10)
    ours.setblocking(False)
    conn = Connection(loop, SocketTransport(ours), ("peer",), service, stages=stages)
    try:
        conn.start()
        assert conn.stage == "token b'FIRST'" and service.calls == []
        theirs.sendall(b"FIRST2nd" + request)  # in one send: each stage must take only its own bytes
        theirs.shutdown(socket.SHUT_WR)
        loop.add_check(lambda: loop.stop() if conn.closed else None)
        loop.call_later(10.0, loop.stop)
        loop.run()
        reply = b"".join(iter(lambda: theirs.recv(65536), b""))
    finally:
        conn.close_now()
        loop.close()
        theirs.close()
    assert seen == [b"FIRST", b"2nd"]
    assert conn.stage == "" and service.calls == ["made", "lost"]
    assert reply == request


def test_a_connection_stuck_in_a_stage_is_closed_at_its_deadline_and_the_service_never_hears_of_it():
    service = Recording()
    loop = Loop()
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    conn = Connection(
        loop, SocketTransport(ours), ("peer",), service, Limits(frame_timeout=5), stages=[token_stage(b"HI", [])]
    )
    try:
        conn.start()
        conn.check_deadlines(loop.now + 4)
        assert not conn.closed, "closed before its deadline"
        conn.check_deadlines(loop.now + 6)
        assert conn.closed
        assert service.calls == []
    finally:
        conn.close_now()
        loop.close()
        theirs.close()


def test_a_graceful_stop_closes_a_connection_still_in_a_stage():
    service = Recording()
    loop = Loop()
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    conn = Connection(loop, SocketTransport(ours), ("peer",), service, stages=[token_stage(b"HI", [])])
    try:
        conn.start()
        conn.finish_when_quiet()
        assert conn.closed and service.calls == []
    finally:
        conn.close_now()
        loop.close()
        theirs.close()
