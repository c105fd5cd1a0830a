"""The PROXY protocol, receiving side: a sans-IO parser of the header a balancer sends first, and who may send it.

Its one job: given the first bytes of a connection from a balancer (HAProxy's ``send-proxy`` or
``send-proxy-v2``, nginx ``proxy_protocol on``), say who the real client is and where the header ends.  It never
touches a socket: the engine (or :func:`read_proxy_header`, for blocking code) reads, this module decides.

The wire format (HAProxy's ``doc/proxy-protocol.txt``)
======================================================

Version 1 is one US-ASCII line of at most 107 bytes, CRLF included::

    PROXY TCP4 192.0.2.1 198.51.100.7 56324 7007\\r\\n
    PROXY TCP6 2001:db8::1 2001:db8::2 56324 7007\\r\\n
    PROXY UNKNOWN[ anything]\\r\\n

Fields are separated by exactly one space; IPv4 addresses are four decimals without leading zeros; ports are
0..65535 without leading zeros; a lone CR or LF never ends the line.  ``UNKNOWN`` means "use the real
connection's addresses".

Version 2 is binary: a 16-byte fixed part, then ``length`` bytes::

    0   12 bytes  signature  0D 0A 0D 0A 00 0D 0A 51 55 49 54 0A
    12  1 byte    version (high nibble, must be 2) and command (low nibble: 0 LOCAL, 1 PROXY)
    13  1 byte    family (high nibble: 0 UNSPEC, 1 INET, 2 INET6, 3 UNIX) and transport (0 UNSPEC, 1 STREAM, 2 DGRAM)
    14  2 bytes   length of what follows, big-endian
    16  address block: INET 4+4+2+2 = 12 bytes, INET6 16+16+2+2 = 36, UNIX 108+108 = 216, UNSPEC 0
        (source address, destination address, source port, destination port, network byte order)
    ..  TLVs to the end: type (1 byte), value length (2 bytes, big-endian), value

The two versions are told apart by their first byte (``P`` or CR), as the signatures differ there.

Theory of operation
===================

:class:`ProxyParser` is fed whatever arrived and answers ``None`` (need more), a :class:`ProxyHeader` (done), or
raises :class:`ProxyProtocolError` with a one-line reason.  It checks every byte as soon as it arrives -- a
client that sends ``GET /`` or a TLS ClientHello to a PROXY port is refused on its first byte, not after a
timeout -- and it buffers at most the header itself: 107 bytes for v1, ``16 + length`` for v2, and v2 announcing
more than ``max_v2_header`` (4 KiB by default; a header with both Unix paths and every TLV HAProxy sends is well
under 1 KiB) is refused when its length field arrives, before anything is buffered for it.  So a hostile peer
costs at most a few KiB and one deadline.

The header's end is exact: ``parser.consumed`` says how many bytes of the last chunk belonged to it, and the
rest of that chunk belongs to the next layer (the framed stream, or TLS).  A layer that cannot take bytes back
(``ssl`` wrapping a socket) reads ``parser.wanted`` bytes at a time instead: ``wanted`` is a lower bound on the
bytes still missing (exact for v2 once the length is known; for v1 the shortest completion the grammar allows),
so a read of that size never crosses the header's end.

Addresses come back shaped like ``accept()``'s: ``(host, port)`` for IPv4, ``(host, port, 0, 0)`` for IPv6
(hosts in ``inet_ntop`` form), a path string or an abstract ``b"\\0name"`` for Unix.  ``source`` is None when the
real connection's addresses stand: v2 ``LOCAL`` (HAProxy's health checks), v1 ``UNKNOWN``, and the v2 ``UNSPEC``
families.  v2 TLVs are checked (each must fit inside the header), kept as ``(type, value)`` pairs, and a CRC32C
TLV (HAProxy's ``proxy-v2-options crc32c``) is verified.

Who may speak first with a header (``--trusted-proxy``), and the engine's stage that reads it, are
:mod:`servers.proxystage`'s.
"""

from __future__ import annotations

import socket
from typing import Any, NamedTuple, Union

