"""``fastframe serve --tls-cert --tls-key [--tls-client-ca]``: TLS in the engine, on both engines.

Every test runs a real server process (``tls_serve``, parametrized select/prefork through ``engine``) and real
clients: the library's, ``openssl s_client`` and ``socat``.  Bad input is judged by the one line the server
logs and by the next client being served.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import struct
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import pytest
from harness import ServerProcess, recv_exactly, recv_frame, send_frame, wait_until
from peertools import read_until, require_tool, stop

from fastframe import _tls, client

TIMEOUT = 10.0
Serve = Callable[..., ServerProcess]


def frame(data: bytes) -> bytes:
    return struct.pack("!I", len(data)) + data


def tls_connect(addr: Any, ctx: ssl.SSLContext, name: str = "localhost", **kw: Any) -> ssl.SSLSocket:
    raw = socket.create_connection(addr, timeout=TIMEOUT)
    return ctx.wrap_socket(raw, server_hostname=name, **kw)


def echo_once(addr: Any, ctx: ssl.SSLContext, payload: bytes = b"ping") -> bytes:
    with tls_connect(addr, ctx) as s:
        send_frame(s, payload)
        return recv_frame(s)


def logged(server: ServerProcess, text: str, count: int = 1) -> str:
    """Wait until the server's log has ``count`` lines holding ``text``; return the last (one line, no trace)."""
    assert wait_until(lambda: server.stderr().count(text) >= count, TIMEOUT), server.stderr()
    line = [line for line in server.stderr().splitlines() if text in line][-1]
    assert "Traceback" not in server.stderr(), server.stderr()
    return line


def tls_args(pki: SimpleNamespace, cert: Any = None) -> list[str]:
    cert = cert or pki.server
    return ["--tls-cert", cert.cert, "--tls-key", cert.key]


@pytest.fixture
def echo_server(tls_serve: Serve, pki: SimpleNamespace, engine: str) -> ServerProcess:
    return tls_serve("--echo", "0", *tls_args(pki), engine=engine)


# -- the services over TLS --------------------------------------------------------------------------------------


def test_every_tcp_service_over_tls(
    tls_serve: Serve, pki: SimpleNamespace, client_ctx: ssl.SSLContext, engine: str, tmp_path: Path
) -> None:
    (tmp_path / "big.bin").write_bytes(os.urandom(3 << 20) * 3)  # 9 MiB: many 256 KiB blocks
    server = tls_serve("--echo", "0", "--time", "0", "--files", "0", "--root", str(tmp_path), *tls_args(pki),
                       expect=4, engine=engine)  # fmt: skip
    tls = {"ssl": client_ctx, "server_hostname": "localhost"}
    host = "127.0.0.1"
    messages = [b"one", b"", b"x" * 100_000, b"y" * 70_000]
    assert client.echo(host, server.port("echo"), messages, **tls) == messages
    # TCP time inside TLS; the UDP one stays plain (the same port)
    assert abs(client.get_time(host, server.port("time"), **tls) - time.time()) < 5
    assert abs(client.get_time(host, server.port("time", "udp")) - time.time()) < 5
    out = tmp_path / "out.bin"
    size = client.get_file(host, server.port("files"), "big.bin", str(out), **tls)
    assert size == 9 << 20 and out.read_bytes() == (tmp_path / "big.bin").read_bytes()
    assert "files cross TLS in userspace blocks of 256 KiB" in server.stderr()


def test_many_frames_in_one_record_and_frames_across_records(
    echo_server: ServerProcess, client_ctx: ssl.SSLContext
) -> None:
    """200 small frames in one TLS record (the decoder's window is smaller than what OpenSSL decrypted: the
    pending rule), then a 1 MiB frame across 64 records, on one connection."""
    with tls_connect(echo_server.addr("echo"), client_ctx) as s:
        wire = b"".join(frame(b"%05d" % i) for i in range(200))
        s.sendall(wire)
        assert recv_exactly(s, len(wire)) == wire
        big = os.urandom(1 << 20)
        send_frame(s, big)
        assert recv_frame(s) == big


