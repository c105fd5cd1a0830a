"""The connection room: one TCP (or Unix) client -- its transport, its decoder, its queued output, its deadlines.

A :class:`Connection` is what a service sees (:class:`~servers.service.Conn`).  It reads through one read
strategy chosen at construction (:mod:`servers.readers`: framed, mirror or raw), over one transport
(:mod:`servers.transport`), and registers itself with the loop; the engine only accepts it, keeps it in its
table, sweeps it and tells it to stop.

Theory of operation
===================

* **Reading.**  While the connection waits for nothing but input (its interest is READ alone: the common
  case), the loop hands readiness straight to the strategy's ``on_readable``; otherwise to
  :meth:`Connection.on_events`, which reads (if reading is on), flushes (if the socket is writable) and closes
  on a hang-up that nothing will read.
* **Writing** is the output half's (:mod:`servers.output`, the base class): replies are sent at once, what
  the kernel does not take is queued, and write interest is registered only while something is queued.
* **Backpressure.**  Above ``high_water`` bytes queued, the connection stops being read until the queue
  drains; the service hears ``output_drained`` once it is below ``low_water``.
* **Deadlines**, checked by the engine's periodic sweep (:meth:`Connection.check_deadlines`): idle for longer
  than ``idle_timeout``, closed; a frame begun and not completed within ``frame_timeout`` (a client dribbling a
  byte a second), closed with the service's error frame; output that makes no progress for ``idle_timeout``
  (neither our sends nor the kernel's send queue move: the client stopped reading), reset -- even while the
  service has work in flight (a download).
* **First stages.**  A listener may put stages in front of the service (:attr:`Listener.stages
  <servers.listen.Listener.stages>`): a PROXY-protocol header, a TLS handshake.  Each is a factory that makes a
  :class:`~servers.readers.Reader` for the connection; the first reads from the start, and each, when done,
  calls :meth:`Connection.stage_done`, which starts the next or, after the last, picks the service's read
  strategy (over whatever transport the stages left in ``conn.transport``) and tells the service
  ``connection_made``.  A connection still in a stage has ``stage`` set (its name, for the logs); the sweep
  closes it once ``stage_deadline`` passes (``frame_timeout`` after the accept); a graceful stop closes it at
  once; the service hears nothing of a connection that never got past its stages.
* **Closing.**  A close after the last byte shuts our side first (``shutdown_write``) and lingers a second,
  reading and dropping what the client still sends, so that the client reads every reply before the end of
  the stream rather than a reset.  A graceful stop closes each connection at a frame boundary, once nothing
  is in flight and a look at the socket finds nothing more (:meth:`Connection.finish_when_quiet`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Callable

from fastframe import Decoder, encode_many
from fastframe.exceptions import FrameError, FrameTooLarge

from .counts import Counts
from .limits import Limits
from .loop import HUP_ERR, READ, WRITE, Handler, Loop, TimerHandle
from .output import Output
from .readers import DiscardReader, Reader, make_reader
from .service import Address, Service, Timer
from .transport import Transport

__all__ = ["Connection", "FrameTimeout", "Stage"]

log = logging.getLogger("fastframe.server")

_LINGER = 1.0  # seconds a gracefully closed connection may take to read our last replies
_READABLE = READ | HUP_ERR


Stage = Callable[["Connection"], Reader]
"""A first stage: makes the reader that runs it (give the factory a ``name`` attribute for the logs)."""


class FrameTimeout(FrameError):
    """A client started a frame and did not finish it within ``frame_timeout``."""


def frame_error_word(exc: FrameError) -> str:
    """How a framing error ends a connection, in the access log's words."""
    if isinstance(exc, FrameTimeout):
        return "frame_timeout"
    return "too_large" if isinstance(exc, FrameTooLarge) else "bad_frame"