__all__ = [
    "DEFAULT_MAX_V2_HEADER",
    "V1_MAX_LENGTH",
    "V2_SIGNATURE",
    "ProxyHeader",
    "ProxyParser",
    "ProxyProtocolError",
    "crc32c",
    "read_proxy_header",
]

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX_LENGTH = 107  # "PROXY UNKNOWN ffff:...:ffff ffff:...:ffff 65535 65535\r\n"
DEFAULT_MAX_V2_HEADER = 4096
_V1_MIN_LENGTH = 15  # "PROXY UNKNOWN\r\n"; no v2 header is shorter than 16

#: v2 family/transport byte -> (transport name, address block size).  Other valid nibble pairs (INET with an
#: UNSPEC transport, say) carry addresses we cannot lay out: their whole block is skipped, as the spec allows.
_V2_LAYOUTS = {
    0x00: ("UNSPEC", 0),
    0x11: ("TCP4", 12),
    0x12: ("UDP4", 12),
    0x21: ("TCP6", 36),
    0x22: ("UDP6", 36),
    0x31: ("UNIX_STREAM", 216),
    0x32: ("UNIX_DGRAM", 216),
}
_PP2_TYPE_CRC32C = 0x03

#: v1: the protocol token -> (shortest complete line, shortest value of each of the four fields).
_V1_PROTOCOLS = {b"UNKNOWN": (15, ()), b"TCP4": (32, (7, 7, 1, 1)), b"TCP6": (22, (2, 2, 1, 1))}
_V1_FIELD_BYTES = frozenset(b"0123456789abcdefABCDEF:. ")

PeerAddress = Union[tuple[Any, ...], str, bytes]


class ProxyProtocolError(ValueError):
    """A PROXY protocol header is malformed, truncated, too long, or not there at all (one-line message)."""


class ProxyHeader(NamedTuple):
    """A complete, valid header.

    ``command`` is ``"PROXY"`` or ``"LOCAL"`` (v2 only); ``transport`` is ``TCP4``, ``TCP6``, ``UDP4``, ``UDP6``,
    ``UNIX_STREAM``, ``UNIX_DGRAM``, ``UNKNOWN`` (v1) or ``UNSPEC`` (v2); ``source`` and ``destination`` are
    None when the real connection's addresses stand; ``length`` is the header's size on the wire.
    """

    version: int
    command: str
    transport: str
    source: PeerAddress | None
    destination: PeerAddress | None
    length: int
    tlvs: tuple[tuple[int, bytes], ...] = ()

    def peer(self, real: PeerAddress) -> PeerAddress:
        """The client's address: the one the header gives, else ``real`` (the balancer's, from accept())."""
        return real if self.source is None else self.source


def _preview(data: bytes | bytearray) -> str:
    return repr(bytes(data[:16])) + ("..." if len(data) > 16 else "")