def test_raw_echo_reads_all_that_tls_decrypted(
    tls_serve: Serve, pki: SimpleNamespace, client_ctx: ssl.SSLContext, engine: str
) -> None:
    server = tls_serve("--echo", "0", "--raw", *tls_args(pki), engine=engine)
    data = os.urandom(300_000)
    assert client.echo_raw("127.0.0.1", server.port("echo"), data, ssl=client_ctx, server_hostname="localhost") == data
    with tls_connect(server.addr("echo"), client_ctx) as s:  # one small record: answered, nothing stranded
        s.sendall(b"hello\n")
        assert recv_exactly(s, 6) == b"hello\n"


def test_secret_handshake_runs_inside_tls(
    tls_serve: Serve, pki: SimpleNamespace, client_ctx: ssl.SSLContext, engine: str, tmp_path: Path
) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"a shared secret of some length 0123456789")
    server = tls_serve("--command", "0", "--allow", "echo", "--secret-file", str(secret), *tls_args(pki),
                       engine=engine)  # fmt: skip
    out: list[bytes] = []
    status = client.exec_command("127.0.0.1", server.port("command"), ["echo", "inside"], secret=secret.read_bytes(),
                                 stdout=out.append, ssl=client_ctx, server_hostname="localhost")  # fmt: skip
    assert (status, b"".join(out)) == (0, b"inside\n")
    with pytest.raises(client.AuthError):
        client.exec_command("127.0.0.1", server.port("command"), ["echo"], secret=b"wrong secret 0123456789abc",
                            stdout=out.append, ssl=client_ctx, server_hostname="localhost")  # fmt: skip
    with pytest.raises((OSError, client.AuthError)):  # the secret alone, without TLS, does not get through
        client.exec_command("127.0.0.1", server.port("command"), ["echo"], secret=secret.read_bytes(),
                            stdout=out.append, timeout=2)  # fmt: skip
    assert out == [b"inside\n"]


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls13_preferred_tls12_served_older_refused(echo_server: ServerProcess, pki: SimpleNamespace) -> None:
    with tls_connect(echo_server.addr("echo"), _tls.client_context(pki.ca)) as s:
        assert (s.version(), s.compression()) == ("TLSv1.3", None)
    ctx12 = _tls.client_context(pki.ca)
    ctx12.maximum_version = ssl.TLSVersion.TLSv1_2
    with tls_connect(echo_server.addr("echo"), ctx12) as s:
        assert s.version() == "TLSv1.2"
        send_frame(s, b"x")
        assert recv_frame(s) == b"x"
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.load_verify_locations(pki.ca)
    old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError):
        tls_connect(echo_server.addr("echo"), old)
    logged(echo_server, "TLS handshake failed")


def test_tiny_frames_in_full_records(echo_server: ServerProcess, client_ctx: ssl.SSLContext) -> None:
    """20,000 frames of 0-6 bytes in full 16 KiB records: the decoder's window is often smaller than a record's
    plaintext, so bytes wait inside OpenSSL where epoll cannot see them; the engine drains them."""
    wire = b"".join(frame(bytes([i % 251]) * (i % 7)) for i in range(20000))
    with tls_connect(echo_server.addr("echo"), client_ctx) as s:
        s.sendall(wire)
        assert recv_exactly(s, len(wire)) == wire


def test_big_frames_with_a_slow_reader(
    tls_serve: Serve, pki: SimpleNamespace, client_ctx: ssl.SSLContext, engine: str
) -> None:
    """3 MiB frames, 12 MiB written by a client that reads slowly: the server's TLS writes block and are
    retried with the same bytes, its reading pauses while output waits; the echo comes back whole, in order."""
    import asyncio

    server = tls_serve("--echo", "0", "--max-request", "4M", *tls_args(pki), engine=engine)
    wire = b"".join(frame(bytes(range(256)) * (3 * 4096) + bytes([i])) for i in range(4))

    async def slow_client() -> bytes:
        reader, writer = await asyncio.open_connection(*server.addr("echo"), ssl=client_ctx,
                                                       server_hostname="localhost")  # fmt: skip
        writer.write(wire)
        got = bytearray()
        while len(got) < len(wire):
            got += await reader.read(64 * 1024)
            await asyncio.sleep(0.001)
        writer.close()
        return bytes(got)

    assert asyncio.run(asyncio.wait_for(slow_client(), 60)) == wire


