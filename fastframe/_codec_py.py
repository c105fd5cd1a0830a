"""Pure-Python codec: the reference twin of the C extension ``fastframe._codec``.

Wire format
===========

A frame is a length field followed by the bytes it announces.  In the default layout (every option at its
default) the length counts payload bytes only and a zero-length frame is a bare header.  The length field is
one of:

==========  =====  ==============  ======================
prefix      bytes  byte order      largest value
==========  =====  ==============  ======================
``"!B"``    1      --              255
``"!H"``    2      big-endian      65 535
``"!3"``    3      big-endian      16 777 215
``"!I"``    4      big-endian      4 294 967 295 (default)
``"!Q"``    8      big-endian      2**64 - 1
``"<H"``    2      little-endian   65 535
``"<3"``    3      little-endian   16 777 215
``"<I"``    4      little-endian   4 294 967 295
``"<Q"``    8      little-endian   2**64 - 1
``"varint"`` 1-10  LEB128          2**64 - 1
==========  =====  ==============  ======================

``">"`` is a synonym of ``"!"`` (both mean network order, as in :mod:`struct`), and ``"<B"``/``">B"`` are
accepted for symmetry.  ``"!3"``/``"<3"`` are 24-bit fields (Netty's "medium"; MySQL's packets use ``"<3"``).
The default ``"!I"`` is byte-identical to ``struct.pack("!I", len(data)) + data``, to Twisted's
``Int32StringReceiver`` and, below 2 GiB, to ``multiprocessing.connection``.

``"varint"`` is unsigned LEB128 as in protobuf's delimited streams: seven bits per byte, least significant
group first, the high bit set on every byte but the last.  Decoders accept only the minimal encoding of a
value of at most 64 bits: a redundant trailing ``0x00`` group, an eleventh byte, or a tenth byte above
``0x01`` is a :class:`FrameError`.

Options (Netty's LengthFieldBasedFrameDecoder and tokio-util's LengthDelimitedCodec)
-----------------------------------------------------------------------------------

Keyword-only, with the same names wherever the codec is configured, or bundled in one
:class:`~fastframe.Framing` passed in place of the prefix::

    +-------------------+--------------+--------------------------------+
    | offset bytes      | length field | value + adjust bytes (body)    |
    +-------------------+--------------+--------------------------------+
    |<------------- head ------------->|
    |<-- strip -->|<------------------ decoded frame ----------------->|

- ``offset`` (0 to 65535, default 0): opaque bytes before the length field (PostgreSQL's type byte: 1).
- ``adjust`` (a 32-bit signed number, default 0): the body that follows the length field is ``value + adjust``
  bytes.  A length that counts itself and the bytes before it: ``-(offset + width)`` (PostgreSQL: ``-4``,
  its type byte is not counted); a sequence byte between the field and the payload: ``+1`` (MySQL).
- ``strip`` (default None): bytes cut from the front of each decoded frame.  None means through the length
  field (the body only, the default layout's payload); 0 returns the frame exactly as it was on the wire.
  ``0 <= strip <= offset + width``; with ``"varint"`` only None or 0.  Decoding only.
- ``max_frame`` bounds the body, ``value + adjust``; a negative ``value + adjust`` is a :class:`FrameError`.

Encoding ``payload`` writes its first ``offset`` bytes, then the length field with ``value = len(body) -
adjust`` where the body is the rest of the payload, then the body: ``encode(b"Q" + sql, offset=1, adjust=-4)``
is a PostgreSQL query message.  A payload shorter than ``offset``, or a negative value, is a
:class:`FrameError`.  ``header()`` writes the length field alone and refuses ``offset > 0``.  With every
option at its default, the layout is the one described first, byte for byte.

Limits
======

A :class:`Decoder` refuses a header announcing more than ``max_frame`` bytes (8 MiB by default) with
:class:`FrameTooLarge` before it allocates anything for the body.  ``max_frame`` may be changed at any time;
it applies to headers not yet accepted (a frame whose header was accepted is finished under the limit that
accepted it).  Memory in use grows with the bytes that arrive, never with what a header announces: this twin
collects a large frame in pieces, the extension allocates it whole but lends it in windows no larger than
what has arrived, so the kernel pages in only what is written.  Memory a decoder lends that nobody wrote
reads as zeros, never as what the heap held.  Encoding a value that the length field cannot hold raises :class:`FrameTooLarge` as well.

This module must expose exactly the names, signatures, results and exceptions of the extension; the test
suite runs every codec test against both.
"""