class ProxyParser:
    """Incremental parser of one PROXY v1 or v2 header (see the module docstring).

    ``feed(data)`` returns None while the header is incomplete and the :class:`ProxyHeader` once it is; then
    ``consumed`` is how many bytes of that last ``data`` were the header's.  After the header, or after an
    error, it refuses further input.
    """

    __slots__ = ("_ahead", "_buf", "_error", "_max_v2", "_total", "_version", "consumed", "header")

    def __init__(self, max_v2_header: int = DEFAULT_MAX_V2_HEADER) -> None:
        if max_v2_header < 16:
            raise ValueError("max_v2_header must be at least 16")
        self._buf = bytearray()
        self._max_v2 = max_v2_header
        self._version = 0  # 0 until the first byte says 1 or 2
        self._total = 0  # v2: 16 + length, once the length field is in
        self._error: str | None = None
        self._ahead = b""  # the next bytes of the chunk being fed: shown when the stream is not PROXY at all
        self.consumed = 0
        self.header: ProxyHeader | None = None

    @property
    def wanted(self) -> int:
        """A lower bound on the bytes still missing (0 when done): a read of this size never passes the end."""
        if self.header is not None or self._error is not None:
            return 0
        n = len(self._buf)
        if self._version == 2:
            return (self._total or 16) - n
        if self._version == 1:
            return self._v1_wanted()
        return _V1_MIN_LENGTH

    def feed(self, data: bytes | bytearray | memoryview) -> ProxyHeader | None:
        if self._error is not None:
            raise ProxyProtocolError(self._error)
        if self.header is not None:
            raise ProxyProtocolError("the PROXY header is already complete; its data belongs to the next layer")
        view = memoryview(data).cast("B")
        before = len(self._buf)
        pos = 0
        try:
            while True:
                take = min(self._room(), len(view) - pos)
                self._buf += view[pos : pos + take]
                pos += take
                self._ahead = bytes(view[pos : pos + 16])
                header = self._step()
                if header is not None:
                    self.header = header
                    self.consumed = header.length - before
                    return header
                if pos == len(view):
                    self.consumed = pos
                    return None
                if take == 0 and self._room() == 0:  # pragma: no cover - _step raises or finishes first
                    raise AssertionError("PROXY parser made no progress")
        except ProxyProtocolError as exc:
            self._error = str(exc)
            raise

    # -- one step: look at what is buffered ---------------------------------------------------------------

    def _room(self) -> int:
        n = len(self._buf)
        if self._version == 1:
            return V1_MAX_LENGTH - n
        if self._version == 2:
            return (self._total or 16) - n
        return 1 - n  # the first byte decides the version

    def _step(self) -> ProxyHeader | None:
        buf = self._buf
        if not buf:
            return None
        if self._version == 0:
            if buf[0] == 0x0D:
                self._version = 2
            elif buf[0] == 0x50:  # "P"
                self._version = 1
            else:
                raise self._not_proxy()
        if self._version == 1:
            return self._v1_step()
        return self._v2_step()

    # -- version 1 ----------------------------------------------------------------------------------------

    def _not_proxy(self) -> ProxyProtocolError:
        return ProxyProtocolError(f"not a PROXY protocol header: {_preview(bytes(self._buf) + self._ahead)}")

    def _v1_step(self) -> ProxyHeader | None:
        buf = self._buf
        cr = buf.find(b"\r")
        lf = buf.find(b"\n")
        if lf != -1 and (cr == -1 or lf < cr):
            raise ProxyProtocolError("PROXY v1: a line feed without a carriage return")
        if cr == -1 or cr == len(buf) - 1:
            _v1_check_prefix(bytes(buf[: len(buf) if cr == -1 else cr]))
            if len(buf) >= V1_MAX_LENGTH:
                raise ProxyProtocolError(f"PROXY v1: no CRLF in the first {V1_MAX_LENGTH} bytes")
            return None
        if buf[cr + 1] != 0x0A:
            raise ProxyProtocolError("PROXY v1: a carriage return without a line feed")
        return _v1_parse(bytes(buf[:cr]), cr + 2)

    def _v1_wanted(self) -> int:
        buf = bytes(self._buf)
        if buf.endswith(b"\r"):
            return 1
        if len(buf) < 6:
            return _V1_MIN_LENGTH - len(buf)
        token, space, fields = buf[6:].partition(b" ")
        if not space:
            return min(shortest for name, (shortest, _) in _V1_PROTOCOLS.items() if name.startswith(token)) - len(buf)
        mins = _V1_PROTOCOLS[token][1]
        if not mins:  # UNKNOWN: anything, then CRLF
            return 2
        parts = fields.split(b" ")
        k = len(parts) - 1  # complete fields so far; the last part is the one being typed
        return max(0, mins[k] - len(parts[-1])) + sum(1 + m for m in mins[k + 1 :]) + 2

    # -- version 2 ----------------------------------------------------------------------------------------

    def _v2_step(self) -> ProxyHeader | None:
        buf = self._buf
        n = len(buf)
        if buf[: min(n, 12)] != V2_SIGNATURE[: min(n, 12)]:
            raise self._not_proxy()
        if n > 12 and self._total == 0:
            if buf[12] >> 4 != 2:
                raise ProxyProtocolError(f"PROXY v2: unsupported version {buf[12] >> 4}")
            if buf[12] & 0x0F > 1:
                raise ProxyProtocolError(f"PROXY v2: unknown command {buf[12] & 0x0F}")
            if n > 13 and (buf[13] >> 4 > 3 or buf[13] & 0x0F > 2):
                raise ProxyProtocolError(f"PROXY v2: unknown address family/transport 0x{buf[13]:02x}")
            if n >= 16:
                total = 16 + (buf[14] << 8 | buf[15])
                if total > self._max_v2:
                    raise ProxyProtocolError(f"PROXY v2: a {total}-byte header, more than the {self._max_v2} allowed")
                self._total = total
        if self._total == 0 or n < self._total:
            return None
        return _v2_parse(bytes(buf[: self._total]))


