"""Exceptions shared by both codec implementations.

They are defined once, here, in Python; the C extension imports them, so ``except FrameTooLarge`` catches the
same class whichever implementation raised it.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (a start-up cost for the CLI)
if TYPE_CHECKING:  # pragma: no cover
    pass

__all__ = ["BufferTooSmall", "FrameError", "FrameTooLarge", "IncompleteFrame"]


class FrameError(ValueError):
    """A frame could not be encoded or decoded.

    When a decoder raises it, ``frames`` holds the frames that the same call completed before the error, so
    nothing that arrived intact is lost.  After an error a decoder refuses further input: the byte stream
    has no resynchronisation point, and guessing where the next frame starts would hand garbage to the caller.
    """

    frames: list[bytes]

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.frames = []


class FrameTooLarge(FrameError):
    """A frame is larger than allowed: ``size`` bytes announced (or offered), ``limit`` allowed.

    A decoder raises it as soon as a header announces more than ``max_frame``, before it allocates
    anything for the payload.  ``encode``/``header`` raise it for a payload the prefix cannot express
    (more than 255 bytes for ``"!B"``, say).
    """

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"frame of {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (type(self), (self.size, self.limit), self.__dict__)


class IncompleteFrame(FrameError):
    """The stream ended inside a frame: ``received`` bytes of it (header included) had arrived.

    ``expected`` is the whole frame's size (header included) when its header had been read, else ``None``.
    """

    def __init__(self, received: int, expected: int | None = None) -> None:
        if expected is None:
            msg = f"stream ended inside a frame header ({received} bytes received)"
        else:
            msg = f"stream ended inside a frame: {received} of {expected} bytes received"
        super().__init__(msg)
        self.received = received
        self.expected = expected

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (type(self), (self.received, self.expected), self.__dict__)


class BufferTooSmall(ValueError):
    """``FramedSocket.recv_into(buffer)``: the next frame (``size`` bytes) does not fit the ``capacity`` bytes
    of ``buffer``.  The frame stays queued: call again with a larger buffer, or ``recv()`` it."""

    def __init__(self, size: int, capacity: int) -> None:
        super().__init__(f"the next frame has {size} bytes; the buffer holds {capacity}")
        self.size = size
        self.capacity = capacity

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (type(self), (self.size, self.capacity), self.__dict__)
