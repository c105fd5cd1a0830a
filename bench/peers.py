#!/usr/bin/env python3
"""Peer servers for bench/bench_servers.py: the framed echo protocol written the ways people write it today.

Wire format (the same as fastframe's echo service): a frame is a 4-byte big-endian unsigned length
(``struct.pack("!I", n)``) followed by ``n`` payload bytes; every request frame is answered with the same
frame.  Each implementation splits the stream into payloads and hands each one to a handler (``echo``,
the identity) before framing the reply, the way a real service would; none of them takes the echo-only
shortcut of writing the received bytes back without parsing them.

Usage: ``python bench/peers.py KIND [PORT] [--upper]`` -- listens on 127.0.0.1 (PORT 0 or nothing: an
ephemeral port), prints ``echo tcp 127.0.0.1:PORT`` on stdout once listening, and serves until SIGTERM/SIGINT.
With ``--upper`` the handler is ``bytes.upper`` instead of the identity: each reply is the request with ASCII
a-z upper-cased, as ``fastframe serve --upper`` does (the load generator's ``--upper`` checks it).  The
framed kinds call the handler once per frame either way; ``--upper`` makes that call do visible work.
KIND is one of:

  asyncio-protocol   asyncio.Protocol, a bytearray buffer and an incremental ``"!I"`` parser
                     (``struct.unpack_from`` + slices, one ``transport.write`` per ``data_received``)
  asyncio-streams    ``asyncio.start_server``: ``readexactly(4)``, ``readexactly(n)``, ``write`` + ``drain``
  uvloop-protocol    the asyncio-protocol code, run on uvloop (needs ``pip install uvloop``)
  uvloop-streams     the asyncio-streams code, run on uvloop
  uvloop-raw         a reference, not a framed server: ``data_received`` writes the bytes straight back (RFC 862
                     echo on uvloop).  It parses nothing and checks nothing, so it is the floor for a Python
                     echo on uvloop; a framed client cannot tell it from a framed echo.
  asyncio-raw        the same raw echo on the default asyncio loop
  threading          ``socketserver.ThreadingTCPServer``: a thread per connection, ``recv_into`` exact loops
  twisted            Twisted ``Int32StringReceiver`` on the default (epoll) reactor (needs Twisted)
  selectors          the tutorial "seeds": ``selectors.DefaultSelector``, non-blocking sockets, a ``bytes``
                     buffer grown with ``+=``, ``struct.unpack`` and slicing

Exit status 3 means a needed package is missing (the message on stderr says which).
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import sys
from typing import Any, Callable

HOST = "127.0.0.1"
MAX_FRAME = 16 * 1024 * 1024
_HEADER = struct.Struct("!I")


def echo(payload: bytes) -> bytes:
    """The service: what the server does with one request payload."""
    return payload


#: The handler every framed kind calls once per request payload (``main`` sets it: ``echo`` or ``bytes.upper``).
handler: Callable[[bytes], bytes] = echo


def announce(port: int) -> None:
    print(f"echo tcp {HOST}:{port}", flush=True)


# -- asyncio / uvloop Protocol ------------------------------------------------------------------------


def _protocol_class() -> Any:
    import asyncio

    unpack_from = _HEADER.unpack_from
    pack = _HEADER.pack
    echo = handler

    class EchoProtocol(asyncio.Protocol):
        """A decent hand-written framer: one growing bytearray, parse every complete frame, one write."""

        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.buf = bytearray()

        def data_received(self, data: bytes) -> None:
            buf = self.buf
            buf += data
            size = len(buf)
            pos = 0
            out = bytearray()
            while size - pos >= 4:
                (length,) = unpack_from(buf, pos)
                if length > MAX_FRAME:
                    self.transport.close()
                    return
                end = pos + 4 + length
                if end > size:
                    break
                reply = echo(bytes(buf[pos + 4 : end]))
                out += pack(len(reply))
                out += reply
                pos = end
            if pos:
                # del from the front of a bytearray is O(1) amortized in CPython: no quadratic re-copying
                del buf[:pos]
            if out:
                self.transport.write(out)

    return EchoProtocol


def _raw_protocol_class() -> Any:
    import asyncio

    class RawEcho(asyncio.Protocol):
        """Bytes in, same bytes out: no framing, no limits (a reference point, not a framed server)."""

        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.transport.write(data)

    return RawEcho


def run_asyncio_protocol(port: int, use_uvloop: bool = False, raw: bool = False) -> None:
    import asyncio

    loop = _new_loop(use_uvloop)
    asyncio.set_event_loop(loop)
    factory = _raw_protocol_class() if raw else _protocol_class()
    server: Any = loop.run_until_complete(loop.create_server(factory, HOST, port, backlog=1024, ssl=_tls_context()))
    announce(server.sockets[0].getsockname()[1])
    _run_until_signal(loop)


def _tls_context() -> Any:
    """With BENCH_TLS_CERT and BENCH_TLS_KEY set (bench_servers.py --tls): fastframe's own server context, so
    that the peer and fastframe serve run the same policy, certificate and ciphers."""
    cert, key = os.environ.get("BENCH_TLS_CERT"), os.environ.get("BENCH_TLS_KEY")
    if not cert:
        return None
    from fastframe._tls import server_context

    return server_context(cert, key)


def _new_loop(use_uvloop: bool) -> Any:
    import asyncio

    if use_uvloop:
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def _run_until_signal(loop: Any) -> None:
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, loop.stop)
    loop.run_forever()


# -- asyncio streams ----------------------------------------------------------------------------------


def run_asyncio_streams(port: int, use_uvloop: bool = False) -> None:
    import asyncio

    unpack = _HEADER.unpack
    pack = _HEADER.pack
    echo = handler

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (length,) = unpack(await reader.readexactly(4))
                if length > MAX_FRAME:
                    break
                reply = echo(await reader.readexactly(length))
                writer.write(pack(len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    loop = _new_loop(use_uvloop)
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(asyncio.start_server(handle, HOST, port, backlog=1024))
    announce(server.sockets[0].getsockname()[1])
    _run_until_signal(loop)


# -- socketserver.ThreadingTCPServer ------------------------------------------------------------------


def run_threading(port: int) -> None:
    import socketserver

    unpack = _HEADER.unpack
    pack = _HEADER.pack
    echo = handler

    def recv_exact(sock: socket.socket, n: int) -> bytearray | None:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = sock.recv_into(view[got:])
            if not k:
                return None
            got += k
        return buf

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            try:
                self.serve()
            except OSError:  # a client that resets the connection is not an error worth a traceback
                pass

        def serve(self) -> None:
            sock = self.request
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while True:
                head = recv_exact(sock, 4)
                if head is None:
                    return
                (length,) = unpack(head)
                if length > MAX_FRAME:
                    return
                payload = recv_exact(sock, length) if length else bytearray()
                if payload is None:
                    return
                reply = echo(bytes(payload))
                sock.sendall(pack(len(reply)) + reply)

    class Server(socketserver.ThreadingTCPServer):
        allow_reuse_address = True
        daemon_threads = True
        request_queue_size = 1024

    server = Server((HOST, port), Handler)
    announce(server.server_address[1])
    _stop_on_signal(server.shutdown)
    server.serve_forever()


def _stop_on_signal(stop: Callable[[], None]) -> None:
    import threading

    def handler(signum: int, frame: Any) -> None:
        threading.Thread(target=stop, daemon=True).start()  # shutdown() blocks: not from the main thread

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


# -- Twisted ------------------------------------------------------------------------------------------


def run_twisted(port: int) -> None:
    from twisted.internet import protocol
    from twisted.internet import reactor as _reactor
    from twisted.protocols.basic import Int32StringReceiver

    reactor: Any = _reactor  # the module-level reactor object; its interfaces confuse type checkers
    echo = handler

    class Echo(Int32StringReceiver):
        MAX_LENGTH = MAX_FRAME

        def connectionMade(self) -> None:
            transport: Any = self.transport
            transport.setTcpNoDelay(True)

        def stringReceived(self, string: bytes) -> None:
            self.sendString(echo(string))  # type: ignore[no-untyped-call]

    factory = protocol.ServerFactory.forProtocol(Echo)
    listening = reactor.listenTCP(port, factory, backlog=1024, interface=HOST)
    announce(listening.getHost().port)
    reactor.run()  # installs its own SIGTERM/SIGINT handlers


# -- the seeds' selectors loop ------------------------------------------------------------------------


def run_selectors(port: int) -> None:
    import selectors

    sel = selectors.DefaultSelector()
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((HOST, port))
    lsock.listen(1024)
    lsock.setblocking(False)
    sel.register(lsock, selectors.EVENT_READ, data=None)
    announce(lsock.getsockname()[1])  # SIGTERM keeps its default action (exit at once); Ctrl-C raises
    echo = handler

    class State:
        def __init__(self) -> None:
            self.inb = b""
            self.outb = b""

    def accept() -> None:
        conn, _ = lsock.accept()
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sel.register(conn, selectors.EVENT_READ, data=State())

    def close(sock: socket.socket) -> None:
        sel.unregister(sock)
        sock.close()

    def service(key: Any, mask: int) -> None:
        sock, state = key.fileobj, key.data
        if mask & selectors.EVENT_READ:
            try:
                data = sock.recv(65536)
            except ConnectionError:
                data = b""
            if not data:
                close(sock)
                return
            state.inb += data
            while len(state.inb) >= 4:
                length = struct.unpack("!I", state.inb[:4])[0]
                if len(state.inb) < 4 + length:
                    break
                payload = state.inb[4 : 4 + length]
                state.inb = state.inb[4 + length :]
                reply = echo(payload)
                state.outb += struct.pack("!I", len(reply)) + reply
        if state.outb:
            try:
                sent = sock.send(state.outb)
            except BlockingIOError:
                sent = 0
            except ConnectionError:
                close(sock)
                return
            state.outb = state.outb[sent:]
        want = selectors.EVENT_READ | (selectors.EVENT_WRITE if state.outb else 0)
        if want != key.events:
            sel.modify(sock, want, data=state)

    while True:
        for key, mask in sel.select():
            if key.data is None:
                accept()
            else:
                service(key, mask)


KINDS: dict[str, Callable[[int], None]] = {
    "asyncio-protocol": run_asyncio_protocol,
    "asyncio-streams": run_asyncio_streams,
    "uvloop-protocol": lambda port: run_asyncio_protocol(port, use_uvloop=True),
    "uvloop-streams": lambda port: run_asyncio_streams(port, use_uvloop=True),
    "uvloop-raw": lambda port: run_asyncio_protocol(port, use_uvloop=True, raw=True),
    "asyncio-raw": lambda port: run_asyncio_protocol(port, raw=True),
    "threading": run_threading,
    "twisted": run_twisted,
    "selectors": run_selectors,
}

#: the module each kind needs beyond the standard library
REQUIRES: dict[str, str] = {
    "uvloop-protocol": "uvloop", "uvloop-streams": "uvloop", "uvloop-raw": "uvloop", "twisted": "twisted",
}  # fmt: skip


def main(argv: list[str]) -> int:
    global handler
    upper = "--upper" in argv
    argv = [a for a in argv if a != "--upper"]
    if not argv or argv[0] not in KINDS or len(argv) > 2 or (upper and argv[0].endswith("-raw")):
        print(f"usage: peers.py {{{','.join(KINDS)}}} [PORT] [--upper]  (no --upper for the raw kinds)",
              file=sys.stderr)  # fmt: skip
        return 2
    kind = argv[0]
    port = int(argv[1]) if len(argv) > 1 else 0
    handler = bytes.upper if upper else echo
    needed = REQUIRES.get(kind)
    if needed is not None:
        import importlib.util

        if importlib.util.find_spec(needed) is None:
            print(f"peers.py: {kind} needs {needed!r}, which is not installed (pip install {needed})", file=sys.stderr)
            return 3
    KINDS[kind](port)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