def test_frame_error_closes_with_close_notify(
    tls_serve: Serve, pki: SimpleNamespace, client_ctx: ssl.SSLContext, engine: str
) -> None:
    server = tls_serve("--echo", "0", "--max-request", "100", *tls_args(pki), engine=engine)
    with tls_connect(server.addr("echo"), client_ctx, suppress_ragged_eofs=False) as s:
        s.sendall(frame(b"ok") + struct.pack("!I", 101))
        assert recv_exactly(s, 6) == frame(b"ok")
        assert s.recv(100) == b""  # a TCP close without close_notify would raise SSLEOFError here
    logged(server, "closing")


def test_many_bad_clients_at_once_leave_a_good_one_alone(
    echo_server: ServerProcess, client_ctx: ssl.SSLContext
) -> None:
    bad: list[socket.socket] = []
    try:
        for i in range(20):
            s = socket.create_connection(echo_server.addr("echo"), timeout=TIMEOUT)
            if i % 2:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            bad.append(s)
        with tls_connect(echo_server.addr("echo"), client_ctx) as good:
            for i in range(50):
                send_frame(good, b"%d" % i)
                assert recv_frame(good) == b"%d" % i
    finally:
        for s in bad:
            s.close()
    logged(echo_server, "does not speak TLS", 10)


