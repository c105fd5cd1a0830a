"""The select engine: one process serving every listener from one loop -- accepting, sweeping, stopping.

Its rooms: the loop (:mod:`servers.loop`: poller, timers), the connections (:mod:`servers.connection`, with
their read strategies and transports), the signals (:mod:`servers.signals`).  What is left here is the
engine's own job:

* **Accepting.**  Each listening TCP socket accepts up to 64 connections per wake-up (a prefork worker: one,
  then it steps back in line, see :mod:`servers.prefork`), each counted against ``max_connections`` for the
  whole server (:mod:`servers.counts`; one more is accepted and closed at once).  Out of descriptors or
  memory, ``accept()`` fails for every connection in the queue until something is freed: the listeners stop
  being polled for a back-off that doubles while the failures go on (0.1 s to 1 s; a connection closing ends
  it early), with one log line now and then.  Under prefork, a worker holding clearly more connections than
  the least loaded one stops polling its listeners and looks again every 10 ms.
* **UDP**: every datagram goes to the service, whose reply is sent back at once.
* **The sweep**, every quarter of the shortest timeout (0.05 s to 1 s): each connection checks its deadlines;
  a prefork worker beats its heartbeat and stops when its master is gone.
* **Stopping.**  Signals only record themselves and wake the loop; the engine acts on them in the loop
  (``handle_term`` and so on).  SIGTERM stops gracefully: the connections waiting in the accept queues are
  taken, listeners close, every request already received is answered, each connection is closed at a frame
  boundary once a look at its socket finds nothing more, and the loop ends within ``graceful_timeout``.
  SIGINT and SIGQUIT stop at once.  SIGUSR1 goes to :meth:`SelectEngine.handle_usr1`; every other catchable
  signal is logged (see :mod:`servers.signals`).
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import time
from collections.abc import Sequence
from typing import Any, Callable

from .connection import Connection, FrameTimeout, Stage
from .counts import Counts, WorkerShare
from .limits import Limits
from .listen import Listener
from .loop import READ, Handler, Loop, TimerHandle
from .service import Address, Service
from .signals import IGNORED_SIGNALS, SignalRelay, dispatch
from .transport import SocketTransport

__all__ = ["Connection", "FrameTimeout", "Limits", "Listener", "SelectEngine"]

log = logging.getLogger("fastframe.server")

_ACCEPT_BATCH = 64
_ACCEPT_BACKOFF_MIN = 0.1
_ACCEPT_BACKOFF_MAX = 1.0
_BALANCE_RECHECK = 0.01  # a prefork worker out of line looks at the table again this often
_RESOURCE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_DRAIN_ACCEPT_ROUNDS = 64  # a graceful stop takes at most 64 x 64 connections from a listener's accept queue
_LOG_EVERY = 10.0  # seconds between two log lines about the same recurring condition


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
        limits: Limits | None = None,
        balancer: WorkerShare | None = None,
        exclusive_accept: bool = False,
        parent_pid: int = 0,
    ) -> None:
        self.listeners = list(listeners)
        self.limits = limits or Limits()
        self.balancer = balancer
        self.counts: Counts = balancer if balancer is not None else Counts()
        self.parent_pid = parent_pid
        self.loop = Loop()
        self.exit_code = 0
        self._exclusive = self.loop.exclusive if exclusive_accept else 0
        self._conns: dict[int, Connection] = {}
        self._services: list[Service] = list(dict.fromkeys(listener.service for listener in self.listeners))
        self._relay: SignalRelay | None = None
        self._draining = False
        self._deadline = 0.0
        self._listening = False
        self._armed: set[int] = set()  # listening TCP sockets polled now
        self._acceptors: dict[int, Callable[[int], bool]] = {}  # listening fd -> accept(up to n): queue empty?
        self._accept_paused = False
        self._accept_backoff = 0.0  # the current pause after accept() ran out of resources (0: none)
        self._accept_blocked_until = 0.0  # no accept before this (monotonic) time
        self._resume_timer: TimerHandle | None = None
        self._accept_failures = _LogThrottle()
        self._limit_reached = _LogThrottle()

    # -- listeners --------------------------------------------------------------------------------------

    def _start_listening(self) -> None:
        for listener in self.listeners:
            sock = listener.sock
            sock.setblocking(False)
            fd = sock.fileno()
            if sock.type == socket.SOCK_DGRAM:
                self.loop.add(fd, READ, self._datagram_handler(listener))
            else:
                self.loop.add(fd, READ | self._exclusive, self._accept_handler(listener))
                self._armed.add(fd)
        self._listening = True

    # Which TCP listeners are polled now is tracked per listener (``_armed``), because a pause can come in the
    # middle of one wake-up's events: a listener reported ready in the same batch is still served (the loop
    # keeps its handler while it is suspended), and only these two consult the set, so nothing is suspended
    # twice or resumed while polled.

    def _arm(self, fd: int) -> None:
        if fd not in self._armed:
            self.loop.resume(fd, READ | self._exclusive)
            self._armed.add(fd)

    def _disarm(self, fd: int) -> None:
        if fd in self._armed:
            self._armed.discard(fd)
            self.loop.suspend(fd)

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

    def _accept_handler(self, listener: Listener) -> Handler:
        lsock = listener.sock
        service = listener.service
        stages = listener.stages
        limits = self.limits
        balancer = self.balancer
        # A prefork worker takes one connection per wake-up and then steps back in line, so that accepts
        # rotate over the workers instead of going to whichever happens to be awake.
        batch = 1 if balancer is not None else _ACCEPT_BATCH
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
                self._add_connection(sock, addr, service, stages)
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

    def _add_connection(
        self, sock: socket.socket, addr: Address, service: Service, stages: Sequence[Stage] = ()
    ) -> None:
        sock.setblocking(False)
        if sock.family != socket.AF_UNIX:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        conn = Connection(
            self.loop, SocketTransport(sock), addr, service, self.limits, self.counts, self._connection_closed, stages
        )
        self._conns[conn.fd] = conn
        conn.start()

    def _connection_closed(self, conn: Connection) -> None:
        self._conns.pop(conn.fd, None)
        self.counts.release("connections")
        if self._accept_paused:
            if self._accept_blocked_until:
                self._accept_blocked_until = self.loop.now  # a descriptor is free: the queue may move again
            self._retry_accepting(0.0)

    def _accept_exhausted(self, exc: OSError) -> None:
        """accept() ran out of descriptors or memory: the connection stays queued; try again after a back-off
        that doubles while the failures go on (a freed connection ends it early)."""
        self._accept_backoff = min(_ACCEPT_BACKOFF_MAX, max(_ACCEPT_BACKOFF_MIN, self._accept_backoff * 2))
        self._accept_blocked_until = self.loop.now + self._accept_backoff
        self._accept_failures.log(
            logging.ERROR, "accept failed (%s); %d connection(s) open, retrying in %.1f s",
            exc.strerror or exc, len(self._conns), self._accept_backoff,
        )  # fmt: skip
        self._pause_accepting(self._accept_backoff)

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

    def _datagram_handler(self, listener: Listener) -> Handler:
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

    # -- the sweep --------------------------------------------------------------------------------------

    def _sweep(self) -> None:
        """Every connection checks its deadlines; a prefork worker beats and watches its master."""
        now = self.loop.now
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
            if not conn.closed:
                conn.check_deadlines(now)
        self.loop.call_later(self.limits.sweep_interval, self._sweep)

    # -- signals ----------------------------------------------------------------------------------------

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

    # -- running and stopping -----------------------------------------------------------------------------

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
                    if accept(_ACCEPT_BATCH):
                        break
        self._stop_listening()
        for conn in list(self._conns.values()):
            conn.read_now()
        for service in self._services:
            try:
                service.shutdown()
            except Exception:
                log.exception("%s: shutdown failed", service.name)
        self.loop.add_check(self._drain_step)

    def _drain_step(self) -> bool:
        """After every iteration of a graceful stop: close the connections that are done; end the loop once none
        is left or the time is up.  True if some connection had input (look again without waiting)."""
        if time.monotonic() >= self._deadline:
            if self._conns:
                log.warning("graceful timeout: closing %d connection(s) still busy", len(self._conns))
            self.loop.stop()
            return False
        again = False
        for conn in list(self._conns.values()):
            if conn.finish_when_quiet():
                again = True
        if not self._conns:
            self.loop.stop()
        return again

    def run(self, install_signals: bool = True, unblock_signals: Sequence[int] = ()) -> int:
        """Serve until stopped; return the exit status (0 for a requested stop).

        ``unblock_signals`` are unblocked once the engine's handlers are installed (a prefork worker is
        forked with them blocked, so that none arrives before it can handle it)."""
        relay = None
        if install_signals:
            relay = self._relay = SignalRelay(self.SIGNALS)
            relay.install()
            self.loop.add(relay.fd, READ, self._on_signals)
        if unblock_signals:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, unblock_signals)
        try:
            self._start_listening()
            self.loop.call_later(self.limits.sweep_interval, self._sweep)
            self.loop.run()
        finally:
            self._stop_listening()
            for conn in list(self._conns.values()):
                conn.close_now()
            self.loop.close()
            if relay is not None:
                relay.restore()
        return self.exit_code
