# cython: language_level=3
"""C implementation of the fastframe codec, compiled as ``fastframe._codec``.

The wire format, the options, the limits and the behaviour are specified by the pure-Python twin,
``fastframe/_codec_py.py``; this module must match it name for name and byte for byte.  The option checks
are the Python ones in ``fastframe/_framing.py``, called off the default fast paths.
"""

cimport cython
from cpython.buffer cimport PyBUF_FORMAT, PyBUF_ND, PyBUF_SIMPLE, PyBUF_STRIDES, PyBUF_WRITABLE
from cpython.buffer cimport PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.list cimport PyList_Append
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.stdint cimport uint64_t
from libc.errno cimport EAGAIN, EINTR, errno
from libc.string cimport memcpy, memmove, memset

from operator import index as _index
from os import strerror

from fastframe._framing import DEFAULT_MAX_FRAME, Framing
from fastframe._framing import check_adjust as _check_adjust
from fastframe._framing import check_max_frame as _check_max_frame
from fastframe._framing import check_offset as _check_offset
from fastframe._framing import check_strip as _check_strip
from fastframe._framing import conflict as _conflict
from fastframe.exceptions import FrameError, FrameTooLarge, IncompleteFrame

cdef extern from "hton.h":
    uint64_t ff_load(const char *p, int width, int little) nogil
    uint64_t ff_load_be32(const char *p) nogil
    uint64_t ff_load24(const char *p, int little) nogil
    void ff_store(char *p, uint64_t v, int width, int little) nogil
    int ff_varint_len(uint64_t v) nogil
    int ff_varint_store(char *p, uint64_t v) nogil

cdef extern from "<errno.h>":
    int EWOULDBLOCK

cdef extern from "<sys/socket.h>" nogil:
    ssize_t recv(int fd, void *buf, size_t n, int flags)
    ssize_t send(int fd, const void *buf, size_t n, int flags)
    int MSG_DONTWAIT
    int MSG_NOSIGNAL

cdef extern from "Python.h":
    int PyErr_CheckSignals() except -1

    object PyMemoryView_FromObject(object obj)
    const Py_ssize_t PY_SSIZE_T_MAX

__all__ = [
    "DEFAULT_MAX_FRAME", "LARGE_FRAME", "PREFIXES", "Decoder", "Framing", "encode", "encode_many", "header",
    "write_frames",
]

LARGE_FRAME = 64 * 1024

cdef enum:
    _LARGE = 64 * 1024           # frames this large get their own object (LARGE_FRAME)
    _TAIL = 1024                 # ... except their last bytes, which come through the read buffer (see _lend)
    _LARGE_WINDOW = 256 * 1024   # a large frame's window is at most this, or what has already arrived
    _INITIAL_BUFFER = 64 * 1024  # first size of a decoder's read buffer
    _MIN_READ = 16 * 1024        # get_buffer() offers at least this much room when it has no better idea
    _MAX_READ = 256 * 1024       # ... and never grows the buffer beyond what a sizehint this large asks for
    _SHRINK_ABOVE = 1024 * 1024  # an empty read buffer bigger than this goes back to the first size
    _WIN_NONE = 0
    _WIN_BUFFER = 1
    _WIN_LARGE = 2

# prefix -> width * 2 + little-endian; width 0 is varint (the same table as fastframe._framing.FORMATS)
cdef dict _FORMATS = {
    "!B": 2, ">B": 2, "<B": 3,
    "!H": 4, ">H": 4, "<H": 5,
    "!3": 6, ">3": 6, "<3": 7,
    "!I": 8, ">I": 8, "<I": 9,
    "!Q": 16, ">Q": 16, "<Q": 17,
    "varint": 0,
}
PREFIXES = tuple(_FORMATS)

cdef uint64_t _MAX_VARINT = 0xFFFFFFFFFFFFFFFF
# The default of the keyword options: identity with it selects the default fast paths.  (A 0 computed or
# passed by the caller is the same cached small int; anything else, False included, takes the checked path.)
cdef object _ZERO = 0


cdef int _lookup(object prefix) except -1:
    cdef object code
    try:
        code = _FORMATS.get(prefix)
    except TypeError:
        code = None
    if code is None:
        raise ValueError(f"unknown prefix {prefix!r}; expected one of {', '.join(PREFIXES)}")
    return code


cdef inline uint64_t _max_length(int width) noexcept:
    if width == 8 or width == 0:
        return _MAX_VARINT
    return ((<uint64_t>1) << (8 * width)) - 1


cdef inline Py_ssize_t _header_len(uint64_t n, int width) noexcept:
    return width if width else ff_varint_len(n)


cdef inline Py_ssize_t _store_header(char *out, uint64_t n, int width, int little) noexcept:
    if width:
        ff_store(out, n, width, little)
        return width
    return ff_varint_store(out, n)


cdef int _check_length(uint64_t n, int width) except -1:
    cdef uint64_t limit = _max_length(width)
    if n > limit:
        raise FrameTooLarge(n, limit)
    return 0


# -- encoding with options --------------------------------------------------------------------------------
# The default layout keeps its own code below; these run when a Framing or a keyword option is given.

cdef struct _Enc:
    int width
    int little
    Py_ssize_t offset   # leading payload bytes written before the length field
    long long adjust    # the field holds len(body) - adjust


cdef int _encoding(_Enc *enc, object prefix, object offset, object adjust, str where) except -1:
    cdef tuple spec
    cdef int code
    if type(prefix) is Framing:
        if offset != 0 or adjust != 0:
            raise _conflict(where)
        spec = (<object>prefix)._spec
        enc.width = spec[1]
        enc.little = spec[2]
        enc.offset = spec[3]
        enc.adjust = spec[4]
        return 0
    code = _lookup(prefix)
    enc.width = code >> 1
    enc.little = code & 1
    enc.offset = _check_offset(offset)
    enc.adjust = _check_adjust(adjust)
    return 0


cdef Py_ssize_t _framed_size(Py_ssize_t n, _Enc *enc, uint64_t *value) except -1:
    """Check a payload of ``n`` bytes against the layout; store its length field, return its frame's size."""
    cdef long long v
    if n < enc.offset:
        raise FrameError(f"a payload of {n} bytes is shorter than offset={enc.offset}")
    v = <long long>(n - enc.offset) - enc.adjust
    if v < 0:
        raise FrameError(
            f"a body of {n - enc.offset} bytes cannot carry adjust={enc.adjust}: the length field would be {v}"
        )
    _check_length(<uint64_t>v, enc.width)
    value[0] = <uint64_t>v
    return n + _header_len(<uint64_t>v, enc.width)