def _v1_check_prefix(line: bytes) -> None:
    """Refuse, as early as possible, a partial v1 line that no valid line starts with."""
    head = line[:6]
    if head != b"PROXY "[: len(head)]:
        raise ProxyProtocolError(f"not a PROXY protocol header: {_preview(line)}")
    token, space, fields = line[6:].partition(b" ")
    if not space:
        if not any(name.startswith(token) for name in _V1_PROTOCOLS):
            raise ProxyProtocolError(f"PROXY v1: unknown protocol {_preview(token)}")
        return
    if token not in _V1_PROTOCOLS:
        raise ProxyProtocolError(f"PROXY v1: unknown protocol {_preview(token)}")
    if token == b"UNKNOWN":
        return
    if not _V1_FIELD_BYTES.issuperset(fields):
        raise ProxyProtocolError(f"PROXY v1: unexpected bytes in {_preview(fields)}")
    parts = fields.split(b" ")
    if len(parts) > 4 or b"" in parts[:-1]:
        raise ProxyProtocolError("PROXY v1: expected 'PROXY TCP4|TCP6 SRC DST SPORT DPORT'")


def _v1_parse(line: bytes, length: int) -> ProxyHeader:
    _v1_check_prefix(line)
    parts = line.split(b" ")
    protocol = parts[1] if len(parts) > 1 else b""
    if protocol == b"UNKNOWN":
        return ProxyHeader(1, "PROXY", "UNKNOWN", None, None, length)
    if protocol not in _V1_PROTOCOLS or len(parts) != 6:
        raise ProxyProtocolError("PROXY v1: expected 'PROXY TCP4|TCP6 SRC DST SPORT DPORT'")
    family = socket.AF_INET if protocol == b"TCP4" else socket.AF_INET6
    src, dst = _v1_host(parts[2], family), _v1_host(parts[3], family)
    sport, dport = _v1_port(parts[4]), _v1_port(parts[5])
    if family == socket.AF_INET:
        return ProxyHeader(1, "PROXY", "TCP4", (src, sport), (dst, dport), length)
    return ProxyHeader(1, "PROXY", "TCP6", (src, sport, 0, 0), (dst, dport, 0, 0), length)


def _v1_host(field: bytes, family: int) -> str:
    text = field.decode("ascii")
    if family == socket.AF_INET:
        octets = text.split(".")
        if len(octets) != 4 or not all(_canonical_decimal(o, 3) and int(o) <= 255 for o in octets):
            raise ProxyProtocolError(f"PROXY v1: bad IPv4 address {text!r}")
        return text
    try:
        return socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, text))
    except OSError:
        raise ProxyProtocolError(f"PROXY v1: bad IPv6 address {text!r}") from None


def _v1_port(field: bytes) -> int:
    text = field.decode("ascii")
    if not _canonical_decimal(text, 5) or int(text) > 65535:
        raise ProxyProtocolError(f"PROXY v1: bad port {text!r}")
    return int(text)


def _canonical_decimal(text: str, width: int) -> bool:
    """1..width ASCII digits, no leading zero (the spec forbids them: they would read as octal elsewhere)."""
    return 0 < len(text) <= width and text.isdigit() and text.isascii() and (text == "0" or text[0] != "0")


