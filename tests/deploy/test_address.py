"""fastframe._address: the one parser of HOST:PORT, [v6]:PORT, PORT and unix:PATH, and its round trip."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastframe._address import UNIX_PATH_MAX, InetAddress, UnixAddress, parse_address


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:7007", InetAddress("127.0.0.1", 7007)),
        ("localhost:1", InetAddress("localhost", 1)),
        ("[::1]:65535", InetAddress("::1", 65535)),
        ("[fe80::1%lo]:7", InetAddress("fe80::1%lo", 7)),
        (":8080", InetAddress("127.0.0.1", 8080)),
        ("8080", InetAddress("127.0.0.1", 8080)),
        ("  10.0.0.2:9  ", InetAddress("10.0.0.2", 9)),
        ("unix:/run/ff/e.sock", UnixAddress("/run/ff/e.sock")),
        ("unix:relative.sock", UnixAddress("relative.sock")),
        ("unix:@fastframe-echo", UnixAddress("@fastframe-echo")),
    ],
)
def test_parses(text: str, expected: object) -> None:
    assert parse_address(text) == expected
    assert type(parse_address(text)) is type(expected)


def test_default_host_is_the_callers() -> None:
    assert parse_address("7007", default_host="::1") == InetAddress("::1", 7007)
    assert str(parse_address("7007", default_host="::1")) == "[::1]:7007"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("::1:7007", "write an IPv6 address as [addr]:port"),
        ("[::1]", "expected [IPV6]:PORT"),
        ("[127.0.0.1]:7", "brackets are for IPv6"),
        ("[::1:7", "expected [IPV6]:PORT"),
        ("[]:7", "expected [IPV6]:PORT"),
        ("host:", "expected HOST:PORT"),
        ("host:http", "expected HOST:PORT"),
        ("host:-1", "expected HOST:PORT"),
        ("host:+80", "expected HOST:PORT"),
        ("host:\uff18\uff10", "expected HOST:PORT"),  # full-width digits: isdigit() but not a port
        ("host:65536", "port out of range"),
        ("host:0", "port out of range"),
        ("host:0000080", "expected HOST:PORT"),
        ("a b:80", "expected HOST:PORT"),
        ("", "expected HOST:PORT"),
        ("unix:", "expected unix:/path"),
        ("unix:@", "expected unix:/path"),
        ("unix:/a\0b", "NUL byte"),
        ("unix:/" + "x" * UNIX_PATH_MAX, "at most 107 fit"),
    ],
)
def test_refuses_with_one_line(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        parse_address(text)
    assert "\n" not in str(info.value) and repr(text.strip()) in str(info.value)


def test_port_zero_only_where_allowed() -> None:
    assert parse_address("127.0.0.1:0", allow_port_zero=True) == InetAddress("127.0.0.1", 0)
    with pytest.raises(ValueError, match="port out of range"):
        parse_address("127.0.0.1:0")


def test_unix_only_where_allowed() -> None:
    with pytest.raises(ValueError, match="not allowed here"):
        parse_address("unix:/tmp/x", allow_unix=False)


def test_longest_unix_path_fits() -> None:
    path = "/" + "x" * (UNIX_PATH_MAX - 1)
    assert parse_address("unix:" + path) == UnixAddress(path)


def test_sockaddr() -> None:
    assert UnixAddress("/tmp/x.sock").sockaddr() == "/tmp/x.sock"
    assert UnixAddress("@name").sockaddr() == b"\0name"
    assert UnixAddress("@name").abstract and not UnixAddress("/tmp/x").abstract


def test_unpacks_like_the_old_pair() -> None:
    host, port = parse_address("[::1]:9")
    assert (host, port) == ("::1", 9)


hosts = st.one_of(
    st.from_regex(r"\A[a-z][a-z0-9.-]{0,20}\Z"),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)


@given(hosts, st.integers(0, 65535))
def test_inet_round_trip(host: str, port: int) -> None:
    addr = InetAddress(host, port)
    assert parse_address(str(addr), allow_port_zero=True) == addr


@given(st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), min_size=1, max_size=30))
def test_unix_round_trip(path: str) -> None:
    addr = UnixAddress(path.strip() or "x")
    if len(addr.path.encode()) <= UNIX_PATH_MAX and addr.path != "@":
        assert parse_address(str(addr)) == addr