from __future__ import annotations

import operator
import os
import struct
import sys
from collections.abc import Iterable
from typing import Any, Union, final

from . import _framing
from ._framing import DEFAULT_MAX_FRAME, PREFIXES, Framing
from .exceptions import FrameError, FrameTooLarge, IncompleteFrame

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

Buffer = Union[bytes, bytearray, memoryview]
Prefix = Union[str, Framing]

#: Frames of at least this many bytes are received straight into their own object.
LARGE_FRAME = 64 * 1024

_TAIL = 1024  # the last bytes of a large frame are read through the read buffer, with the next header
_INITIAL_BUFFER = 64 * 1024  # first size of a decoder's read buffer
_MIN_READ = 16 * 1024  # get_buffer() offers at least this much room when it has no better idea
_MAX_READ = 256 * 1024  # ... and never grows the buffer beyond what a sizehint this large asks for

_FORMATS = _framing.FORMATS  # prefix -> (width, little-endian); width 0 is varint

_STRUCTS = {
    (1, False): struct.Struct(">B"), (1, True): struct.Struct("<B"),
    (2, False): struct.Struct(">H"), (2, True): struct.Struct("<H"),
    (3, False): struct.Struct(">HB"), (3, True): struct.Struct("<HB"),  # 24 bits: 16 + 8, see _parse_header
    (4, False): struct.Struct(">I"), (4, True): struct.Struct("<I"),
    (8, False): struct.Struct(">Q"), (8, True): struct.Struct("<Q"),
}  # fmt: skip

_MAX_VARINT = (1 << 64) - 1

_lookup = _framing.lookup


def _max_length(width: int) -> int:
    return (1 << (8 * width)) - 1 if width else _MAX_VARINT


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _header(n: int, fmt: tuple[int, bool]) -> bytes:
    width = fmt[0]
    if n > _max_length(width):
        raise FrameTooLarge(n, _max_length(width))
    if width == 3:
        return n.to_bytes(3, "little" if fmt[1] else "big")
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


def _encoding(prefix: Prefix, offset: int, adjust: int, where: str) -> tuple[tuple[int, bool], int, int]:
    """(format, offset, adjust) from a prefix and keyword options, or from a Framing."""
    if isinstance(prefix, Framing):
        if offset != 0 or adjust != 0:
            raise _framing.conflict(where)
        spec = prefix._spec
        return (spec[1], spec[2]), spec[3], spec[4]
    fmt = _lookup(prefix)
    return fmt, _framing.check_offset(offset), _framing.check_adjust(adjust)


def _field(n: int, offset: int, adjust: int) -> int:
    """The length field's value for a payload of ``n`` bytes whose first ``offset`` go before it."""
    if n < offset:
        raise FrameError(f"a payload of {n} bytes is shorter than offset={offset}")
    value = n - offset - adjust
    if value < 0:
        raise FrameError(
            f"a body of {n - offset} bytes cannot carry adjust={adjust}: the length field would be {value}"
        )
    return value


def _frame(mv: memoryview, fmt: tuple[int, bool], offset: int, adjust: int) -> list[Buffer]:
    head = _header(_field(mv.nbytes, offset, adjust), fmt)
    if offset:
        return [mv[:offset], head, mv[offset:]]
    return [head, mv]


