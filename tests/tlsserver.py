"""A tiny TLS server for tests: one selectors loop, in a thread, running real services over ``TLSLayer``.

It is the layer's test bench and the clients' peer until ``fastframe serve --tls-*`` exists: it drives
``servers.tlslayer.TLSLayer`` the way an engine would (handshake by readiness with a deadline, reads into the
decoder's window while the layer holds bytes, sends that repeat what was cut short, files in blocks, a
close_notify at the end), and it hosts the real services (echo, raw echo, TCP time, files, command, the
shared-secret wrapper) through a minimal ``Conn``.  It is not an engine: no limits beyond what the tests
need, no idle sweep, no backpressure beyond pausing reads while output waits.

Every failure is logged as one line in ``reasons`` (``"<service> <peer>: <reason>"``), which tests assert on.
"""

from __future__ import annotations

import heapq
import itertools
import os
import selectors
import socket
import ssl
import threading
import time
from collections import deque
from types import ModuleType
from typing import Any, Callable, Deque, Dict, List, Optional, Set, Tuple

from fastframe.servers.service import Conn, Service, Timer
from fastframe.servers.tlslayer import READ, WRITE, TLSFailure, TLSLayer

from fastframe import _codec_choice
from fastframe.exceptions import FrameError

HIGH_WATER = 1 << 20


class TestConn(Conn):
    def __init__(self, server: "TLSTestServer", layer: TLSLayer, peer: Any, service: Service) -> None:
        self.server, self.layer, self.peer, self.service = server, layer, peer, service
        self.fd = layer.fileno()
        codec = server.codec
        self.decoder = codec.Decoder(service.prefix, service.max_request) if service.framed else None
        self.encode_many = codec.encode_many
        self.state: Any = None
        self.out: Deque[Any] = deque()
        self.out_size = 0
        self.file: Optional[List[Any]] = None
        self.watched: Set[int] = set()
        self.timers: Set[Timer] = set()
        self.user_paused = False
        self.closing = False  # close once the output is out
        self.closed = False
        self.eof = False
        self.notify = False  # sending close_notify
        self.lingering = False  # close_notify sent and the write side shut: reading until the peer closes
        self._busy = False
        self.events = 0

    # -- Conn ---------------------------------------------------------------------------------------
    def send_frames(self, payloads: List[bytes]) -> None:
        if payloads and not self.closed:
            self.send_raw(self.encode_many(payloads, self.service.prefix))

    def send_raw(self, data: bytes) -> None:
        if data and not self.closed:
            self.out.append(data)
            self.out_size += len(data)
            self.server.dirty.add(self)

    def sendfile(self, fd: int, offset: int, count: int, done: Callable[[Optional[BaseException]], None]) -> None:
        if self.closed:
            done(ConnectionError("connection closed"))
            return
        self.file = [fd, offset, count, done]
        self.server.dirty.add(self)

    def watch(self, fd: int, callback: Callable[[], None]) -> None:
        self.watched.add(fd)
        self.server.sel.register(fd, selectors.EVENT_READ, ("watch", callback))

    def unwatch(self, fd: int) -> None:
        if fd in self.watched:
            self.watched.discard(fd)
            self.server.sel.unregister(fd)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        timer = self.server.call_later(delay, lambda: (self.timers.discard(timer), callback()))
        self.timers.add(timer)
        return timer

    def acquire(self, name: str, limit: int) -> bool:
        counts = self.server.counts
        if counts.get(name, 0) >= limit:
            return False
        counts[name] = counts.get(name, 0) + 1
        return True

    def release(self, name: str) -> None:
        self.server.counts[name] -= 1

    def set_max_frame(self, limit: int) -> None:
        if self.decoder is not None:
            self.decoder.max_frame = limit

    def pause_reading(self) -> None:
        self.user_paused = True
        self.server.dirty.add(self)

    def resume_reading(self) -> None:
        self.user_paused = False
        self.server.dirty.add(self)

    def close(self, flush: bool = True) -> None:
        if flush and (self.out or self.file is not None):
            self.closing = True
            self.server.dirty.add(self)
        else:
            self.server.finish(self)

    @property
    def output_pending(self) -> int:
        return self.out_size

    @property
    def busy(self) -> bool:
        return self._busy or self.file is not None

    @busy.setter
    def busy(self, value: bool) -> None:
        self._busy = value


