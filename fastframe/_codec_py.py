"""Pure-Python codec: the reference twin of the C extension ``fastframe._codec``.

Wire format
===========

A frame is a length header followed by exactly that many payload bytes.  The length counts payload bytes
only; a zero-length frame is a bare header.  The header is one of:

==========  =====  ==============  ======================
prefix      bytes  byte order      largest payload
==========  =====  ==============  ======================
``"!B"``    1      --              255
``"!H"``    2      big-endian      65 535
``"!I"``    4      big-endian      4 294 967 295 (default)
``"!Q"``    8      big-endian      2**64 - 1
``"<H"``    2      little-endian   65 535
``"<I"``    4      little-endian   4 294 967 295
``"<Q"``    8      little-endian   2**64 - 1
``"varint"`` 1-10  LEB128          2**64 - 1
==========  =====  ==============  ======================

``">"`` is a synonym of ``"!"`` (both mean network order, as in :mod:`struct`), and ``"<B"``/``">B"`` are
accepted for symmetry.  The default ``"!I"`` is byte-identical to ``struct.pack("!I", len(data)) + data``,
to Twisted's ``Int32StringReceiver`` and, below 2 GiB, to ``multiprocessing.connection``.

``"varint"`` is unsigned LEB128 as in protobuf's delimited streams: seven bits per byte, least significant
group first, the high bit set on every byte but the last.  Decoders accept only the minimal encoding of a
value of at most 64 bits: a redundant trailing ``0x00`` group, an eleventh byte, or a tenth byte above
``0x01`` is a :class:`FrameError`.

Limits
======

A :class:`Decoder` refuses a header announcing more than ``max_frame`` bytes (8 MiB by default) with
:class:`FrameTooLarge` before it allocates anything for the payload.  Encoding a payload that the prefix
cannot express raises :class:`FrameTooLarge` as well.

This module must expose exactly the names, signatures, results and exceptions of the extension; the test
suite runs every codec test against both.
"""

from __future__ import annotations

import operator
import os
import struct
import sys
from typing import Any, Iterable, List, Optional, Tuple, Union

from .exceptions import FrameError, FrameTooLarge, IncompleteFrame

__all__ = [
    "DEFAULT_MAX_FRAME",
    "LARGE_FRAME",
    "PREFIXES",
    "Decoder",
    "encode",
    "encode_many",
    "header",
    "write_frames",
]

Buffer = Union[bytes, bytearray, memoryview]

DEFAULT_MAX_FRAME = 8 * 1024 * 1024
#: Frames of at least this many payload bytes are received straight into their own object.
LARGE_FRAME = 64 * 1024

_INITIAL_BUFFER = 64 * 1024  # first size of a decoder's read buffer
_MIN_READ = 16 * 1024  # get_buffer() offers at least this much room when it has no better idea
_MAX_READ = 256 * 1024  # ... and never grows the buffer beyond what a sizehint this large asks for

# prefix -> (header width, little-endian); width 0 is varint
_FORMATS = {
    "!B": (1, False), ">B": (1, False), "<B": (1, True),
    "!H": (2, False), ">H": (2, False), "<H": (2, True),
    "!I": (4, False), ">I": (4, False), "<I": (4, True),
    "!Q": (8, False), ">Q": (8, False), "<Q": (8, True),
    "varint": (0, False),
}  # fmt: skip
PREFIXES = tuple(_FORMATS)

_STRUCTS = {
    (1, False): struct.Struct(">B"), (1, True): struct.Struct("<B"),
    (2, False): struct.Struct(">H"), (2, True): struct.Struct("<H"),
    (4, False): struct.Struct(">I"), (4, True): struct.Struct("<I"),
    (8, False): struct.Struct(">Q"), (8, True): struct.Struct("<Q"),
}  # fmt: skip

_MAX_VARINT = (1 << 64) - 1


def _lookup(prefix: str) -> Tuple[int, bool]:
    try:
        return _FORMATS[prefix]
    except (KeyError, TypeError):
        raise ValueError(f"unknown prefix {prefix!r}; expected one of {', '.join(PREFIXES)}") from None