def header(length: int, prefix: Prefix = "!I", *, offset: int = 0, adjust: int = 0) -> bytes:
    """Return the length field announcing a body of ``length`` bytes (value ``length - adjust``)."""
    if type(prefix) is str and offset == 0 and adjust == 0:
        fmt = _lookup(prefix)
        length = operator.index(length)
        if length < 0:
            raise ValueError("length must not be negative")
        return _header(length, fmt)
    fmt, offset, adjust = _encoding(prefix, offset, adjust, "header()")
    if offset:
        raise ValueError(
            f"header() writes the length field alone: with offset={offset}, send the first {offset} bytes before it "
            "or use encode()"
        )
    length = operator.index(length)
    if length < 0:
        raise ValueError("length must not be negative")
    return _header(_field(length, 0, adjust), fmt)


def encode(payload: Buffer, prefix: Prefix = "!I", *, offset: int = 0, adjust: int = 0) -> bytes:
    """Return the frame of ``payload`` as one new bytes object."""
    if type(prefix) is str and offset == 0 and adjust == 0:
        fmt = _lookup(prefix)
        mv = _view(payload)
        return _header(mv.nbytes, fmt) + mv
    fmt, offset, adjust = _encoding(prefix, offset, adjust, "encode()")
    return b"".join(_frame(_view(payload), fmt, offset, adjust))


def encode_many(payloads: Iterable[Buffer], prefix: Prefix = "!I", *, offset: int = 0, adjust: int = 0) -> bytes:
    """Return the frames of all ``payloads``, back to back, in one bytes object (one ``send``)."""
    fmt, offset, adjust = _encoding(prefix, offset, adjust, "encode_many()")
    parts: list[Buffer] = []
    for payload in payloads:
        parts.extend(_frame(_view(payload), fmt, offset, adjust))
    return b"".join(parts)


def write_frames(
    fd: int, payloads: Iterable[Buffer], prefix: Prefix = "!I", *, offset: int = 0, adjust: int = 0
) -> memoryview | None:
    """Encode ``payloads`` as frames and send them to the non-blocking socket ``fd`` in one call.

    Returns None when the kernel took everything, else a memoryview of what it did not take (all of it if
    the socket was full), for the caller to queue.  Raises OSError on failure.
    """
    data = encode_many(payloads, prefix, offset=offset, adjust=adjust)
    if not data:
        return None
    try:
        sent = os.write(fd, data)
    except BlockingIOError:
        sent = 0
    if sent == len(data):
        return None
    return memoryview(data)[sent:]


def _decoding(
    prefix: Prefix, max_frame: int | None, offset: int, adjust: int, strip: int | None
) -> tuple[str, int, bool, int, int, int, int]:
    """The spec tuple of a Framing (see fastframe._framing) from a Decoder's arguments."""
    if isinstance(prefix, Framing):
        if max_frame is not None or offset != 0 or adjust != 0 or strip is not None:
            raise _framing.conflict("Decoder()")
        return prefix._spec
    width, little = _lookup(prefix)
    offset = _framing.check_offset(offset)
    adjust = _framing.check_adjust(adjust)
    strip = _framing.check_strip(strip, prefix, width, offset)
    limit = DEFAULT_MAX_FRAME if max_frame is None else _framing.check_max_frame(max_frame)
    return prefix, width, little, offset, adjust, -1 if strip is None else strip, limit


