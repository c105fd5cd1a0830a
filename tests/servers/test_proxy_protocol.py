"""``fastframe serve --proxy-protocol``: the PROXY header in front of every TCP connection, on both engines.

The headers are built here with ``struct`` (never with the parser under test).  127.0.0.1 is the trusted
balancer; 127.0.0.2 stands for any other host.  The real client address is read back from the server's own
log line when it closes a connection for a frame too large (``closing ('203.0.113.7', 4242): ...``).
"""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import time

import pytest
from harness import recv_frame, send_frame, wait_until

TIMEOUT = 10.0
TRUSTED = ("--proxy-protocol", "--trusted-proxy", "127.0.0.1/32", "--trusted-proxy", "::1")
SIG = b"\r\n\r\n\x00\r\nQUIT\n"
V1 = b"PROXY TCP4 203.0.113.7 127.0.0.1 4242 7007\r\n"
FRAME = struct.pack("!I", 5) + b"hello"
TOO_LARGE = struct.pack("!I", 0x7FFFFFFF)


def v2(command: int, family: int, block: bytes = b"", tlvs: bytes = b"") -> bytes:
    body = block + tlvs
    return SIG + bytes([0x20 | command, family]) + struct.pack("!H", len(body)) + body


def v2_inet4(src: str, sport: int, tlvs: bytes = b"") -> bytes:
    block = socket.inet_aton(src) + socket.inet_aton("127.0.0.1") + struct.pack("!HH", sport, 7007)
    return v2(1, 0x11, block, tlvs)


def client(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server closed the connection without sending anything (EOF or reset)."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


@pytest.fixture
def server(serve, engine):  # type: ignore[no-untyped-def]
    return serve("--echo", "0", "--frame-timeout", "1", *TRUSTED, engine=engine)


@pytest.mark.parametrize(
    "header",
    [V1, v2_inet4("203.0.113.7", 4242), v2_inet4("203.0.113.7", 4242, tlvs=b"\x05\x00\x04id-1\xe0\x00\x00")],
    ids=["v1", "v2", "v2-tlvs"],
)
def test_the_real_client_stands_in_the_logs(server, header: bytes) -> None:  # type: ignore[no-untyped-def]
    with client(server.port("echo")) as sock:
        sock.sendall(header + FRAME)  # the header and the stream behind it in one segment
        assert recv_frame(sock) == b"hello"
        sock.sendall(TOO_LARGE)
        assert wait_until(lambda: "203.0.113.7" in server.stderr(), TIMEOUT), server.stderr()
    line = next(line for line in server.stderr().splitlines() if "203.0.113.7" in line)
    assert "4242" in line and "closing" in line, line


def test_a_header_split_across_reads(server) -> None:  # type: ignore[no-untyped-def]
    header = v2_inet4("198.51.100.9", 999)
    with client(server.port("echo")) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(header)):
            sock.send(header[i : i + 1])
            time.sleep(0.002)
        sock.sendall(FRAME[:3])
        time.sleep(0.02)
        sock.sendall(FRAME[3:] + TOO_LARGE)
        assert recv_frame(sock) == b"hello"
        assert wait_until(lambda: "198.51.100.9" in server.stderr(), TIMEOUT), server.stderr()


def test_v2_local_keeps_the_socket_peer(server) -> None:  # type: ignore[no-untyped-def]
    with client(server.port("echo")) as sock:
        sock.sendall(v2(0, 0x00) + FRAME)
        assert recv_frame(sock) == b"hello"
        sock.sendall(TOO_LARGE)
        assert wait_until(lambda: "closing ('127.0.0.1'" in server.stderr(), TIMEOUT), server.stderr()


