"""Reference encodings written independently of the codec (never the code under test)."""

from __future__ import annotations


def leb128(n: int) -> bytes:
    """Unsigned LEB128: seven bits per byte, least significant group first, high bit on all but the last."""
    if n < 0:
        raise ValueError("negative")
    out = bytearray()
    while True:
        n, low = n >> 7, n & 0x7F
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)