# -- real peers -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [False, True], ids=["framed", "raw"])
def test_openssl_s_client_and_socat(
    tls_serve: Serve, pki: SimpleNamespace, client_ctx: ssl.SSLContext, engine: str, raw: bool
) -> None:
    openssl, socat = require_tool("openssl"), require_tool("socat")
    server = tls_serve("--echo", "0", *(["--raw"] if raw else []), *tls_args(pki), engine=engine)
    port = server.port("echo")
    wire = b"hello over a real peer\n" * 20
    wire = wire if raw else b"".join(frame(b"peer %d" % i) for i in range(50))
    proc = subprocess.Popen(
        [openssl, "s_client", "-quiet", "-connect", f"127.0.0.1:{port}", "-CAfile", pki.ca, "-verify_return_error",
         "-verify_hostname", "localhost", "-servername", "localhost"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdin is not None
        proc.stdin.write(wire)
        proc.stdin.flush()
        assert read_until(proc, wire) == wire
    finally:
        stop(proc)
    run = subprocess.run([socat, "-t", "5", "-", f"OPENSSL:127.0.0.1:{port},cafile={pki.ca},verify=1,"
                          "commonname=localhost"], input=wire, capture_output=True, timeout=30)  # fmt: skip
    assert (run.returncode, run.stdout) == (0, wire), run.stderr
    if not raw:
        assert echo_once(server.addr("echo"), client_ctx) == b"ping"


# -- bad input: a clear line each, and the next client is served -------------------------------------------------


def test_plaintext_to_a_tls_port(echo_server: ServerProcess, client_ctx: ssl.SSLContext) -> None:
    with socket.create_connection(echo_server.addr("echo"), timeout=TIMEOUT) as s:
        s.sendall(frame(b"plain text, not a ClientHello"))
        try:
            assert s.recv(100) == b""
        except ConnectionResetError:
            pass
    line = logged(echo_server, "does not speak TLS")
    assert "127.0.0.1" in line and "TLS handshake failed" in line
    assert echo_once(echo_server.addr("echo"), client_ctx) == b"ping"


def test_tls_to_a_plain_port(serve_plain: Serve, client_ctx: ssl.SSLContext, engine: str) -> None:
    server = serve_plain("--echo", "0", engine=engine)
    with pytest.raises(_tls.TLSError) as info:
        client.echo("127.0.0.1", server.port("echo"), [b"x"], ssl=client_ctx, server_hostname="localhost")
    assert str(info.value).startswith("TLS handshake with 127.0.0.1") and "\n" not in str(info.value)
    logged(server, "closing")  # the ClientHello is a frame far over the limit: one line, then the next client
    assert client.echo("127.0.0.1", server.port("echo"), [b"plain"]) == [b"plain"]


def test_stalled_handshake_is_cut_at_the_deadline(
    tls_serve: Serve, pki: SimpleNamespace, client_ctx: ssl.SSLContext, engine: str
) -> None:
    server = tls_serve("--echo", "0", "--frame-timeout", "1", *tls_args(pki), engine=engine)
    addr = server.addr("echo")
    silent = socket.create_connection(addr, timeout=TIMEOUT)
    half = socket.create_connection(addr, timeout=TIMEOUT)
    try:
        half.sendall(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello, never finished
        assert echo_once(addr, client_ctx) == b"ping"  # served while the two stall
        start = time.monotonic()
        assert silent.recv(10) == b"" and half.recv(10) == b""
        assert time.monotonic() - start < 5
    finally:
        silent.close()
        half.close()
    logged(server, "TLS handshake not finished within 1 s", 2)
    assert echo_once(addr, client_ctx) == b"ping"


def test_client_with_the_wrong_ca(echo_server: ServerProcess, pki: SimpleNamespace) -> None:
    with pytest.raises(ssl.SSLCertVerificationError) as info:
        tls_connect(echo_server.addr("echo"), _tls.client_context(pki.other_ca))
    assert _tls.describe(info.value, "client") == "the server's certificate is signed by a CA that is not trusted"
    logged(echo_server, "does not trust this server's certificate")
    assert echo_once(echo_server.addr("echo"), _tls.client_context(pki.ca)) == b"ping"


def test_expired_server_certificate(tls_serve: Serve, pki: SimpleNamespace, engine: str) -> None:
    server = tls_serve("--echo", "0", *tls_args(pki, pki.expired), engine=engine)
    with pytest.raises(ssl.SSLCertVerificationError) as info:
        tls_connect(server.addr("echo"), _tls.client_context(pki.ca))
    assert _tls.describe(info.value, "client") == "the server's certificate has expired"
    logged(server, "refused this server's certificate as expired")


def test_wrong_server_name(echo_server: ServerProcess, pki: SimpleNamespace) -> None:
    with pytest.raises(ssl.SSLCertVerificationError) as info:
        tls_connect(echo_server.addr("echo"), _tls.client_context(pki.ca), name="other.example")
    assert "does not match the name asked for" in _tls.describe(info.value, "client")
    logged(echo_server, "TLS handshake failed")
    assert echo_once(echo_server.addr("echo"), _tls.client_context(pki.ca)) == b"ping"


def test_client_certificate_required(tls_serve: Serve, pki: SimpleNamespace, engine: str) -> None:
    server = tls_serve("--echo", "0", *tls_args(pki), "--tls-client-ca", pki.ca, engine=engine)
    addr = server.addr("echo")
    good = _tls.client_context(pki.ca, cert=pki.client.cert, key=pki.client.key)
    assert echo_once(addr, good) == b"ping"
    with pytest.raises(ssl.SSLError) as info:  # TLS 1.3: the client learns it at its first read
        echo_once(addr, _tls.client_context(pki.ca))
    assert "client certificate" in _tls.describe(info.value, "client")
    logged(server, "the client sent no certificate, and this server requires one")
    with pytest.raises(ssl.SSLError):
        echo_once(addr, _tls.client_context(pki.ca, cert=pki.expired_client.cert, key=pki.expired_client.key))
    logged(server, "the client's certificate has expired")
    assert echo_once(addr, good, b"after") == b"after"


def test_peer_drops_mid_record(echo_server: ServerProcess, client_ctx: ssl.SSLContext) -> None:
    """The handshake, a record with one whole frame and half of the next, then half of the record with the
    rest and the end of the TCP stream: the whole frame is answered, the cut is one log line, the next client
    is served."""
    raw = socket.create_connection(echo_server.addr("echo"), timeout=TIMEOUT)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = client_ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        for _ in range(10):
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                raw.sendall(outgoing.read())
                data = raw.recv(65536)
                assert data, "the server closed during the handshake"
                incoming.write(data)
        obj.write(frame(b"whole") + frame(b"x" * 1000)[:500])  # one record: a whole frame and half of one
        raw.sendall(outgoing.read())
        obj.write(frame(b"x" * 1000)[500:])
        wire = outgoing.read()
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
    try:  # up to the server's end: close_notify (b"", as 3.9's OpenSSL reports it) or an SSLError (3.11's)
        for _ in range(100):
            chunk = obj.read(65536)
            if not chunk:
                break
            replies += chunk
    except ssl.SSLError:
        pass
    assert bytes(replies) == frame(b"whole")
    assert "stream ended inside a frame" in logged(echo_server, "closed inside a frame")
    assert echo_once(echo_server.addr("echo"), client_ctx) == b"ping"


# -- backpressure, timeouts, drain -------------------------------------------------------------------------------


def test_graceful_stop_answers_everything_then_close_notify(
    tls_serve: Serve, pki: SimpleNamespace, client_ctx: ssl.SSLContext, engine: str
) -> None:
    server = tls_serve("--echo", "0", *tls_args(pki), engine=engine)
    with tls_connect(server.addr("echo"), client_ctx, suppress_ragged_eofs=False) as s:
        assert echo_once(server.addr("echo"), client_ctx) == b"ping"
        send_frame(s, b"first")
        assert recv_frame(s) == b"first"
        wire = b"".join(frame(b"%04d" % i) for i in range(100))
        s.sendall(wire)
        server.signal(signal.SIGTERM)
        assert recv_exactly(s, len(wire)) == wire
        assert s.recv(100) == b""  # a TCP end without close_notify would raise SSLEOFError here
    assert server.wait(TIMEOUT) == 0


def test_a_client_that_stops_reading_is_cut(
    tls_serve: Serve, pki: SimpleNamespace, client_ctx: ssl.SSLContext, engine: str
) -> None:
    """Backpressure: the server stops reading a client that does not read its replies (its memory stays
    bounded), and cuts it once its output made no progress for --idle-timeout; others are served meanwhile."""
    server = tls_serve("--echo", "0", "--idle-timeout", "2", *tls_args(pki), engine=engine, workers=1)
    addr = server.addr("echo")
    pid = server.workers()[0] if engine == "prefork" else server.pid
    s = tls_connect(addr, client_ctx)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(0.5)
    block = frame(b"z" * 65000)
    sent = 0
    try:
        with pytest.raises((socket.timeout, ConnectionError, ssl.SSLError)):
            for _ in range(2000):  # 130 MB at most: the server must stop taking them long before
                s.sendall(block)
                sent += len(block)
        assert sent < 64 << 20, "the server kept reading a client that reads nothing"
        assert rss(pid) < 200 << 20
        assert echo_once(addr, client_ctx) == b"ping"
        assert logged(server, "it read nothing for")
    finally:
        s.close()
    assert echo_once(addr, client_ctx) == b"ping"


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


# -- settings and policy ---------------------------------------------------------------------------------------


def serve_fails(workdir: str, *args: str) -> subprocess.CompletedProcess[str]:
    import sys

    return subprocess.run([sys.executable, "-m", "fastframe", "serve", *args], capture_output=True, text=True,
                          timeout=30, cwd=workdir)  # fmt: skip


def test_bad_tls_files_are_one_line_and_status_2(pki: SimpleNamespace, tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.pem")
    cases: dict[str, list[str]] = {
        f"cannot read the TLS certificate {missing}": ["--tls-cert", missing, "--tls-key", pki.server.key],
        "does not belong to the certificate": ["--tls-cert", pki.server.cert, "--tls-key", pki.client.key],
        "needs --tls-cert": ["--tls-key", pki.server.key],
        "cannot read the TLS client CA file": [*tls_args(pki), "--tls-client-ca", missing],
    }
    for expected, args in cases.items():
        proc = serve_fails(str(tmp_path), "--echo", "0", *args)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and expected in lines[0], (expected, proc.stderr)


def test_command_service_beyond_loopback_needs_tls_and_authentication(pki: SimpleNamespace, tmp_path: Path) -> None:
    from fastframe.servers import config as cfg

    secret = b"a shared secret of some length 0123456789"
    files = {"tls_cert": pki.server.cert, "tls_key": pki.server.key}
    refused = [
        cfg.ServeConfig(allow=["echo"], host="0.0.0.0"),
        cfg.ServeConfig(allow=["echo"], host="0.0.0.0", secret=secret),  # no TLS: the session travels in clear
        cfg.ServeConfig(allow=["echo"], host="0.0.0.0", **files),  # TLS, but anyone may connect
    ]
    for config in refused:
        with pytest.raises(ValueError, match="refusing to run commands"):
            cfg.build_command_service(config)
    cfg.build_command_service(cfg.ServeConfig(allow=["echo"], host="0.0.0.0", secret=secret, **files))
    cfg.build_command_service(cfg.ServeConfig(allow=["echo"], host="0.0.0.0", tls_client_ca=pki.ca, **files))
    cfg.build_command_service(cfg.ServeConfig(allow=["echo"], host="127.0.0.1"))


def test_files_service_beyond_loopback_warns_unless_tls_and_authentication(
    pki: SimpleNamespace, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from fastframe.servers import config as cfg

    files = {"tls_cert": pki.server.cert, "tls_key": pki.server.key}
    root = str(tmp_path)
    for values, warned in [
        ({}, "without TLS or --secret-file"),
        ({"secret": b"a shared secret of some length 0123456789"}, "without TLS"),
        (files, "over TLS without authentication"),
        ({**files, "tls_client_ca": pki.ca}, None),
    ]:
        caplog.clear()
        with caplog.at_level("WARNING", logger="fastframe.server"):
            cfg.build_file_service(cfg.ServeConfig(root=root, host="0.0.0.0", **values))  # type: ignore[arg-type]
        text = caplog.text
        assert (warned in text) if warned else text == "", (values, text)


def test_a_proxy_header_then_tls(
    tls_serve: Serve, pki: SimpleNamespace, client_ctx: ssl.SSLContext, engine: str, tmp_path: Path
) -> None:
    """Behind a balancer that sends a PROXY header (HAProxy's send-proxy-v2 order): the header in plain text,
    then the TLS handshake; the real client stands in the access log; a client that skips the header and
    starts TLS at once is closed, and the next one is served."""
    log_path = tmp_path / "access.log"
    server = tls_serve("--echo", "0", *tls_args(pki), "--proxy-protocol", "--trusted-proxy", "127.0.0.1/32",
                       "--access-log", str(log_path), engine=engine)  # fmt: skip
    header = b"PROXY TCP4 203.0.113.7 127.0.0.1 4242 7007\r\n"
    for payload in (b"first", b"x" * 70_000):
        raw = socket.create_connection(server.addr("echo"), timeout=TIMEOUT)
        raw.sendall(header)
        with client_ctx.wrap_socket(raw, server_hostname="localhost") as s:
            send_frame(s, payload)
            assert recv_frame(s) == payload
    assert wait_until(
        lambda: log_path.exists() and log_path.read_text().count("peer=203.0.113.7:4242") == 2, TIMEOUT
    ), log_path.read_text() if log_path.exists() else server.stderr()
    with pytest.raises((ssl.SSLError, OSError)):
        echo_once(server.addr("echo"), client_ctx)  # no header: a ClientHello is not a PROXY header
    raw = socket.create_connection(server.addr("echo"), timeout=TIMEOUT)
    raw.sendall(header)
    with client_ctx.wrap_socket(raw, server_hostname="localhost") as s:
        send_frame(s, b"after")
        assert recv_frame(s) == b"after"
