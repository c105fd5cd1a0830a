"""FramedSocket: frames over an existing blocking socket, the drop-in for hand-written receive loops."""

from __future__ import annotations

import collections
import os
import socket
from types import ModuleType
from typing import Any, ClassVar, Deque, Iterable, Iterator, List, Optional, Sequence, Union

from ._codec_choice import codec as _impl
from .exceptions import FrameError

__all__ = ["FramedSocket"]

Buffer = Union[bytes, bytearray, memoryview]

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


class FramedSocket:
    """Send and receive whole frames over a connected, blocking stream socket.

    ``recv()`` returns exactly one payload, however the bytes were split or merged on the way; ``send()``
    writes one frame.  Bytes are received straight into the decoder's memory (``recv_into``), and payloads of
    64 KiB or more are sent with ``sendmsg`` next to their header instead of being copied behind it.

    The socket's timeout applies to each underlying call.  A timeout in ``recv()`` loses nothing: call it
    again.  A timeout in ``send()`` may leave a frame half-written, after which the stream cannot be used.
    """

    #: The codec module this class uses (the one ``fastframe.IMPLEMENTATION`` names).
    codec: ClassVar[ModuleType] = _impl

    def __init__(self, sock: socket.socket, prefix: str = "!I", max_frame: Optional[int] = None) -> None:
        codec = self.codec
        self._sock = sock
        self._prefix = prefix
        self._decoder = codec.Decoder(prefix, codec.DEFAULT_MAX_FRAME if max_frame is None else max_frame)
        self._encode = codec.encode
        self._encode_many = codec.encode_many
        self._header = codec.header
        self._frames: Deque[bytes] = collections.deque()
        self._error: Optional[BaseException] = None

    @property
    def sock(self) -> socket.socket:
        """The wrapped socket, for options, timeouts and ``getpeername()``."""
        return self._sock

    @property
    def prefix(self) -> str:
        return self._prefix

    @property
    def max_frame(self) -> int:
        return int(self._decoder.max_frame)

    def fileno(self) -> int:
        return self._sock.fileno()

    # -- sending --------------------------------------------------------------------------------------

    def send(self, payload: Buffer) -> None:
        """Send one frame carrying ``payload``."""
        n = _nbytes(payload)
        if n < SCATTER_THRESHOLD:
            self._sock.sendall(self._encode(payload, self._prefix))
        else:
            self._send_vector([self._header(n, self._prefix), payload])

    def send_many(self, payloads: Iterable[Buffer]) -> None:
        """Send several frames with as few system calls as possible."""
        items = list(payloads)
        if all(_nbytes(p) < SCATTER_THRESHOLD for p in items):
            self._sock.sendall(self._encode_many(items, self._prefix))
            return
        vector: List[Buffer] = []
        small: List[Buffer] = []
        for p in items:
            n = _nbytes(p)
            if n < SCATTER_THRESHOLD:
                small.append(p)
                continue
            if small:
                vector.append(self._encode_many(small, self._prefix))
                small = []
            vector.append(self._header(n, self._prefix))
            vector.append(p)
        if small:
            vector.append(self._encode_many(small, self._prefix))
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
                n = recv_into(decoder.get_buffer())
                if not n:
                    decoder.close()
                    raise EOFError("connection closed by the peer")
                frames.extend(decoder.buffer_updated(n))
        except FrameError as exc:
            # Hand out what arrived intact before the error; raise it once they are gone.
            frames.extend(exc.frames)
            self._error = exc
        except EOFError as exc:
            self._error = exc

    def _wait(self) -> None:
        """Receive until a frame is ready, or raise what ended the stream (after the frames before it)."""
        if self._error is None:
            self._fill()
        if not self._frames:
            raise self._error  # type: ignore[misc]

    def recv(self) -> bytes:
        """Return the next payload.

        Raises EOFError when the peer closed the connection between frames, IncompleteFrame when it closed
        inside one, FrameTooLarge when a header announces more than ``max_frame``.
        """
        frames = self._frames
        if not frames:
            self._wait()
        return frames.popleft()

    def recv_many(self) -> List[bytes]:
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

    def __enter__(self) -> "FramedSocket":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<FramedSocket prefix={self._prefix!r} fd={self._sock.fileno()} ready={len(self._frames)}>"
