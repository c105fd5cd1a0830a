"""The service interface: what a service is, and what it may ask of the engine.

A service turns request frames into reply frames (TCP) or datagrams into datagrams (UDP).  It never touches a
socket, a selector or a process table: the engine owns those, and hands the service a :class:`Conn` per
connection through which it can reply, stream, watch other file descriptors (a child's pipes), send a file
with ``sendfile`` and set timers -- all driven by the engine's one loop, so a slow command or a large file
never blocks another client.

The fast path is the return value: ``frames_received(conn, frames)`` returns the list of reply payloads (or
None), and the engine encodes every reply of one wake-up into one buffer and one ``send``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # pragma: no cover
    from fastframe.exceptions import FrameError

Address = tuple[Any, ...]

__all__ = ["Address", "Conn", "Service", "Timer"]

DEFAULT_MAX_REQUEST = 1024 * 1024


class Timer:
    """A scheduled callback; ``cancel()`` it when it is no longer wanted."""

    __slots__ = ("when", "callback", "cancelled")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def __lt__(self, other: Timer) -> bool:
        return self.when < other.when


class Conn:
    """What a service sees of one TCP connection (the engine's Connection implements it).

    ``state`` is free for the service's per-connection data.
    """

    peer: Address
    state: Any
    service: Service

    def send_frames(self, payloads: list[bytes]) -> None:
        """Queue reply frames; they go out with the next flush (at the latest at the end of this wake-up)."""
        raise NotImplementedError

    def send_raw(self, data: bytes) -> None:
        """Queue unframed bytes."""
        raise NotImplementedError

    def sendfile(self, fd: int, offset: int, count: int, done: Callable[[BaseException | None], None]) -> None:
        """Send ``count`` bytes of file ``fd`` from ``offset`` with ``sendfile``, after what is queued.

        Reading from the client pauses until the transfer ends; ``done(None)`` is called when every byte
        went out, ``done(exc)`` if it failed (the connection is then closed).  The service owns ``fd``.
        """
        raise NotImplementedError

    def watch(self, fd: int, callback: Callable[[], None]) -> None:
        """Call ``callback()`` whenever ``fd`` is readable (or hung up) until unwatch(fd)."""
        raise NotImplementedError

    def unwatch(self, fd: int) -> None:
        raise NotImplementedError

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """Call ``callback()`` in ``delay`` seconds; timers die with the connection."""
        raise NotImplementedError

    def acquire(self, name: str, limit: int) -> bool:
        """Count one more ``name`` (``"commands"``) for the whole server -- every prefork worker together -- if
        fewer than ``limit`` are counted; False, and nothing counted, otherwise.  Give it back with ``release``
        (a prefork worker that dies gives back all it held)."""
        raise NotImplementedError

    def release(self, name: str) -> None:
        raise NotImplementedError

    def set_max_frame(self, limit: int) -> None:
        """Change the largest request frame accepted from now on."""
        raise NotImplementedError

    def pause_reading(self) -> None:
        raise NotImplementedError

    def resume_reading(self) -> None:
        raise NotImplementedError

    def close(self, flush: bool = True) -> None:
        """Close the connection, after the queued output when ``flush`` is true."""
        raise NotImplementedError

    @property
    def output_pending(self) -> int:
        """Bytes queued and not yet accepted by the kernel."""
        raise NotImplementedError

    @property
    def busy(self) -> bool:
        """True while the service still has work in flight for this connection (graceful stop waits)."""
        raise NotImplementedError

    @busy.setter
    def busy(self, value: bool) -> None:
        raise NotImplementedError


class Service:
    """Base class: override what the service needs.

    Class attributes describe it to the engine: ``name`` (used in logs and the listing printed at start-up),
    ``transport`` (``"tcp"`` or ``"udp"``), ``framed`` (False for a raw byte-stream service), ``prefix`` and
    ``max_request`` (the largest request frame accepted; a larger header closes the connection before any
    memory is allocated for it).  ``mirror = True`` declares that the reply to every request frame is that
    frame, byte for byte: the engine then checks each frame and sends it back straight from the decoder's
    memory, without calling ``frames_received`` or making an object per frame.
    """

    name = "service"
    transport = "tcp"
    framed = True
    mirror = False
    prefix = "!I"
    max_request = DEFAULT_MAX_REQUEST

    # -- TCP --------------------------------------------------------------------------------------------

    def connection_made(self, conn: Conn) -> None:
        """A client connected (greetings and handshakes start here)."""

    def frames_received(self, conn: Conn, frames: list[bytes]) -> list[bytes] | None:
        """Every request frame completed by one read, in order; return reply payloads (or None)."""
        return None

    def data_received(self, conn: Conn, data: bytes) -> bytes | None:
        """Unframed services: the bytes of one read; return bytes to send back (or None)."""
        return None

    def eof_received(self, conn: Conn) -> None:
        """The client ended its side of the stream.

        By default the replies still owed are sent and then the connection closes; a service whose protocol
        has no use for a half-closed client cancels its work here instead (and clears ``conn.busy``)."""

    def frame_error(self, conn: Conn, exc: FrameError) -> list[bytes] | None:
        """The client broke the framing (oversized, malformed, cut off or too slow a frame).

        Return frames to send before the connection is closed, where the protocol has a way to say so.
        """
        return None

    def output_drained(self, conn: Conn) -> None:
        """The connection's queued output fell below the low-water mark (resume producing)."""

    def connection_lost(self, conn: Conn) -> None:
        """The connection is gone: release whatever the service holds for it (children, files)."""

    # -- UDP --------------------------------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: Address) -> bytes | None:
        """Return the reply datagram (or None)."""
        return None

    # -- counting, for the metrics ---------------------------------------------------------------------

    def tally(self, event: str, n: int = 1) -> None:
        """Count an event the metrics report (``command:ok``, ``download``, ``download_bytes``): one dict add."""
        events: dict[str, int] = self.__dict__.setdefault("_events", {})
        events[event] = events.get(event, 0) + n

    def take_events(self) -> dict[str, int]:
        """The events counted since the last call (and forget them)."""
        return self.__dict__.pop("_events", None) or {}

    # -- lifetime -----------------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """The engine is stopping: stop starting new work (in-flight work is still waited for)."""

    def describe(self) -> str:
        """A few words for the start-up log."""
        return self.name
