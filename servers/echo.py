"""The echo service: every request frame comes back unchanged (or upper-cased), or raw RFC 862 echo."""

from __future__ import annotations

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

    def frames_received(self, conn: Conn, frames: list[bytes]) -> list[bytes] | None:
        if self.upper:
            return [f.upper() for f in frames]
        return frames

    def describe(self) -> str:
        upper = ", upper-case" if self.upper else ""
        return f"echo (framed {self.prefix}{upper}, max request {self.max_request} bytes)"


class RawEchoService(Service):
    """RFC 862 echo: no framing, the bytes that arrive go back as they are (upper-cased with ``upper``)."""

    name = "echo"
    framed = False

    def __init__(self, upper: bool = False) -> None:
        self.upper = upper

    def data_received(self, conn: Conn, data: bytes) -> bytes | None:
        return data.upper() if self.upper else data

    def describe(self) -> str:
        return "echo (raw RFC 862%s)" % (", upper-case" if self.upper else "")