class Connection(Output):
    """One client connection.  ``on_close(conn)`` tells its owner (the engine) that it is gone."""

    __slots__ = (
        "loop", "transport", "fd", "service", "prefix", "decoder", "reader", "state", "peer", "limits", "counts",
        "events", "closed", "close_after_flush", "user_paused", "lingering", "unsent", "frame_start",
        "frames_seen", "watched", "timers", "stage", "stage_deadline", "proxy", "end", "frames_out",
        "_busy", "_read_handler", "_on_close", "_stages", "_made",
    )  # fmt: skip

    def __init__(
        self,
        loop: Loop,
        transport: Transport,
        peer: Address,
        service: Service,
        limits: Limits | None = None,
        counts: Counts | None = None,
        on_close: Callable[[Connection], None] | None = None,
        stages: Sequence[Stage] = (),
    ) -> None:
        super().__init__(loop)
        self.loop = loop
        self.transport = transport
        self.fd = transport.fileno
        self.service = service
        self.prefix = service.prefix
        self.decoder = Decoder(service.prefix, service.max_request) if service.framed else None
        self.state: Any = None
        self.peer: Any = peer
        self.proxy: Address | None = None  # the balancer's address, once a PROXY header named the real peer
        self.end = "closed"  # how it ended, in the access log's words (see servers.accesslog)
        self.frames_out = 0  # frames sent by the framed strategy (a mirror's equal those received)
        self.limits = limits or Limits()
        self.counts = counts or Counts()
        self.events = 0  # the mask registered with the loop
        self.closed = False
        self.close_after_flush = False
        self.user_paused = False
        self.lingering = False  # our side is shut; reading only to see the client's end
        self.unsent = -1  # the kernel's send queue at the last sweep that saw output pending (-1: unknown)
        self.frame_start = 0.0  # when the sweep first saw an unfinished frame make no progress (0: none)
        self.frames_seen = 0  # decoder.completed at that moment
        self.watched: set[int] = set()
        self.timers: set[TimerHandle] = set()  # scheduled for this connection: cancelled when it closes
        self._busy = False
        self._on_close = on_close
        self._stages = list(stages)
        self._made = False  # the service heard connection_made
        self.stage = ""
        self.stage_deadline = 0.0
        self.reader: Reader = DiscardReader(self, loop, transport, service) if stages else make_reader(self)
        self._read_handler: Handler = self.reader.on_readable

    def start(self) -> None:
        """Start reading: the first stage, or the service (which may greet, or close at once)."""
        self.events = READ
        self.loop.add(self.fd, READ, self._read_handler)
        if self._stages:
            self.stage_deadline = self.loop.now + self.limits.frame_timeout
            self.stage_done()
        else:
            self._made_for_service()

    def stage_done(self) -> None:
        """The current first stage is done (or none has started): start the next, or hand over to the service."""
        if self.closed:
            return
        if self._stages:
            factory = self._stages.pop(0)
            self.stage = getattr(factory, "name", "stage")
            reader = factory(self)
            if not self.closed:  # (a stage may refuse the connection outright)
                self.set_reader(reader)
            return
        self.stage = ""
        self.fd = self.transport.fileno
        self.set_reader(make_reader(self))
        self._made_for_service()
        if not self.closed and self.transport.pending():
            self.loop.call_soon(self.read_now)  # bytes a stage's layer already holds: the poller will not say

    def _made_for_service(self) -> None:
        self._made = True
        try:
            self.service.connection_made(self)
        except Exception:
            log.exception("%s: connection_made failed", self.service.name)
            self.close_now()

    def set_reader(self, reader: Reader) -> None:
        """Read with another strategy from now on (a first stage handing over, or the linger after a close)."""
        self.reader = reader
        self._read_handler = reader.on_readable
        if self.events == READ:
            self.loop.set_handler(self.fd, self._read_handler)

    # -- the Conn interface -----------------------------------------------------------------------------

    def send_frames(self, payloads: list[bytes]) -> None:
        if payloads and not self.closed:
            self.frames_out += len(payloads)
            self.queue(encode_many(payloads, self.prefix))

    def send_raw(self, data: bytes) -> None:
        if data and not self.closed:
            self.queue(data)

    def watch(self, fd: int, callback: Callable[[], None]) -> None:
        def on_ready(events: int) -> None:
            if self.closed:
                return
            try:
                callback()
            except Exception:
                self.service_failed("watch callback")

        self.loop.add(fd, READ, on_ready)
        self.watched.add(fd)

    def unwatch(self, fd: int) -> None:
        if fd in self.watched:
            self.watched.discard(fd)
            self.loop.remove(fd)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return self.loop.call_later(delay, callback, self.timers)

    def acquire(self, name: str, limit: int) -> bool:
        return self.counts.acquire(name, limit)

    def release(self, name: str) -> None:
        self.counts.release(name)

    def set_max_frame(self, limit: int) -> None:
        if self.decoder is not None:
            self.decoder.max_frame = limit

    def pause_reading(self) -> None:
        self.user_paused = True
        self._update_events()

    def resume_reading(self) -> None:
        self.user_paused = False
        self._update_events()

    def close(self, flush: bool = True) -> None:
        if self.closed:
            return
        if flush and (self.out or self.sending is not None):
            self.close_after_flush = True
            self._update_events()
        else:
            self.close_now()

    @property
    def output_pending(self) -> int:
        return self.out_size

    @property
    def busy(self) -> bool:
        return self._busy or self.sending is not None

    @busy.setter
    def busy(self, value: bool) -> None:
        self._busy = value

    def _work_in_flight(self) -> bool:
        return self._busy

    def _update_events(self) -> None:
        if self.closed:
            return
        sending = self.sending is not None
        want = WRITE if self.out or sending else 0
        if not (self.user_paused or sending or self.close_after_flush) and (
            self.out_size <= self.limits.high_water or self.lingering
        ):
            want |= READ
        if want != self.events:
            self.events = want
            self.loop.modify(self.fd, want, self._read_handler if want == READ else self.on_events)

    # -- events -----------------------------------------------------------------------------------------

    def on_events(self, events: int) -> None:
        """Readiness while the connection waits for more than input: read, flush, or see a hang-up."""
        if events & _READABLE and self.events & READ:
            self.reader.on_readable(events)
            if self.closed:
                return
        if events & WRITE:
            self.flush()
        elif events & HUP_ERR and not self.events & READ:
            self.close_now()

    def read_now(self) -> None:
        """Read what the socket holds now, if reading is on (a graceful stop answers what was received)."""
        if not self.closed and self.events & READ and not self.lingering:
            self.reader.on_readable(READ)

    def end_of_stream(self) -> None:
        """The client ended its side: the service hears it, owed replies still go out, then the connection closes."""
        if self.lingering:
            self.close_now()
            return
        self.end = "eof"
        if self.decoder is not None:
            try:
                self.decoder.close()
            except FrameError as exc:
                log.info("%s: %s closed inside a frame: %s", self.service.name, self.peer, exc)
        try:
            self.service.eof_received(self)
        except Exception:
            self.service_failed("eof_received")
            return
        if self.busy or self.out:
            # The client half-closed with replies still owed (a command still streaming): finish them first.
            self.close_after_flush = True
            self._update_events()
            return
        self.close_now()

    def frame_error(self, exc: FrameError) -> None:
        """The client broke the framing: the service may say why, then the connection closes after its output."""
        log.info("%s: closing %s: %s", self.service.name, self.peer, exc)
        self.end = frame_error_word(exc)
        try:
            final = self.service.frame_error(self, exc)
        except Exception:
            self.service_failed("frame_error")
            return
        if final:
            self.send_frames(final)
        self.close(flush=True)

    def read_failed(self, exc: OSError) -> None:
        log.debug("%s: recv from %s failed: %s", self.service.name, self.peer, exc)
        self.end = "reset"
        self.close_now()

    def send_failed(self, exc: OSError) -> None:
        log.debug("%s: send to %s failed: %s", self.service.name, self.peer, exc)
        self.end = "reset"
        self.close_now()

    def service_failed(self, where: str) -> None:
        log.exception("%s: %s failed; closing %s", self.service.name, where, self.peer)
        self.end = "error"
        self.close_now()

    # -- deadlines and stopping ---------------------------------------------------------------------------

    def check_deadlines(self, now: float) -> None:
        """The sweep's look at this connection: stalled output, an unfinished frame, idleness."""
        limits = self.limits
        if self.stage:
            if now > self.stage_deadline:
                log.info("%s: closing %s: %s not finished within %g s", self.service.name, self.peer, self.stage,
                         limits.frame_timeout)  # fmt: skip
                self.end = "proxy_error" if "PROXY" in self.stage else "frame_timeout"
                self.close_now()
            return
        if self.out or self.sending is not None:
            # Output waits for the client.  The loop sees progress only when the kernel takes more, which can be
            # seconds after the client started reading again (writability needs a third of the send buffer
            # free), so the send queue's length counts too: if it moved, the client is reading.
            unsent = self.transport.unsent()
            if unsent != self.unsent:
                self.unsent = unsent
                self.wrote = now
            elif now - self.wrote > limits.idle_timeout:
                # Busy or not: a client that stopped reading holds its buffers (and a file) for nothing.
                log.info("%s: closing %s: it read nothing for %.0f s", self.service.name, self.peer, now - self.wrote)
                self.end = "stalled"
                self.abort()
                return
        if self.lingering or self.busy:
            return
        # Kept off the per-read path: a connection holding part of a frame while its decoder completed nothing
        # since the sweep that first saw it is cut after frame_timeout (so between frame_timeout and
        # frame_timeout plus one sweep interval after the frame began).
        decoder = self.decoder
        if decoder is not None and decoder.pending:
            done = decoder.completed
            if not self.frame_start or done != self.frames_seen:
                self.frame_start = now
                self.frames_seen = done
            elif now - self.frame_start > limits.frame_timeout:
                self.frame_error(FrameTimeout(f"frame not completed within {limits.frame_timeout:g} s"))
                return
        else:
            self.frame_start = 0.0
        if now - self.last > limits.idle_timeout:
            log.info("%s: closing %s: idle for %.0f s", self.service.name, self.peer, now - self.last)
            self.end = "idle"
            self.close_now()

    def finish_when_quiet(self) -> bool:
        """While stopping gracefully: close at a frame boundary with nothing in flight and nothing more received.
        True if a look found input (it was read: answered first, closed on a later look)."""
        if self.closed or self.lingering or self.close_after_flush or self.busy or self.out:
            return False
        if self.stage:
            self.end = "shutdown"
            self.close_now()  # it never reached the service: nothing is owed
            return False
        if self.decoder is not None and self.decoder.pending:
            return False  # wait for the frame the client is sending
        if self.transport.has_input():
            self.reader.on_readable(READ)
            return True
        self.end = "shutdown"
        self._finish_close()
        return False

    def _finish_close(self) -> None:
        """Close after the last byte went out: shut the write side, then let the client read it all."""
        if self.lingering:
            return
        try:
            self.transport.shutdown_write()
        except OSError:
            self.close_now()
            return
        self.lingering = True
        self.set_reader(DiscardReader(self, self.loop, self.transport, self.service))
        self.close_after_flush = False
        self.user_paused = False
        self._update_events()
        self.call_later(_LINGER, self.close_now)

    def abort(self) -> None:
        """Close with a reset: what the kernel still holds for this client is thrown away, not sent."""
        self.transport.reset_on_close()
        self.close_now()

    def close_now(self) -> None:
        """Close at once: output still queued is dropped, a file being sent fails, the service hears the loss."""
        if self.closed:
            return
        self.closed = True
        self.loop.remove(self.fd)
        for fd in list(self.watched):
            self.unwatch(fd)
        for timer in list(self.timers):
            timer.cancel()
        record = self.drop_output()
        if self._on_close is not None:
            self._on_close(self)  # (before the socket closes: the owner may still ask it for its totals)
        self.transport.close()
        if record is not None:
            try:
                record.done(ConnectionError("connection closed during sendfile"))
            except Exception:
                log.exception("%s: sendfile callback failed", self.service.name)
        if not self._made:
            return
        try:
            self.service.connection_lost(self)
        except Exception:
            log.exception("%s: connection_lost failed", self.service.name)

    def __repr__(self) -> str:
        return f"<Connection {self.service.name} fd={self.fd} peer={self.peer}>"
