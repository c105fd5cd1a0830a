"""FramedSocket over an ssl.SSLSocket: frames, pending() and poll() when TLS holds bytes select() cannot see.

OpenSSL decrypts a whole record at a time.  A reader that asks for less than a record (``read_ahead=False``
reads a header, then the rest of the frame) leaves the record's other bytes inside OpenSSL: the socket is
then not readable although whole frames are there.  ``pending()`` counts them and ``poll()`` finds them; these
tests show a select loop and a ``multiprocessing.connection.wait``-style loop that rely on that, both codecs.
"""

from __future__ import annotations

import select
import socket
import ssl
import struct
import time
from collections.abc import Iterator
from multiprocessing.connection import wait
from types import SimpleNamespace
from typing import Any

import pytest
from harness import Background

from fastframe import FrameTooLarge

TIMEOUT = 10.0


def frame(data: bytes) -> bytes:
    return struct.pack("!I", len(data)) + data


@pytest.fixture
def tls_pair(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> Iterator[tuple[ssl.SSLSocket, ssl.SSLSocket]]:
    """(client, server): the two ends of one TLS connection over loopback TCP, blocking, with timeouts."""
    with socket.create_server(("127.0.0.1", 0)) as lsock:
        raw = socket.create_connection(lsock.getsockname(), timeout=TIMEOUT)
        accepted, _ = lsock.accept()
    accepted.settimeout(TIMEOUT)
    server_side = Background(lambda: server_ctx.wrap_socket(accepted, server_side=True))
    client = client_ctx.wrap_socket(raw, server_hostname="localhost")
    server = server_side.join()
    try:
        yield client, server
    finally:
        client.close()
        server.close()


def test_round_trip_both_directions(framed_cls: Any, tls_pair: tuple[ssl.SSLSocket, ssl.SSLSocket]) -> None:
    """Small frames in one write, large ones next to their header (SSLSocket refuses sendmsg: the fallback)."""
    client, server = tls_pair
    tx, rx = framed_cls(client), framed_cls(server, max_frame=8 << 20)
    payloads = [b"", b"a", b"x" * 1000, bytes(range(256)) * 4096, b"y" * 70000, b"z"]
    bg = Background(lambda: (tx.send_many(payloads), tx.send(payloads[3])))
    got = [rx.recv() for _ in range(len(payloads) + 1)]
    bg.join()
    assert got == payloads + [payloads[3]]
    rx.send(b"back")
    assert tx.recv() == b"back"


def test_pending_counts_what_tls_holds(framed_cls: Any, tls_pair: tuple[ssl.SSLSocket, ssl.SSLSocket]) -> None:
    client, server = tls_pair
    client.sendall(frame(b"one") + frame(b"two") + frame(b"three"))  # one TLS record
    fs = framed_cls(server, read_ahead=False)
    assert fs.recv() == b"one"
    assert server.pending() == len(frame(b"two") + frame(b"three"))  # inside OpenSSL, not the decoder
    assert select.select([fs], [], [], 0.1)[0] == []  # the kernel has nothing more
    assert fs.pending() == server.pending()
    assert fs.poll() is True
    assert fs.recv() == b"two"
    assert fs.poll() is True and fs.recv() == b"three"
    assert fs.pending() == 0 and fs.poll() is False


def test_select_loop_over_tls(framed_cls: Any, tls_pair: tuple[ssl.SSLSocket, ssl.SSLSocket]) -> None:
    """The README's loop: drain what poll() reports, then select(); records of many frames, sent in bursts."""
    client, server = tls_pair
    sent = [bytes([i % 256]) * (i % 50) for i in range(400)]

    def sender() -> None:
        for i in range(0, len(sent), 40):
            client.sendall(b"".join(frame(p) for p in sent[i : i + 40]))
            time.sleep(0.005)
        client.shutdown(socket.SHUT_WR)  # the end of the stream

    fs = framed_cls(server, read_ahead=False)
    bg = Background(sender)
    got: list[bytes] = []
    deadline = time.monotonic() + TIMEOUT
    ended = False
    while not ended:
        assert time.monotonic() < deadline, f"stuck after {len(got)} frames"
        while fs.poll():
            try:
                got.append(fs.recv())
            except EOFError:
                ended = True
                break
        else:
            select.select([fs], [], [], 1.0)
    bg.join()
    assert got == sent


def test_wait_style_loop_over_several_connections(
    framed_cls: Any, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    """``multiprocessing.connection.wait`` selects on file descriptors only: ask ``poll()`` first, wait only
    when no connection has anything buffered (in the decoder or in TLS)."""
    pairs = []
    with socket.create_server(("127.0.0.1", 0)) as lsock:
        for _ in range(3):
            raw = socket.create_connection(lsock.getsockname(), timeout=TIMEOUT)
            accepted, _ = lsock.accept()
            accepted.settimeout(TIMEOUT)
            bg = Background(lambda a=accepted: server_ctx.wrap_socket(a, server_side=True))
            pairs.append((client_ctx.wrap_socket(raw, server_hostname="localhost"), bg.join()))
    try:
        readers = [framed_cls(server, read_ahead=False) for _, server in pairs]
        expected = {i: [b"%d:%d" % (i, n) for n in range(30)] for i in range(3)}
        for i, (client, _) in enumerate(pairs):
            client.sendall(b"".join(frame(p) for p in expected[i]))  # one record per connection
        got: SimpleNamespace = SimpleNamespace(by={i: [] for i in range(3)})
        deadline = time.monotonic() + TIMEOUT
        while any(len(got.by[i]) < 30 for i in range(3)):
            assert time.monotonic() < deadline
            ready = [r for r in readers if r.poll()] or wait(readers, timeout=1.0)
            for r in ready:
                got.by[readers.index(r)].append(r.recv())
        assert got.by == expected
        # and after the first recv() of each, wait() alone sees nothing: the rest was inside OpenSSL
    finally:
        for client, server in pairs:
            client.close()
            server.close()


def test_poll_over_tls_reports_a_frame_error(framed_cls: Any, tls_pair: tuple[ssl.SSLSocket, ssl.SSLSocket]) -> None:
    client, server = tls_pair
    client.sendall(frame(b"ok") + struct.pack("!I", 1000))
    fs = framed_cls(server, max_frame=100)
    assert fs.poll(5.0) is True and fs.recv() == b"ok"
    assert fs.poll() is True
    with pytest.raises(FrameTooLarge):
        fs.recv()


@pytest.mark.timing
def test_poll_over_tls_with_half_a_record_does_not_block(
    framed_cls: Any, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    """Readable, yet only half a TLS record: poll() must answer False at once, not wait for the rest."""
    with socket.create_server(("127.0.0.1", 0)) as lsock:
        raw = socket.create_connection(lsock.getsockname(), timeout=TIMEOUT)
        accepted, _ = lsock.accept()
    accepted.settimeout(TIMEOUT)
    bg = Background(lambda: server_ctx.wrap_socket(accepted, server_side=True))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = client_ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            raw.sendall(outgoing.read())
            incoming.write(raw.recv(65536))
    raw.sendall(outgoing.read())
    server = bg.join()
    try:
        obj.write(frame(b"split record"))
        record = outgoing.read()
        raw.sendall(record[:10])
        fs = framed_cls(server)
        t0 = time.monotonic()
        assert fs.poll(0.0) is False
        assert time.monotonic() - t0 < 2.0
        raw.sendall(record[10:])
        assert fs.poll(5.0) is True and fs.recv() == b"split record"
    finally:
        raw.close()
        server.close()