cdef inline Py_ssize_t _write_framed(char *dst, const char *src, Py_ssize_t n, _Enc *enc, uint64_t value) noexcept:
    """Write the frame of src[0:n] (checked by _framed_size) at dst; return its size."""
    cdef Py_ssize_t off = enc.offset
    cdef Py_ssize_t hlen
    memcpy(dst, src, off)
    hlen = _store_header(dst + off, value, enc.width, enc.little)
    memcpy(dst + off + hlen, src + off, n - off)
    return n + hlen


def header(length, prefix="!I", *, offset=0, adjust=0):
    """Return the length field announcing a body of ``length`` bytes."""
    cdef int code, width
    cdef char buf[10]
    cdef Py_ssize_t hlen
    cdef _Enc enc
    if type(prefix) is str and offset is _ZERO and adjust is _ZERO:
        code = _lookup(prefix)
        width = code >> 1
        length = _index(length)
        if length < 0:
            raise ValueError("length must not be negative")
        if length > _max_length(width):
            raise FrameTooLarge(length, _max_length(width))
        hlen = _store_header(buf, <uint64_t>length, width, code & 1)
        return PyBytes_FromStringAndSize(buf, hlen)
    _encoding(&enc, prefix, offset, adjust, "header()")
    if enc.offset:
        raise ValueError(
            f"header() writes the length field alone: with offset={enc.offset}, send the first {enc.offset} bytes "
            "before it or use encode()"
        )
    length = _index(length)
    if length < 0:
        raise ValueError("length must not be negative")
    value = length - enc.adjust
    if value < 0:
        raise FrameError(f"a body of {length} bytes cannot carry adjust={enc.adjust}: the length field would be {value}")
    if value > _max_length(enc.width):
        raise FrameTooLarge(value, _max_length(enc.width))
    hlen = _store_header(buf, <uint64_t>value, enc.width, enc.little)
    return PyBytes_FromStringAndSize(buf, hlen)


def encode(payload, prefix="!I", *, offset=0, adjust=0):
    """Return the frame of ``payload`` as one new bytes object."""
    cdef int code, width
    cdef Py_buffer view
    cdef Py_ssize_t hlen
    cdef bytes out
    cdef _Enc enc
    cdef uint64_t value
    if type(prefix) is str and offset is _ZERO and adjust is _ZERO:
        code = _lookup(prefix)
        width = code >> 1
        PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
        try:
            _check_length(<uint64_t>view.len, width)
            hlen = _header_len(<uint64_t>view.len, width)
            out = PyBytes_FromStringAndSize(NULL, hlen + view.len)
            _store_header(PyBytes_AS_STRING(out), <uint64_t>view.len, width, code & 1)
            memcpy(PyBytes_AS_STRING(out) + hlen, view.buf, view.len)
        finally:
            PyBuffer_Release(&view)
        return out
    _encoding(&enc, prefix, offset, adjust, "encode()")
    PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
    try:
        out = PyBytes_FromStringAndSize(NULL, _framed_size(view.len, &enc, &value))
        _write_framed(PyBytes_AS_STRING(out), <const char *>view.buf, view.len, &enc, value)
    finally:
        PyBuffer_Release(&view)
    return out


def encode_many(payloads, prefix="!I", *, offset=0, adjust=0):
    """Return the frames of all ``payloads``, back to back, in one bytes object (one ``send``)."""
    cdef int code, width, little
    cdef list items
    cdef Py_ssize_t count
    cdef Py_ssize_t i, acquired = 0, total = 0, pos = 0
    cdef Py_buffer *views
    cdef bytes out
    cdef char *dst
    if not (type(prefix) is str and offset is _ZERO and adjust is _ZERO):
        return _encode_many_framed(payloads, prefix, offset, adjust)
    code = _lookup(prefix)
    width = code >> 1
    little = code & 1
    items = payloads if type(payloads) is list else list(payloads)
    count = len(items)
    if count == 0:
        return b""
    views = <Py_buffer *>PyMem_Malloc(count * sizeof(Py_buffer))
    if views == NULL:
        raise MemoryError()
    try:
        for i in range(count):
            PyObject_GetBuffer(items[i], &views[i], PyBUF_SIMPLE)
            acquired += 1
            _check_length(<uint64_t>views[i].len, width)
            total += _header_len(<uint64_t>views[i].len, width) + views[i].len
        out = PyBytes_FromStringAndSize(NULL, total)
        dst = PyBytes_AS_STRING(out)
        for i in range(count):
            pos += _store_header(dst + pos, <uint64_t>views[i].len, width, little)
            memcpy(dst + pos, views[i].buf, views[i].len)
            pos += views[i].len
    finally:
        for i in range(acquired):
            PyBuffer_Release(&views[i])
        PyMem_Free(views)
    return out


cdef bytes _encode_many_framed(object payloads, object prefix, object offset, object adjust):
    """encode_many() with a Framing or keyword options."""
    cdef _Enc enc
    cdef list items
    cdef Py_ssize_t count
    cdef Py_ssize_t i, acquired = 0, total = 0, pos = 0
    cdef Py_buffer *views
    cdef uint64_t *values
    cdef bytes out
    cdef char *dst
    _encoding(&enc, prefix, offset, adjust, "encode_many()")
    items = payloads if type(payloads) is list else list(payloads)
    count = len(items)
    if count == 0:
        return b""
    # One block for the views and the length field of every payload.
    views = <Py_buffer *>PyMem_Malloc(count * (sizeof(Py_buffer) + sizeof(uint64_t)))
    if views == NULL:
        raise MemoryError()
    values = <uint64_t *>(views + count)
    try:
        for i in range(count):
            PyObject_GetBuffer(items[i], &views[i], PyBUF_SIMPLE)
            acquired += 1
            total += _framed_size(views[i].len, &enc, &values[i])
        out = PyBytes_FromStringAndSize(NULL, total)
        dst = PyBytes_AS_STRING(out)
        for i in range(count):
            pos += _write_framed(dst + pos, <const char *>views[i].buf, views[i].len, &enc, values[i])
    finally:
        for i in range(acquired):
            PyBuffer_Release(&views[i])
        PyMem_Free(views)
    return out


cdef char *_scratch = NULL      # write_frames() encodes small batches here instead of in a new object
cdef Py_ssize_t _SCRATCH = 64 * 1024
# Set while a write_frames() call uses _scratch.  Encoding can run Python code (a payload's buffer export,
# a signal handler on EINTR), and with it another thread or a re-entrant call; that call then allocates
# its own object instead of overwriting bytes not yet sent.  (Every reader holds the GIL, so a plain flag
# is enough.)
cdef bint _scratch_busy = False


