"""servers.proxyproto: the PROXY v1/v2 parser against headers built here with struct (never the code under test),
at every split, byte by byte, truncated, malformed and fuzzed; and the trusted-proxy check.

Headers produced by a real HAProxy are in test_proxyproto_haproxy.py.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import zlib
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastframe.servers.proxyproto import (
    DEFAULT_MAX_V2_HEADER,
    V1_MAX_LENGTH,
    ProxyHeader,
    ProxyParser,
    ProxyProtocolError,
    crc32c,
    read_proxy_header,
)
from fastframe.servers.proxystage import TrustedProxies

SIG = b"\r\n\r\n\x00\r\nQUIT\n"
NEXT = b"\x16\x03\x01 the next layer's bytes (TLS or frames) \r\n\x00"


# -- reference encoders (struct only) -----------------------------------------------------------------------


def crc32c_ref(data: bytes) -> int:
    """Bit-by-bit CRC-32C, written out from RFC 3720's definition (no table), to check the module's one."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def v2(cmd: int, fam: int, block: bytes = b"", tlvs: Sequence[tuple[int, bytes]] = (), crc: bool = False) -> bytes:
    body = block + b"".join(struct.pack("!BH", t, len(v)) + v for t, v in tlvs)
    if crc:
        body += struct.pack("!BH", 0x03, 4) + b"\0\0\0\0"
    head = SIG + struct.pack("!BBH", 0x20 | cmd, fam, len(body)) + body
    if crc:
        head = head[:-4] + struct.pack("!I", crc32c_ref(head))
    return head


def inet4(src: str, dst: str, sport: int, dport: int) -> bytes:
    return socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)


def inet6(src: str, dst: str, sport: int, dport: int) -> bytes:
    pton = socket.inet_pton
    return pton(socket.AF_INET6, src) + pton(socket.AF_INET6, dst) + struct.pack("!HH", sport, dport)


def unix_block(src: bytes, dst: bytes) -> bytes:
    return src.ljust(108, b"\0") + dst.ljust(108, b"\0")


V4 = ("192.0.2.1", 56324), ("198.51.100.7", 7007)
V6 = ("2001:db8::1", 56324, 0, 0), ("2001:db8::2", 7007, 0, 0)

