"""servers.tlslayer.TLSLayer driven by a tiny selectors loop (tests/tlsserver.py) over real loopback sockets.

Peers: Python's ``ssl``, ``openssl s_client`` and ``socat OPENSSL:``.  Every bad input of issue 10 item 7 that
reaches a server is here, each with its one-line reason in the server's log and the server still serving a
good client afterwards.  Every test runs on both codecs (the server decodes with the codec under test).
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import ssl
import struct
import subprocess
import time
from types import SimpleNamespace
from typing import Any, Callable, List

import pytest
from fastframe.servers.echo import EchoService, RawEchoService
from fastframe.servers.tlslayer import READ, TLSFailure, TLSLayer
from peertools import read_until, require_tool, stop
from tlsserver import TLSTestServer

from fastframe import _tls

TIMEOUT = 10.0


def frame(data: bytes) -> bytes:
    return struct.pack("!I", len(data)) + data


def connect(port: int, ctx: ssl.SSLContext, name: str = "localhost", **kw: Any) -> ssl.SSLSocket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    return ctx.wrap_socket(sock, server_hostname=name, **kw)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise EOFError(f"closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def echo_once(port: int, ctx: ssl.SSLContext, payload: bytes = b"ping") -> bytes:
    with connect(port, ctx) as s:
        s.sendall(frame(payload))
        (n,) = struct.unpack("!I", recv_exactly(s, 4))
        return recv_exactly(s, n)


def still_serves(server: TLSTestServer, ctx: ssl.SSLContext) -> None:
    assert echo_once(server.port("echo"), ctx, b"after") == b"after"


def wait_reason(server: TLSTestServer, text: str) -> str:
    server.wait_for(lambda: any(text in r for r in server.reasons))
    return next(r for r in server.reasons if text in r)


# -- the happy path ---------------------------------------------------------------------------------------


def test_round_trip_tls13_policy(tls_server: Callable[..., TLSTestServer], client_ctx: ssl.SSLContext) -> None:
    server = tls_server({"echo": EchoService()})
    with connect(server.port("echo"), client_ctx) as s:
        assert s.version() == "TLSv1.3"
        assert s.compression() is None
        s.sendall(frame(b"hello") + frame(b"") + frame(b"world"))
        assert recv_exactly(s, 4 + 5 + 4 + 4 + 5) == frame(b"hello") + frame(b"") + frame(b"world")
    assert server.handshakes == 1


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls12_client_is_served_and_older_is_refused(
    tls_server: Callable[..., TLSTestServer], pki: SimpleNamespace
) -> None:
    server = tls_server({"echo": EchoService()})
    ctx12 = _tls.client_context(pki.ca)
    ctx12.maximum_version = ssl.TLSVersion.TLSv1_2
    with connect(server.port("echo"), ctx12) as s:
        assert s.version() == "TLSv1.2"
        s.sendall(frame(b"x"))
        assert recv_exactly(s, 5) == frame(b"x")
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.load_verify_locations(pki.ca)
    old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError):
        connect(server.port("echo"), old)
    wait_reason(server, "TLS handshake failed")


def test_many_frames_per_record_and_the_pending_rule(
    tls_server: Callable[..., TLSTestServer], client_ctx: ssl.SSLContext
) -> None:
    """Thousands of tiny frames in full 16 KiB records: the decoder's window is often smaller than what one
    record decrypts to, so bytes wait inside OpenSSL where epoll cannot see them; the loop drains them."""
    server = tls_server({"echo": EchoService()})
    frames = [bytes([i % 251]) * (i % 7) for i in range(20000)]
    wire = b"".join(frame(f) for f in frames)
    with connect(server.port("echo"), client_ctx) as s:
        s.sendall(wire)
        assert recv_exactly(s, len(wire)) == wire


def test_big_frames_across_records_and_blocked_writes(
    tls_server: Callable[..., TLSTestServer], client_ctx: ssl.SSLContext
) -> None:
    """3 MiB frames span ~200 records each way.  The client (asyncio, full duplex) writes 12 MiB while it
    reads slowly, so the server's writes block (want-write) and are retried with the same bytes, and its
    reading pauses while its output waits; the echo comes back whole and in order."""
    server = tls_server({"echo": EchoService(max_request=4 << 20)})
    payloads = [bytes(range(256)) * (3 * 4096) + bytes([i]) for i in range(4)]
    wire = b"".join(frame(p) for p in payloads)

    async def client() -> bytes:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", server.port("echo"), ssl=client_ctx, server_hostname="localhost"
        )
        writer.write(wire)
        got = bytearray()
        while len(got) < len(wire):
            got += await reader.read(64 * 1024)
            await asyncio.sleep(0.001)  # a slow reader: the server's socket fills up
        await writer.drain()
        writer.close()
        return bytes(got)

    assert asyncio.run(asyncio.wait_for(client(), 60)) == wire
    assert server.blocked_writes > 0


def test_close_notify_on_the_servers_close(
    tls_server: Callable[..., TLSTestServer], client_ctx: ssl.SSLContext
) -> None:
    """A frame error closes the connection: after the frames before it are answered, with a close_notify
    (a client that treats a ragged EOF as an error sees a clean end)."""
    server = tls_server({"echo": EchoService(max_request=100)})
    with connect(server.port("echo"), client_ctx, suppress_ragged_eofs=False) as s:
        s.sendall(frame(b"ok") + struct.pack("!I", 101))
        assert recv_exactly(s, 6) == frame(b"ok")
        assert s.recv(100) == b""  # a TCP close without close_notify would raise SSLEOFError here
    wait_reason(server, "frame error")


# -- the layer's own rules ------------------------------------------------------------------------------


def test_handshake_readiness_deadline_and_retry_rule(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
    lsock = socket.create_server(("127.0.0.1", 0))
    with lsock, socket.create_connection(lsock.getsockname(), timeout=TIMEOUT) as raw:
        accepted, _ = lsock.accept()
        layer = TLSLayer(accepted, server_ctx, handshake_timeout=5.0, now=100.0)
        try:
            assert layer.handshake() == READ  # nothing from the client yet
            layer.check_deadline(104.9)
            with pytest.raises(TLSFailure, match="TLS handshake timed out"):
                layer.check_deadline(105.0)
            with pytest.raises(BlockingIOError):
                layer.recv_into(bytearray(10))  # (a read before the handshake waits like one)
            assert layer.pending() == 0
            assert layer.close_notify() == 0  # no session yet: nothing to say
            layer._owed = 10  # as if a write had been cut short after 10 bytes
            with pytest.raises(ValueError, match="same 10 bytes"):
                layer.send(b"short")
        finally:
            layer.close()
        assert raw.recv(10) == b""


# -- real peers ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["framed", "raw"])
def test_openssl_s_client(tls_server: Callable[..., TLSTestServer], pki: SimpleNamespace, kind: str) -> None:
    require_tool("openssl")
    server = tls_server({"echo": EchoService() if kind == "framed" else RawEchoService()})
    request = frame(b"hello s_client") if kind == "framed" else b"hello s_client\n"
    proc = subprocess.Popen(
        ["openssl", "s_client", "-quiet", "-connect", f"127.0.0.1:{server.port('echo')}", "-CAfile", pki.ca,
         "-verify_return_error", "-verify_hostname", "localhost", "-servername", "localhost"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdin is not None
        proc.stdin.write(request)
        proc.stdin.flush()
        assert read_until(proc, request) == request
    finally:
        stop(proc)
    if kind == "framed":
        still_serves(server, _tls.client_context(pki.ca))
    assert server.handshakes >= 1


@pytest.mark.parametrize("kind", ["framed", "raw"])
def test_socat(tls_server: Callable[..., TLSTestServer], pki: SimpleNamespace, kind: str) -> None:
    require_tool("socat")
    server = tls_server({"echo": EchoService() if kind == "framed" else RawEchoService()})
    request = b"".join(frame(b"socat %d" % i) for i in range(50)) if kind == "framed" else b"socat line\n" * 50
    run = subprocess.run(
        ["socat", "-t", "5", "-", f"OPENSSL:127.0.0.1:{server.port('echo')},cafile={pki.ca},verify=1,"
         "commonname=localhost"],
        input=request, capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout == request
    # socat 1.7 ends its side with a TCP half-close, no close_notify: that is all the server has to say
    server.wait_for(lambda: not server.conns)
    assert [r.split(": ", 1)[1] for r in server.reasons] == ["closed without a TLS close_notify"]


# -- bad input: one line each, and the server goes on ---------------------------------------------------------


def test_plaintext_to_a_tls_port(tls_server: Callable[..., TLSTestServer], client_ctx: ssl.SSLContext) -> None:
    server = tls_server({"echo": EchoService()})
    with socket.create_connection(("127.0.0.1", server.port("echo")), timeout=TIMEOUT) as s:
        s.sendall(frame(b"plain text, not a ClientHello"))
        try:
            assert s.recv(100) == b""  # closed, no reply
        except ConnectionResetError:
            pass  # (closed with the rest of the request unread: a reset)
    reason = wait_reason(server, "does not speak TLS")
    assert "\n" not in reason and reason.startswith("echo 127.0.0.1:")
    still_serves(server, client_ctx)


def test_stalled_handshake_costs_one_connection(
    tls_server: Callable[..., TLSTestServer], client_ctx: ssl.SSLContext
) -> None:
    server = tls_server({"echo": EchoService()}, handshake_timeout=1.0)
    silent = socket.create_connection(("127.0.0.1", server.port("echo")), timeout=TIMEOUT)
    half = socket.create_connection(("127.0.0.1", server.port("echo")), timeout=TIMEOUT)
    try:
        half.sendall(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello, never finished
        server.wait_for(lambda: server.accepted == 2)
        assert echo_once(server.port("echo"), client_ctx) == b"ping"  # served while the two stall
        assert silent.recv(10) == b"" and half.recv(10) == b""  # then both are cut at the deadline
    finally:
        silent.close()
        half.close()
    assert sum("TLS handshake timed out" in r for r in server.reasons) == 2
    still_serves(server, client_ctx)


def test_client_with_the_wrong_ca(tls_server: Callable[..., TLSTestServer], pki: SimpleNamespace) -> None:
    server = tls_server({"echo": EchoService()})
    with pytest.raises(ssl.SSLCertVerificationError) as info:
        connect(server.port("echo"), _tls.client_context(pki.other_ca))
    assert _tls.describe(info.value, "client") == "the server's certificate is signed by a CA that is not trusted"
    reason = wait_reason(server, "does not trust this server's certificate")
    assert "unknown ca" in reason
    still_serves(server, _tls.client_context(pki.ca))


def test_expired_server_certificate(tls_server: Callable[..., TLSTestServer], pki: SimpleNamespace) -> None:
    server = tls_server({"echo": EchoService()}, context=_tls.server_context(pki.expired.cert, pki.expired.key))
    with pytest.raises(ssl.SSLCertVerificationError) as info:
        connect(server.port("echo"), _tls.client_context(pki.ca))
    assert _tls.describe(info.value, "client") == "the server's certificate has expired"
    wait_reason(server, "refused this server's certificate as expired")


def test_wrong_server_name(tls_server: Callable[..., TLSTestServer], pki: SimpleNamespace) -> None:
    server = tls_server({"echo": EchoService()})
    with pytest.raises(ssl.SSLCertVerificationError) as info:
        connect(server.port("echo"), _tls.client_context(pki.ca), name="other.example")
    assert "does not match the name asked for" in _tls.describe(info.value, "client")
    wait_reason(server, "TLS handshake failed")
    still_serves(server, _tls.client_context(pki.ca))


@pytest.mark.parametrize("version", ["TLSv1_3", "TLSv1_2"])
def test_client_certificate_required(
    tls_server: Callable[..., TLSTestServer], pki: SimpleNamespace, version: str
) -> None:
    mtls = _tls.server_context(pki.server.cert, pki.server.key, client_ca=pki.ca)
    server = tls_server({"echo": EchoService()}, context=mtls)
    port = server.port("echo")
    good = _tls.client_context(pki.ca, cert=pki.client.cert, key=pki.client.key)
    assert echo_once(port, good) == b"ping"
    bare = _tls.client_context(pki.ca)
    bare.maximum_version = getattr(ssl.TLSVersion, version)
    with pytest.raises(ssl.SSLError) as info:  # TLS 1.3: the client learns it at its first read
        echo_once(port, bare)
    assert _tls.describe(info.value, "client") in (
        "the server requires a client certificate (give one with its key)",  # TLS 1.3: certificate_required
        "the server refused the handshake (no cipher in common, or a client certificate it requires)",  # 1.2
    )
    wait_reason(server, "the client sent no certificate, and this server requires one")
    expired = _tls.client_context(pki.ca, cert=pki.expired_client.cert, key=pki.expired_client.key)
    expired.maximum_version = getattr(ssl.TLSVersion, version)
    with pytest.raises(ssl.SSLError):
        echo_once(port, expired)
    wait_reason(server, "the client's certificate has expired")
    assert echo_once(port, good, b"after") == b"after"


def test_peer_drops_mid_record(tls_server: Callable[..., TLSTestServer], client_ctx: ssl.SSLContext) -> None:
    """A client that completes the handshake, sends one whole frame and half of the next TLS record, then
    ends its side: the whole frame is answered, the truncation is logged (OpenSSL reports a cut inside a
    record and one between records alike), the server closes, nothing else happens."""
    server = tls_server({"echo": EchoService()})
    raw = socket.create_connection(("127.0.0.1", server.port("echo")), timeout=TIMEOUT)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = client_ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                raw.sendall(outgoing.read())
                data = raw.recv(65536)
                assert data, "the server closed during the handshake"
                incoming.write(data)
        obj.write(frame(b"whole"))
        obj.write(frame(b"x" * 1000))
        wire = outgoing.read()  # Finished, the whole frame's record, the second frame's record
        raw.sendall(wire[: len(wire) - 500])
        raw.shutdown(socket.SHUT_WR)
        received = bytearray()
        while True:
            chunk = raw.recv(65536)
            if not chunk:
                break
            received += chunk
    finally:
        raw.close()
    incoming.write(bytes(received))
    incoming.write_eof()
    replies = bytearray()
    with pytest.raises(ssl.SSLError) as ended:
        while True:
            replies += obj.read(65536)
    assert bytes(replies) == frame(b"whole")
    # then the end: OpenSSL's decode_error alert for the cut record (or a bare close, had it sent none)
    assert ended.value.reason in ("TLSV1_ALERT_DECODE_ERROR", "UNEXPECTED_EOF_WHILE_READING", None), ended.value
    reason = wait_reason(server, "closed without a TLS close_notify")
    assert "\n" not in reason
    still_serves(server, client_ctx)


def test_many_bad_clients_at_once_leave_the_good_one_alone(
    tls_server: Callable[..., TLSTestServer], client_ctx: ssl.SSLContext, pki: SimpleNamespace
) -> None:
    server = tls_server({"echo": EchoService()}, handshake_timeout=2.0)
    port = server.port("echo")
    bad: List[socket.socket] = []
    try:
        for i in range(20):
            s = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
            if i % 2:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            bad.append(s)
        with connect(port, client_ctx) as good:
            for i in range(50):
                good.sendall(frame(b"%d" % i))
                assert recv_exactly(good, 4 + len(b"%d" % i))[4:] == b"%d" % i
    finally:
        for s in bad:
            s.close()
    server.wait_for(lambda: sum("does not speak TLS" in r for r in server.reasons) == 10)