def write_frames(int fd, payloads, prefix="!I", *, offset=0, adjust=0):
    """Encode ``payloads`` as frames and ``send`` them to socket ``fd`` in one call, never blocking.

    Returns None when the kernel took everything, else a memoryview of what it did not take (all of it if
    the socket was full), for the caller to queue.  Raises OSError on failure.  The same as
    ``sock.send(encode_many(payloads, prefix))`` plus the bookkeeping, without the intermediate objects.
    """
    global _scratch, _scratch_busy
    cdef _Enc enc
    cdef list items
    cdef Py_ssize_t count
    cdef Py_ssize_t i, total = 0, pos = 0, n
    cdef object item
    cdef bytes out = None
    cdef char *dst
    cdef Py_buffer view
    cdef int err
    cdef bint plain = type(prefix) is str and offset is _ZERO and adjust is _ZERO
    cdef bint mine = False
    cdef uint64_t value
    cdef int code
    if plain:
        code = _lookup(prefix)
        enc.width = code >> 1
        enc.little = code & 1
        enc.offset = 0
        enc.adjust = 0
    else:
        _encoding(&enc, prefix, offset, adjust, "write_frames()")
    items = payloads if type(payloads) is list else list(payloads)
    count = len(items)
    if count == 0:
        return None
    for i in range(count):
        item = items[i]
        if PyBytes_CheckExact(item):
            n = PyBytes_GET_SIZE(item)
        else:
            PyObject_GetBuffer(item, &view, PyBUF_SIMPLE)
            n = view.len
            PyBuffer_Release(&view)
        if plain:
            _check_length(<uint64_t>n, enc.width)
            total += _header_len(<uint64_t>n, enc.width) + n
        else:
            total += _framed_size(n, &enc, &value)
    if total <= _SCRATCH and not _scratch_busy:
        if _scratch == NULL:
            _scratch = <char *>PyMem_Malloc(_SCRATCH)
            if _scratch == NULL:
                raise MemoryError()
        dst = _scratch
        _scratch_busy = mine = True
    else:
        out = PyBytes_FromStringAndSize(NULL, total)
        dst = PyBytes_AS_STRING(out)
    try:
        for i in range(count):
            item = items[i]
            if plain and PyBytes_CheckExact(item):
                n = PyBytes_GET_SIZE(item)
                pos += _store_header(dst + pos, <uint64_t>n, enc.width, enc.little)
                memcpy(dst + pos, PyBytes_AS_STRING(item), n)
                pos += n
                continue
            PyObject_GetBuffer(item, &view, PyBUF_SIMPLE)
            try:
                n = view.len
                if pos + _framed_size(n, &enc, &value) > total:
                    raise RuntimeError("a payload changed size while it was being encoded")
                pos += _write_framed(dst + pos, <const char *>view.buf, n, &enc, value)
            finally:
                PyBuffer_Release(&view)
        while True:
            n = send(fd, dst, <size_t>total, MSG_DONTWAIT | MSG_NOSIGNAL)
            if n >= 0:
                break
            err = errno
            if err == EAGAIN or err == EWOULDBLOCK:
                n = 0
                break
            if err != EINTR:
                raise OSError(err, strerror(err))
            PyErr_CheckSignals()
        if n == total:
            return None
        if out is None:
            out = PyBytes_FromStringAndSize(dst + n, total - n)
            return PyMemoryView_FromObject(out)
        return PyMemoryView_FromObject(out)[n:]
    finally:
        if mine:
            _scratch_busy = False


cdef inline void _fill_view(Py_buffer *view, object owner, char *buf, Py_ssize_t length, bint readonly,
                            int flags) noexcept:
    """A one-dimensional byte view, as PyBuffer_FillInfo makes (which would leak the None Cython puts in obj)."""
    view.buf = buf
    view.obj = owner
    view.len = length
    view.readonly = readonly
    view.itemsize = 1
    view.format = NULL
    if flags & PyBUF_FORMAT:
        view.format = "B"
    view.ndim = 1
    view.shape = NULL
    if (flags & PyBUF_ND) == PyBUF_ND:
        view.shape = &view.len
    view.strides = NULL
    if (flags & PyBUF_STRIDES) == PyBUF_STRIDES:
        view.strides = &view.itemsize
    view.suboffsets = NULL
    view.internal = NULL


@cython.final
@cython.auto_pickle(False)
cdef class _Memory:
    """A block of memory lent to ``recv_into`` through memoryviews.

    A view keeps its block alive, so the decoder may replace the block while a caller still holds a view:
    it then moves its data to a new block instead of resizing or compacting this one under the view.
    """
    cdef char *data            # first byte of the block
    cdef Py_ssize_t size       # bytes in the block
    cdef object owner          # the bytes object whose storage is `data`, or None when malloc'd here
    cdef Py_ssize_t win_off    # the next view exposes data[win_off : win_off + win_len]
    cdef Py_ssize_t win_len
    cdef Py_ssize_t exports    # views alive
    cdef Py_ssize_t pinned     # ... of which spans of whole frames (_Span): their bytes must stay as they are
    cdef Py_ssize_t inited     # data[0:inited] has been written (or zeroed): only that is ever lent

    def __dealloc__(self):
        if self.owner is None and self.data != NULL:
            PyMem_Free(self.data)
            self.data = NULL

    def __getbuffer__(self, Py_buffer *view, int flags):
        _fill_view(view, self, self.data + self.win_off, self.win_len, False, flags)
        self.exports += 1

    def __releasebuffer__(self, Py_buffer *view):
        self.exports -= 1


cdef _Memory _new_block(Py_ssize_t size):
    cdef _Memory mem = _Memory.__new__(_Memory)
    mem.data = <char *>PyMem_Malloc(size)
    if mem.data == NULL:
        raise MemoryError()
    mem.size = size
    mem.owner = None
    mem.inited = 0
    return mem


cdef _Memory _borrow_bytes(bytes obj):
    cdef _Memory mem = _Memory.__new__(_Memory)
    mem.owner = obj
    mem.data = PyBytes_AS_STRING(obj)
    mem.size = PyBytes_GET_SIZE(obj)
    mem.inited = 0  # (the caller says how much of it is written)
    return mem