def _max_length(width: int) -> int:
    return (1 << (8 * width)) - 1 if width else _MAX_VARINT


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _header(n: int, fmt: Tuple[int, bool]) -> bytes:
    width = fmt[0]
    if n > _max_length(width):
        raise FrameTooLarge(n, _max_length(width))
    if width:
        return _STRUCTS[fmt].pack(n)
    return _varint(n)


def _view(data: Buffer) -> memoryview:
    """A flat byte view of any C-contiguous buffer (what PyObject_GetBuffer(PyBUF_SIMPLE) accepts)."""
    mv = memoryview(data)
    if not mv.c_contiguous:
        raise BufferError("fastframe needs a C-contiguous buffer")
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    return mv


def header(length: int, prefix: str = "!I") -> bytes:
    """Return the header announcing a payload of ``length`` bytes."""
    fmt = _lookup(prefix)
    length = operator.index(length)
    if length < 0:
        raise ValueError("length must not be negative")
    return _header(length, fmt)


def encode(payload: Buffer, prefix: str = "!I") -> bytes:
    """Return header + payload as one new bytes object."""
    fmt = _lookup(prefix)
    mv = _view(payload)
    return _header(mv.nbytes, fmt) + mv


def encode_many(payloads: Iterable[Buffer], prefix: str = "!I") -> bytes:
    """Return the frames of all ``payloads``, back to back, in one bytes object (one ``send``)."""
    fmt = _lookup(prefix)
    parts: List[Buffer] = []
    for payload in payloads:
        mv = _view(payload)
        parts.append(_header(mv.nbytes, fmt))
        parts.append(mv)
    return b"".join(parts)


def write_frames(fd: int, payloads: Iterable[Buffer], prefix: str = "!I") -> Optional[memoryview]:
    """Encode ``payloads`` as frames and send them to the non-blocking socket ``fd`` in one call.

    Returns None when the kernel took everything, else a memoryview of what it did not take (all of it if
    the socket was full), for the caller to queue.  Raises OSError on failure.
    """
    data = encode_many(payloads, prefix)
    if not data:
        return None
    try:
        sent = os.write(fd, data)
    except BlockingIOError:
        sent = 0
    if sent == len(data):
        return None
    return memoryview(data)[sent:]