#: (id, header bytes, expected ProxyHeader without length, which is len(header bytes))
VALID: list[tuple[str, bytes, tuple[object, ...]]] = [
    ("v1-tcp4", b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 7007\r\n", (1, "PROXY", "TCP4", *V4)),
    ("v1-tcp4-zeros", b"PROXY TCP4 0.0.0.0 0.0.0.0 0 0\r\n", (1, "PROXY", "TCP4", ("0.0.0.0", 0), ("0.0.0.0", 0))),
    (
        "v1-tcp4-max",
        b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n",
        (1, "PROXY", "TCP4", ("255.255.255.255", 65535), ("255.255.255.255", 65535)),
    ),
    ("v1-tcp6", b"PROXY TCP6 2001:db8::1 2001:db8::2 56324 7007\r\n", (1, "PROXY", "TCP6", *V6)),
    ("v1-tcp6-long", b"PROXY TCP6 2001:0DB8:0:0:0:0:0:1 2001:db8::2 56324 7007\r\n", (1, "PROXY", "TCP6", *V6)),
    ("v1-tcp6-min", b"PROXY TCP6 :: :: 0 0\r\n", (1, "PROXY", "TCP6", ("::", 0, 0, 0), ("::", 0, 0, 0))),
    (
        "v1-tcp6-mapped",
        b"PROXY TCP6 ::ffff:192.0.2.1 ::1 1 2\r\n",
        (1, "PROXY", "TCP6", ("::ffff:192.0.2.1", 1, 0, 0), ("::1", 2, 0, 0)),
    ),
    ("v1-unknown", b"PROXY UNKNOWN\r\n", (1, "PROXY", "UNKNOWN", None, None)),
    (
        "v1-unknown-107",
        b"PROXY UNKNOWN " + b"f" * 39 + b" " + b"f" * 39 + b" 65535 65535\r\n",
        (1, "PROXY", "UNKNOWN", None, None),
    ),
    ("v2-tcp4", v2(1, 0x11, inet4("192.0.2.1", "198.51.100.7", 56324, 7007)), (2, "PROXY", "TCP4", *V4)),
    ("v2-udp4", v2(1, 0x12, inet4("192.0.2.1", "198.51.100.7", 56324, 7007)), (2, "PROXY", "UDP4", *V4)),
    ("v2-tcp6", v2(1, 0x21, inet6("2001:db8::1", "2001:db8::2", 56324, 7007)), (2, "PROXY", "TCP6", *V6)),
    ("v2-udp6", v2(1, 0x22, inet6("2001:db8::1", "2001:db8::2", 56324, 7007)), (2, "PROXY", "UDP6", *V6)),
    (
        "v2-unix",
        v2(1, 0x31, unix_block(b"/run/client.sock", b"/run/ff/echo.sock")),
        (2, "PROXY", "UNIX_STREAM", "/run/client.sock", "/run/ff/echo.sock"),
    ),
    (
        "v2-unix-abstract-unnamed",
        v2(1, 0x32, unix_block(b"\0abstract-name", b"")),
        (2, "PROXY", "UNIX_DGRAM", b"\0abstract-name", ""),
    ),
    ("v2-local", v2(0, 0x00), (2, "LOCAL", "UNSPEC", None, None)),
    ("v2-local-crc", v2(0, 0x00, crc=True), (2, "LOCAL", "UNSPEC", None, None)),
    ("v2-local-with-addresses", v2(0, 0x11, inet4("10.0.0.1", "10.0.0.2", 1, 2)), (2, "LOCAL", "TCP4", None, None)),
    ("v2-local-short-block", v2(0, 0x21, b"\x01\x02"), (2, "LOCAL", "TCP6", None, None)),
    ("v2-unspec", v2(1, 0x00), (2, "PROXY", "UNSPEC", None, None)),
    ("v2-inet-unspec-transport", v2(1, 0x10, b"\xff" * 7), (2, "PROXY", "UNSPEC", None, None)),
    ("v2-unspec-stream", v2(1, 0x01, b"\x00\x01\x02"), (2, "PROXY", "UNSPEC", None, None)),
    (
        "v2-tlvs-crc",
        v2(
            1,
            0x11,
            inet4("192.0.2.1", "198.51.100.7", 56324, 7007),
            [(0x05, b"id-1"), (0x04, b""), (0xE0, b"x" * 300)],
            crc=True,
        ),
        (2, "PROXY", "TCP4", *V4),
    ),
]
VALID_IDS = [case[0] for case in VALID]


def expected_header(raw: bytes, fields: tuple[object, ...]) -> ProxyHeader:
    return ProxyHeader(*fields, length=len(raw))  # type: ignore[misc]


def parse_chunks(chunks: Sequence[bytes]) -> tuple[ProxyHeader, bytes]:
    """Feed chunks until the header completes; return it and every byte after it, as the next layer sees them."""
    parser = ProxyParser()
    for i, chunk in enumerate(chunks):
        header = parser.feed(chunk)
        if header is not None:
            return header, chunk[parser.consumed :] + b"".join(chunks[i + 1 :])
        assert parser.consumed == len(chunk)
    raise AssertionError("the header never completed")


# -- valid headers --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "fields"), [c[1:] for c in VALID], ids=VALID_IDS)
def test_valid_whole(raw: bytes, fields: tuple[object, ...]) -> None:
    header, rest = parse_chunks([raw + NEXT])
    assert header[:5] == fields and header.length == len(raw)
    assert rest == NEXT


def test_tlvs_are_kept_in_order() -> None:
    raw = next(c[1] for c in VALID if c[0] == "v2-tlvs-crc")
    header, _ = parse_chunks([raw])
    assert [t for t, _ in header.tlvs] == [0x05, 0x04, 0xE0, 0x03]
    assert header.tlvs[0] == (0x05, b"id-1") and header.tlvs[2] == (0xE0, b"x" * 300)


def test_v1_longest_line_is_107_bytes() -> None:
    raw = next(c[1] for c in VALID if c[0] == "v1-unknown-107")
    assert len(raw) == V1_MAX_LENGTH


@pytest.mark.parametrize(("raw", "fields"), [c[1:] for c in VALID], ids=VALID_IDS)
def test_valid_split_at_every_index(raw: bytes, fields: tuple[object, ...]) -> None:
    data = raw + NEXT
    for i in range(len(data) + 1):
        header, rest = parse_chunks([data[:i], data[i:]])
        assert header == expected_header(raw, fields)[:5] + (len(raw), header.tlvs) and rest == NEXT, i


@pytest.mark.parametrize(("raw", "fields"), [c[1:] for c in VALID], ids=VALID_IDS)
def test_valid_byte_by_byte(raw: bytes, fields: tuple[object, ...]) -> None:
    data = raw + NEXT
    header, rest = parse_chunks([data[i : i + 1] for i in range(len(data))])
    assert header[:5] == fields and header.length == len(raw) and rest == NEXT


@pytest.mark.parametrize(("raw", "fields"), [c[1:] for c in VALID], ids=VALID_IDS)
def test_reading_wanted_never_passes_the_end(raw: bytes, fields: tuple[object, ...]) -> None:
    """A layer that cannot give bytes back (ssl on a socket) reads ``wanted`` bytes at a time: every read ends
    at or before the header's last byte, and the last one ends exactly there."""
    data = raw + NEXT
    parser = ProxyParser()
    pos = reads = 0
    header = None
    while header is None:
        n = parser.wanted
        assert n >= 1 and pos + n <= len(raw), (pos, n)
        header = parser.feed(data[pos : pos + n])
        pos += n
        reads += 1
    assert pos == len(raw) and parser.consumed == n and parser.wanted == 0
    assert header[:5] == fields
    if raw.startswith(SIG):
        assert reads <= 3, reads  # 15 bytes, the 16th, then exactly the rest
    elif b"UNKNOWN" not in raw:  # (an UNKNOWN line may end at any byte: 2 at a time is all one can know)
        assert reads <= 12, reads


def test_read_proxy_header_leaves_the_rest_in_the_socket() -> None:
    a, b = socket.socketpair()
    with a, b:
        b.settimeout(5)
        raw = VALID[0][1]
        a.sendall(raw + NEXT)
        a.shutdown(socket.SHUT_WR)
        header = read_proxy_header(b)
        assert header.source == V4[0] and header.length == len(raw)
        rest = b""
        while chunk := b.recv(4096):
            rest += chunk
        assert rest == NEXT


def test_read_proxy_header_peer_closes_inside() -> None:
    a, b = socket.socketpair()
    with a, b:
        b.settimeout(5)
        a.sendall(VALID[0][1][:20])
        a.shutdown(socket.SHUT_WR)
        with pytest.raises(ProxyProtocolError, match="closed after 20 bytes"):
            read_proxy_header(b)


def test_peer_falls_back_to_the_real_address() -> None:
    real = ("127.0.0.1", 40000)
    local, _ = parse_chunks([v2(0, 0x00)])
    proxied, _ = parse_chunks([VALID[0][1]])
    assert local.peer(real) == real and proxied.peer(real) == V4[0]


def test_accepts_memoryview_and_bytearray() -> None:
    raw = VALID[0][1]
    assert ProxyParser().feed(memoryview(bytearray(raw))) is not None
    assert ProxyParser().feed(bytearray(raw)) is not None


# -- refused headers ----------------------------------------------------------------------------------------

TCP4_BLOCK = inet4("192.0.2.1", "198.51.100.7", 56324, 7007)

INVALID: list[tuple[str, bytes, str]] = [
    ("http", b"GET / HTTP/1.1\r\n\r\n", "not a PROXY protocol header: b'GET / HTTP/1.1"),
    ("tls", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "not a PROXY protocol header"),
    ("frame", struct.pack("!I", 5) + b"hello", "not a PROXY protocol header"),
    ("proxx", b"PROXX TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "not a PROXY protocol header"),
    ("no-space", b"PROXYTCP4 1.2.3.4 5.6.7.8 1 2\r\n", "not a PROXY protocol header"),
    ("tcp5", b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"),
    ("lowercase", b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"),
    ("unknownx", b"PROXY UNKNOWNX\r\n", "unknown protocol"),
    ("only-proxy", b"PROXY\r\n", "expected 'PROXY TCP4|TCP6"),
    ("no-fields", b"PROXY TCP4\r\n", "expected 'PROXY TCP4|TCP6"),
    ("five-fields", b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "expected 'PROXY TCP4|TCP6"),
    ("seven-fields", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "expected 'PROXY TCP4|TCP6"),
    ("double-space", b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "expected 'PROXY TCP4|TCP6"),
    ("trailing-space", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "expected 'PROXY TCP4|TCP6"),
    ("tab", b"PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n", "unexpected bytes"),
    ("octet-256", b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", "bad IPv4 address '1.2.3.256'"),
    ("octet-zero", b"PROXY TCP4 1.2.3.04 5.6.7.8 1 2\r\n", "bad IPv4 address"),
    ("three-octets", b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "bad IPv4 address"),
    ("v6-in-tcp4", b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "bad IPv4 address"),
    ("v4-in-tcp6", b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "bad IPv6 address"),
    ("bad-v6", b"PROXY TCP6 1:::2 ::1 1 2\r\n", "bad IPv6 address"),
    ("port-65536", b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "bad port '65536'"),
    ("port-zero", b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "bad port '01'"),
    ("port-hex", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 a\r\n", "bad port 'a'"),
    ("bare-lf", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "a line feed without a carriage return"),
    ("lf-inside", b"PROXY UNKNOWN \n\r\n", "a line feed without a carriage return"),
    ("cr-alone", b"PROXY UNKNOWN\rX\n", "a carriage return without a line feed"),
    ("too-long", b"PROXY UNKNOWN " + b"x" * 100 + b"\r\n", "no CRLF in the first 107 bytes"),
    ("v2-bad-signature", SIG[:11] + b"X" + b"\x21\x11\x00\x0c" + TCP4_BLOCK, "not a PROXY protocol header"),
    ("v2-version-1", SIG + b"\x11\x11\x00\x0c" + TCP4_BLOCK, "unsupported version 1"),
    ("v2-version-3", SIG + b"\x31\x11\x00\x0c" + TCP4_BLOCK, "unsupported version 3"),
    ("v2-command-2", SIG + b"\x22\x11\x00\x0c" + TCP4_BLOCK, "unknown command 2"),
    ("v2-family-4", SIG + b"\x21\x41\x00\x0c" + TCP4_BLOCK, "unknown address family/transport 0x41"),
    ("v2-transport-3", SIG + b"\x21\x13\x00\x0c" + TCP4_BLOCK, "unknown address family/transport 0x13"),
    ("v2-too-long", SIG + b"\x21\x11\xff\xff", "a 65551-byte header, more than the 4096 allowed"),
    ("v2-short-tcp4", v2(1, 0x11, TCP4_BLOCK[:11]), "11 address bytes, TCP4 needs 12"),
    ("v2-short-tcp6", v2(1, 0x21, b"\0" * 35), "35 address bytes, TCP6 needs 36"),
    ("v2-short-unix", v2(1, 0x31, b"\0" * 215), "215 address bytes, UNIX_STREAM needs 216"),
    ("v2-stray-bytes", v2(1, 0x11, TCP4_BLOCK + b"\x05\x00"), "2 stray byte(s) where a TLV should start"),
    ("v2-tlv-past-end", v2(1, 0x11, TCP4_BLOCK + b"\x05\x00\x05abc"), "TLV 0x05 of 5 bytes runs past the header"),
    ("v2-local-tlv-past-end", v2(0, 0x00, b"\x03\x00\x09abcd"), "TLV 0x03 of 9 bytes runs past the header"),
    ("v2-crc-size", v2(1, 0x11, TCP4_BLOCK, [(0x03, b"abc")]), "a CRC32C TLV of 3 bytes, not 4"),
    ("v2-crc-wrong", v2(1, 0x11, TCP4_BLOCK, [(0x03, b"\0\0\0\1")]), "CRC32C mismatch"),
]
INVALID_IDS = [case[0] for case in INVALID]


@pytest.mark.parametrize(("raw", "message"), [c[1:] for c in INVALID], ids=INVALID_IDS)
def test_invalid_whole(raw: bytes, message: str) -> None:
    parser = ProxyParser()
    with pytest.raises(ProxyProtocolError) as info:
        parser.feed(raw + NEXT)
    assert message in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ProxyProtocolError, match="^" + str(info.value)[:20]):  # refuses anything after an error
        parser.feed(b"PROXY UNKNOWN\r\n")
    assert parser.wanted == 0


@pytest.mark.parametrize(("raw", "message"), [c[1:] for c in INVALID], ids=INVALID_IDS)
def test_invalid_at_every_split(raw: bytes, message: str) -> None:
    """However the bytes are cut, the header is refused (never accepted, never a different exception)."""
    data = raw + NEXT
    for i in range(len(data) + 1):
        parser = ProxyParser()
        with pytest.raises(ProxyProtocolError):
            for chunk in (data[:i], data[i:]):
                assert parser.feed(chunk) is None


@pytest.mark.parametrize(
    ("prefix", "at"),
    [
        (b"GET / HTTP/1.1\r\n", 1),  # refused on its first byte, not after a timeout
        (b"\x16\x03\x01", 1),
        (b"PROXI", 5),
        (b"PROXY TCP4 1.2.3.4 \t", 20),
        (b"PROXY TCP7", 10),
        (b"PROXY UNKNOWN\n", 14),
        (SIG[:5] + b"X", 6),
        (SIG + b"\x10", 13),
        (SIG + b"\x21\x51", 14),
        (SIG + b"\x21\x11\x10\x00", 16),  # a 4112-byte header refused as its length arrives
    ],
)
def test_refused_as_soon_as_possible(prefix: bytes, at: int) -> None:
    parser = ProxyParser()
    for i in range(at - 1):
        assert parser.feed(prefix[i : i + 1]) is None, i
    with pytest.raises(ProxyProtocolError):
        parser.feed(prefix[at - 1 : at])


@pytest.mark.parametrize(("raw", "fields"), [c[1:] for c in VALID], ids=VALID_IDS)
def test_truncated_is_never_a_header(raw: bytes, fields: tuple[object, ...]) -> None:
    for cut in range(len(raw)):
        parser = ProxyParser()
        assert parser.feed(raw[:cut]) is None and parser.wanted >= 1 and parser.consumed == cut


def test_memory_is_bounded_by_the_header() -> None:
    """A megabyte after an endless v1 line is refused within 107 bytes, never buffered."""
    parser = ProxyParser()
    with pytest.raises(ProxyProtocolError, match="no CRLF in the first 107"):
        parser.feed(b"PROXY UNKNOWN " + b"x" * (1 << 20))


def test_max_v2_header_is_configurable() -> None:
    raw = v2(1, 0x11, TCP4_BLOCK, [(0xE0, b"x" * 100)])
    assert ProxyParser(max_v2_header=len(raw)).feed(raw) is not None
    with pytest.raises(ProxyProtocolError, match=f"a {len(raw)}-byte header, more than the {len(raw) - 1} allowed"):
        ProxyParser(max_v2_header=len(raw) - 1).feed(raw)
    assert DEFAULT_MAX_V2_HEADER >= 16 + 216 + 512  # room for Unix addresses and HAProxy's TLVs
    with pytest.raises(ValueError):
        ProxyParser(max_v2_header=15)


def test_feed_after_done_is_refused() -> None:
    parser = ProxyParser()
    assert parser.feed(VALID[0][1]) is not None
    with pytest.raises(ProxyProtocolError, match="already complete"):
        parser.feed(b"x")


def test_crc32c_reference() -> None:
    assert crc32c(b"123456789") == 0xE3069283 == crc32c_ref(b"123456789")  # the standard check value
    assert crc32c(b"") == 0
    assert crc32c(b"123456789") != zlib.crc32(b"123456789")


@given(st.binary(max_size=600))
def test_crc32c_matches_reference(data: bytes) -> None:
    assert crc32c(data) == crc32c_ref(data)


# -- fuzz -----------------------------------------------------------------------------------------------------


def feed_all(chunks: Sequence[bytes]) -> tuple[ProxyHeader | None, int]:
    """(header or None, bytes fed before it completed); only ProxyProtocolError may escape."""
    parser = ProxyParser()
    fed = 0
    for chunk in chunks:
        header = parser.feed(chunk)
        if header is not None:
            assert 0 < parser.consumed <= len(chunk)
            return header, fed + parser.consumed
        assert parser.consumed == len(chunk) and parser.wanted >= 1
        fed += len(chunk)
    return None, fed


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts}) if data else []
    pieces, last = [], 0
    for p in points:
        pieces.append(data[last:p])
        last = p
    pieces.append(data[last:])
    return pieces


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(0, 10_000), max_size=6))
def test_fuzz_random_bytes(data: bytes, cuts: list[int]) -> None:
    try:
        header, used = feed_all(chunked(data, cuts))
    except ProxyProtocolError as exc:
        assert "\n" not in str(exc)
        return
    if header is not None:
        assert used == header.length <= len(data)


@st.composite
def mutated_headers(draw: st.DrawFn) -> bytes:
    raw = bytearray(draw(st.sampled_from([c[1] for c in VALID])))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(raw) - 1))
        raw[i] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        raw = raw[: draw(st.integers(0, len(raw)))]
    return bytes(raw)