class TLSTestServer:
    """``services``: name -> Service; each gets a TLS listener on 127.0.0.1 (``port(name)``)."""

    def __init__(
        self,
        context: ssl.SSLContext,
        services: Dict[str, Service],
        codec: Optional[ModuleType] = None,
        handshake_timeout: float = 5.0,
        host: str = "127.0.0.1",
    ) -> None:
        self.context = context
        self.codec = codec or _codec_choice.codec
        self.handshake_timeout = handshake_timeout
        self.sel = selectors.DefaultSelector()
        self.listeners: Dict[str, socket.socket] = {}
        for name, service in services.items():
            lsock = socket.create_server((host, 0))
            lsock.setblocking(False)
            self.listeners[name] = lsock
            self.sel.register(lsock, selectors.EVENT_READ, ("accept", service))
        self.conns: Dict[int, TestConn] = {}
        self.dirty: Set[TestConn] = set()
        self.timers: List[Tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self.reasons: List[str] = []
        self.handshakes = 0  # completed
        self.blocked_writes = 0  # writes cut short by a full socket, retried with the same bytes
        self.pending_reads = 0  # reads that left decrypted bytes in OpenSSL (taken before waiting again)
        self.accepted = 0
        self.counts: Dict[str, int] = {}  # Conn.acquire/release: one process, so a plain count
        self._wake_r, self._wake_w = os.pipe()
        self.sel.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.crashed: Optional[BaseException] = None

    def port(self, name: str) -> int:
        return int(self.listeners[name].getsockname()[1])

    def __enter__(self) -> "TLSTestServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        os.write(self._wake_w, b"x")
        self._thread.join(10)
        for conn in list(self.conns.values()):
            self.finish(conn, hard=True)
        for lsock in self.listeners.values():
            lsock.close()
        self.sel.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        assert not self._thread.is_alive(), "the test server's loop did not stop"
        if self.crashed is not None:
            raise AssertionError(f"the test server's loop crashed: {self.crashed!r}") from self.crashed

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out; reasons so far: {self.reasons}"
            time.sleep(0.01)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(time.monotonic() + delay, callback)
        heapq.heappush(self.timers, (timer.when, next(self._seq), timer))
        return timer

    def log(self, conn: TestConn, reason: str) -> None:
        self.reasons.append(f"{conn.service.name} {conn.peer[0]}:{conn.peer[1]}: {reason}")

    # -- the loop -------------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop:
                timeout = 0.5
                if self.timers:
                    timeout = max(0.0, min(timeout, self.timers[0][0] - time.monotonic()))
                for key, events in self.sel.select(timeout):
                    kind, target = key.data
                    if kind == "accept":
                        self._accept(key.fileobj, target)  # type: ignore[arg-type]
                    elif kind == "conn":
                        self._ready(target, events)
                    elif kind == "watch":
                        target()
                    else:
                        os.read(self._wake_r, 64)
                now = time.monotonic()
                while self.timers and self.timers[0][0] <= now:
                    _, _, timer = heapq.heappop(self.timers)
                    if not timer.cancelled:
                        timer.callback()
                while self.dirty:
                    conn = self.dirty.pop()
                    if not conn.closed:
                        self._flush(conn)
        except BaseException as exc:  # noqa: BLE001 - reported by __exit__
            self.crashed = exc

    def _accept(self, lsock: socket.socket, service: Service) -> None:
        try:
            sock, peer = lsock.accept()
        except BlockingIOError:
            return
        self.accepted += 1
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = TestConn(self, TLSLayer(sock, self.context, self.handshake_timeout), peer, service)
        self.conns[conn.fd] = conn
        conn.events = READ
        self.sel.register(conn.fd, READ, ("conn", conn))
        conn.call_later(self.handshake_timeout, lambda: self._deadline(conn))

    def _deadline(self, conn: TestConn) -> None:
        try:
            conn.layer.check_deadline()
        except TLSFailure as exc:
            self.log(conn, str(exc))
            self.finish(conn, notify=False)

    def _ready(self, conn: TestConn, events: int) -> None:
        layer = conn.layer
        try:
            if conn.lingering:
                try:
                    if os.read(conn.fd, 65536):
                        return
                except OSError:
                    pass
                self.finish(conn, hard=True)
                return
            if conn.notify:
                if not layer.close_notify():
                    self._linger(conn)
                return
            if not layer.established:
                if layer.handshake():
                    self._update(conn)
                    return
                self.handshakes += 1
                conn.service.connection_made(conn)
            if events & WRITE and (conn.out or conn.file is not None):
                self._flush(conn)
            if not conn.closed and not conn.eof and not conn.user_paused:
                self._read(conn)
        except TLSFailure as exc:
            self.log(conn, str(exc))
            self.finish(conn, notify=False)
            return
        if not conn.closed:
            self.dirty.add(conn)

    def _read(self, conn: TestConn) -> None:
        layer, decoder = conn.layer, conn.decoder
        while True:  # what the layer already decrypted is invisible to epoll: take it all before waiting
            try:
                if decoder is not None:
                    n = layer.recv_into(decoder.get_buffer())
                else:
                    data = bytearray(65536)
                    n = layer.recv_into(data)
            except BlockingIOError:
                return
            if not n:
                self._eof(conn)
                return
            if decoder is not None:
                try:
                    frames = decoder.buffer_updated(n)
                except FrameError as exc:
                    self.log(conn, f"frame error: {exc}")
                    if exc.frames:
                        conn.send_frames(conn.service.frames_received(conn, exc.frames) or [])
                    conn.send_frames(conn.service.frame_error(conn, exc) or [])
                    conn.eof = True
                    conn.close()
                    return
                if frames:
                    conn.send_frames(conn.service.frames_received(conn, frames) or [])
            else:
                conn.send_raw(conn.service.data_received(conn, bytes(data[:n])) or b"")
            if not layer.pending() or conn.closed or conn.user_paused:
                return
            self.pending_reads += 1

    def _eof(self, conn: TestConn) -> None:
        conn.eof = True
        if not conn.layer.clean_eof:
            self.log(conn, "closed without a TLS close_notify")
        if conn.decoder is not None:
            try:
                conn.decoder.close()
            except FrameError as exc:
                self.log(conn, f"closed inside a frame: {exc}")
        conn.service.eof_received(conn)
        if conn.busy or conn.out:
            conn.closing = True
        else:
            self.finish(conn)

    def _flush(self, conn: TestConn) -> None:
        layer = conn.layer
        if conn.notify or conn.lingering:
            return
        try:
            while conn.out:
                head = conn.out[0]
                sent = layer.send(head)
                conn.out_size -= sent
                if sent < len(head):
                    conn.out[0] = memoryview(head)[sent:]
                else:
                    conn.out.popleft()
            while conn.file is not None:
                fd, offset, count, done = conn.file
                sent = layer.sendfile(fd, offset, count) if count else 0
                if not sent:
                    conn.file = None
                    done(None if not count else EOFError("the file ended early"))
                else:
                    conn.file = [fd, offset + sent, count - sent, done]
        except BlockingIOError:
            self.blocked_writes += layer.write_owed > 0
        except TLSFailure as exc:
            self.log(conn, str(exc))
            self.finish(conn, notify=False)
            return
        if conn.closing and not conn.out and conn.file is None and not conn.busy:
            self.finish(conn)
            return
        self._update(conn)

    def _linger(self, conn: TestConn) -> None:
        try:
            conn.layer.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.finish(conn, hard=True)
            return
        conn.lingering = True
        conn.notify = conn.closing = False
        self._update(conn)
        conn.call_later(1.0, lambda: self.finish(conn, hard=True))

    def _update(self, conn: TestConn) -> None:
        layer = conn.layer
        if conn.lingering:
            events = READ
        elif not layer.established or conn.notify:
            events = layer.wants
        else:
            events = 0 if (conn.user_paused or conn.eof or conn.out_size > HIGH_WATER) else READ
            if conn.out or conn.file is not None or layer.wants == WRITE:
                events |= WRITE
            events = events or READ  # a paused connection still notices a reset
        if events != conn.events:
            conn.events = events
            self.sel.modify(conn.fd, events, ("conn", conn))

    def finish(self, conn: TestConn, notify: bool = True, hard: bool = False) -> None:
        """Close: our close_notify first (``notify``, waiting for the socket if it must), then the write side,
        and the socket once the peer closed too, or after a second (``hard``: at once).  Closing with the
        peer's bytes unread would reset the connection, which can destroy what the peer has not read yet (a
        reply, or the alert that says why the handshake failed)."""
        if conn.closed:
            return
        if not hard and not conn.lingering:
            if notify and not conn.notify and conn.layer.established:
                conn.notify, conn.closing = True, False
                if conn.layer.close_notify():
                    self._update(conn)
                    return
            self._linger(conn)
            return
        conn.closed = True
        self.conns.pop(conn.fd, None)
        self.sel.unregister(conn.fd)
        for fd in list(conn.watched):
            conn.unwatch(fd)
        for timer in conn.timers:
            timer.cancel()
        file, conn.file = conn.file, None
        conn.layer.close()
        if file is not None:
            file[3](ConnectionError("connection closed during sendfile"))
        if conn.layer.established:
            conn.service.connection_lost(conn)


def main(argv: List[str]) -> int:
    """``python tests/tlsserver.py CERT KEY SECRET_FILE``: the command service (``echo`` and ``cat`` allowed),
    plainly and behind the shared secret, in this process's main thread (the service installs a SIGCHLD
    handler and becomes a subreaper: not something to do inside the test process).  Prints ``NAME PORT``
    per listener, then ``ready``; SIGTERM stops it."""
    import signal

    from fastframe.servers.auth import AuthenticatedService
    from fastframe.servers.command import CommandService

    from fastframe import _tls

    cert, key, secret_file = argv
    with open(secret_file, "rb") as f:
        secret = f.read().strip()
    server = TLSTestServer(
        _tls.server_context(cert, key),
        {
            "command": CommandService(["echo", "cat"]),
            "command+secret": AuthenticatedService(CommandService(["echo"]), secret),
        },
    )

    def stop(signum: int, frame: Any) -> None:
        server._stop = True
        os.write(server._wake_w, b"x")

    signal.signal(signal.SIGTERM, stop)
    for name in server.listeners:
        print(name, server.port(name), flush=True)
    print("ready", flush=True)
    server._run()
    if server.crashed is not None:
        raise server.crashed
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
