"""servers.proxyproto against the headers a real HAProxy sends (Debian's haproxy, started by the test through
tests/haproxy.py): send-proxy (v1) and send-proxy-v2, IPv4 and IPv6 clients, v2 with HAProxy's CRC32C and
unique-id TLVs, and the headers of its health checks (v2 LOCAL; v1 with HAProxy's own addresses).

The backend is a plain listening socket of the test: HAProxy connects to it, the test captures the bytes.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from haproxy import ECHO_CHECK_HEX, Backend, HAProxy, require_haproxy

from fastframe.servers.proxyproto import ProxyHeader, ProxyParser, read_proxy_header

TIMEOUT = 10.0
PAYLOAD = b"\x00\x00\x00\x05hello, the bytes after the header"
PING = bytes.fromhex(ECHO_CHECK_HEX)


def check_header(backend: socket.socket) -> tuple[bytes, tuple[str, int]]:
    """Accept one echo health check; capture its header and ping, answer it (HAProxy resets a check connection
    once it is done, which could destroy bytes not yet read: so read first, answer, then let it go)."""
    conn, peer = backend.accept()
    with conn:
        raw = capture(conn, until=PING)
        conn.sendall(PING)
    return raw[: -len(PING)], peer


@pytest.fixture
def backend() -> Iterator[socket.socket]:
    require_haproxy()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)
        yield listener


def capture(conn: socket.socket, until: bytes = PAYLOAD) -> bytes:
    """Every byte HAProxy sent, up to the end of ``until``."""
    conn.settimeout(TIMEOUT)
    data = b""
    while not data.endswith(until):
        chunk = conn.recv(65536)
        assert chunk, f"haproxy closed after {data!r}"
        data += chunk
    return data


def parse_at_every_split(raw: bytes) -> ProxyHeader:
    first = None
    for i in range(len(raw) + 1):
        parser = ProxyParser()
        header = parser.feed(raw[:i])
        if header is None:
            header = parser.feed(raw[i:])
            rest = raw[i:][parser.consumed :]
        else:
            rest = raw[:i][parser.consumed :] + raw[i:]
        assert header is not None and rest == raw[header.length :], i
        assert first is None or header == first
        first = header
    assert first is not None
    return first


CASES = [
    ("v1", "127.0.0.1", ()),
    ("v1", "::1", ()),
    ("v2", "127.0.0.1", ()),
    ("v2", "::1", ()),
    ("v2", "127.0.0.1", ("crc32c", "unique-id")),
    ("v2", "::1", ("crc32c", "unique-id")),
]


@pytest.mark.parametrize(
    ("version", "client_host", "options"), CASES, ids=["-".join([c[0], c[1], *c[2]]) for c in CASES]
)
def test_headers_from_haproxy(backend: socket.socket, version: str, client_host: str, options: tuple[str, ...]) -> None:
    port = backend.getsockname()[1]
    with HAProxy([Backend("s", "127.0.0.1", port)], send_proxy=version, proxy_v2_options=options, check=None,
                 frontend_host=client_host) as ha:  # fmt: skip
        family = socket.AF_INET6 if ":" in client_host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as client:
            client.settimeout(TIMEOUT)
            client.connect(ha.frontend)
            client.sendall(PAYLOAD)
            me = client.getsockname()
            conn, _ = backend.accept()
            with conn:
                raw = capture(conn)
        header = parse_at_every_split(raw)
        assert raw[header.length :] == PAYLOAD
        assert header.version == int(version[1]) and header.command == "PROXY"
        if family == socket.AF_INET:
            assert header.transport == "TCP4"
            assert header.source == (me[0], me[1]) and header.destination == tuple(ha.frontend)
        else:
            assert header.transport == "TCP6"
            assert header.source == ("::1", me[1], 0, 0) and header.destination == ("::1", ha.frontend[1], 0, 0)
        types = [t for t, _ in header.tlvs]
        if "crc32c" in options:
            assert 0x03 in types  # verified by the parser, or it would have raised
            unique_id = dict(header.tlvs)[0x05].decode()
            assert unique_id.split("_")[0].endswith(f"{me[1]:X}"), unique_id  # %{+X}o%ci:%cp_...: the client port
        # and read straight off a socket: exactly the header, the payload left for the next layer
        with socket.socket(family, socket.SOCK_STREAM) as client:
            client.settimeout(TIMEOUT)
            client.connect(ha.frontend)
            client.sendall(PAYLOAD)
            conn, _ = backend.accept()
            with conn:
                conn.settimeout(TIMEOUT)
                again = read_proxy_header(conn)
                assert again.source is not None and again.source[1] == client.getsockname()[1]
                assert capture(conn) == PAYLOAD


def test_health_check_v2_is_local_with_a_crc(backend: socket.socket) -> None:
    port = backend.getsockname()[1]
    with HAProxy([Backend("s", "127.0.0.1", port)], send_proxy="v2", proxy_v2_options=["crc32c"], check="echo"):
        raw, _ = check_header(backend)
    header = parse_at_every_split(raw)
    assert header.length == len(raw)  # the header, then the check's own bytes
    assert (header.version, header.command, header.source) == (2, "LOCAL", None)
    assert [t for t, _ in header.tlvs] == [0x03]
    assert header.peer(("127.0.0.1", 1234)) == ("127.0.0.1", 1234)  # the real connection's address stands


def test_health_check_v1_carries_haproxys_own_addresses(backend: socket.socket) -> None:
    port = backend.getsockname()[1]
    with HAProxy([Backend("s", "127.0.0.1", port)], send_proxy="v1", check="echo"):
        raw, peer = check_header(backend)
    header = parse_at_every_split(raw)
    assert (header.version, header.command, header.transport) == (1, "PROXY", "TCP4")
    assert header.source == peer and header.destination == ("127.0.0.1", port)