@settings(max_examples=600, deadline=None)
@given(mutated_headers(), st.binary(max_size=40), st.lists(st.integers(0, 10_000), max_size=5))
def test_fuzz_mutated_headers_never_read_past(raw: bytes, tail: bytes, cuts: list[int]) -> None:
    """Corrupt real headers: the parser raises its own error or returns a header whose length it never
    overstates, and the bytes after it come back to the caller untouched."""
    data = raw + tail
    try:
        header, used = feed_all(chunked(data, cuts))
    except ProxyProtocolError:
        return
    if header is not None:
        assert used == header.length
        whole = ProxyParser().feed(data)  # chunking never changes the answer
        assert whole == header


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["v1", "v2"]),
    st.ip_addresses(),
    st.ip_addresses(),
    st.integers(0, 65535),
    st.integers(0, 65535),
    st.lists(st.tuples(st.integers(0, 255).filter(lambda t: t != 3), st.binary(max_size=50)), max_size=4),
    st.binary(max_size=30),
    st.lists(st.integers(0, 10_000), max_size=5),
)
def test_fuzz_valid_headers_round_trip(
    version: str, src, dst, sport: int, dport: int, tlvs, tail: bytes, cuts: list[int]
) -> None:  # type: ignore[no-untyped-def]
    if src.version != dst.version:
        dst = ipaddress.ip_address(str(src))
    if version == "v1":
        proto = b"TCP4" if src.version == 4 else b"TCP6"
        raw = b"PROXY %s %s %s %d %d\r\n" % (proto, str(src).encode(), str(dst).encode(), sport, dport)
        tlvs = []
    else:
        block = inet4(str(src), str(dst), sport, dport) if src.version == 4 else inet6(str(src), str(dst), sport, dport)
        raw = v2(1, 0x11 if src.version == 4 else 0x21, block, tlvs)
    header, used = feed_all(chunked(raw + tail, cuts))
    assert header is not None and used == len(raw)
    family = socket.AF_INET if src.version == 4 else socket.AF_INET6
    src_host, dst_host = socket.inet_ntop(family, src.packed), socket.inet_ntop(family, dst.packed)
    want_src: tuple[object, ...] = (src_host, sport) if src.version == 4 else (src_host, sport, 0, 0)
    want_dst: tuple[object, ...] = (dst_host, dport) if dst.version == 4 else (dst_host, dport, 0, 0)
    assert header.source == want_src and header.destination == want_dst
    assert list(header.tlvs) == [(t, v) for t, v in tlvs]


