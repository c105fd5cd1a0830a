"""Type stub for the C extension ``fastframe._codec`` (built from src/_codec.pyx).

The pure-Python twin ``fastframe._codec_py`` has the same names and signatures; its docstring specifies
the wire format.
"""

from typing import Iterable, List, Optional, Tuple, Union

Buffer = Union[bytes, bytearray, memoryview]

DEFAULT_MAX_FRAME: int
"""Default ``max_frame`` of a Decoder: 8 MiB."""

LARGE_FRAME: int
"""Frames of at least this many payload bytes (64 KiB) are received straight into their own object."""

PREFIXES: Tuple[str, ...]
"""Every accepted prefix: ``"!B" ">B" "<B" "!H" ">H" "<H" "!I" ">I" "<I" "!Q" ">Q" "<Q" "varint"``."""

def header(length: int, prefix: str = "!I") -> bytes:
    """Return the header announcing a payload of ``length`` bytes (for scatter-gather sends).

    Raises ValueError for a negative length or an unknown prefix, FrameTooLarge if the prefix cannot
    express ``length``.
    """

def encode(payload: Buffer, prefix: str = "!I") -> bytes:
    """Return header + payload as one new bytes object.

    ``payload`` is any C-contiguous bytes-like object.  Raises FrameTooLarge if the prefix cannot express
    its length.
    """

def encode_many(payloads: Iterable[Buffer], prefix: str = "!I") -> bytes:
    """Return the frames of all ``payloads``, back to back, in one bytes object (one ``send``)."""

def write_frames(fd: int, payloads: Iterable[Buffer], prefix: str = "!I") -> Optional[memoryview]:
    """Encode ``payloads`` as frames and ``send`` them to socket ``fd`` in one call, never blocking.

    Returns None when the kernel took everything, else a memoryview of what it did not take (all of it if
    the socket was full), for the caller to queue.  Raises OSError on failure.  An event loop's one call
    per reply batch: ``sock.send(encode_many(payloads, prefix))`` without the intermediate objects.
    """

class Decoder:
    """Incremental frame parser: bytes in, complete payloads out.

    Feed it with :meth:`feed`, or let the socket write into its memory with :meth:`get_buffer` /
    :meth:`buffer_updated` (the ``asyncio.BufferedProtocol`` shape).  A header announcing more than
    ``max_frame`` bytes raises FrameTooLarge before anything is allocated for the payload; after any error
    the decoder refuses further input.  Frames of LARGE_FRAME bytes or more are received straight into the
    bytes object that is returned.
    """

    def __init__(self, prefix: str = "!I", max_frame: int = ...) -> None: ...
    @property
    def prefix(self) -> str:
        """The header format."""
    @property
    def max_frame(self) -> int:
        """The largest payload accepted, in bytes; may be changed (applies to headers not yet read)."""
    @max_frame.setter
    def max_frame(self, value: int) -> None: ...
    @property
    def pending(self) -> int:
        """Bytes received that are not yet part of a returned frame (headers included)."""
    @property
    def closed(self) -> bool:
        """True once close() was called."""
    def feed(self, data: Buffer) -> List[bytes]:
        """Take any bytes-like object; return the payloads of every frame it completes, in order.

        On a FrameError the exception's ``frames`` attribute holds the frames completed before it.
        """
    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Lend writable memory for the next ``recv_into``.

        Valid until the next call on this decoder; report the bytes written with buffer_updated().
        """
    def buffer_updated(self, nbytes: int) -> List[bytes]:
        """Account for ``nbytes`` written at the start of the last get_buffer(); return completed frames."""
    def read_from(self, fd: int) -> Optional[List[bytes]]:
        """One ``recv`` from socket ``fd`` straight into the decoder's memory, never blocking.

        Returns the frames completed ([] if none), or None at end of stream (then call close()).  Raises
        BlockingIOError when nothing was ready, OSError on failure.
        """
    def feed_wire(self, data: Buffer) -> memoryview:
        """Like feed(), but return the frames completed so far as they were on the wire.

        One read-only memoryview of whole frames, headers included, back to back (empty if none is
        complete yet); every header has been checked against the prefix and ``max_frame``.  For relays and
        echoes, which pass frames on unchanged without an object per frame.  The extension returns a view
        of its own memory, never reused while the view is alive; the pure twin returns a copy.
        """
    def read_wire_from(self, fd: int) -> Optional[memoryview]:
        """One ``recv`` from socket ``fd`` (never blocking), then what feed_wire() would return.

        None at end of stream; BlockingIOError when nothing was ready; OSError on failure.
        """
    @property
    def completed(self) -> int:
        """Frames completed since the decoder was made (a progress counter, e.g. for frame deadlines)."""
    def relay(self, fd: int, out_fd: int = -1) -> Optional[bytes]:
        """One ``recv`` from socket ``fd``, then ``send`` the whole frames it completed to ``out_fd``
        (default: back to ``fd``, an echo) straight from the decoder's memory -- never blocking.

        Returns None at end of stream, else the bytes the kernel did not take (``b""`` when it took them
        all, or nothing was complete), for the caller to queue.  Raises BlockingIOError when nothing was
        ready, OSError on failure, FrameError like feed_wire() (nothing of that read is sent then).
        """
    def close(self) -> None:
        """Mark the end of the stream; raise IncompleteFrame if it cut a frame off."""
