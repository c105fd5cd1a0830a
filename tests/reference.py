"""Reference encodings written independently of the codec (never the code under test)."""

from __future__ import annotations

import struct

#: Every prefix the codec accepts, in the order of the wire-format table.
SPEC_PREFIXES = (
    "!B", ">B", "<B", "!H", ">H", "<H", "!3", ">3", "<3", "!I", ">I", "<I", "!Q", ">Q", "<Q", "varint",
)  # fmt: skip
#: The struct format of each fixed-width prefix; the 24-bit ones are packed as 32 bits and cut (see header()).
STRUCT_OF = {p: (">" if p[0] in "!>" else "<") + ("I" if p[1] == "3" else p[1]) for p in SPEC_PREFIXES if p != "varint"}
WIDTH_OF = {p: (0 if p == "varint" else 3 if p[1] == "3" else struct.calcsize(STRUCT_OF[p])) for p in SPEC_PREFIXES}
MAX_OF = {p: (2**64 - 1 if p == "varint" else 2 ** (8 * WIDTH_OF[p]) - 1) for p in SPEC_PREFIXES}


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


def header(n: int, prefix: str = "!I") -> bytes:
    """The length field holding ``n`` in ``prefix``'s format."""
    if prefix == "varint":
        return leb128(n)
    packed = struct.pack(STRUCT_OF[prefix], n)
    if WIDTH_OF[prefix] == 3:
        if n >= 1 << 24:
            raise struct.error("24-bit field out of range")
        return packed[1:] if STRUCT_OF[prefix][0] == ">" else packed[:3]
    return packed