@cython.final
@cython.auto_pickle(False)
cdef class _Span:
    """Read-only bytes of whole frames inside a decoder's block (what read_wire_from returns a view of).

    While a view of it is alive the block is pinned: the decoder reads into a new block rather than
    overwrite bytes the caller may still be sending."""
    cdef _Memory block
    cdef Py_ssize_t off
    cdef Py_ssize_t length

    def __getbuffer__(self, Py_buffer *view, int flags):
        if flags & PyBUF_WRITABLE:
            raise BufferError("frames returned by read_wire_from() are read-only")
        _fill_view(view, self, self.block.data + self.off, self.length, True, flags)
        self.block.exports += 1
        self.block.pinned += 1

    def __releasebuffer__(self, Py_buffer *view):
        self.block.exports -= 1
        self.block.pinned -= 1


cdef char *_relay_area = NULL       # read_from() and relay() read here when their decoder holds nothing
cdef Py_ssize_t _RELAY_AREA = 256 * 1024
# Set while a read_from()/relay() call works in _relay_area.  Parsing can run Python code (a garbage
# collection and its callbacks, an exception's __init__, a signal handler), and with it another thread or
# a re-entrant call on another decoder; that call then reads into its own decoder's block instead of
# overwriting bytes not yet cut into frames or sent.  Every caller holds the GIL, so a plain flag is enough
# and the single-threaded path pays one test and two stores.
cdef bint _area_busy = False


cdef char *_shared_area() except NULL:
    global _relay_area
    if _relay_area == NULL:
        _relay_area = <char *>PyMem_Malloc(_RELAY_AREA)
        if _relay_area == NULL:
            raise MemoryError()
    return _relay_area


cdef ssize_t _recv_into(int fd, char *buf, Py_ssize_t size) except -1:
    """One non-blocking recv (OSError, BlockingIOError included, on failure)."""
    cdef ssize_t n
    cdef int err
    while True:
        n = recv(fd, buf, <size_t>size, MSG_DONTWAIT)
        if n >= 0:
            return n
        err = errno
        if err != EINTR:
            raise OSError(err, strerror(err))
        PyErr_CheckSignals()


cdef object _send_all(int fd, const char *p, Py_ssize_t length):
    """Send what the socket takes without blocking; return the rest as bytes (b"" when it took it all)."""
    cdef Py_ssize_t sent = 0
    cdef ssize_t n
    cdef int err
    while sent < length:
        n = send(fd, p + sent, <size_t>(length - sent), MSG_DONTWAIT | MSG_NOSIGNAL)
        if n >= 0:
            sent += n
            continue
        err = errno
        if err == EAGAIN or err == EWOULDBLOCK:
            break
        if err != EINTR:
            raise OSError(err, strerror(err))
        PyErr_CheckSignals()
    return b"" if sent == length else PyBytes_FromStringAndSize(p + sent, length - sent)


