"""Type stub for the C extension ``fastframe._codec`` (built from src/_codec.pyx).

The pure-Python twin ``fastframe._codec_py`` has the same names and signatures; its docstring specifies
the wire format.
"""

from collections.abc import Iterable
from typing import final

from fastframe._framing import Framing as Framing

__all__ = [
    "DEFAULT_MAX_FRAME",
    "LARGE_FRAME",
    "PREFIXES",
    "Decoder",
    "Framing",
    "encode",
    "encode_many",
    "header",
    "write_frames",
]

# Private aliases: they exist only in the stub (stubtest ignores underscore names).
_Buffer = bytes | bytearray | memoryview
_Prefix = str | Framing

DEFAULT_MAX_FRAME: int
"""Default ``max_frame`` of a Decoder: 8 MiB."""

LARGE_FRAME: int
"""Frames of at least this many payload bytes (64 KiB) are received straight into their own object."""

PREFIXES: tuple[str, ...]
"""Every accepted prefix: ``"!B" ">B" "<B" "!H" ">H" "<H" "!3" ">3" "<3" "!I" ">I" "<I" "!Q" ">Q" "<Q" "varint"``."""

# Everywhere a prefix goes, a Framing may go instead (the keyword options are then left at their defaults).
# ``offset``: leading payload bytes written before the length field; ``adjust``: the field holds
# len(body) - adjust.  See the docstring of fastframe._codec_py for the layout.

def header(length: int, prefix: _Prefix = "!I", *, offset: int = 0, adjust: int = 0) -> bytes:
    """Return the length field announcing a body of ``length`` bytes (for scatter-gather sends).

    Raises ValueError for a negative length, an unknown prefix or ``offset > 0`` (header() writes no
    leading bytes), FrameTooLarge if the field cannot hold ``length - adjust``, FrameError if it is negative.
    """

def encode(payload: _Buffer, prefix: _Prefix = "!I", *, offset: int = 0, adjust: int = 0) -> bytes:
    """Return the frame of ``payload`` (its first ``offset`` bytes, the length field, the rest) as one bytes.

    ``payload`` is any C-contiguous bytes-like object.  Raises FrameTooLarge if the field cannot express
    its value, FrameError if the payload is shorter than ``offset`` or the value would be negative.
    """

def encode_many(payloads: Iterable[_Buffer], prefix: _Prefix = "!I", *, offset: int = 0, adjust: int = 0) -> bytes:
    """Return the frames of all ``payloads``, back to back, in one bytes object (one ``send``)."""

def write_frames(
    fd: int, payloads: Iterable[_Buffer], prefix: _Prefix = "!I", *, offset: int = 0, adjust: int = 0
) -> memoryview | None:
    """Encode ``payloads`` as frames and ``send`` them to socket ``fd`` in one call, never blocking.

    Returns None when the kernel took everything, else a memoryview of what it did not take (all of it if
    the socket was full), for the caller to queue.  Raises OSError on failure.  An event loop's one call
    per reply batch: ``sock.send(encode_many(payloads, prefix))`` without the intermediate objects.
    """

@final
class Decoder:
    """Incremental frame parser: bytes in, complete frames out.  Final: it cannot be subclassed.

    Feed it with :meth:`feed`, or let the socket write into its memory with :meth:`get_buffer` /
    :meth:`buffer_updated` (the ``asyncio.BufferedProtocol`` shape).  A header announcing more than
    ``max_frame`` bytes raises FrameTooLarge before anything is allocated for the payload; after any error
    the decoder refuses further input.  Frames of LARGE_FRAME bytes or more are received straight into the
    bytes object that is returned (all but their last 1 KiB, which comes with the next header).

    ``prefix`` may be a Framing (then the options stay at their defaults); ``max_frame`` None means the
    Framing's, or DEFAULT_MAX_FRAME.  ``strip``: bytes cut from the front of each frame, None = through the
    length field (the body only), 0 = the whole frame as on the wire.
    """

    def __init__(
        self,
        prefix: _Prefix = "!I",
        max_frame: int | None = None,
        *,
        offset: int = 0,
        adjust: int = 0,
        strip: int | None = None,
    ) -> None: ...
    @property
    def prefix(self) -> str:
        """The length field's format."""
    @property
    def offset(self) -> int:
        """Opaque bytes before the length field."""
    @property
    def adjust(self) -> int:
        """Body bytes = field value + adjust."""
    @property
    def strip(self) -> int | None:
        """Bytes cut from the front of each frame; None: through the length field."""
    @property
    def framing(self) -> Framing:
        """This decoder's layout, with its current ``max_frame``, as a Framing."""
    @property
    def max_frame(self) -> int:
        """The largest body accepted, in bytes; may be changed (applies to headers not yet accepted)."""
    @max_frame.setter
    def max_frame(self, value: int) -> None: ...
    @property
    def pending(self) -> int:
        """Bytes received that are not yet part of a returned frame (headers included)."""
    @property
    def needed(self) -> int:
        """How many bytes may be read without reading past the frame in progress (at least 1): the rest of
        the frame once its header is known, else the rest of the header (one byte at a time for varint)."""
    @property
    def closed(self) -> bool:
        """True once close() was called."""
    def feed(self, data: _Buffer) -> list[bytes]:
        """Take any bytes-like object; return the payloads of every frame it completes, in order.

        On a FrameError the exception's ``frames`` attribute holds the frames completed before it.
        """
    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Lend writable memory for the next ``recv_into``.

        Valid until the next call on this decoder; report the bytes written with buffer_updated().  Memory
        nobody wrote reads as zeros, and a view used late never changes a frame already returned.
        """
    def buffer_updated(self, nbytes: int) -> list[bytes]:
        """Account for ``nbytes`` written at the start of the last get_buffer(); return completed frames."""
    def read_from(self, fd: int) -> list[bytes] | None:
        """One ``recv`` from socket ``fd`` straight into the decoder's memory, never blocking.

        Returns the frames completed ([] if none), or None at end of stream (then call close()).  Raises
        BlockingIOError when nothing was ready, OSError on failure.
        """
    def feed_wire(self, data: _Buffer) -> memoryview:
        """Like feed(), but return the frames completed so far as they were on the wire.

        One read-only memoryview of whole frames, headers included (whatever ``strip`` says), back to back
        (empty if none is complete yet); every header has been checked against the layout and ``max_frame``.  For relays and
        echoes, which pass frames on unchanged without an object per frame.  The extension returns a view
        of its own memory, never reused while the view is alive; the pure twin returns a copy.
        """
    def read_wire_from(self, fd: int) -> memoryview | None:
        """One ``recv`` from socket ``fd`` (never blocking), then what feed_wire() would return.

        None at end of stream; BlockingIOError when nothing was ready; OSError on failure.
        """
    @property
    def completed(self) -> int:
        """Frames completed since the decoder was made (a progress counter, e.g. for frame deadlines)."""
    def relay(self, fd: int, out_fd: int = -1) -> bytes | None:
        """One ``recv`` from socket ``fd``, then ``send`` the whole frames it completed to ``out_fd``
        (default: back to ``fd``, an echo) straight from the decoder's memory -- never blocking.

        Returns None at end of stream, else the bytes the kernel did not take (``b""`` when it took them
        all, or nothing was complete), for the caller to queue.  Raises BlockingIOError when nothing was
        ready, OSError on failure, FrameError like feed_wire() (nothing of that read is sent then).
        """
    def close(self) -> None:
        """Mark the end of the stream; raise IncompleteFrame if it cut a frame off."""
