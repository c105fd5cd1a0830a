"""The echo service: every request frame comes back unchanged (or upper-cased), or raw RFC 862 echo."""

from __future__ import annotations

from typing import List, Optional

from .service import DEFAULT_MAX_REQUEST, Conn, Service

__all__ = ["EchoService", "RawEchoService"]


class EchoService(Service):
    """Framed echo: each request frame is sent back as a frame; ``upper=True`` upper-cases it (ASCII)."""

    name = "echo"

    def __init__(self, upper: bool = False, max_request: int = DEFAULT_MAX_REQUEST, prefix: str = "!I") -> None:
        self.upper = upper
        self.mirror = not upper  # the engine may relay checked frames without calling frames_received
        self.max_request = max_request
        self.prefix = prefix

    def frames_received(self, conn: Conn, frames: List[bytes]) -> Optional[List[bytes]]:
        if self.upper:
            return [f.upper() for f in frames]
        return frames

    def describe(self) -> str:
        return "echo (framed %s%s, max request %d bytes)" % (self.prefix, ", upper-case" if self.upper else "", self.max_request)


class RawEchoService(Service):
    """RFC 862 echo: no framing, the bytes that arrive go back as they are (upper-cased with ``upper``)."""

    name = "echo"
    framed = False

    def __init__(self, upper: bool = False) -> None:
        self.upper = upper

    def data_received(self, conn: Conn, data: bytes) -> Optional[bytes]:
        return data.upper() if self.upper else data

    def describe(self) -> str:
        return "echo (raw RFC 862%s)" % (", upper-case" if self.upper else "")
