"""The time protocol's replies: RFC 868 over UDP and TCP, in the seeds' Unix format or real RFC 868 format.

Wire format
===========

UDP: any datagram, an empty one included, gets one 4-byte datagram back.  TCP: the server sends the same
4 bytes as soon as a client connects, then closes (RFC 868's TCP flavour); what the client sends is ignored.

The 4 bytes are an unsigned 32-bit big-endian count of seconds, in one of two formats (the server is told
which; the reply does not say):

==========  ================================================================================
``unix``    seconds since 1970-01-01T00:00:00Z (what the seeds' demo sends)
``rfc868``  seconds since 1900-01-01T00:00:00Z (RFC 868, what ``rdate`` expects): unix + 2208988800
==========  ================================================================================

Both are taken modulo 2**32.
"""

from __future__ import annotations

import struct
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (a start-up cost for the CLI)
if TYPE_CHECKING:  # pragma: no cover
    pass

__all__ = ["FORMATS", "RFC868_OFFSET", "REPLY_SIZE", "decode_time", "encode_time"]

#: Seconds from 1900-01-01 to 1970-01-01.
RFC868_OFFSET = 2208988800
FORMATS = ("unix", "rfc868")
REPLY_SIZE = 4
_U32 = struct.Struct("!I")


def _check(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown time format {fmt!r}; expected one of {', '.join(FORMATS)}")


def encode_time(fmt: str = "unix", now: float | None = None) -> bytes:
    """The 4-byte reply for ``now`` (default: the current time)."""
    _check(fmt)
    seconds = int(time.time() if now is None else now)
    if fmt == "rfc868":
        seconds += RFC868_OFFSET
    return _U32.pack(seconds & 0xFFFFFFFF)


def decode_time(reply: bytes, fmt: str = "unix") -> int:
    """Seconds since 1970 from a 4-byte reply."""
    _check(fmt)
    if len(reply) != REPLY_SIZE:
        raise ValueError(f"a time reply is {REPLY_SIZE} bytes, got {len(reply)}")
    value: int = _U32.unpack(reply)[0]
    return value - RFC868_OFFSET if fmt == "rfc868" else value