def _v2_parse(header: bytes) -> ProxyHeader:
    total = len(header)
    command = "PROXY" if header[12] & 0x0F == 1 else "LOCAL"
    layout = _V2_LAYOUTS.get(header[13])
    if layout is None:  # a valid family/transport pair we cannot lay out: use the real addresses
        return ProxyHeader(2, command, "UNSPEC", None, None, total)
    transport, size = layout
    if 16 + size > total:
        if command == "LOCAL":  # LOCAL ignores the family: nothing to read, nothing to refuse
            return ProxyHeader(2, command, transport, None, None, total)
        raise ProxyProtocolError(f"PROXY v2: {total - 16} address bytes, {transport} needs {size}")
    tlvs = _v2_tlvs(header, 16 + size)
    if command == "LOCAL" or size == 0:
        return ProxyHeader(2, command, transport, None, None, total, tlvs)
    block = header[16 : 16 + size]
    source: PeerAddress
    destination: PeerAddress
    if size == 12:
        source = (socket.inet_ntop(socket.AF_INET, block[0:4]), block[8] << 8 | block[9])
        destination = (socket.inet_ntop(socket.AF_INET, block[4:8]), block[10] << 8 | block[11])
    elif size == 36:
        source = (socket.inet_ntop(socket.AF_INET6, block[0:16]), block[32] << 8 | block[33], 0, 0)
        destination = (socket.inet_ntop(socket.AF_INET6, block[16:32]), block[34] << 8 | block[35], 0, 0)
    else:
        source, destination = _unix_path(block[:108]), _unix_path(block[108:])
    return ProxyHeader(2, command, transport, source, destination, total, tlvs)


def _unix_path(raw: bytes) -> str | bytes:
    """A 108-byte ``sun_path``, as ``accept()`` would give it: a str path, or bytes for an abstract name."""
    if raw[:1] == b"\0":
        name = raw[1:].rstrip(b"\0")
        return b"\0" + name if name else ""
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _v2_tlvs(header: bytes, start: int) -> tuple[tuple[int, bytes], ...]:
    tlvs = []
    pos, end = start, len(header)
    while pos < end:
        if end - pos < 3:
            raise ProxyProtocolError(f"PROXY v2: {end - pos} stray byte(s) where a TLV should start")
        kind, size = header[pos], header[pos + 1] << 8 | header[pos + 2]
        if pos + 3 + size > end:
            raise ProxyProtocolError(f"PROXY v2: TLV 0x{kind:02x} of {size} bytes runs past the header")
        value = header[pos + 3 : pos + 3 + size]
        if kind == _PP2_TYPE_CRC32C:
            if size != 4:
                raise ProxyProtocolError(f"PROXY v2: a CRC32C TLV of {size} bytes, not 4")
            zeroed = header[: pos + 3] + b"\0\0\0\0" + header[pos + 7 :]
            if crc32c(zeroed) != int.from_bytes(value, "big"):
                raise ProxyProtocolError("PROXY v2: CRC32C mismatch")
        tlvs.append((kind, value))
        pos += 3 + size
    return tuple(tlvs)


_CRC32C_TABLE: list[int] = []


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as the PP2_TYPE_CRC32C TLV carries it."""
    table = _CRC32C_TABLE
    if not table:
        for i in range(256):
            c = i
            for _ in range(8):
                c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
            table.append(c)
    crc = 0xFFFFFFFF
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def read_proxy_header(sock: socket.socket, max_v2_header: int = DEFAULT_MAX_V2_HEADER) -> ProxyHeader:
    """Read one header from a blocking socket, never a byte past it (reads of ``wanted`` bytes).

    Raises :class:`ProxyProtocolError` if the header is bad or the peer closes inside it; the socket's own
    timeout bounds the wait (``socket.timeout`` / ``TimeoutError``)."""
    parser = ProxyParser(max_v2_header)
    got = 0
    while True:
        chunk = sock.recv(parser.wanted)
        if not chunk:
            raise ProxyProtocolError(f"the peer closed after {got} bytes of a PROXY header")
        got += len(chunk)
        header = parser.feed(chunk)
        if header is not None:
            return header
