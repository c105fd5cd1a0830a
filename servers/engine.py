"""The select engine: one process, one epoll loop, every service on its own socket.

Theory of operation
===================

Every file descriptor the engine cares about is registered in one level-triggered epoll set (``poll`` where
epoll does not exist): listening sockets, UDP sockets, client connections, the fds services ask to watch
(a child's pipes) and the signal wake-up pipe.  One iteration of the loop is one ``poll()``:

* a readable connection gets one ``recv_into`` straight into its decoder's memory; the frames it completes go
  to the service in one call, and the replies come back as a list that is encoded into one buffer and sent
  with one ``send`` -- no per-frame system call, no per-frame object beyond the payloads themselves;
* what the kernel does not take is queued, and only then is write interest registered; it is dropped again
  as soon as the queue is empty.  Output a service queues from elsewhere (a pipe callback, a timer) is
  flushed once, at the end of the iteration;
* a connection whose queued output passes the high-water mark stops being read until it drains below the
  low-water mark (backpressure: a client that does not read cannot make the server buffer without bound);
* a periodic sweep closes connections idle for longer than ``idle_timeout`` and those that started a frame
  more than ``frame_timeout`` ago without finishing it (a client dribbling a byte a second is cut off); output
  that makes no progress for ``idle_timeout`` (a client that stopped reading: neither the loop's sends nor the
  kernel's send queue move) resets the connection, even while the service has work in flight (a download);
* signals only record themselves and write to the wake-up pipe; the engine acts on them in the loop.  SIGTERM stops
  gracefully: the connections waiting in the accept queues are taken, listeners close, every request already
  received is answered, each connection is closed at a frame boundary once a look at its socket finds
  nothing more (write side first, so the client reads every reply before the EOF), and the loop ends within
  ``graceful_timeout``.  SIGINT and SIGQUIT stop at once.  No catchable signal ends the process
  silently: the loop hands each to ``handle_<signal>`` (SIGUSR1 to :meth:`SelectEngine.handle_usr1`), every
  other one is logged and ignored (see :mod:`servers.signals`).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import signal
import socket
import struct
import termios
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Set

import fastframe
from fastframe.exceptions import FrameError

from .counts import Counts, WorkerShare
from .limits import Limits
from .listen import Listener
from .loop import HUP_ERR, READ, WRITE, Loop, TimerHandle
from .service import Address, Conn, Service, Timer
from .signals import IGNORED_SIGNALS, SignalRelay, dispatch

__all__ = ["Connection", "FrameTimeout", "Limits", "Listener", "SelectEngine"]

log = logging.getLogger("fastframe.server")

try:
    _IOV_MAX = max(16, min(os.sysconf("SC_IOV_MAX"), 1024))
except (AttributeError, ValueError, OSError):  # pragma: no cover
    _IOV_MAX = 16

_SENDFILE_CHUNK = 8 * 1024 * 1024  # at most this much per sendfile() call, so one download cannot hog a wake-up
_RAW_READ = 256 * 1024
_LINGER = 1.0  # seconds a gracefully closed connection may take to read our last replies
# Out of descriptors (or kernel memory), accept() fails for every connection waiting in the queue until something
# is freed: stop polling the listeners for a while, longer each time in a row it fails, and say so rarely.
_ACCEPT_BACKOFF_MIN = 0.1
_ACCEPT_BACKOFF_MAX = 1.0
_RESOURCE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_ABORT_LINGER = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets the connection
_DRAIN_ACCEPT_ROUNDS = 64  # a graceful stop takes at most 64 x 64 connections from a listener's accept queue
_BALANCE_RECHECK = 0.01  # a prefork worker out of line looks at the table again this often
_LOG_EVERY = 10.0  # seconds between two log lines about the same recurring condition


class FrameTimeout(FrameError):
    """A client started a frame and did not finish it within ``frame_timeout``."""


class _LogThrottle:
    """One log line per ``interval`` seconds for a condition that may recur thousands of times a second; the next
    line says how many were left out."""

    def __init__(self, interval: float = _LOG_EVERY) -> None:
        self.interval = interval
        self._next = 0.0
        self._suppressed = 0

    def log(self, level: int, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now < self._next:
            self._suppressed += 1
            return
        if self._suppressed:
            msg += " (and %d more time(s) in the last %.0f s)"
            args += (self._suppressed, self.interval)
            self._suppressed = 0
        self._next = now + self.interval
        log.log(level, msg, *args)


def _has_input(sock: socket.socket) -> bool:
    """True if a read would not block: bytes waiting, an end of stream or an error."""
    try:
        sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True
    return True


def _kernel_unsent(fd: int) -> int:
    """Bytes in a stream socket's send queue, not yet acknowledged by the peer (-1 if the kernel will not say)."""
    try:
        return struct.unpack("i", fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0"))[0]  # type: ignore[no-any-return]
    except OSError:
        return -1


class Connection(Conn):
    """One TCP client: its socket, its decoder, its queued output and its deadlines."""

    __slots__ = (
        "engine", "sock", "fd", "service", "decoder", "read", "wire", "relay", "handle", "prefix", "state", "peer",
        "out", "out_size", "events", "dirty", "closed", "close_after_flush",
        "user_paused", "last", "wrote", "unsent", "frame_start", "frames_seen", "file", "watched", "timers", "_busy",
        "lingering",
    )  # fmt: skip

    def __init__(self, engine: "SelectEngine", sock: socket.socket, peer: Address, service: Service) -> None:
        self.engine = engine
        self.sock = sock
        self.fd = sock.fileno()
        self.service = service
        self.prefix = service.prefix
        self.decoder = fastframe.Decoder(service.prefix, service.max_request) if service.framed else None
        # Bound once here, called once per wake-up: one recv into the decoder, one call into the service
        # (or, for a service whose replies are its requests, one relay of the checked frames).
        self.read = self.decoder.read_from if self.decoder is not None else None
        mirror = self.decoder is not None and service.mirror
        self.wire = self.decoder.read_wire_from if mirror else None  # type: ignore[union-attr]
        self.relay = self.decoder.relay if mirror else None  # type: ignore[union-attr]
        self.handle = service.frames_received
        self.state: Any = None
        self.peer = peer
        self.out: Deque[Any] = deque()  # buffers not yet taken by the kernel
        self.out_size = 0
        self.events = 0  # the mask registered with the poller
        self.dirty = False  # a flush is due at the end of this iteration
        self.closed = False
        self.close_after_flush = False
        self.user_paused = False
        self.last = engine.now  # last read (or write progress)
        self.wrote = engine.now  # last write progress, or when output became pending after none was
        self.unsent = -1  # the kernel's send queue at the last sweep that saw output pending (-1: unknown)
        self.frame_start = 0.0  # when the sweep first saw an unfinished frame make no progress (0: none)
        self.frames_seen = 0  # decoder.completed at that moment
        self.file: Optional[List[Any]] = None  # [fd, offset, remaining, done] of a sendfile in progress
        self.watched: Set[int] = set()
        self.timers: Set[TimerHandle] = set()  # scheduled for this connection: cancelled when it closes
        self._busy = False
        self.lingering = False

    # -- the Conn interface -----------------------------------------------------------------------------

    def send_frames(self, payloads: List[bytes]) -> None:
        if payloads and not self.closed:
            self._queue(fastframe.encode_many(payloads, self.prefix))

    def send_raw(self, data: bytes) -> None:
        if data and not self.closed:
            self._queue(data)

    def _queue(self, data: Any) -> None:
        if not self.out and self.file is None:
            self.wrote = self.engine.now
        self.out.append(data)
        self.out_size += len(data)
        if not self.dirty:
            self.dirty = True
            self.engine.loop.call_soon(self._flush_soon)

    def sendfile(self, fd: int, offset: int, count: int, done: Callable[[Optional[BaseException]], None]) -> None:
        if self.file is not None:
            raise RuntimeError("a sendfile is already in progress on this connection")
        if self.closed:
            done(ConnectionError("connection closed"))
            return
        if not self.out:
            self.wrote = self.engine.now
        self.file = [fd, offset, count, done]
        if not self.dirty:
            self.dirty = True
            self.engine.loop.call_soon(self._flush_soon)

    def watch(self, fd: int, callback: Callable[[], None]) -> None:
        self.engine._watch(self, fd, callback)

    def unwatch(self, fd: int) -> None:
        self.engine._unwatch(self, fd)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return self.engine.loop.call_later(delay, callback, self.timers)

    def _flush_soon(self) -> None:
        self.dirty = False
        if not self.closed:
            self.engine._flush(self)

    def on_events(self, events: int) -> None:
        self.engine._on_events(self, events)

    def acquire(self, name: str, limit: int) -> bool:
        return self.engine.counts.acquire(name, limit)

    def release(self, name: str) -> None:
        self.engine.counts.release(name)

    def set_max_frame(self, limit: int) -> None:
        if self.decoder is not None:
            self.decoder.max_frame = limit

    def pause_reading(self) -> None:
        self.user_paused = True
        self.engine._update_events(self)

    def resume_reading(self) -> None:
        self.user_paused = False
        self.engine._update_events(self)

    def close(self, flush: bool = True) -> None:
        if self.closed:
            return
        if flush and (self.out or self.file is not None):
            self.close_after_flush = True
            self.engine._update_events(self)
        else:
            self.engine._close(self)

    @property
    def output_pending(self) -> int:
        return self.out_size

    @property
    def busy(self) -> bool:
        return self._busy or self.file is not None

    @busy.setter
    def busy(self, value: bool) -> None:
        self._busy = value

    def __repr__(self) -> str:
        return f"<Connection {self.service.name} fd={self.fd} peer={self.peer}>"


class SelectEngine:
    """Serve ``listeners`` from one process until stopped.

    ``balancer`` (prefork workers only: this worker's share of the master's table) decides whether this process
    should accept the next connection, and holds the server-wide counts (``max_connections``, the command
    service's ``max_commands``) that every worker shares; a single process keeps its own.  ``parent_pid``
    (prefork workers): the master's PID; the worker stops gracefully once its parent changes.
    """

    #: The signals the engine handles while it runs (block them before, pass them to ``run(unblock_signals=)``).
    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1, *IGNORED_SIGNALS)

    def __init__(
        self,
        listeners: Sequence[Listener],
        limits: Optional[Limits] = None,
        balancer: Optional[WorkerShare] = None,
        exclusive_accept: bool = False,
        parent_pid: int = 0,
    ) -> None:
        self.listeners = list(listeners)
        self.limits = limits or Limits()
        self.balancer = balancer
        self.counts: Counts = balancer if balancer is not None else Counts()
        self.loop = Loop()
        self._exclusive = self.loop.exclusive if exclusive_accept else 0
        self._conns: Dict[int, Connection] = {}
        self._draining = False
        self._deadline = 0.0
        self._relay: Optional[SignalRelay] = None
        self._accept_paused = False
        self._armed: Set[int] = set()  # listening TCP sockets registered with the poller now
        self._acceptors: Dict[int, Callable[[int], bool]] = {}  # listening fd -> accept(up to n): queue empty?
        self._accept_backoff = 0.0  # the current pause after accept() ran out of resources (0: none)
        self._accept_blocked_until = 0.0  # no accept before this (monotonic) time
        self._resume_timer: Optional[TimerHandle] = None
        self._accept_failures = _LogThrottle()
        self._limit_reached = _LogThrottle()
        self._listening = False
        self._services: List[Service] = []
        for listener in self.listeners:
            if listener.service not in self._services:
                self._services.append(listener.service)
        self.exit_code = 0
        self.parent_pid = parent_pid

    @property
    def now(self) -> float:
        return self.loop.now

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return self.loop.call_later(delay, callback)

    @property
    def scheduled_timers(self) -> int:
        """Entries in the timer heap (cancelled ones included until they are dropped)."""
        return self.loop.scheduled_timers

    # -- accepting --------------------------------------------------------------------------------------

    def _accept_exhausted(self, exc: OSError) -> None:
        """accept() ran out of descriptors or memory: the connection stays queued; try again after a back-off
        that doubles while the failures go on (a freed connection ends it early)."""
        self._accept_backoff = min(_ACCEPT_BACKOFF_MAX, max(_ACCEPT_BACKOFF_MIN, self._accept_backoff * 2))
        self._accept_blocked_until = self.now + self._accept_backoff
        self._accept_failures.log(
            logging.ERROR, "accept failed (%s); %d connection(s) open, retrying in %.1f s",
            exc.strerror or exc, len(self._conns), self._accept_backoff,
        )  # fmt: skip
        self._pause_accepting(self._accept_backoff)

    # -- registration ---------------------------------------------------------------------------------

    def _start_listening(self) -> None:
        for listener in self.listeners:
            sock = listener.sock
            sock.setblocking(False)
            fd = sock.fileno()
            if sock.type == socket.SOCK_DGRAM:
                self.loop.add(fd, READ, self._make_datagram_handler(listener))
            else:
                self.loop.add(fd, READ | self._exclusive, self._make_accept_handler(listener))
                self._armed.add(fd)
        self._listening = True

    # Which TCP listeners are registered with the poller is tracked per listener (``_armed``), because a pause
    # can come in the middle of one wake-up's events: a listener reported ready in the same batch is still
    # served (its readiness is a wake-up the kernel gave this process and no other, with EPOLLEXCLUSIVE: the
    # loop keeps its handler while it is suspended), and only these two consult the set, so nothing is
    # suspended twice or resumed while polled.

    def _arm(self, fd: int) -> None:
        if fd not in self._armed:
            self.loop.resume(fd, READ | self._exclusive)
            self._armed.add(fd)

    def _disarm(self, fd: int) -> None:
        if fd in self._armed:
            self._armed.discard(fd)
            self.loop.suspend(fd)

    def _pause_accepting(self, retry_in: float) -> None:
        if not self._accept_paused:
            self._accept_paused = True
            for fd in list(self._armed):
                self._disarm(fd)
        self._retry_accepting(retry_in)

    def _retry_accepting(self, delay: float) -> None:
        if self._resume_timer is not None:
            self._resume_timer.cancel()
        self._resume_timer = self.loop.call_later(delay, self._maybe_resume_accepting)

    def _maybe_resume_accepting(self) -> None:
        """Resume once the resource back-off is over and (prefork) the balancer agrees; else look again later."""
        self._resume_timer = None
        if not self._accept_paused or not self._listening:
            return
        blocked_until = self._accept_blocked_until
        if blocked_until:
            if self.loop.now < blocked_until:
                self._retry_accepting(blocked_until - self.loop.now)
                return
            self._accept_blocked_until = 0.0
        if self.balancer is not None and not self.balancer.may_accept():
            self._retry_accepting(_BALANCE_RECHECK)
            return
        self._accept_paused = False
        for listener in self.listeners:
            if listener.sock.type == socket.SOCK_STREAM:
                self._arm(listener.sock.fileno())

    def _stop_listening(self) -> None:
        if not self._listening:
            return
        self._listening = False
        self._acceptors.clear()
        self._armed.clear()
        for listener in self.listeners:
            self.loop.remove(listener.sock.fileno())
            listener.sock.close()
        self._accept_paused = False

    def _make_accept_handler(self, listener: Listener) -> Callable[[int], None]:
        lsock = listener.sock
        service = listener.service
        limits = self.limits
        balancer = self.balancer
        # A prefork worker takes one connection per wake-up and then steps back in line, so that accepts
        # rotate over the workers instead of going to whichever happens to be awake.
        batch = 1 if balancer is not None else 64
        loop = self.loop
        mask = READ | self._exclusive
        fd = lsock.fileno()
        armed = self._armed
        acquire = self.counts.acquire

        def accept(limit: int) -> bool:
            """Accept up to ``limit`` connections; True once the queue is empty (or accept() cannot go on)."""
            for _ in range(limit):
                try:
                    sock, addr = lsock.accept()
                except (BlockingIOError, InterruptedError):
                    return True
                except OSError as exc:
                    if exc.errno in _RESOURCE_ERRORS:
                        self._accept_exhausted(exc)
                    elif exc.errno != errno.ECONNABORTED:
                        log.warning("accept failed: %s", exc)
                    return True
                if self._accept_backoff:
                    self._accept_backoff = 0.0
                if not acquire("connections", limits.max_connections):
                    self._limit_reached.log(
                        logging.WARNING, "connection limit (%d) reached; refusing %s", limits.max_connections, addr
                    )
                    sock.close()
                    continue
                self._add_connection(sock, addr, service)
            return False

        def on_accept(events: int) -> None:
            accept(batch)
            if balancer is not None and self._listening:
                if not balancer.may_accept():
                    self._pause_accepting(_BALANCE_RECHECK)
                elif self._exclusive and fd in armed:
                    loop.requeue(fd, mask)  # to the back of the kernel's queue of waiters

        self._acceptors[fd] = accept
        return on_accept

    def _make_datagram_handler(self, listener: Listener) -> Callable[[int], None]:
        sock = listener.sock
        service = listener.service

        def on_datagram(events: int) -> None:
            for _ in range(64):
                try:
                    data, addr = sock.recvfrom(65535)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:
                    log.debug("%s: recvfrom failed: %s", service.name, exc)
                    return
                try:
                    reply = service.datagram_received(data, addr)
                except Exception:
                    log.exception("%s: datagram handler failed", service.name)
                    continue
                if reply is not None:
                    try:
                        sock.sendto(reply, addr)
                    except OSError as exc:
                        log.debug("%s: sendto %s failed: %s", service.name, addr, exc)

        return on_datagram

    def _add_connection(self, sock: socket.socket, addr: Address, service: Service) -> None:
        sock.setblocking(False)
        if sock.family != socket.AF_UNIX:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        conn = Connection(self, sock, addr, service)
        self._conns[conn.fd] = conn
        conn.events = READ
        self.loop.add(conn.fd, READ, conn.on_events)
        try:
            service.connection_made(conn)
        except Exception:
            log.exception("%s: connection_made failed", service.name)
            self._close(conn)

    # -- connections ----------------------------------------------------------------------------------

    def _update_events(self, conn: Connection) -> None:
        if conn.closed:
            return
        want = 0
        if conn.out or conn.file is not None:
            want = WRITE
        if not (conn.user_paused or conn.file is not None or conn.close_after_flush) and (
            conn.out_size <= self.limits.high_water or conn.lingering
        ):
            want |= READ
        if want != conn.events:
            conn.events = want
            self.loop.modify(conn.fd, want, conn.on_events)

    def _close(self, conn: Connection) -> None:
        if conn.closed:
            return
        conn.closed = True
        self._conns.pop(conn.fd, None)
        self.loop.remove(conn.fd)
        for fd in list(conn.watched):
            self._unwatch(conn, fd)
        for timer in list(conn.timers):
            timer.cancel()
        file = conn.file
        conn.file = None
        conn.out.clear()
        conn.out_size = 0
        try:
            conn.sock.close()
        except OSError:
            pass
        self.counts.release("connections")
        if self._accept_paused:
            if self._accept_blocked_until:
                self._accept_blocked_until = self.now  # a descriptor is free: the queue may move again
            self._retry_accepting(0.0)
        if file is not None:
            try:
                file[3](ConnectionError("connection closed during sendfile"))
            except Exception:
                log.exception("%s: sendfile callback failed", conn.service.name)
        try:
            conn.service.connection_lost(conn)
        except Exception:
            log.exception("%s: connection_lost failed", conn.service.name)

    def _abort(self, conn: Connection) -> None:
        """Close with a reset: what the kernel still holds for this client is thrown away, not sent."""
        try:
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _ABORT_LINGER)
        except OSError:
            pass
        self._close(conn)

    def _service_failed(self, conn: Connection, where: str) -> None:
        log.exception("%s: %s failed; closing %s", conn.service.name, where, conn.peer)
        self._close(conn)

    def _frame_error(self, conn: Connection, exc: FrameError) -> None:
        log.info("%s: closing %s: %s", conn.service.name, conn.peer, exc)
        try:
            final = conn.service.frame_error(conn, exc)
        except Exception:
            self._service_failed(conn, "frame_error")
            return
        if final:
            conn.send_frames(final)
        conn.close(flush=True)

    def _on_eof(self, conn: Connection) -> None:
        decoder = conn.decoder
        if conn.lingering:
            self._close(conn)
            return
        if decoder is not None:
            try:
                decoder.close()
            except FrameError as exc:
                log.info("%s: %s closed inside a frame: %s", conn.service.name, conn.peer, exc)
        try:
            conn.service.eof_received(conn)
        except Exception:
            self._service_failed(conn, "eof_received")
            return
        if conn.busy or conn.out:
            # The client half-closed with replies still owed (a command still streaming): finish them first.
            conn.close_after_flush = True
            self._update_events(conn)
            return
        self._close(conn)

    def _on_readable(self, conn: Connection) -> None:
        """One recv into the decoder, one call into the service, one send of every reply."""
        if conn.wire is not None:
            self._on_readable_mirror(conn)
            return
        read = conn.read
        if read is None:
            self._on_readable_raw(conn)
            return
        try:
            frames = read(conn.fd)
        except BlockingIOError:
            return
        except FrameError as exc:
            if exc.frames:
                self._deliver(conn, exc.frames)
            if not conn.closed:
                self._frame_error(conn, exc)
            return
        except OSError as exc:
            log.debug("%s: recv from %s failed: %s", conn.service.name, conn.peer, exc)
            self._close(conn)
            return
        if frames is None:
            self._on_eof(conn)
            return
        conn.last = self.now
        if frames:
            self._deliver(conn, frames)

    def _on_readable_mirror(self, conn: Connection) -> None:
        """A mirror service: one recv, then the whole frames it completed go back as they came.

        The loop relays them in one call when nothing is queued ahead; here they queue behind."""
        try:
            if conn.out or conn.file is not None:
                wire = conn.wire(conn.fd)  # type: ignore[misc]
                rest = None if wire is None else bytes(wire)
            else:
                rest = conn.relay(conn.fd)  # type: ignore[misc]
        except BlockingIOError:
            return
        except FrameError as exc:
            self._mirror_failed(conn, exc)
            return
        except OSError as exc:
            log.debug("%s: %s: %s", conn.service.name, conn.peer, exc)
            self._close(conn)
            return
        if rest is None:
            self._on_eof(conn)
            return
        conn.last = self.now
        if rest:
            self._queue_rest(conn, rest)

    def _mirror_failed(self, conn: Connection, exc: FrameError) -> None:
        if exc.frames:  # the whole frames before the bad one still go back
            self._send(conn, fastframe.encode_many(exc.frames, conn.prefix))
        if not conn.closed:
            self._frame_error(conn, exc)

    def _queue_rest(self, conn: Connection, rest: Any) -> None:
        """What the kernel did not take: queue it (behind anything queued already) and wait for writability."""
        if conn.out:
            conn._queue(rest)
            return
        conn.out.append(rest)
        conn.out_size += len(rest)
        conn.wrote = self.now
        self._update_events(conn)

    def _deliver(self, conn: Connection, frames: List[bytes]) -> None:
        try:
            replies = conn.handle(conn, frames)
        except Exception:
            self._service_failed(conn, "frames_received")
            return
        if not replies or conn.closed:
            return
        if conn.out or conn.file is not None:
            conn._queue(fastframe.encode_many(replies, conn.prefix))
            return
        try:
            rest = fastframe.write_frames(conn.fd, replies, conn.prefix)
        except OSError as exc:
            log.debug("%s: send to %s failed: %s", conn.service.name, conn.peer, exc)
            self._close(conn)
            return
        if rest is not None:
            self._queue_rest(conn, rest)

    def _send(self, conn: Connection, data: bytes) -> None:
        """Send now if nothing is queued ahead (the common case: one send per wake-up), else queue."""
        if conn.out or conn.file is not None:
            conn._queue(data)
            return
        try:
            sent = conn.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            log.debug("%s: send to %s failed: %s", conn.service.name, conn.peer, exc)
            self._close(conn)
            return
        if sent < len(data):
            conn.out.append(memoryview(data)[sent:])
            conn.out_size += len(data) - sent
            conn.wrote = self.now
            self._update_events(conn)

    def _on_readable_raw(self, conn: Connection) -> None:
        try:
            data = conn.sock.recv(_RAW_READ)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.debug("%s: recv from %s failed: %s", conn.service.name, conn.peer, exc)
            self._close(conn)
            return
        if not data:
            self._on_eof(conn)
            return
        conn.last = self.now
        if conn.lingering:
            return  # the write side is shut: discard what the client still sends
        try:
            reply = conn.service.data_received(conn, data)
        except Exception:
            self._service_failed(conn, "data_received")
            return
        if reply and not conn.closed:
            self._send(conn, reply)

    def _flush(self, conn: Connection) -> None:
        """Write what is queued, then any sendfile in progress; keep write interest only if needed."""
        out = conn.out
        sock = conn.sock
        had_output = conn.out_size
        while out:
            try:
                if len(out) == 1:
                    sent = sock.send(out[0])
                else:
                    sent = sock.sendmsg([out[i] for i in range(min(len(out), _IOV_MAX))])
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                log.debug("%s: send to %s failed: %s", conn.service.name, conn.peer, exc)
                self._close(conn)
                return
            conn.out_size -= sent
            conn.last = conn.wrote = self.now
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
        if not out and conn.file is not None:
            if not self._sendfile_step(conn):
                return
        if conn.close_after_flush and not out and conn.file is None and not conn._busy:
            self._finish_close(conn)
            return
        self._update_events(conn)
        if had_output and conn.out_size <= self.limits.low_water:
            try:
                conn.service.output_drained(conn)
            except Exception:
                self._service_failed(conn, "output_drained")

    def _sendfile_step(self, conn: Connection) -> bool:
        """Advance the connection's sendfile; False if the connection was closed."""
        file = conn.file
        assert file is not None
        fd, offset, remaining, done = file
        sock_fd = conn.fd
        while remaining > 0:
            try:
                sent = os.sendfile(sock_fd, fd, offset, min(remaining, _SENDFILE_CHUNK))
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                conn.file = None
                log.info("%s: sendfile to %s failed: %s", conn.service.name, conn.peer, exc)
                self._callback(conn, done, exc)
                self._close(conn)
                return False
            if sent == 0:
                conn.file = None
                exc2 = EOFError(f"file ended {remaining} bytes early")
                log.warning("%s: sendfile to %s: %s", conn.service.name, conn.peer, exc2)
                self._callback(conn, done, exc2)
                self._close(conn)
                return False
            offset += sent
            remaining -= sent
            conn.last = conn.wrote = self.now
            if sent < _SENDFILE_CHUNK and remaining:
                break  # socket buffer full
        file[1] = offset
        file[2] = remaining
        if remaining == 0:
            conn.file = None
            self._callback(conn, done, None)
            if conn.closed:
                return False
        return True

    def _callback(self, conn: Connection, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            self._service_failed(conn, "callback")

    def _finish_close(self, conn: Connection) -> None:
        """Close after the last byte went out: shut the write side, then let the client read it all."""
        if conn.lingering:
            return
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(conn)
            return
        conn.lingering = True
        conn.read = conn.wire = conn.relay = None  # from now on reads are discarded
        conn.close_after_flush = False
        conn.user_paused = False
        self._update_events(conn)
        conn.call_later(_LINGER, lambda: self._close(conn))

    # -- watched fds ----------------------------------------------------------------------------------

    def _watch(self, conn: Connection, fd: int, callback: Callable[[], None]) -> None:
        def on_ready(events: int) -> None:
            if conn.closed:
                return
            try:
                callback()
            except Exception:
                self._service_failed(conn, "watch callback")

        self.loop.add(fd, READ, on_ready)
        conn.watched.add(fd)

    def _unwatch(self, conn: Connection, fd: int) -> None:
        if fd in conn.watched:
            conn.watched.discard(fd)
            self.loop.remove(fd)

    # -- the loop -------------------------------------------------------------------------------------

    def _sweep(self) -> None:
        """Close idle connections and those stuck inside a frame; reschedule itself."""
        now = self.now
        limits = self.limits
        if self.balancer is not None:
            self.balancer.beat(now)
        if self.parent_pid and os.getppid() != self.parent_pid and not self._draining:
            log.warning("the master (%d) is gone; stopping", self.parent_pid)
            self.stop(graceful=True)
        if self._exclusive and not self._accept_paused:
            # With EPOLLEXCLUSIVE the kernel wakes one waiting process per new connection; if that process then
            # stops accepting without taking it (a worker being replaced), nobody else is told.  Registering again
            # makes epoll look at the queue afresh, so no connection waits in it longer than one sweep.
            for fd in self._armed:
                self.loop.requeue(fd, READ | self._exclusive)
        for conn in list(self._conns.values()):
            if conn.closed:
                continue
            if conn.out or conn.file is not None:
                # Output waits for the client.  The loop sees progress only when the kernel takes more, which
                # can be seconds after the client started reading again (writability needs a third of the send
                # buffer free), so the send queue's length counts too: if it moved, the client is reading.
                unsent = _kernel_unsent(conn.fd)
                if unsent != conn.unsent:
                    conn.unsent = unsent
                    conn.wrote = now
                elif now - conn.wrote > limits.idle_timeout:
                    # Busy or not: a client that stopped reading holds its buffers (and a file) for nothing.
                    stalled = now - conn.wrote
                    log.info("%s: closing %s: it read nothing for %.0f s", conn.service.name, conn.peer, stalled)
                    self._abort(conn)
                    continue
            if conn.lingering or conn.busy:
                continue
            # Frame deadline, kept off the per-read path: a connection holding part of a frame while its
            # decoder completed nothing since the sweep that first saw it is cut after frame_timeout
            # (so between frame_timeout and frame_timeout plus one sweep interval after the frame began).
            decoder = conn.decoder
            if decoder is not None and decoder.pending:
                done = decoder.completed
                if not conn.frame_start or done != conn.frames_seen:
                    conn.frame_start = now
                    conn.frames_seen = done
                elif now - conn.frame_start > limits.frame_timeout:
                    self._frame_error(conn, FrameTimeout(f"frame not completed within {limits.frame_timeout:g} s"))
                    continue
            else:
                conn.frame_start = 0.0
            if now - conn.last > limits.idle_timeout:
                log.info("%s: closing %s: idle for %.0f s", conn.service.name, conn.peer, now - conn.last)
                self._close(conn)
        self.call_later(self.limits.sweep_interval, self._sweep)

    def _install_signals(self) -> SignalRelay:
        relay = self._relay = SignalRelay(self.SIGNALS)
        relay.install()
        self.loop.add(relay.fd, READ, self._on_signals)
        return relay

    def _on_signals(self, events: int) -> None:
        assert self._relay is not None
        for signum in self._relay.take():
            dispatch(self, signum)

    def handle_term(self) -> None:
        log.info("SIGTERM: stopping gracefully (at most %g s)", self.limits.graceful_timeout)
        self.stop(graceful=True)

    def handle_int(self) -> None:
        log.info("SIGINT: stopping now")
        self.stop(graceful=False)

    def handle_quit(self) -> None:
        log.info("SIGQUIT: stopping now")
        self.stop(graceful=False)

    def handle_hup(self) -> None:
        log.info("SIGHUP ignored: a single-process engine has no workers to replace")

    def handle_usr1(self) -> None:
        """SIGUSR1, logrotate's signal: reopen the log files.  Logs go to stderr for now: nothing to reopen."""
        log.info("SIGUSR1: nothing to reopen (the log goes to stderr)")

    def stop(self, graceful: bool = True) -> None:
        """Stop serving: gracefully (finish what was received) or at once.

        What "received" means: a connection the kernel completed before the stop, whether this process had
        accepted it or it still waited in a listener's accept queue, and every request byte in its socket buffer.
        The queues are emptied before the listeners close (closing the last descriptor of a listening socket
        resets what waits in its queue) -- unless other processes keep listening on them (a prefork worker
        replaced by SIGHUP or SIGTTOU): then they are left to those.  The requests already in the socket buffers
        go to the services before the services are told to stop taking new work."""
        if not graceful:
            self.loop.stop()
            return
        if self._draining:
            return
        self._draining = True
        self._deadline = time.monotonic() + self.limits.graceful_timeout
        if self._listening and (self.balancer is None or not self.balancer.retired()):
            for accept in self._acceptors.values():
                for _ in range(_DRAIN_ACCEPT_ROUNDS):
                    if accept(64):
                        break
        self._stop_listening()
        for conn in list(self._conns.values()):
            if not conn.closed and conn.events & READ and not conn.lingering:
                self._on_readable(conn)
        for service in self._services:
            try:
                service.shutdown()
            except Exception:
                log.exception("%s: shutdown failed", service.name)
        self.loop.add_check(self._drain_step)

    def _drain_step(self) -> bool:
        """After every iteration of a graceful stop: close every connection that reached a frame boundary with
        nothing in flight and nothing more received; True if one had input (look again without waiting)."""
        if time.monotonic() >= self._deadline:
            if self._conns:
                log.warning("graceful timeout: closing %d connection(s) still busy", len(self._conns))
            self.loop.stop()
            return False
        again = False
        for conn in list(self._conns.values()):
            if conn.closed or conn.lingering or conn.close_after_flush or conn.busy or conn.out:
                continue
            if conn.decoder is not None and conn.decoder.pending:
                continue  # wait for the frame the client is sending
            if _has_input(conn.sock):
                # Received, so answered first (or an EOF or error to handle); closed once a look finds nothing.
                self._on_readable(conn)
                again = True
                continue
            self._finish_close(conn)
        if not self._conns:
            self.loop.stop()
        return again

    def run(self, install_signals: bool = True, unblock_signals: Sequence[int] = ()) -> int:
        """Serve until stopped; return the exit status (0 for a requested stop).

        ``unblock_signals`` are unblocked once the engine's handlers are installed (a prefork worker is
        forked with them blocked, so that none arrives before it can handle it)."""
        relay = self._install_signals() if install_signals else None
        if unblock_signals:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, unblock_signals)
        try:
            self._start_listening()
            self.call_later(self.limits.sweep_interval, self._sweep)
            self.loop.run()
        finally:
            self._stop_listening()
            for conn in list(self._conns.values()):
                self._close(conn)
            self.loop.close()
            if relay is not None:
                relay.restore()
        return self.exit_code

    def _on_events(self, conn: Connection, ev: int) -> None:
        if ev & (READ | HUP_ERR) and conn.events & READ:
            relay = conn.relay
            if relay is not None and not conn.out:
                # The hot path of a mirror service (echo): one C call receives, checks the frames
                # and sends the whole ones back from the decoder's memory.
                try:
                    rest = relay(conn.fd)
                except BlockingIOError:
                    return
                except FrameError as exc:
                    self._mirror_failed(conn, exc)
                    return
                except OSError as exc:
                    log.debug("%s: %s: %s", conn.service.name, conn.peer, exc)
                    self._close(conn)
                    return
                if rest is None:
                    self._on_eof(conn)
                else:
                    conn.last = self.loop.now
                    if rest:
                        self._queue_rest(conn, rest)
                return
            self._on_readable(conn)
            if conn.closed:
                return
        if ev & WRITE:
            self._flush(conn)
        elif ev & HUP_ERR and not conn.events & READ:
            self._close(conn)
