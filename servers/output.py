"""A connection's output: the queue of bytes the kernel has not taken yet, the file being sent, and flushing.

Part of the connection room: :class:`Output` is the base class of :class:`~servers.connection.Connection`, which
supplies the transport, the loop, the limits and the service, and decides the interest mask and the close.

Replies to a read are sent at once by the read strategy; what the kernel does not take comes here
(:meth:`Output.queue_rest`), and only then is write interest registered (the connection drops it again as soon
as the queue is empty).  Output a service queues from elsewhere (a pipe callback, a timer) is flushed once, at
the end of the loop's iteration (``loop.call_soon``).  A file goes out with ``sendfile`` after the queued bytes
(:class:`SendfileRecord`), 8 MiB per call at most so that one download cannot hog a wake-up.  Every send
records the time (``wrote``), which the stalled-output deadline compares against.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from typing import Any, Callable

from .limits import Limits
from .loop import Loop
from .service import Address, Conn, Service
from .transport import Transport

__all__ = ["Output", "SendfileRecord"]

log = logging.getLogger("fastframe.server")

try:
    _IOV_MAX = max(16, min(os.sysconf("SC_IOV_MAX"), 1024))
except (AttributeError, ValueError, OSError):  # pragma: no cover
    _IOV_MAX = 16

_SENDFILE_CHUNK = 8 * 1024 * 1024  # at most this much per sendfile() call, so one download cannot hog a wake-up


class SendfileRecord:
    """A ``sendfile`` in progress: the file, where the next byte is, how many are left, whom to tell at the end."""

    __slots__ = ("fd", "offset", "remaining", "done")

    def __init__(self, fd: int, offset: int, remaining: int, done: Callable[[BaseException | None], None]) -> None:
        self.fd = fd
        self.offset = offset
        self.remaining = remaining
        self.done = done


class Output(Conn):
    """The output half of a connection (see the module docstring)."""

    __slots__ = ("out", "out_size", "sending", "flush_scheduled", "wrote", "last")

    # Supplied by the connection, which also decides the interest mask and how to close.
    loop: Loop
    transport: Transport
    limits: Limits
    service: Service
    peer: Address
    closed: bool
    close_after_flush: bool
    _update_events: Callable[[], None]
    _finish_close: Callable[[], None]
    _work_in_flight: Callable[[], bool]
    close_now: Callable[[], None]
    send_failed: Callable[[OSError], None]
    service_failed: Callable[[str], None]

    def __init__(self, loop: Loop) -> None:
        self.out: deque[Any] = deque()  # buffers not yet taken by the kernel
        self.out_size = 0
        self.sending: SendfileRecord | None = None
        self.flush_scheduled = False  # a flush is due at the end of this iteration
        self.wrote = loop.now  # last write progress, or when output became pending after none was
        self.last = loop.now  # last read or write progress (the idle deadline's clock)

    def drop_output(self) -> SendfileRecord | None:
        """Forget every queued byte (the connection is closing); return the file that was being sent, if any."""
        record = self.sending
        self.sending = None
        self.out.clear()
        self.out_size = 0
        return record

    def sendfile(self, fd: int, offset: int, count: int, done: Callable[[BaseException | None], None]) -> None:
        if self.sending is not None:
            raise RuntimeError("a sendfile is already in progress on this connection")
        if self.closed:
            done(ConnectionError("connection closed"))
            return
        if not self.out:
            self.wrote = self.loop.now
        self.sending = SendfileRecord(fd, offset, count, done)
        self._schedule_flush()

    def queue(self, data: Any) -> None:
        """Queue ``data`` behind what is queued; it goes out at the end of this iteration at the latest."""
        if not self.out and self.sending is None:
            self.wrote = self.loop.now
        self.out.append(data)
        self.out_size += len(data)
        self._schedule_flush()

    def queue_rest(self, rest: Any) -> None:
        """What the kernel did not take of a send: queue it (behind anything queued) and wait for writability."""
        if self.out:
            self.queue(rest)
            return
        self.out.append(rest)
        self.out_size += len(rest)
        self.wrote = self.loop.now
        self._update_events()

    def send_now(self, data: bytes) -> None:
        """Send at once if nothing is queued ahead (one send per wake-up, the common case), else queue."""
        if self.out or self.sending is not None:
            self.queue(data)
            return
        try:
            sent = self.transport.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self.send_failed(exc)
            return
        if sent < len(data):
            self.queue_rest(memoryview(data)[sent:])

    def _schedule_flush(self) -> None:
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self.flush_scheduled = False
        if not self.closed:
            self.flush()

    def flush(self) -> None:
        """Write what is queued, then any file being sent; keep write interest only if something is left."""
        had_output = self.out_size
        if self.out and not self._send_queued():
            return
        if not self.out and self.sending is not None and not self._sendfile_step():
            return
        if self.close_after_flush and not self.out and self.sending is None and not self._work_in_flight():
            self._finish_close()
            return
        self._update_events()
        if had_output and self.out_size <= self.limits.low_water:
            try:
                self.service.output_drained(self)
            except Exception:
                self.service_failed("output_drained")

    def _send_queued(self) -> bool:
        """Send from the queue until the kernel takes less than offered; False if the connection was closed."""
        out = self.out
        transport = self.transport
        while out:
            try:
                if len(out) == 1:
                    sent = transport.send(out[0])
                else:
                    sent = transport.send_many([out[i] for i in range(min(len(out), _IOV_MAX))])
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self.send_failed(exc)
                return False
            self.out_size -= sent
            self.last = self.wrote = self.loop.now
            while sent:
                head = out[0]
                if sent >= len(head):
                    sent -= len(head)
                    out.popleft()
                else:
                    out[0] = memoryview(head)[sent:]
                    sent = 0
            if out:
                break  # the kernel took less than offered: wait for writability
        return True

    def _sendfile_step(self) -> bool:
        """Advance the file being sent; False if the connection was closed."""
        record = self.sending
        assert record is not None
        sendfile = self.transport.sendfile
        while record.remaining > 0:
            try:
                sent = sendfile(record.fd, record.offset, min(record.remaining, _SENDFILE_CHUNK))
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                log.info("%s: sendfile to %s failed: %s", self.service.name, self.peer, exc)
                return self._sendfile_failed(record, exc)
            if sent == 0:
                early = EOFError(f"file ended {record.remaining} bytes early")
                log.warning("%s: sendfile to %s: %s", self.service.name, self.peer, early)
                return self._sendfile_failed(record, early)
            record.offset += sent
            record.remaining -= sent
            self.last = self.wrote = self.loop.now
            if sent < _SENDFILE_CHUNK and record.remaining:
                break  # socket buffer full
        if record.remaining == 0:
            self.sending = None
            self._tell(record.done, None)
            return not self.closed
        return True

    def _sendfile_failed(self, record: SendfileRecord, exc: BaseException) -> bool:
        self.sending = None
        self._tell(record.done, exc)
        self.close_now()
        return False

    def _tell(self, done: Callable[[BaseException | None], None], exc: BaseException | None) -> None:
        try:
            done(exc)
        except Exception:
            self.service_failed("callback")