@pytest.mark.parametrize(
    "data, reason",
    [
        (FRAME, "not a PROXY protocol header"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 70000\r\n" + FRAME, "bad port"),
        (b"PROXY TCP4 1.2.3.04 5.6.7.8 1 2\r\n", "bad IPv4"),
        (SIG + b"\x21\x11\xff\xff", "more than"),
        (v2(1, 0x11, b"\x01\x02\x03"), "address bytes"),
        (v2_inet4("203.0.113.7", 1, tlvs=b"\x05\x00\x09abc"), "runs past the header"),
        (b"PROXY TCP4 203.0.113.7", "closed after 22 byte(s)"),
    ],
    ids=["no-header", "v1-port", "v1-octet", "v2-too-long", "v2-short-block", "v2-bad-tlv", "truncated"],
)
def test_a_bad_header_closes_only_that_connection(server, data: bytes, reason: str) -> None:  # type: ignore[no-untyped-def]
    port = server.port("echo")
    with client(port) as good:
        good.sendall(V1)
        with client(port) as bad:
            bad.sendall(data)
            if reason.startswith("closed after"):
                bad.shutdown(socket.SHUT_WR)
            assert closed_by_server(bad)
        assert wait_until(lambda: reason in server.stderr(), TIMEOUT), server.stderr()
        send_frame(good, b"still served")
        assert recv_frame(good) == b"still served"


@pytest.mark.parametrize("header", [b"", V1, v2_inet4("203.0.113.7", 4242)], ids=["no-header", "v1", "v2"])
def test_an_untrusted_peer_is_closed_header_or_not(server, header: bytes) -> None:  # type: ignore[no-untyped-def]
    with client(server.port("echo"), source="127.0.0.2") as sock:
        try:
            sock.sendall(header + FRAME)
        except ConnectionResetError:
            pass
        assert closed_by_server(sock)
    assert wait_until(lambda: "not a trusted proxy" in server.stderr(), TIMEOUT), server.stderr()
    assert "127.0.0.2" in next(line for line in server.stderr().splitlines() if "not a trusted proxy" in line)
    assert "203.0.113.7" not in server.stderr()


def test_a_header_that_never_finishes_is_cut_at_the_frame_deadline(server) -> None:  # type: ignore[no-untyped-def]
    with client(server.port("echo")) as sock:
        sock.sendall(b"PROXY TCP4 203.0.113.7 ")
        started = time.monotonic()
        assert closed_by_server(sock)
        waited = time.monotonic() - started
    assert 0.8 < waited < 6.0, waited
    assert wait_until(lambda: "PROXY header not finished within 1 s" in server.stderr(), TIMEOUT), server.stderr()


def test_ipv6_balancer(serve, engine) -> None:  # type: ignore[no-untyped-def]
    proc = serve("--host", "::1", "--echo", "0", *TRUSTED, engine=engine)
    with socket.create_connection(("::1", proc.port("echo")), timeout=TIMEOUT) as sock:
        sock.sendall(b"PROXY TCP6 2001:db8::7 ::1 4242 7007\r\n" + FRAME + TOO_LARGE)
        assert recv_frame(sock) == b"hello"
    assert wait_until(lambda: "2001:db8::7" in proc.stderr(), TIMEOUT), proc.stderr()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--proxy-protocol"], "--proxy-protocol needs at least one --trusted-proxy"),
        (["--proxy-protocol", "--trusted-proxy", "10.0.0.1/8"], "bad --trusted-proxy '10.0.0.1/8'"),
    ],
)
def test_configuration_errors(args: list[str], message: str) -> None:
    run = subprocess.run([sys.executable, "-m", "fastframe", "serve", "--echo", "0", *args], capture_output=True,
                         text=True, timeout=60, cwd="/", check=False)  # fmt: skip
    assert run.returncode != 0
    assert message in run.stderr, run.stderr
    assert "Traceback" not in run.stderr


def test_trusted_proxies_without_the_switch_warn(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve("--echo", "0", "--trusted-proxy", "127.0.0.1/32")
    assert wait_until(lambda: "--trusted-proxy has no effect without --proxy-protocol" in server.stderr(), TIMEOUT)
    with client(server.port("echo")) as sock:  # and no header is expected
        sock.sendall(FRAME)
        assert recv_frame(sock) == b"hello"


def test_the_command_services_log_names_the_real_client(serve, engine) -> None:  # type: ignore[no-untyped-def]
    proc = serve("--command", "0", "--allow", "sleep", "--command-timeout", "0.3", *TRUSTED, engine=engine)
    with client(proc.port("command")) as sock:
        sock.sendall(V1)
        send_frame(sock, b"sleep 5")
        assert recv_frame(sock).startswith(b"!timeout")
    assert wait_until(lambda: "203.0.113.7" in proc.stderr(), TIMEOUT), proc.stderr()
    line = next(line for line in proc.stderr().splitlines() if "203.0.113.7" in line)
    assert "command: pid" in line and "4242" in line, line
