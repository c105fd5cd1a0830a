"""The time service: RFC 868 over UDP and TCP (the formats are specified in :mod:`fastframe.wire.timeformat`).

UDP: any datagram, an empty one included, gets a 4-byte big-endian reply.  TCP: the server sends the same
4 bytes as soon as a client connects, then closes.
"""

from __future__ import annotations

import time
from typing import Callable

from fastframe.wire.timeformat import encode_time

from .service import Address, Conn, Service

__all__ = ["TcpTimeService", "TimeService"]


class TimeService(Service):
    """UDP: every datagram (its content is ignored) gets the current time."""

    name = "time"
    transport = "udp"

    def __init__(self, fmt: str = "unix", clock: Callable[[], float] = time.time) -> None:
        encode_time(fmt, 0)  # validate
        self.fmt = fmt
        self.clock = clock

    def datagram_received(self, data: bytes, addr: Address) -> bytes | None:
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
