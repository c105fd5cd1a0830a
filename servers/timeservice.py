"""The time service: RFC 868 over UDP and TCP, in the seeds' Unix format or real RFC 868 format.

UDP: any datagram, an empty one included, gets a 4-byte big-endian reply.  TCP: the server sends the same
4 bytes as soon as a client connects, then closes (RFC 868's TCP flavour).

Formats: ``unix`` is seconds since 1970-01-01 (what the seeds' demo sends); ``rfc868`` is seconds since
1900-01-01, what ``rdate`` expects.  Both are taken modulo 2**32.
"""

from __future__ import annotations

import struct
import time
from typing import Callable, Optional

from .service import Address, Conn, Service

__all__ = ["FORMATS", "TimeService", "TcpTimeService", "decode_time", "encode_time"]

#: Seconds from 1900-01-01 to 1970-01-01.
RFC868_OFFSET = 2208988800
FORMATS = ("unix", "rfc868")
_U32 = struct.Struct("!I")


def encode_time(fmt: str = "unix", now: Optional[float] = None) -> bytes:
    """The 4-byte reply for ``now`` (default: the current time)."""
    seconds = int(time.time() if now is None else now)
    if fmt == "rfc868":
        seconds += RFC868_OFFSET
    elif fmt != "unix":
        raise ValueError(f"unknown time format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return _U32.pack(seconds & 0xFFFFFFFF)


def decode_time(reply: bytes, fmt: str = "unix") -> int:
    """Seconds since 1970 from a 4-byte reply."""
    if len(reply) != 4:
        raise ValueError(f"a time reply is 4 bytes, got {len(reply)}")
    value: int = _U32.unpack(reply)[0]
    if fmt == "rfc868":
        return value - RFC868_OFFSET
    if fmt != "unix":
        raise ValueError(f"unknown time format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return value


class TimeService(Service):
    """UDP: every datagram (its content is ignored) gets the current time."""

    name = "time"
    transport = "udp"

    def __init__(self, fmt: str = "unix", clock: Callable[[], float] = time.time) -> None:
        encode_time(fmt, 0)  # validate
        self.fmt = fmt
        self.clock = clock

    def datagram_received(self, data: bytes, addr: Address) -> Optional[bytes]:
        return encode_time(self.fmt, self.clock())

    def describe(self) -> str:
        return f"time (UDP, {self.fmt})"


class TcpTimeService(Service):
    """TCP: send the time on connect, then close; anything the client sends is ignored."""

    name = "time"
    framed = False

    def __init__(self, fmt: str = "unix", clock: Callable[[], float] = time.time) -> None:
        encode_time(fmt, 0)
        self.fmt = fmt
        self.clock = clock

    def connection_made(self, conn: Conn) -> None:
        conn.send_raw(encode_time(self.fmt, self.clock()))
        conn.close()

    def describe(self) -> str:
        return f"time (TCP, {self.fmt})"