@final
class Decoder:
    """Incremental frame parser: bytes in, complete frames out.

    Theory of operation.  Received bytes live in one read buffer, ``_buf[_start:_end]``; the room after
    ``_end`` is what :meth:`get_buffer` lends to ``recv_into``.  Complete frames are cut out of the buffer
    and ``_start`` advances past them; the buffer is compacted (the partial tail moved to the front) only
    when it runs out of room, and grown only when the partial frame itself does not fit.  The tail that is
    moved is always less than one small frame, so every byte is copied a bounded number of times and
    decoding stays linear in the bytes received, however the stream is chunked.

    A frame of :data:`LARGE_FRAME` bytes or more is not assembled in the read buffer: as soon as its header
    is known it is collected on its own, and after it the decoder reads the next header on its own (a few
    bytes), so that a stream of large frames never lands a payload in the read buffer.  The extension
    receives such a frame straight into the bytes object it returns; this twin collects it in pieces that
    grow with what has arrived (each window at most what is already there, or 64 KiB), so a header announcing
    gigabytes costs nothing until the bytes come, and joins them once at the end.

    The header of the partial frame at ``_start`` is checked against ``max_frame`` once, when it is first
    read (``_head_ok`` remembers that it was accepted), so lowering ``max_frame`` never aborts a frame
    already accepted.  Without options, one loop (:meth:`_parse_plain`) runs; options select the general one
    (:meth:`_parse_general`), which adds the offset, the adjustment and the strip.
    """

    __slots__ = (
        "_width", "_fmt", "_little", "_max_frame", "_prefix", "_offset", "_adjust", "_strip", "_opts",
        "_buf", "_start", "_end", "_head_ok",
        "_large", "_large_size", "_large_filled", "_large_skip", "_large_chunk", "_large_used",
        "_win_kind", "_win_len", "_header_only", "_error", "_closed", "_scanned", "_completed",
    )  # fmt: skip

    def __init_subclass__(cls, **kwargs: Any) -> None:
        raise TypeError("type 'fastframe._codec_py.Decoder' is not an acceptable base type")

    def __init__(
        self,
        prefix: Prefix = "!I",
        max_frame: int | None = None,
        *,
        offset: int = 0,
        adjust: int = 0,
        strip: int | None = None,
    ) -> None:
        name, width, little, offset, adjust, strip, limit = _decoding(prefix, max_frame, offset, adjust, strip)
        self._prefix = name
        self._width = width
        self._little = little
        self._fmt = _STRUCTS.get((width, little))
        self._max_frame = limit
        self._offset = offset
        self._adjust = adjust
        self._strip = strip  # -1: through the length field
        # The plain layout runs the plain loop; "strip through the field" given as a number is still plain.
        self._opts = bool(offset or adjust or (strip >= 0 and not (width and strip == width)))
        self._buf = bytearray(_INITIAL_BUFFER)
        self._start = 0
        self._end = 0
        self._head_ok = False
        self._large: list[Buffer] | None = None  # the pieces of a large frame, or None
        self._large_size = 0  # its size as returned
        self._large_filled = 0  # bytes of it collected
        self._large_skip = 0  # its wire bytes not returned (the stripped header), for `pending`
        self._large_chunk: bytearray | None = None  # the piece get_buffer() lends from, being filled
        self._large_used = 0  # bytes of it filled
        self._win_kind = 0  # what the last get_buffer() lent: 0 nothing, 1 the read buffer, 2 a large frame
        self._win_len = 0
        self._header_only = False
        self._scanned = 0
        self._completed = 0
        self._error: BaseException | None = None
        self._closed = False

    @property
    def prefix(self) -> str:
        return self._prefix

    @property
    def offset(self) -> int:
        return self._offset

    @property
    def adjust(self) -> int:
        return self._adjust

    @property
    def strip(self) -> int | None:
        return None if self._strip < 0 else self._strip

    @property
    def framing(self) -> Framing:
        """This decoder's layout (with its current ``max_frame``) as a Framing."""
        return Framing(
            self._prefix, offset=self._offset, adjust=self._adjust, strip=self.strip, max_frame=self._max_frame
        )

    @property
    def max_frame(self) -> int:
        """The largest body accepted; may be changed (it applies to headers not yet accepted)."""
        return self._max_frame

    @max_frame.setter
    def max_frame(self, value: int) -> None:
        self._max_frame = _framing.check_max_frame(value)

    @property
    def pending(self) -> int:
        """Bytes received that are not yet part of a returned frame (headers included)."""
        n = self._end - self._start
        if self._large is not None:
            n += self._large_skip + self._large_filled
        return n

    @property
    def needed(self) -> int:
        """How many bytes may be read without reading past the frame in progress (always at least 1).

        The rest of the frame once its header is known; before that, the rest of the header (one byte at a
        time for ``"varint"``).  For readers that must leave what follows a frame in the socket."""
        if self._large is not None:
            return self._large_size - self._large_filled
        live = self._end - self._start
        total = self._measure(self._buf, self._start, live)
        if total >= 0:
            return total - live
        return self._head_room(live)

    def _head_room(self, live: int) -> int:
        """Bytes that may complete a header of which ``live`` bytes are here (one at a time for varint)."""
        if self._width:
            return self._offset + self._width - live
        return self._offset + 1 - live if live < self._offset else 1

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def completed(self) -> int:
        """Frames completed since the decoder was made (a progress counter, e.g. for frame deadlines)."""
        return self._completed

    # -- header parsing -------------------------------------------------------------------------------

    def _parse_header(self, buf: Buffer, pos: int, avail: int) -> tuple[int, int]:
        """(value, field length) of the length field at buf[pos:], or (-1, 0) if it is incomplete."""
        width = self._width
        if width:
            if avail < width:
                return -1, 0
            if width == 3:
                a, b = self._fmt.unpack_from(buf, pos)  # type: ignore[union-attr]
                return (a | b << 16 if self._little else a << 8 | b), 3
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

    def _measure(self, buf: Buffer, pos: int, avail: int) -> int:
        """The wire size of the frame at buf[pos:], or -1 while its header is incomplete (no limits checked:
        a header in the buffer was checked when it was first read)."""
        offset = self._offset
        if avail <= offset:
            return -1
        value, hlen = self._parse_header(buf, pos + offset, avail - offset)
        if value < 0:
            return -1
        return offset + hlen + value + self._adjust

    def _body(self, value: int, check: bool) -> int:
        """The body size announced by a length field of ``value``; FrameError if negative, FrameTooLarge if
        over ``max_frame`` (when ``check``: a header accepted earlier is not checked again)."""
        body = value + self._adjust
        if body < 0:
            raise FrameError(f"the length field ({value}) plus adjust ({self._adjust}) is negative")
        if body > self._max_frame and (check or body > sys.maxsize):
            raise FrameTooLarge(body, self._max_frame)
        return body

    def _parse(self, buf: Buffer, pos: int, end: int, out: list[bytes], wire: bool = False) -> int:
        """Cut every complete frame out of buf[pos:end]; return the new position.

        A large frame whose body is incomplete takes the rest of the bytes.  With ``wire``, frames are only
        checked and skipped (``_scanned`` follows the progress, for errors), and every frame, however large,
        is assembled in the read buffer."""
        if self._opts:
            return self._parse_general(buf, pos, end, out, wire)
        return self._parse_plain(buf, pos, end, out, wire)

    def _parse_plain(self, buf: Buffer, pos: int, end: int, out: list[bytes], wire: bool) -> int:
        max_frame = self._max_frame
        first = pos
        held = False
        while pos < end:
            avail = end - pos
            length, hlen = self._parse_header(buf, pos, avail)
            if length < 0:
                break
            if length > max_frame and (pos != first or not self._head_ok):
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
                self._begin_large(buf, pos + hlen, end, length, hlen)
                return end
            held = True
            break
        self._head_ok = held
        return pos

    def _parse_general(self, buf: Buffer, pos: int, end: int, out: list[bytes], wire: bool) -> int:
        offset = self._offset
        adjust = self._adjust
        strip = self._strip
        max_frame = self._max_frame
        width = self._width
        # Fixed widths unpack in one call (24 bits as 16 + 8); varint goes through _parse_header().
        unpack = self._fmt.unpack_from if width else None  # type: ignore[union-attr]
        little = self._little
        first = pos
        held = False
        while pos < end:
            avail = end - pos
            if unpack is not None:
                if avail < offset + width:
                    break
                if width == 3:
                    a, b = unpack(buf, pos + offset)
                    value = a | b << 16 if little else a << 8 | b
                else:
                    value = unpack(buf, pos + offset)[0]
                hlen = width
            else:
                if avail <= offset:
                    break
                value, hlen = self._parse_header(buf, pos + offset, avail - offset)
                if value < 0:
                    break
            head = offset + hlen
            body = value + adjust
            if body < 0 or body > max_frame:
                body = self._body(value, pos != first or not self._head_ok)
            total = head + body
            cut = head if strip < 0 else strip
            size = total - cut
            if size < LARGE_FRAME:
                self._header_only = False
            if total <= avail:
                if not wire:
                    out.append(bytes(buf[pos + cut : pos + total]))
                pos += total
                self._scanned = pos
                self._completed += 1
                continue
            if size >= LARGE_FRAME and not wire:
                self._begin_large(buf, pos + cut, end, size, cut)
                return end
            held = True
            break
        self._head_ok = held
        return pos

    def _begin_large(self, buf: Buffer, pos: int, end: int, size: int, skip: int) -> None:
        """Start collecting a large frame of ``size`` bytes from buf[pos:end] (its first bytes)."""
        self._large = [bytes(buf[pos:end])] if end > pos else []
        self._large_size = size
        self._large_filled = end - pos
        self._large_skip = skip
        self._head_ok = False

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

    def _seal(self) -> list[Buffer]:
        """The large frame's pieces, the one being filled included (as far as it is filled)."""
        parts = self._large
        chunk = self._large_chunk
        if chunk is not None:
            parts.append(chunk if self._large_used == len(chunk) else memoryview(chunk)[: self._large_used])  # type: ignore
            self._large_chunk = None
        return parts  # type: ignore[return-value]

    def _finish_large(self, out: list[bytes]) -> None:
        out.append(b"".join(self._seal()))
        self._completed += 1
        self._large = None
        self._header_only = True

    def _parse_buffer(self, out: list[bytes]) -> None:
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

    def _fail(self, exc: BaseException, out: list[bytes]) -> None:
        """Lock the decoder after any failure; a FrameError carries the frames completed before it."""
        if isinstance(exc, FrameError):
            exc.frames = out
        self._error = exc

    def feed(self, data: Buffer) -> list[bytes]:
        """Take any bytes-like object; return every frame it completes, in order."""
        self._check()
        self._win_kind = 0
        self._win_len = 0
        mv = _view(data)
        out: list[bytes] = []
        try:
            self._consume(mv, out)
        except BaseException as exc:
            self._fail(exc, out)
            raise
        return out

    def _consume(self, mv: memoryview, out: list[bytes]) -> None:
        pos = 0
        n = len(mv)
        while pos < n:
            large = self._large
            if large is not None:
                k = min(n - pos, self._large_size - self._large_filled)
                self._seal().append(bytes(mv[pos : pos + k]))
                self._large_filled += k
                pos += k
                if self._large_filled == self._large_size:
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
            total = self._measure(self._buf, self._start, live)
            need = (self._offset + (self._width or 10) if total < 0 else total) - live
            take = min(need, n - pos)
            self._append(mv[pos : pos + take])
            pos += take
            self._parse_buffer(out)

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Lend writable memory for the next ``recv_into``; report what was written with buffer_updated()."""
        self._check()
        sizehint = operator.index(sizehint)
        large = self._large
        if large is not None and self._large_size - self._large_filled > _TAIL:
            # Pieces no larger than what has arrived (or 64 KiB), each filled before the next is made:
            # memory follows the bytes, not the header.  The last _TAIL bytes come through the read buffer
            # with the next header, as in the extension.
            chunk = self._large_chunk
            if chunk is None or self._large_used == len(chunk):
                self._seal()
                filled = self._large_filled
                chunk = self._large_chunk = bytearray(min(self._large_size - filled - _TAIL, max(filled, LARGE_FRAME)))
                self._large_used = 0
            self._win_kind = 2
            self._win_len = len(chunk) - self._large_used
            return memoryview(chunk)[self._large_used :]
        if large is not None:
            want = self._large_size - self._large_filled + self._head_room(0)
            self._reserve(want)
            self._win_len = want
        elif self._header_only:
            # After a large frame: read the next header alone, so a large payload never lands here.
            want = self._head_room(self._end - self._start)
            self._reserve(want)
            self._win_len = want
        else:
            want = _MIN_READ if sizehint <= 0 else min(max(sizehint, _MIN_READ), _MAX_READ)
            self._reserve(want)
            self._win_len = len(self._buf) - self._end
        self._win_kind = 1
        return memoryview(self._buf)[self._end : self._end + self._win_len]

    def buffer_updated(self, nbytes: int) -> list[bytes]:
        """Account for ``nbytes`` written at the start of the last get_buffer(); return completed frames."""
        self._check()
        nbytes = operator.index(nbytes)
        if nbytes < 0 or nbytes > self._win_len:
            raise ValueError(f"buffer_updated({nbytes}) does not match the {self._win_len} bytes lent by get_buffer()")
        kind = self._win_kind
        self._win_kind = 0
        self._win_len = 0
        out: list[bytes] = []
        if not nbytes:
            return out
        try:
            if kind == 2:
                self._large_used += nbytes
                self._large_filled += nbytes
                if self._large_filled == self._large_size:
                    self._finish_large(out)
            else:
                self._end += nbytes
                if self._large is not None:
                    self._take_tail(out)
                self._parse_buffer(out)
        except BaseException as exc:
            self._fail(exc, out)
            raise
        return out

    def _take_tail(self, out: list[bytes]) -> None:
        """Move the large frame's bytes from the read buffer (its tail window lies there) into its pieces."""
        k = min(self._large_size - self._large_filled, self._end - self._start)
        self._seal().append(bytes(self._buf[self._start : self._start + k]))
        self._large_filled += k
        self._start += k
        if self._large_filled == self._large_size:
            self._finish_large(out)

    def read_from(self, fd: int) -> list[bytes] | None:
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
                out: list[bytes] = []
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

        The result is one read-only memoryview of whole frames, headers included (whatever ``strip`` says),
        back to back (empty if none is complete yet): every header has been checked against the layout and
        ``max_frame``, and a partial frame stays buffered.  For relays and echoes, which pass frames on
        unchanged without making an object per frame.  On a FrameError the payloads of the whole frames
        before it are in its ``frames``.  A decoder may switch between feed() and feed_wire() only between frames.
        """
        self._check()
        self._wire_mode()
        self._win_kind = 0
        self._win_len = 0
        self._append(_view(data))
        return self._take_wire()

    def read_wire_from(self, fd: int) -> memoryview | None:
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

    def relay(self, fd: int, out_fd: int = -1) -> bytes | None:
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
                expected: int | None = self._large_skip + self._large_size
            else:
                total = self._measure(self._buf, self._start, received)
                expected = None if total < 0 else total
            exc = IncompleteFrame(received, expected)
            self._error = exc
            raise exc

    def __reduce_ex__(self, protocol: object) -> Any:
        # A decoder is a position inside one byte stream: a copy would share or fork that position.
        raise TypeError("Decoder objects cannot be copied or pickled")

    def __repr__(self) -> str:
        options = "".join(
            f" {name}={value}" for name, value in (("offset", self._offset), ("adjust", self._adjust)) if value
        )
        if self._strip >= 0:
            options += f" strip={self._strip}"
        return f"<Decoder prefix={self._prefix!r}{options} max_frame={self._max_frame} pending={self.pending}>"
