"""Wire compatibility with the peers users already run.

- the seeds' framing, ``struct.pack("!I", n) + data``;
- ``multiprocessing.connection`` (``send_bytes``/``recv_bytes``, below 2 GiB), both directions;
- Twisted's ``Int32StringReceiver``, both in process (no reactor) and as a real reactor in a subprocess, with
  FramedSocket as client and as server.

Twisted is a test extra (``pip install fastframe[test]``): it is imported, not skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import select
import socket
import struct
import subprocess
import sys
import textwrap
import time
from multiprocessing.connection import Client, Listener

import pytest
import twisted  # noqa: F401 - a hard test dependency: fail loudly if it is missing
from harness import Background
from twisted.internet.testing import StringTransport
from twisted.protocols.basic import Int32StringReceiver

MiB = 1024 * 1024
TIMEOUT = 20.0
SIZES = [0, 1, 100, 16384, 16385, 65535, 65536, 70000, 1 * MiB]


def payloads(sizes, seed=0):
    rng = random.Random(seed)
    return [rng.randbytes(n) for n in sizes]


# ======================================================================================================
# The seeds' format
# ======================================================================================================


@pytest.mark.parametrize("n", [0, 1, 255, 256, 65535, 65536, 70000, 1 * MiB])
def test_default_format_is_struct_pack_network_uint32(codec, n):
    data = payloads([n])[0]
    seed_frame = struct.pack("!I", len(data)) + data
    assert codec.encode(data) == seed_frame
    assert codec.header(n) + data == seed_frame
    assert codec.encode_many([data, b"", data]) == seed_frame + struct.pack("!I", 0) + seed_frame
    assert codec.Decoder().feed(seed_frame * 2) == [data, data]


def test_seed_style_receive_loop_reads_framedsocket(framed_cls):
    """The hand-written loop from the tutorials reads what FramedSocket sends, and vice versa."""
    a, b = socket.socketpair()
    a.settimeout(TIMEOUT)
    b.settimeout(TIMEOUT)
    try:
        data = payloads([0, 7, 70000, 300_000])

        def seed_recv(sock):
            def exactly(n):
                buf = b""
                while len(buf) < n:
                    chunk = sock.recv(n - len(buf))
                    assert chunk
                    buf += chunk
                return buf

            (n,) = struct.unpack("!I", exactly(4))
            return exactly(n)

        tx = framed_cls(a)
        bg = Background(lambda: [tx.send(p) for p in data])
        assert [seed_recv(b) for _ in data] == data
        bg.join()
        rx = framed_cls(a)
        bg = Background(lambda: [b.sendall(struct.pack("!I", len(p)) + p) for p in data])
        assert [rx.recv() for _ in data] == data
        bg.join()
    finally:
        a.close()
        b.close()


# ======================================================================================================
# multiprocessing.connection
# ======================================================================================================


def _exchange_with_connection(fs, conn, data):
    # FramedSocket -> Connection.recv_bytes
    sender = Background(lambda: [fs.send(p) for p in data])
    for p in data:
        assert conn.poll(TIMEOUT), "multiprocessing peer got nothing"
        assert conn.recv_bytes() == p
    sender.join()
    # Connection.send_bytes -> FramedSocket.recv
    sender = Background(lambda: [conn.send_bytes(p) for p in data])
    assert [fs.recv() for _ in data] == data
    sender.join()
    # send_many arrives as separate messages too
    sender = Background(fs.send_many, data)
    for p in data:
        assert conn.poll(TIMEOUT)
        assert conn.recv_bytes() == p
    sender.join()


def test_multiprocessing_listener_and_framedsocket_client(framed_cls):
    with Listener(("127.0.0.1", 0), authkey=None) as listener:
        sock = socket.create_connection(listener.address, timeout=TIMEOUT)  # queued before accept()
        try:
            with listener.accept() as conn:
                fs = framed_cls(sock)
                _exchange_with_connection(fs, conn, payloads(SIZES, 1))
                conn.close()
                with pytest.raises(EOFError):
                    fs.recv()
        finally:
            sock.close()


def test_multiprocessing_client_and_framedsocket_server(framed_cls):
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(TIMEOUT)
        conn = Client(server.getsockname(), authkey=None)
        try:
            sock, _ = server.accept()
            sock.settimeout(TIMEOUT)
            with sock:
                fs = framed_cls(sock)
                _exchange_with_connection(fs, conn, payloads(SIZES, 2))
                sock.shutdown(socket.SHUT_WR)
                assert conn.poll(TIMEOUT)
                with pytest.raises(EOFError):
                    conn.recv_bytes()
        finally:
            conn.close()


# ======================================================================================================
# Twisted Int32StringReceiver, in process (no reactor)
# ======================================================================================================


class _Collect(Int32StringReceiver):
    MAX_LENGTH = 16 * MiB

    def __init__(self):
        self.strings = []

    def stringReceived(self, string):
        self.strings.append(string)


def test_int32stringreceiver_in_process(codec):
    data = payloads([0, 1, 99, 70000, 200_000], 3)
    # fastframe -> Twisted, delivered in awkward chunks
    proto = _Collect()
    proto.makeConnection(StringTransport())
    wire = codec.encode_many(data)
    for i in range(0, len(wire), 997):
        proto.dataReceived(wire[i : i + 997])
    assert proto.strings == data
    # Twisted -> fastframe
    transport = StringTransport()
    sender = _Collect()
    sender.makeConnection(transport)
    for p in data:
        sender.sendString(p)
    produced = transport.value()
    assert produced == b"".join(struct.pack("!I", len(p)) + p for p in data)
    assert codec.Decoder().feed(produced) == data


# ======================================================================================================
# Twisted reactor in a subprocess
# ======================================================================================================

ECHO_SERVER = textwrap.dedent(
    """
    import hashlib, sys
    from twisted.internet import protocol, reactor
    from twisted.protocols.basic import Int32StringReceiver

    class Echo(Int32StringReceiver):
        MAX_LENGTH = 16 * 1024 * 1024

        def stringReceived(self, data):
            # A receipt the client can check independently (proves Twisted saw the frame boundary),
            # then the payload itself (proves the client parses Twisted's framing).
            self.sendString(b"%d:%s" % (len(data), hashlib.sha256(data).hexdigest().encode()))
            self.sendString(data)

        def lengthLimitExceeded(self, length):
            sys.stderr.write("length limit exceeded: %d\\n" % length)
            self.transport.loseConnection()

    factory = protocol.ServerFactory()
    factory.protocol = Echo
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    print(port.getHost().port, flush=True)
    reactor.callLater(60, reactor.stop)  # never outlive the test run
    reactor.run()
    """
)

CLIENT = textwrap.dedent(
    """
    import hashlib, json, random, sys
    from twisted.internet import protocol, reactor
    from twisted.protocols.basic import Int32StringReceiver

    port, seed = int(sys.argv[1]), int(sys.argv[2])
    sizes = json.loads(sys.argv[3])
    rng = random.Random(seed)
    payloads = [rng.randbytes(n) for n in sizes]
    received = []

    class Client(Int32StringReceiver):
        MAX_LENGTH = 16 * 1024 * 1024

        def connectionMade(self):
            for p in payloads:
                self.sendString(p)

        def stringReceived(self, data):
            received.append([len(data), hashlib.sha256(data).hexdigest()])
            if len(received) == 2 * len(payloads):
                self.transport.loseConnection()

        def connectionLost(self, reason):
            print(json.dumps(received), flush=True)
            reactor.stop()

    factory = protocol.ClientFactory()
    factory.protocol = Client
    reactor.connectTCP("127.0.0.1", port, factory, timeout=10)
    reactor.callLater(60, reactor.stop)
    reactor.run()
    """
)


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    buf = b""
    fd = proc.stdout.fileno()
    while not buf.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no line from subprocess in {timeout}s; got {buf!r}"
        readable, _, _ = select.select([fd], [], [], remaining)
        if readable:
            chunk = os.read(fd, 65536)
            assert chunk, f"subprocess closed stdout; stderr: {proc.stderr.read().decode(errors='replace')}"
            buf += chunk
    return buf.decode()


def _spawn(script: str, *args: str, tmp_path) -> subprocess.Popen:
    path = tmp_path / "twisted_peer.py"
    path.write_text(script)
    return subprocess.Popen(
        [sys.executable, str(path), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path,
    )  # fmt: skip


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)
    proc.stdout.close()
    proc.stderr.close()


@pytest.fixture
def twisted_echo_port(tmp_path):
    proc = _spawn(ECHO_SERVER, tmp_path=tmp_path)
    try:
        yield int(_read_line(proc, TIMEOUT))
    finally:
        _stop(proc)


def _receipt(data: bytes) -> bytes:
    return b"%d:%s" % (len(data), hashlib.sha256(data).hexdigest().encode())


def test_framedsocket_client_to_twisted_server(framed_cls, twisted_echo_port):
    data = payloads(SIZES, 4)
    with socket.create_connection(("127.0.0.1", twisted_echo_port), timeout=TIMEOUT) as sock:
        fs = framed_cls(sock)

        def send_all():
            for p in data[:5]:
                fs.send(p)
            fs.send_many(data[5:])

        sender = Background(send_all)
        got = [fs.recv() for _ in range(2 * len(data))]
        sender.join()
        sock.shutdown(socket.SHUT_WR)
        with pytest.raises(EOFError):
            fs.recv()
    assert got[0::2] == [_receipt(p) for p in data]
    assert got[1::2] == data


def test_twisted_client_to_framedsocket_server(framed_cls, tmp_path):
    sizes = SIZES
    seed = 5
    data = payloads(sizes, seed)
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(TIMEOUT)
        port = server.getsockname()[1]
        proc = _spawn(CLIENT, str(port), str(seed), json.dumps(sizes), tmp_path=tmp_path)
        try:
            sock, _ = server.accept()
            sock.settimeout(TIMEOUT)
            with sock:
                fs = framed_cls(sock)
                got = [fs.recv() for _ in data]
                assert got == data
                replies = []
                for p in got:
                    replies.append(_receipt(p))
                    replies.append(p[::-1])
                fs.send_many(replies[:4])
                for r in replies[4:]:
                    fs.send(r)
                with pytest.raises(EOFError):  # the client hangs up once it has every reply
                    fs.recv()
            out = json.loads(_read_line(proc, TIMEOUT))
            assert proc.wait(TIMEOUT) == 0, proc.stderr.read().decode(errors="replace")
        finally:
            _stop(proc)
    assert out == [[len(r), hashlib.sha256(r).hexdigest()] for r in replies]