@cython.final
@cython.auto_pickle(False)
cdef class Decoder:
    """Incremental frame parser: bytes in, complete frames out.

    See ``fastframe._codec_py.Decoder`` for the theory of operation; the state below mirrors it.  Two things
    differ: a large frame is received straight into the bytes object that is returned (each window zeroed
    as it is lent, so untouched pages cost nothing until the kernel writes them), and its last bytes
    (at most _TAIL) come through the read buffer together with the next header (see _lend()).
    """
    cdef object _prefix
    cdef Py_ssize_t _max_frame
    cdef int _width                # length field bytes; 0 for varint
    cdef int _little               # little-endian length field
    cdef Py_ssize_t _offset        # opaque bytes before the length field
    cdef long long _adjust         # body bytes = field value + _adjust
    cdef Py_ssize_t _strip         # bytes cut from the front of each frame; -1: through the length field
    cdef bint _opts                # an option is set: the general parser runs instead of the plain one
    cdef _Memory _buf              # the read buffer; unread bytes are _buf.data[_start:_end]
    cdef Py_ssize_t _start
    cdef Py_ssize_t _end
    cdef bint _head_ok             # the header of the partial frame at _start was accepted (max_frame applied)
    cdef bytes _large              # the object a large frame is received into, or None
    cdef _Memory _large_mem        # lends the unfilled part of _large
    cdef Py_ssize_t _large_size    # its length
    cdef Py_ssize_t _large_filled  # bytes already in it
    cdef Py_ssize_t _large_skip    # its wire bytes not in it (the stripped header), for `pending`
    cdef int _win_kind             # what the last get_buffer() lent (_WIN_*)
    cdef Py_ssize_t _win_len       # ... and how many bytes
    cdef bint _header_only         # read the next header alone (a large frame just ended)
    cdef Py_ssize_t _scanned       # wire mode: bytes of whole frames checked so far in this parse
    cdef unsigned long long _completed  # frames completed since creation
    cdef object _error             # the first error; once set, input is refused
    cdef bint _closed

    def __cinit__(self, *args, **kwargs):
        # A usable default state even if __init__ never runs (Decoder.__new__(Decoder)).
        self._prefix = "!I"
        self._max_frame = DEFAULT_MAX_FRAME
        self._width = 4
        self._strip = -1
        self._buf = _new_block(_INITIAL_BUFFER)
        self._large = None
        self._error = None

    def __init__(self, prefix="!I", max_frame=None, *, offset=0, adjust=0, strip=None):
        cdef int code
        cdef tuple spec
        if type(prefix) is str and offset is _ZERO and adjust is _ZERO and strip is None:
            code = _lookup(prefix)
            self._prefix = prefix
            self._width = code >> 1
            self._little = code & 1
            self._max_frame = DEFAULT_MAX_FRAME if max_frame is None else _check_max_frame(max_frame)
            return
        if type(prefix) is Framing:
            if max_frame is not None or offset != 0 or adjust != 0 or strip is not None:
                raise _conflict("Decoder()")
            spec = (<object>prefix)._spec
        else:
            code = _lookup(prefix)
            offset = _check_offset(offset)
            adjust = _check_adjust(adjust)
            strip = _check_strip(strip, prefix, code >> 1, offset)
            spec = (prefix, code >> 1, code & 1, offset, adjust, -1 if strip is None else strip,
                    DEFAULT_MAX_FRAME if max_frame is None else _check_max_frame(max_frame))
        self._prefix = spec[0]
        self._width = spec[1]
        self._little = spec[2]
        self._offset = spec[3]
        self._adjust = spec[4]
        self._strip = spec[5]
        self._max_frame = spec[6]
        # "Strip through the length field" given as a number is still the plain layout.
        self._opts = self._offset != 0 or self._adjust != 0 or (
            self._strip >= 0 and not (self._width and self._strip == self._width))

    @property
    def prefix(self):
        return self._prefix

    @property
    def offset(self):
        return self._offset

    @property
    def adjust(self):
        return self._adjust

    @property
    def strip(self):
        return None if self._strip < 0 else self._strip

    @property
    def framing(self):
        """This decoder's layout (with its current ``max_frame``) as a Framing."""
        return Framing(self._prefix, offset=self._offset, adjust=self._adjust, strip=self.strip,
                       max_frame=self._max_frame)

    @property
    def max_frame(self):
        """The largest body accepted; may be changed (it applies to headers not yet accepted)."""
        return self._max_frame

    @max_frame.setter
    def max_frame(self, value):
        self._max_frame = _check_max_frame(value)

    @property
    def pending(self):
        """Bytes received that are not yet part of a returned frame (headers included)."""
        cdef Py_ssize_t n = self._end - self._start
        if self._large is not None:
            n += self._large_skip + self._large_filled
        return n

    @property
    def needed(self):
        """How many bytes may be read without reading past the frame in progress (always at least 1)."""
        cdef Py_ssize_t live, total
        if self._large is not None:
            return self._large_size - self._large_filled
        live = self._end - self._start
        total = self._measure(self._buf.data + self._start, live)
        if total >= 0:
            return total - live
        return self._head_room(live)

    @property
    def closed(self):
        return self._closed

    @property
    def completed(self):
        """Frames completed since the decoder was made (a progress counter, e.g. for frame deadlines)."""
        return self._completed

    # -- header parsing -------------------------------------------------------------------------------

    cdef inline int _parse_header(self, const char *p, Py_ssize_t avail,
                                  uint64_t *length, Py_ssize_t *hlen) except -1:
        """Store the length field at p; return 1, or 0 if it is incomplete."""
        cdef int width = self._width
        cdef int i
        cdef unsigned char b
        cdef uint64_t value = 0
        if width == 4 and not self._little:
            if avail < 4:
                return 0
            length[0] = ff_load_be32(p)
            hlen[0] = 4
            return 1
        if width == 3:  # (MySQL's packets: worth a load of its own)
            if avail < 3:
                return 0
            length[0] = ff_load24(p, self._little)
            hlen[0] = 3
            return 1
        if width:
            if avail < width:
                return 0
            length[0] = ff_load(p, width, self._little)
            hlen[0] = width
            return 1
        for i in range(10 if avail > 10 else avail):
            b = <unsigned char>p[i]
            if i == 9 and b > 1:
                if b & 0x80:
                    raise FrameError("varint header longer than 10 bytes")
                raise FrameError("varint header overflows 64 bits")
            value |= (<uint64_t>(b & 0x7F)) << (7 * i)
            if not (b & 0x80):
                if b == 0 and i > 0:
                    raise FrameError("varint header is not minimally encoded")
                length[0] = value
                hlen[0] = i + 1
                return 1
        return 0

    cdef inline Py_ssize_t _head_room(self, Py_ssize_t live) noexcept:
        """Bytes that may complete a header of which ``live`` bytes are here (one at a time for varint)."""
        if self._width:
            return self._offset + self._width - live
        return self._offset + 1 - live if live < self._offset else 1

    cdef Py_ssize_t _measure(self, const char *p, Py_ssize_t avail) except -2:
        """The wire size of the frame at p, or -1 while its header is incomplete.  No limit is checked: every
        header in the buffer was checked when it was first parsed."""
        cdef uint64_t value
        cdef Py_ssize_t hlen
        if avail <= self._offset:
            return -1
        if not self._parse_header(p + self._offset, avail - self._offset, &value, &hlen):
            return -1
        return self._offset + hlen + <Py_ssize_t>(<long long>value + self._adjust)

    cdef Py_ssize_t _body(self, uint64_t value, bint check) except -1:
        """The body announced by a length field of ``value`` (value + adjust): FrameError if negative,
        FrameTooLarge if over max_frame (when ``check``: a header accepted earlier is not checked again)."""
        cdef long long adjust = self._adjust
        cdef uint64_t body
        if adjust < 0:
            if value < <uint64_t>(-adjust):
                raise FrameError(f"the length field ({value}) plus adjust ({adjust}) is negative")
            body = value - <uint64_t>(-adjust)
        elif value > <uint64_t>PY_SSIZE_T_MAX:
            raise FrameTooLarge(<object>value + adjust, self._max_frame)
        else:
            body = value + <uint64_t>adjust
        if body > <uint64_t>self._max_frame and (check or body > <uint64_t>PY_SSIZE_T_MAX):
            raise FrameTooLarge(body, self._max_frame)
        return <Py_ssize_t>body

    cdef Py_ssize_t _parse(self, const char *p, Py_ssize_t n, list out, bint wire=False) except -1:
        """Cut every complete frame out of p[0:n]; return the bytes consumed.

        A large frame whose body is incomplete takes the rest of the bytes into its own object.  With
        ``wire``, frames are only checked and skipped (``_scanned`` follows the progress, for errors), and
        every frame, however large, is assembled in the read buffer.  p[0] starts the partial frame at
        _start when there is one (its header was accepted: _head_ok).  The loop below is the plain layout's;
        options run _parse_general(), the same loop with the offset, the adjustment and the strip."""
        cdef Py_ssize_t pos = 0, avail, hlen
        cdef uint64_t length
        cdef bint held = False
        if self._opts:
            return self._parse_general(p, n, out, wire)
        while pos < n:
            avail = n - pos
            if not self._parse_header(p + pos, avail, &length, &hlen):
                break
            if length > <uint64_t>self._max_frame and (pos != 0 or not self._head_ok):
                raise FrameTooLarge(length, self._max_frame)
            if length < _LARGE:
                self._header_only = False
            if length <= <uint64_t>(avail - hlen):
                if not wire:
                    PyList_Append(out, PyBytes_FromStringAndSize(p + pos + hlen, <Py_ssize_t>length))
                pos += hlen + <Py_ssize_t>length
                self._scanned = pos
                self._completed += 1
                continue
            if length >= _LARGE and not wire:
                self._begin_large(p + pos + hlen, avail - hlen, length, hlen)
                return n
            held = True
            break
        self._head_ok = held
        return pos

    cdef Py_ssize_t _parse_general(self, const char *p, Py_ssize_t n, list out, bint wire) except -1:
        cdef Py_ssize_t pos = 0, avail, hlen, head, cut
        cdef Py_ssize_t offset = self._offset
        cdef Py_ssize_t strip = self._strip
        cdef long long adjust = self._adjust
        cdef uint64_t max_body = <uint64_t>self._max_frame
        cdef uint64_t value, body, total, size
        cdef bint held = False
        while pos < n:
            avail = n - pos
            if avail <= offset:
                break
            if not self._parse_header(p + pos + offset, avail - offset, &value, &hlen):
                break
            head = offset + hlen
            # body = value + adjust, in range (unsigned arithmetic wraps a negative adjust right); anything
            # else -- negative, huge, over max_frame -- goes through _body(), which raises or (for the
            # partial frame whose header was accepted earlier) lets it through.
            if (adjust >= 0 or value >= <uint64_t>(-adjust)) and value <= <uint64_t>PY_SSIZE_T_MAX:
                body = value + <uint64_t>adjust
                if body > max_body:
                    body = <uint64_t>self._body(value, pos != 0 or not self._head_ok)
            else:
                body = <uint64_t>self._body(value, pos != 0 or not self._head_ok)
            # (in 64 bits: with max_frame near 2**63 the head could push a Py_ssize_t over)
            total = <uint64_t>head + body
            cut = head if strip < 0 else strip
            size = total - <uint64_t>cut
            if size < _LARGE:
                self._header_only = False
            if total <= <uint64_t>avail:
                if not wire:
                    PyList_Append(out, PyBytes_FromStringAndSize(p + pos + cut, <Py_ssize_t>size))
                pos += <Py_ssize_t>total
                self._scanned = pos
                self._completed += 1
                continue
            if size >= _LARGE and not wire:
                self._begin_large(p + pos + cut, avail - cut, size, cut)
                return n
            held = True
            break
        self._head_ok = held
        return pos

    cdef int _begin_large(self, const char *p, Py_ssize_t got, uint64_t size, Py_ssize_t skip) except -1:
        """Give a large frame of ``size`` bytes its object; p[0:got] are its first bytes."""
        if size > <uint64_t>PY_SSIZE_T_MAX:
            raise FrameError(f"cannot allocate {size} bytes for a frame")
        try:
            # Not zero-filled: feed() and read_from() copy every byte into it, and what get_buffer() lends
            # is zeroed first (_lend), so nobody ever sees what the heap held.  Pages never written are never
            # paged in.
            obj = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>size)
        except (MemoryError, OverflowError) as exc:
            raise FrameError(f"cannot allocate {size} bytes for a frame ({exc!r})") from exc
        memcpy(PyBytes_AS_STRING(obj), p, got)
        self._large = obj
        self._large_mem = _borrow_bytes(obj)
        self._large_mem.inited = got
        self._large_size = <Py_ssize_t>size
        self._large_filled = got
        self._large_skip = skip
        self._head_ok = False
        return 0

    # -- buffer management ----------------------------------------------------------------------------

    cdef int _reserve(self, Py_ssize_t want) except -1:
        """Make at least ``want`` free bytes after ``_end``, compacting before growing."""
        cdef _Memory buf = self._buf
        cdef Py_ssize_t live = self._end - self._start
        cdef Py_ssize_t new_size
        cdef char *data
        if buf.size - self._end >= want:
            return 0
        new_size = buf.size if buf.size - live >= want else max(2 * buf.size, live + want)
        if buf.exports:
            # A view lent earlier is still alive: leave that block to it and move to a new one.
            self._move_to(_new_block(new_size))
            return 0
        else:
            if self._start:
                memmove(buf.data, buf.data + self._start, live)
            if new_size != buf.size:
                # (the grown room is not zeroed here: _lend zeroes what it lends, once)
                data = <char *>PyMem_Realloc(buf.data, new_size)
                if data == NULL:
                    raise MemoryError()
                buf.data = data
                buf.size = new_size
        self._start = 0
        self._end = live
        return 0

    cdef int _move_to(self, _Memory fresh) except -1:
        """Continue in ``fresh``: copy the unread bytes there and leave the old block to its views."""
        cdef Py_ssize_t live = self._end - self._start
        memcpy(fresh.data, self._buf.data + self._start, live)
        fresh.inited = live
        self._buf = fresh
        self._start = 0
        self._end = live
        return 0

    cdef int _append(self, const char *p, Py_ssize_t n) except -1:
        self._reserve(n)
        memcpy(self._buf.data + self._end, p, n)
        self._end += n
        if self._buf.inited < self._end:
            self._buf.inited = self._end
        return 0

    cdef int _finish_large(self, list out) except -1:
        cdef object frame = self._large
        if self._large_mem.exports:
            # A view lent into this frame is still alive (kept past the call that lent it): what it writes
            # later must not change the immutable bytes handed out, so they get a copy of their own.
            frame = PyBytes_FromStringAndSize(PyBytes_AS_STRING(self._large), self._large_size)
        PyList_Append(out, frame)
        self._completed += 1
        self._large = None
        self._large_mem = None
        self._header_only = True
        return 0

    cdef int _take_tail(self, list out) except -1:
        """Move the bytes of the large frame in progress from the read buffer (where its tail window lies,
        see _lend) into its object; finish it when they complete it."""
        cdef Py_ssize_t k = self._large_size - self._large_filled
        if k > self._end - self._start:
            k = self._end - self._start
        memcpy(PyBytes_AS_STRING(self._large) + self._large_filled, self._buf.data + self._start, k)
        self._large_filled += k
        if self._large_mem.inited < self._large_filled:
            self._large_mem.inited = self._large_filled
        self._start += k
        if self._large_filled == self._large_size:
            self._finish_large(out)
        return 0

    cdef int _parse_buffer(self, list out) except -1:
        cdef Py_ssize_t used = self._parse(self._buf.data + self._start, self._end - self._start, out)
        self._start += used
        if self._start == self._end:
            self._start = self._end = 0
        return 0

    cdef int _consume(self, const char *p, Py_ssize_t n, list out) except -1:
        cdef Py_ssize_t k, live, need, used, total
        while n > 0:
            if self._large is not None:
                k = self._large_size - self._large_filled
                if k > n:
                    k = n
                memcpy(PyBytes_AS_STRING(self._large) + self._large_filled, p, k)
                self._large_filled += k
                if self._large_mem.inited < self._large_filled:
                    self._large_mem.inited = self._large_filled
                p += k
                n -= k
                if self._large_filled == self._large_size:
                    self._finish_large(out)
                continue
            live = self._end - self._start
            if live == 0:
                used = self._parse(p, n, out)
                p += used
                n -= used
                if n > 0 and self._large is None:
                    self._append(p, n)
                    n = 0
                continue
            # Finish the frame already buffered, copying no more of the new data than it needs (a small
            # frame: a large one would have left the buffer).
            total = self._measure(self._buf.data + self._start, live)
            if total < 0:
                need = self._offset + (self._width if self._width else 10) - live
            else:
                need = total - live
            if need > n:
                need = n
            self._append(p, need)
            p += need
            n -= need
            self._parse_buffer(out)
        return 0

    # -- public API -----------------------------------------------------------------------------------

    cdef int _check(self) except -1:
        if self._error is not None:
            raise FrameError(f"decoder refuses input after an earlier error: {self._error}") from self._error
        if self._closed:
            raise FrameError("decoder is closed")
        return 0

    cdef _fail(self, exc, list out):
        """Lock the decoder after any failure; a FrameError carries the frames completed before it."""
        if isinstance(exc, FrameError):
            exc.frames = out
        self._error = exc

    def feed(self, data):
        """Take any bytes-like object; return every frame it completes, in order."""
        cdef Py_buffer view
        cdef list out = []
        self._check()
        self._win_kind = _WIN_NONE
        self._win_len = 0
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            self._consume(<const char *>view.buf, view.len, out)
        except BaseException as exc:
            self._fail(exc, out)
            raise
        finally:
            PyBuffer_Release(&view)
        return out

    cdef _Memory _lend(self, Py_ssize_t sizehint, bint public=True):
        """Choose the memory the next read may fill (the window); return the block it lies in.

        A large frame lends its own object, all of it but the last _TAIL bytes.  Those come through the
        read buffer (empty while a large frame is collected), in one window with the next header, and
        _take_tail() moves them into the object.  So the view alive when a large frame completes -- the
        one asyncio's and uvloop's transports still hold while they call buffer_updated() -- never shows
        the bytes object just returned, and the frame costs no more reads than before (the next header
        used to take a read of its own)."""
        cdef _Memory mem
        cdef Py_ssize_t want, end
        if self._large is not None and self._large_size - self._large_filled > _TAIL:
            # Lent to a caller (public), the window is zeroed first, and is at most what has arrived (or
            # _LARGE_WINDOW), so that memory follows the bytes received, not what the header announced.
            # Our own recv (read_from) takes the whole rest: the kernel writes every byte it reports.
            mem = self._large_mem
            want = self._large_size - self._large_filled - _TAIL
            if public and want > max(self._large_filled, <Py_ssize_t>_LARGE_WINDOW):
                want = max(self._large_filled, <Py_ssize_t>_LARGE_WINDOW)
            end = self._large_filled + want
            if public and mem.inited < end:
                memset(mem.data + mem.inited, 0, end - mem.inited)
                mem.inited = end
            mem.win_off = self._large_filled
            mem.win_len = want
            self._win_kind = _WIN_LARGE
            self._win_len = want
            return mem
        if self._buf.pinned or (self._start == self._end and self._buf.size > _SHRINK_ABOVE):
            # Frames handed out by read_wire_from() may still be in use there (or a big frame left the
            # buffer big): continue in a fresh block of the usual size.
            self._move_to(_new_block(max(<Py_ssize_t>_INITIAL_BUFFER, 2 * (self._end - self._start))))
        if self._large is not None:
            want = self._large_size - self._large_filled + self._head_room(0)
            self._reserve(want)
        elif self._header_only:
            # After a large frame: read the next header alone, so a large payload never lands here.
            want = self._head_room(self._end - self._start)
            self._reserve(want)
        else:
            want = _MIN_READ if sizehint <= 0 else min(max(sizehint, <Py_ssize_t>_MIN_READ), <Py_ssize_t>_MAX_READ)
            self._reserve(want)
            want = self._buf.size - self._end
        mem = self._buf
        end = self._end + want
        if mem.inited < end:
            # Never lend bytes that nobody wrote: a caller that reports bytes it did not write (or wrote
            # through a stale view) gets zeros, as from the twin's bytearray, never what the heap held.
            # Each byte of a block is zeroed once, when it is first lent.
            memset(mem.data + mem.inited, 0, end - mem.inited)
            mem.inited = end
        mem.win_off = self._end
        mem.win_len = want
        self._win_kind = _WIN_BUFFER
        self._win_len = want
        return mem

    cdef list _updated(self, Py_ssize_t nbytes):
        """``nbytes`` were written at the start of the window: account for them, return completed frames."""
        cdef list out = []
        cdef int kind = self._win_kind
        self._win_kind = _WIN_NONE
        self._win_len = 0
        if nbytes == 0:
            return out
        try:
            if kind == _WIN_LARGE:
                self._large_filled += nbytes
                if self._large_mem.inited < self._large_filled:
                    self._large_mem.inited = self._large_filled
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

    def get_buffer(self, sizehint=-1):
        """Lend writable memory for the next ``recv_into``; report what was written with buffer_updated()."""
        self._check()
        if type(sizehint) is not int:
            sizehint = _index(sizehint)
        return PyMemoryView_FromObject(self._lend(-1 if sizehint <= 0 else min(sizehint, <Py_ssize_t>_MAX_READ)))

    def buffer_updated(self, nbytes):
        """Account for ``nbytes`` written at the start of the last get_buffer(); return completed frames."""
        self._check()
        if type(nbytes) is not int:
            nbytes = _index(nbytes)
        if nbytes < 0 or nbytes > self._win_len:
            raise ValueError(f"buffer_updated({nbytes}) does not match the {self._win_len} bytes lent by get_buffer()")
        return self._updated(nbytes)

    def read_from(self, int fd):
        """One ``recv`` from socket ``fd`` straight into the decoder's memory, never blocking.

        Returns the frames completed ([] if none), or None at end of stream (then call close()).  Raises
        BlockingIOError when nothing was ready, OSError on failure.  The same as
        ``buffer_updated(sock.recv_into(get_buffer()))``, without the intermediate objects: an event loop's
        one call per readable socket.
        """
        global _area_busy
        cdef ssize_t n
        cdef Py_ssize_t used
        cdef list out
        self._check()
        if self._start != self._end or self._large is not None or self._header_only or _area_busy:
            n = self._recv(fd, self._lend(-1, False))
            if n == 0:
                self._win_kind = _WIN_NONE
                self._win_len = 0
                return None
            return self._updated(n)
        # Nothing buffered: read into the area shared by every decoder (hot in the CPU cache), cut the
        # frames out of it, and keep only an unfinished tail (a large frame's goes into its own object).
        self._win_kind = _WIN_NONE
        self._win_len = 0
        _area_busy = True
        try:
            # (one read window's worth, like get_buffer(): the most of a large payload that may be copied once)
            n = _recv_into(fd, _shared_area(), _INITIAL_BUFFER)
            if n == 0:
                return None
            out = []
            try:
                used = self._parse(_relay_area, n, out)
                if used < n:
                    self._append(_relay_area + used, n - used)
            except BaseException as exc:
                self._fail(exc, out)
                raise
            return out
        finally:
            _area_busy = False

    cdef ssize_t _recv(self, int fd, _Memory mem) except -1:
        """One non-blocking recv into the window just lent (OSError, BlockingIOError included, on failure)."""
        try:
            return _recv_into(fd, mem.data + mem.win_off, mem.win_len)
        except BaseException:
            self._win_kind = _WIN_NONE
            self._win_len = 0
            raise

    # -- whole frames as they were on the wire --------------------------------------------------------

    cdef int _wire_mode(self) except -1:
        if self._large is not None:
            raise ValueError("a frame begun by feed()/read_from()/buffer_updated() must be finished by them")
        self._header_only = False
        return 0

    cdef object _take_wire(self):
        """Check the buffered bytes for whole frames and hand them out as one read-only view (no copy)."""
        cdef Py_ssize_t used
        cdef _Span span
        self._take_wire_span(&used)
        span = _Span.__new__(_Span)
        span.block = self._buf
        span.off = self._start - used
        span.length = used
        return PyMemoryView_FromObject(span)

    cdef int _take_wire_span(self, Py_ssize_t *used_out) except -1:
        """Check the buffered bytes for whole frames and consume them; their length goes to used_out."""
        cdef Py_ssize_t used
        cdef list out
        self._scanned = 0
        try:
            used = self._parse(self._buf.data + self._start, self._end - self._start, None, True)
        except BaseException as exc:
            out = []
            if self._scanned and isinstance(exc, FrameError):
                # the whole frames before the bad header are not lost: they ride on the exception
                before = self._completed
                self._parse(self._buf.data + self._start, self._scanned, out)
                self._completed = before
            self._fail(exc, out)
            raise
        self._start += used
        used_out[0] = used
        return 0

    def feed_wire(self, data):
        """Like feed(), but return the frames completed so far as they were on the wire.

        The result is one read-only memoryview of whole frames, headers included, back to back (empty if
        none is complete yet): every header has been checked against the prefix and ``max_frame``, and a
        partial frame stays buffered.  For relays and echoes, which pass frames on unchanged without making
        an object per frame.  On a FrameError the payloads of the whole frames before it are in its
        ``frames``.  A decoder may switch between feed() and feed_wire() only between frames.
        """
        cdef Py_buffer view
        self._check()
        self._wire_mode()
        self._win_kind = _WIN_NONE
        self._win_len = 0
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            if self._buf.pinned:
                self._move_to(_new_block(max(<Py_ssize_t>_INITIAL_BUFFER, self._end - self._start + view.len)))
            self._append(<const char *>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)
        return self._take_wire()

    def read_wire_from(self, int fd):
        """One ``recv`` from socket ``fd`` (never blocking), then what feed_wire() would return.

        None at end of stream; BlockingIOError when nothing was ready; OSError on failure.  The view stays
        valid as long as it is referenced: the decoder never reuses memory a live view shows.
        """
        self._check()
        self._wire_mode()
        if self._recv_behind(fd) == 0:
            return None
        return self._take_wire()

    cdef ssize_t _recv_behind(self, int fd) except -1:
        """One recv into this decoder's own block, behind what it holds; the bytes count as buffered."""
        cdef ssize_t n = self._recv(fd, self._lend(-1))
        self._win_kind = _WIN_NONE
        self._win_len = 0
        self._end += n
        return n

    def relay(self, int fd, int out_fd=-1):
        """One ``recv`` from socket ``fd``, then ``send`` the whole frames it completed to ``out_fd``
        (default: back to ``fd``, an echo) straight from the decoder's memory -- never blocking.

        Returns None at end of stream, else the bytes the kernel did not take (``b""`` when it took them
        all, or nothing was complete), for the caller to queue.  Raises BlockingIOError when nothing was
        ready, OSError on failure, FrameError like feed_wire() (nothing of that read is sent then).
        """
        global _area_busy
        cdef ssize_t n
        cdef Py_ssize_t used
        cdef list out
        self._check()
        self._wire_mode()
        if out_fd < 0:
            out_fd = fd
        if self._start != self._end:
            # Part of a frame is buffered: read behind it, in this decoder's own block.
            if self._recv_behind(fd) == 0:
                return None
            self._take_wire_span(&used)
            rest = _send_all(out_fd, self._buf.data + self._start - used, used)
            if self._start == self._end and not self._buf.pinned:
                self._start = self._end = 0
            return rest
        # Nothing buffered (the common case): read into one area shared by every decoder, which stays in
        # the CPU cache where a block per connection would not, and keep only an unfinished tail.  (A call
        # made while another one works there -- another thread, a callback -- reads behind, as above.)
        if _area_busy:
            if self._recv_behind(fd) == 0:
                return None
            self._take_wire_span(&used)
            rest = _send_all(out_fd, self._buf.data + self._start - used, used)
            if self._start == self._end and not self._buf.pinned:
                self._start = self._end = 0
            return rest
        _area_busy = True
        try:
            n = _recv_into(fd, _shared_area(), _RELAY_AREA)
            if n == 0:
                return None
            self._scanned = 0
            try:
                used = self._parse(_relay_area, n, None, True)
            except BaseException as exc:
                out = []
                if self._scanned and isinstance(exc, FrameError):
                    before = self._completed
                    self._parse(_relay_area, self._scanned, out)
                    self._completed = before
                self._fail(exc, out)
                raise
            if used < n:
                self._append(_relay_area + used, n - used)
            return _send_all(out_fd, _relay_area, used)
        finally:
            _area_busy = False

    def close(self):
        """Mark the end of the stream; raise IncompleteFrame if it cut a frame off."""
        cdef Py_ssize_t received, total
        if self._closed:
            return
        self._closed = True
        if self._error is not None:
            return
        received = self.pending
        if received:
            expected = None
            if self._large is not None:
                expected = self._large_skip + self._large_size
            else:
                total = self._measure(self._buf.data + self._start, received)
                if total >= 0:
                    expected = total
            exc = IncompleteFrame(received, expected)
            self._error = exc
            raise exc

    def __repr__(self):
        options = "".join(
            f" {name}={value}" for name, value in (("offset", self._offset), ("adjust", self._adjust)) if value
        )
        if self._strip >= 0:
            options += f" strip={self._strip}"
        return f"<Decoder prefix={self._prefix!r}{options} max_frame={self._max_frame} pending={self.pending}>"
