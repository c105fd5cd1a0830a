"""FramedSocket: frames over an existing blocking socket, the drop-in for hand-written receive loops."""

from __future__ import annotations

import _socket  # (socket.py, with enum and selectors behind it, is a start-up cost the CLI does without)
import collections
import os
import select
import sys
import time
from types import ModuleType

from ._codec_choice import codec as _impl
from ._framing import Framing
from .exceptions import BufferTooSmall, FrameError

__all__ = ["FramedSocket"]

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (a start-up cost for the CLI)
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Iterable, Iterator, Sequence
    from typing import Any, Callable, ClassVar, Union

    Buffer = Union[bytes, bytearray, memoryview]
    Prefix = Union[str, Framing]

#: Payloads at least this large go out by scatter-gather (header and payload in one sendmsg) instead of
#: being copied behind their header.
SCATTER_THRESHOLD = 64 * 1024

try:
    _IOV_MAX = max(16, min(os.sysconf("SC_IOV_MAX"), 1024))
except (AttributeError, ValueError, OSError):  # pragma: no cover - non-POSIX
    _IOV_MAX = 16


def _nbytes(payload: Buffer) -> int:
    return len(payload) if type(payload) is bytes else memoryview(payload).nbytes


def _flat(payload: Buffer) -> memoryview:
    """A byte view of a C-contiguous buffer (BufferError otherwise, as the codec raises)."""
    view = memoryview(payload)
    if not view.c_contiguous:
        raise BufferError("fastframe needs a C-contiguous buffer")
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def _varint_len(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


_PLAIN_LAYOUTS: dict[tuple[ModuleType, str], _Layout] = {}


class _Layout:
    """How payloads go out for one Framing: what ``encode()``/``encode_many()`` take, and the parts of a
    large payload sent next to its header.  Shared by FramedSocket and ``fastframe.aio``.

    ``layout`` is the bare prefix string when there is neither ``offset`` nor ``adjust`` (the default
    layout's fast path: the codec then parses no options), else the Framing itself.  A scatter-gather header
    never carries the ``offset`` leading bytes (``header()`` refuses them): they are the payload's first
    bytes, sent in front of it.
    """

    __slots__ = ("layout", "head", "offset", "encode", "header")

    def __init__(self, codec: ModuleType, framing: Framing) -> None:
        plain = not framing.offset and not framing.adjust
        self.layout: Prefix = framing.prefix if plain else framing
        self.head: Prefix = framing.prefix if plain else framing.replace(offset=0)
        self.offset = framing.offset
        self.encode = codec.encode
        self.header = codec.header

    @classmethod
    def of(cls, codec: ModuleType, prefix: Prefix, decoder: Any) -> _Layout:
        """The layout of ``decoder`` (made with ``prefix``); one shared object per codec and plain prefix
        string, so that a connection in the default layout costs no Framing."""
        if type(prefix) is str and decoder.offset == 0 and decoder.adjust == 0:
            key = (codec, prefix)
            layout = _PLAIN_LAYOUTS.get(key)
            if layout is None:
                layout = _PLAIN_LAYOUTS[key] = cls(codec, Framing(prefix))
            return layout
        return cls(codec, decoder.framing)

    def scatter(self, payload: Buffer, n: int) -> list[Buffer]:
        """[leading bytes + header, rest of the payload] for a payload of ``n`` bytes, never copied."""
        off = self.offset
        if not off:
            return [self.header(n, self.head), payload]
        view = _flat(payload)
        if n < off:  # (encode() says why)
            return [self.encode(view, self.layout)]
        return [bytes(view[:off]) + self.header(n - off, self.head), view[off:]]


class FramedSocket:
    """Send and receive whole frames over a connected, blocking stream socket.

    ``recv()`` returns exactly one frame, however the bytes were split or merged on the way; ``send()``
    writes one.  Bytes are received straight into the decoder's memory (``recv_into``), and payloads of
    64 KiB or more are sent with ``sendmsg`` next to their header instead of being copied behind it.

    ``prefix`` and the keyword options ``offset``, ``adjust`` and ``strip`` describe the layout as for
    :class:`~fastframe.Decoder` (a :class:`~fastframe.Framing` may stand in place of the prefix).

    By default the socket is read ahead: one ``recv`` takes whatever has arrived, frames beyond the one
    returned wait in the decoder (see :meth:`pending` and :meth:`poll`, which event loops need, since
    ``select()`` cannot see them).  With ``read_ahead=False`` it never reads past the frame asked for: the
    header, then exactly the rest of the frame (two ``recv`` calls per frame), so that after a handshake the
    socket can be handed to other code with nothing of what follows taken from it.

    The socket's timeout applies to each underlying call.  A timeout in ``recv()`` loses nothing: call it
    again.  A timeout in ``send()`` may leave a frame half-written, after which the stream cannot be used.
    """

    #: The codec module this class uses (the one ``fastframe.IMPLEMENTATION`` names).
    codec: ClassVar[ModuleType] = _impl

    def __init__(
        self,
        sock: _socket.socket,
        prefix: Prefix = "!I",
        max_frame: int | None = None,
        *,
        offset: int = 0,
        adjust: int = 0,
        strip: int | None = None,
        read_ahead: bool = True,
    ) -> None:
        codec = self.codec
        self._sock = sock
        self._decoder = codec.Decoder(prefix, max_frame, offset=offset, adjust=adjust, strip=strip)
        framing: Framing = self._decoder.framing
        self._framing = framing
        self._prefix = framing.prefix
        wire = _Layout(codec, framing)
        self._scatter = wire.scatter
        self._layout = wire.layout  # what encode()/encode_many() take
        self._read_ahead = bool(read_ahead)
        self._encode = codec.encode
        self._encode_many = codec.encode_many
        self._frames: collections.deque[bytes] = collections.deque()
        self._error: BaseException | None = None

    @property
    def sock(self) -> _socket.socket:
        """The wrapped socket, for options, timeouts and ``getpeername()``."""
        return self._sock

    @property
    def prefix(self) -> str:
        return self._prefix

    @property
    def framing(self) -> Framing:
        """The layout, as a Framing (with the current ``max_frame``)."""
        return self._framing.replace(max_frame=self._decoder.max_frame)

    @property
    def max_frame(self) -> int:
        return int(self._decoder.max_frame)

    @max_frame.setter
    def max_frame(self, value: int) -> None:
        """Change the limit; it applies to headers not yet read (a frame under way is finished)."""
        self._decoder.max_frame = value

    @property
    def read_ahead(self) -> bool:
        return self._read_ahead

    def fileno(self) -> int:
        return self._sock.fileno()

    # -- sending --------------------------------------------------------------------------------------

    def send(self, payload: Buffer) -> None:
        """Send one frame carrying ``payload`` (its first ``offset`` bytes go before the length field)."""
        n = _nbytes(payload)
        if n < SCATTER_THRESHOLD:
            self._sock.sendall(self._encode(payload, self._layout))
        else:
            self._send_vector(self._scatter(payload, n))

    def send_many(self, payloads: Iterable[Buffer]) -> None:
        """Send several frames with as few system calls as possible."""
        items = list(payloads)
        if all(_nbytes(p) < SCATTER_THRESHOLD for p in items):
            self._sock.sendall(self._encode_many(items, self._layout))
            return
        vector: list[Buffer] = []
        small: list[Buffer] = []
        for p in items:
            n = _nbytes(p)
            if n < SCATTER_THRESHOLD:
                small.append(p)
                continue
            if small:
                vector.append(self._encode_many(small, self._layout))
                small = []
            vector.extend(self._scatter(p, n))
        if small:
            vector.append(self._encode_many(small, self._layout))
        self._send_vector(vector)

    def _send_vector(self, buffers: Sequence[Buffer]) -> None:
        sock = self._sock
        views = [_flat(b) for b in buffers]
        try:
            sendmsg = sock.sendmsg
        except AttributeError:  # pragma: no cover - platforms without sendmsg
            sendmsg = None
        i = 0
        while i < len(views):
            if sendmsg is None:
                sock.sendall(views[i])
                i += 1
                continue
            try:
                sent = sendmsg(views[i : i + _IOV_MAX])
            except NotImplementedError:  # ssl.SSLSocket has the method but refuses it
                sendmsg = None
                continue
            while sent:
                head = views[i]
                if sent >= len(head):
                    sent -= len(head)
                    i += 1
                else:
                    views[i] = head[sent:]
                    sent = 0
            while i < len(views) and not len(views[i]):
                i += 1

    # -- receiving ------------------------------------------------------------------------------------

    def _fill(self) -> None:
        """Receive until at least one frame is ready (or raise EOFError / a FrameError)."""
        decoder = self._decoder
        frames = self._frames
        recv_into = self._sock.recv_into
        try:
            while not frames:
                if self._read_ahead:
                    n = recv_into(decoder.get_buffer())
                else:
                    view = decoder.get_buffer()
                    n = recv_into(view, min(len(view), decoder.needed))
                    view.release()
                self._took(n)
        except FrameError as exc:
            # Hand out what arrived intact before the error; raise it once they are gone.
            frames.extend(exc.frames)
            self._error = exc
        except EOFError as exc:
            self._error = exc

    def _took(self, n: int) -> None:
        """``n`` bytes were received into the decoder's window (0: end of stream)."""
        if not n:
            self._decoder.close()
            raise EOFError("connection closed by the peer")
        self._frames.extend(self._decoder.buffer_updated(n))

    def _wait(self) -> None:
        """Receive until a frame is ready, or raise what ended the stream (after the frames before it)."""
        if self._error is None:
            self._fill()
        if not self._frames:
            raise self._error  # type: ignore[misc]

    # -- event loops ----------------------------------------------------------------------------------

    def pending(self) -> int:
        """Bytes already received and not yet returned: frames waiting in the decoder (as they were on the
        wire) plus a partial frame, and, over an ``ssl.SSLSocket``, the TLS layer's own ``pending()``.

        ``select()`` cannot see these bytes: a loop that waits for readability before each ``recv()`` must
        first drain what :meth:`poll` reports ready (see the README's select-loop pattern)."""
        n = int(self._decoder.pending) + sum(self._wire_size(f) for f in self._frames)
        tls = self._tls_pending()
        return n + (tls() if tls is not None else 0)

    def _wire_size(self, frame: bytes) -> int:
        f = self._framing
        if f.strip is not None:
            return f.strip + len(frame)
        value = len(frame) - f.adjust
        width = f.header_size
        return f.offset + _varint_len(value) + len(frame) if width is None else width + len(frame)

    def _tls_pending(self) -> Callable[[], int] | None:
        ssl = sys.modules.get("ssl")  # (an SSLSocket exists only if ssl was imported)
        if ssl is not None and isinstance(self._sock, ssl.SSLSocket):
            return self._sock.pending  # type: ignore[no-any-return]
        return None

    def poll(self, timeout: float | None = 0.0) -> bool:
        """True when the next ``recv()`` will return a frame (or raise EOFError or a FrameError) without
        blocking.  Reads what is already readable into the decoder to find out, and waits at most
        ``timeout`` seconds for more (None: until then), like ``multiprocessing.connection.Connection.poll``.
        Never reads past a frame when ``read_ahead`` is False.  OSErrors of the socket propagate."""
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while True:
            if self._frames or self._error is not None:
                return True
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self._readable(remaining):
                return False
            if not self._read_available() and remaining == 0.0:
                return False  # (readable, yet nothing to read: a TLS record still incomplete)

    def _readable(self, timeout: float | None) -> bool:
        tls = self._tls_pending()
        if tls is not None and tls():
            return True
        fd = self._sock.fileno()
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            return bool(poller.poll(None if timeout is None else int(timeout * 1000 + 0.999)))
        return bool(select.select([fd], [], [], timeout)[0])  # pragma: no cover - platforms without poll()

    def _read_available(self) -> bool:
        """One read of what is readable now, without blocking; False if it turned out there was none."""
        decoder = self._decoder
        view = decoder.get_buffer()
        limit = len(view) if self._read_ahead else min(len(view), decoder.needed)
        sock = self._sock
        try:
            if self._tls_pending() is not None:
                # A TLS record may be incomplete although the socket is readable: never wait for the rest.
                previous = sock.gettimeout()
                sock.settimeout(0.0)
                try:
                    n = sock.recv_into(view, limit)
                finally:
                    sock.settimeout(previous)
            else:
                n = sock.recv_into(view, limit, getattr(_socket, "MSG_DONTWAIT", 0))
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            ssl = sys.modules.get("ssl")
            if ssl is not None and isinstance(exc, (ssl.SSLWantReadError, ssl.SSLWantWriteError)):
                return False
            raise
        finally:
            view.release()
        try:
            self._took(n)
        except FrameError as exc:
            self._frames.extend(exc.frames)
            self._error = exc
        except EOFError as exc:
            self._error = exc
        return True

    # -- receiving ------------------------------------------------------------------------------------

    def recv(self) -> bytes:
        """Return the next frame (the payload, in the default layout).

        Raises EOFError when the peer closed the connection between frames, IncompleteFrame when it closed
        inside one, FrameTooLarge when a header announces more than ``max_frame``.
        """
        frames = self._frames
        if not frames:
            self._wait()
        return frames.popleft()

    def recv_into(self, buffer: Buffer) -> int:
        """Copy the next frame into ``buffer`` (a writable bytes-like object) and return its size.

        For callers that own their memory (``multiprocessing.connection``'s ``recv_bytes_into``).  A buffer
        too small raises BufferTooSmall and leaves the frame queued; otherwise as :meth:`recv`."""
        frames = self._frames
        if not frames:
            self._wait()
        view = memoryview(buffer)
        try:
            if view.readonly:
                raise TypeError("recv_into() needs a writable buffer")
            flat = _flat(view)
            frame = frames[0]
            n = len(frame)
            if n > flat.nbytes:
                raise BufferTooSmall(n, flat.nbytes)
            flat[:n] = frame
        finally:
            view.release()
        frames.popleft()
        return n

    def recv_many(self) -> list[bytes]:
        """Return every payload already received, waiting for at least one."""
        frames = self._frames
        if not frames:
            self._wait()
        out = list(frames)
        frames.clear()
        return out

    def __iter__(self) -> Iterator[bytes]:
        """Yield payloads until the peer closes the connection cleanly."""
        while True:
            try:
                yield self.recv()
            except EOFError:
                return

    # -- lifetime -------------------------------------------------------------------------------------

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> FramedSocket:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<FramedSocket prefix={self._prefix!r} fd={self._sock.fileno()} ready={len(self._frames)}>"