# -- trusted proxies ----------------------------------------------------------------------------------------


def test_trusted_networks() -> None:
    trusted = TrustedProxies(["127.0.0.1", "10.0.0.0/8", "2001:db8::/32", "::1"])
    assert ("127.0.0.1", 5) in trusted and ("10.200.0.1", 5) in trusted
    assert ("127.0.0.2", 5) not in trusted and ("11.0.0.1", 5) not in trusted
    assert ("2001:db8::7", 5, 0, 0) in trusted and ("::1", 5, 0, 0) in trusted
    assert ("2001:db9::7", 5, 0, 0) not in trusted
    assert "10.1.2.3" in trusted  # a bare host string
    assert bool(trusted) and not TrustedProxies([])


def test_trusted_ipv4_mapped_peers() -> None:
    """A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d; they match IPv4 networks, and the other way."""
    assert ("::ffff:127.0.0.1", 5, 0, 0) in TrustedProxies(["127.0.0.0/8"])
    assert ("::ffff:127.0.0.2", 5, 0, 0) not in TrustedProxies(["127.0.0.1/32"])
    assert ("127.0.0.1", 5) in TrustedProxies(["::ffff:127.0.0.0/104"])
    assert ("127.0.0.2", 5) not in TrustedProxies(["::ffff:127.0.0.1/128"])


def test_trusted_scoped_and_odd_peers() -> None:
    trusted = TrustedProxies(["fe80::/10", "0.0.0.0/0"])
    assert ("fe80::1%lo", 5, 0, 1) in trusted
    assert "" not in trusted and b"\0abstract" not in trusted and ("",) not in trusted  # Unix peers
    assert ("not-an-ip", 5) not in trusted and (1, 2) not in trusted and None not in trusted


@pytest.mark.parametrize(
    ("text", "message"),
    [("10.0.0.1/8", "has host bits set"), ("10.0.0.0/33", "10.0.0.0/33"), ("localhost", "localhost"), ("", "''")],
)
def test_trusted_refuses_typos(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="bad --trusted-proxy") as info:
        TrustedProxies(["127.0.0.1", text])
    assert message in str(info.value) and "\n" not in str(info.value)
