"""fastframe: length-prefixed frames over TCP, without the sticky-packet bugs.

The codec comes in two implementations with one face: the C extension ``fastframe._codec`` and the
pure-Python twin ``fastframe._codec_py``.  ``IMPLEMENTATION`` says which one is in use; setting the
environment variable ``FASTFRAME_PURE_PYTHON=1`` before import forces the twin.  On CPython a missing or
broken extension is never a silent fallback: the import warns and names the reason (``fastframe._codec_choice``
makes the choice).
"""

from __future__ import annotations

from ._codec_choice import (
    DEFAULT_MAX_FRAME,
    IMPLEMENTATION,
    LARGE_FRAME,
    PREFIXES,
    Decoder,
    encode,
    encode_many,
    header,
    write_frames,
)
from ._framed import FramedSocket
from ._framing import Framing
from ._version import __version__
from .exceptions import BufferTooSmall, FrameError, FrameTooLarge, IncompleteFrame

__all__ = [
    "BufferTooSmall",
    "DEFAULT_MAX_FRAME",
    "IMPLEMENTATION",
    "LARGE_FRAME",
    "PREFIXES",
    "Decoder",
    "FrameError",
    "FrameTooLarge",
    "FramedSocket",
    "Framing",
    "IncompleteFrame",
    "__version__",
    "encode",
    "encode_many",
    "header",
    "write_frames",
]