class Decoder:
    """Incremental frame parser: bytes in, complete payloads out.

    Theory of operation.  Received bytes live in one read buffer, ``_buf[_start:_end]``; the room after
    ``_end`` is what :meth:`get_buffer` lends to ``recv_into``.  Complete frames are cut out of the buffer
    and ``_start`` advances past them; the buffer is compacted (the partial tail moved to the front) only
    when it runs out of room, and grown only when the partial frame itself does not fit.  The tail that is
    moved is always less than one small frame, so every byte is copied a bounded number of times and
    decoding stays linear in the bytes received, however the stream is chunked.

    A frame of :data:`LARGE_FRAME` bytes or more is not assembled in the read buffer: as soon as its header
    is known, it gets its own object of the final size, and :meth:`get_buffer` lends the remaining part of
    that object, so the payload goes from the kernel straight to where it will stay.  After such a frame
    the decoder reads the next header on its own (a few bytes), so that a stream of large frames never
    lands a payload in the read buffer.  The one copy left is bounded: when a large frame follows small
    ones, the payload bytes that arrived in the same read as its header (at most one read window, 64 KiB)
    are copied into its object once; no other byte of it is ever copied or moved.  (This twin copies the
    finished frame once more, into a bytes object; the extension does not.)
    """

    __slots__ = (
        "_width", "_fmt", "_max_frame", "_prefix",
        "_buf", "_start", "_end",
        "_large", "_large_filled", "_large_hlen",
        "_win_kind", "_win_len", "_header_only", "_error", "_closed", "_scanned", "_completed",
    )  # fmt: skip

    def __init__(self, prefix: str = "!I", max_frame: int = DEFAULT_MAX_FRAME) -> None:
        fmt = _lookup(prefix)
        max_frame = operator.index(max_frame)
        if max_frame < 0:
            raise ValueError("max_frame must not be negative")
        if max_frame > sys.maxsize:  # the extension keeps it in a Py_ssize_t
            raise OverflowError("max_frame is too large")
        self._prefix = prefix
        self._width = fmt[0]
        self._fmt = _STRUCTS.get(fmt)
        self._max_frame = max_frame
        self._buf = bytearray(_INITIAL_BUFFER)
        self._start = 0
        self._end = 0
        self._large: Optional[bytearray] = None
        self._large_filled = 0
        self._large_hlen = 0
        self._win_kind = 0  # what the last get_buffer() lent: 0 nothing, 1 the read buffer, 2 a large frame
        self._win_len = 0
        self._header_only = False
        self._scanned = 0
        self._completed = 0
        self._error: Optional[BaseException] = None
        self._closed = False

    @property
    def prefix(self) -> str:
        return self._prefix

    @property
    def max_frame(self) -> int:
        """The largest payload accepted; may be changed (it applies to headers not yet read)."""
        return self._max_frame

    @max_frame.setter
    def max_frame(self, value: int) -> None:
        value = operator.index(value)
        if value < 0:
            raise ValueError("max_frame must not be negative")
        if value > sys.maxsize:
            raise OverflowError("max_frame is too large")
        self._max_frame = value

    @property
    def pending(self) -> int:
        """Bytes received that are not yet part of a returned frame (headers included)."""
        n = self._end - self._start
        if self._large is not None:
            n += self._large_hlen + self._large_filled
        return n

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def completed(self) -> int:
        """Frames completed since the decoder was made (a progress counter, e.g. for frame deadlines)."""
        return self._completed

    # -- header parsing -------------------------------------------------------------------------------

    def _parse_header(self, buf: Buffer, pos: int, avail: int) -> Tuple[int, int]:
        """(payload length, header length) of the header at buf[pos:], or (-1, 0) if it is incomplete."""
        width = self._width
        if width:
            if avail < width:
                return -1, 0
            return self._fmt.unpack_from(buf, pos)[0], width  # type: ignore[union-attr]
        value = 0
        for i in range(min(avail, 10)):
            b = buf[pos + i]
            if i == 9 and b > 1:
                if b & 0x80:
                    raise FrameError("varint header longer than 10 bytes")
                raise FrameError("varint header overflows 64 bits")
            value |= (b & 0x7F) << (7 * i)
            if not b & 0x80:
                if b == 0 and i > 0:
                    raise FrameError("varint header is not minimally encoded")
                return value, i + 1
        return -1, 0

    def _parse(self, buf: Buffer, pos: int, end: int, out: List[bytes], wire: bool = False) -> int:
        """Cut every complete frame out of buf[pos:end]; return the new position.

        A large frame whose payload is incomplete takes the rest of the bytes into its own object.  With
        ``wire``, frames are only checked and skipped (``_scanned`` follows the progress, for errors), and
        every frame, however large, is assembled in the read buffer."""
        max_frame = self._max_frame
        while pos < end:
            avail = end - pos
            length, hlen = self._parse_header(buf, pos, avail)
            if length < 0:
                break
            if length > max_frame:
                raise FrameTooLarge(length, max_frame)
            if length < LARGE_FRAME:
                self._header_only = False
            total = hlen + length
            if total <= avail:
                if not wire:
                    out.append(bytes(buf[pos + hlen : pos + total]))
                pos += total
                self._scanned = pos
                self._completed += 1
                continue
            if length >= LARGE_FRAME and not wire:
                try:
                    large = bytearray(length)
                except (MemoryError, OverflowError) as exc:
                    raise FrameError(f"cannot allocate {length} bytes for a frame ({exc!r})") from exc
                got = avail - hlen
                large[:got] = buf[pos + hlen : end]
                self._large = large
                self._large_filled = got
                self._large_hlen = hlen
                return end
            break
        return pos

    # -- buffer management ----------------------------------------------------------------------------

    def _reserve(self, want: int) -> None:
        """Make at least ``want`` free bytes after ``_end``, compacting before growing."""
        buf = self._buf
        size = len(buf)
        if size - self._end >= want:
            return
        live = self._end - self._start
        new_size = size if size - live >= want else max(2 * size, live + want)
        try:
            # Probe for a view still lent out: moving data under it would corrupt what it later receives.
            buf.append(0)
            del buf[-1]
            if self._start:
                buf[:live] = buf[self._start : self._end]
            if new_size != size:
                buf.extend(bytes(new_size - size))
        except BufferError:
            # A memoryview lent earlier is still alive: leave that memory to it and move to a new one.
            fresh = bytearray(new_size)
            fresh[:live] = buf[self._start : self._end]
            self._buf = fresh
        self._start = 0
        self._end = live

    def _append(self, data: memoryview) -> None:
        n = len(data)
        self._reserve(n)
        self._buf[self._end : self._end + n] = data
        self._end += n

    def _finish_large(self, out: List[bytes]) -> None:
        out.append(bytes(self._large))  # type: ignore[arg-type]
        self._completed += 1
        self._large = None
        self._header_only = True

    def _parse_buffer(self, out: List[bytes]) -> None:
        with memoryview(self._buf) as mv:
            start = self._parse(mv, self._start, self._end, out)
        if start == self._end:
            self._start = self._end = 0
        else:
            self._start = start

    # -- public API -----------------------------------------------------------------------------------

    def _check(self) -> None:
        if self._error is not None:
            raise FrameError(f"decoder refuses input after an earlier error: {self._error}") from self._error
        if self._closed:
            raise FrameError("decoder is closed")

    def _fail(self, exc: BaseException, out: List[bytes]) -> None:
        """Lock the decoder after any failure; a FrameError carries the frames completed before it."""
        if isinstance(exc, FrameError):
            exc.frames = out
        self._error = exc

    def feed(self, data: Buffer) -> List[bytes]:
        """Take any bytes-like object; return the payloads of every frame it completes, in order."""
        self._check()
        self._win_kind = 0
        self._win_len = 0
        mv = _view(data)
        out: List[bytes] = []
        try:
            self._consume(mv, out)
        except BaseException as exc:
            self._fail(exc, out)
            raise
        return out

    def _consume(self, mv: memoryview, out: List[bytes]) -> None:
        pos = 0
        n = len(mv)
        while pos < n:
            large = self._large
            if large is not None:
                k = min(n - pos, len(large) - self._large_filled)
                large[self._large_filled : self._large_filled + k] = mv[pos : pos + k]
                self._large_filled += k
                pos += k
                if self._large_filled == len(large):
                    self._finish_large(out)
                continue
            live = self._end - self._start
            if not live:
                pos = self._parse(mv, pos, n, out)
                if pos < n and self._large is None:
                    self._append(mv[pos:])
                    pos = n
                continue
            # Finish the frame already buffered, copying no more of the new data than it needs.
            length, hlen = self._parse_header(self._buf, self._start, live)
            if length < 0:
                need = (self._width or 10) - live
            else:
                need = hlen + length - live
            take = min(need, n - pos)
            self._append(mv[pos : pos + take])
            pos += take
            self._parse_buffer(out)

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Lend writable memory for the next ``recv_into``; report what was written with buffer_updated()."""
        self._check()
        sizehint = operator.index(sizehint)
        large = self._large
        if large is not None:
            self._win_kind = 2
            self._win_len = len(large) - self._large_filled
            return memoryview(large)[self._large_filled :]
        if self._header_only:
            # After a large frame: read the next header alone, so a large payload never lands here.
            live = self._end - self._start
            want = self._width - live if self._width else 1
            self._reserve(want)
            self._win_len = want
        else:
            want = _MIN_READ if sizehint <= 0 else min(max(sizehint, _MIN_READ), _MAX_READ)
            self._reserve(want)
            self._win_len = len(self._buf) - self._end
        self._win_kind = 1
        return memoryview(self._buf)[self._end : self._end + self._win_len]

    def buffer_updated(self, nbytes: int) -> List[bytes]:
        """Account for ``nbytes`` written at the start of the last get_buffer(); return completed frames."""
        self._check()
        nbytes = operator.index(nbytes)
        if nbytes < 0 or nbytes > self._win_len:
            raise ValueError(f"buffer_updated({nbytes}) does not match the {self._win_len} bytes lent by get_buffer()")
        kind = self._win_kind
        self._win_kind = 0
        self._win_len = 0
        out: List[bytes] = []
        if not nbytes:
            return out
        try:
            if kind == 2:
                self._large_filled += nbytes
                if self._large_filled == len(self._large):  # type: ignore[arg-type]
                    self._finish_large(out)
            else:
                self._end += nbytes
                self._parse_buffer(out)
        except BaseException as exc:
            self._fail(exc, out)
            raise
        return out

    def read_from(self, fd: int) -> Optional[List[bytes]]:
        """One ``recv`` from the non-blocking socket ``fd`` straight into the decoder's memory.

        Returns the frames completed ([] if none), or None at end of stream (then call close()).  Raises
        BlockingIOError when nothing was ready, OSError on failure.
        """
        view = self.get_buffer()
        try:
            n = os.readv(fd, [view])
        except OSError:
            self._win_kind = 0
            self._win_len = 0
            raise
        finally:
            view.release()
        if not n:
            self._win_kind = 0
            self._win_len = 0
            return None
        return self.buffer_updated(n)

    # -- whole frames as they were on the wire --------------------------------------------------------

    def _wire_mode(self) -> None:
        if self._large is not None:
            raise ValueError("a frame begun by feed()/read_from()/buffer_updated() must be finished by them")
        self._header_only = False

    def _take_wire(self) -> memoryview:
        start = self._start
        self._scanned = start
        with memoryview(self._buf) as mv:
            try:
                pos = self._parse(mv, start, self._end, [], wire=True)
            except BaseException as exc:
                out: List[bytes] = []
                if self._scanned > start and isinstance(exc, FrameError):
                    before = self._completed
                    self._parse(mv, start, self._scanned, out)
                    self._completed = before
                self._fail(exc, out)
                raise
            data = bytes(mv[start:pos])  # the twin copies; the extension lends its own memory
        self._start = pos
        if self._start == self._end:
            self._start = self._end = 0
        return memoryview(data)

    def feed_wire(self, data: Buffer) -> memoryview:
        """Like feed(), but return the frames completed so far as they were on the wire.

        The result is one read-only memoryview of whole frames, headers included, back to back (empty if
        none is complete yet): every header has been checked against the prefix and ``max_frame``, and a
        partial frame stays buffered.  For relays and echoes, which pass frames on unchanged without making
        an object per frame.  On a FrameError the payloads of the whole frames before it are in its
        ``frames``.  A decoder may switch between feed() and feed_wire() only between frames.
        """
        self._check()
        self._wire_mode()
        self._win_kind = 0
        self._win_len = 0
        self._append(_view(data))
        return self._take_wire()

    def read_wire_from(self, fd: int) -> Optional[memoryview]:
        """One ``recv`` from the non-blocking socket ``fd``, then what feed_wire() would return.

        None at end of stream; BlockingIOError when nothing was ready; OSError on failure.
        """
        self._check()
        self._wire_mode()
        view = self.get_buffer()
        try:
            n = os.readv(fd, [view])
        finally:
            view.release()
            self._win_kind = 0
            self._win_len = 0
        if not n:
            return None
        self._end += n
        return self._take_wire()

    def relay(self, fd: int, out_fd: int = -1) -> Optional[bytes]:
        """One ``recv`` from socket ``fd``, then ``send`` the whole frames it completed to ``out_fd``
        (default: back to ``fd``, an echo) -- never blocking.

        Returns None at end of stream, else the bytes the kernel did not take (``b""`` when it took them
        all, or nothing was complete), for the caller to queue.  Raises BlockingIOError when nothing was
        ready, OSError on failure, FrameError like feed_wire() (nothing of that read is sent then).
        """
        wire = self.read_wire_from(fd)
        if wire is None:
            return None
        if not wire:
            return b""
        try:
            sent = os.write(fd if out_fd < 0 else out_fd, wire)
        except BlockingIOError:
            sent = 0
        return bytes(wire[sent:])

    def close(self) -> None:
        """Mark the end of the stream; raise IncompleteFrame if it cut a frame off."""
        if self._closed:
            return
        self._closed = True
        if self._error is not None:
            return
        received = self.pending
        if received:
            if self._large is not None:
                expected: Optional[int] = self._large_hlen + len(self._large)
            else:
                length, hlen = self._parse_header(self._buf, self._start, received)
                expected = None if length < 0 else hlen + length
            exc = IncompleteFrame(received, expected)
            self._error = exc
            raise exc

    def __reduce_ex__(self, protocol: object) -> Any:
        # A decoder is a position inside one byte stream: a copy would share or fork that position.
        raise TypeError("Decoder objects cannot be copied or pickled")

    def __repr__(self) -> str:
        return f"<Decoder prefix={self._prefix!r} max_frame={self._max_frame} pending={self.pending}>"
