"""What the engine tells the operator about connections: the access log and the metrics, fed once per connection.

Its one job is to take a connection's totals when it opens and when it closes, and hand them to the access log
(:mod:`servers.accesslog`) and the metrics (:mod:`servers.metrics`); the engine calls it, and calls nothing when
neither is configured.

Theory of operation
===================

Nothing here runs per frame.  The totals of a connection are read when it is looked at (its close, or a metrics
fold once a second for the live ones), from what is kept anyway:

* frames in: the decoder's ``completed`` count (a framed service; 0 for the unframed ones);
* frames out: the connection's ``frames_out``, bumped once per wake-up by the framed strategy, or, for a
  mirror (the echo, whose replies are its requests, relayed in C), the frames received;
* bytes in and out: the kernel's own count of the TCP stream (``TCP_INFO``'s ``tcpi_bytes_received`` and
  ``tcpi_bytes_acked``, plus the send queue not yet acknowledged): no counting on our side at all.  A Unix
  socket has no such count: its bytes are shown as ``-`` (and not counted in the metrics).

The access log is written by a loop check -- once per loop wake-up, whatever closed in it -- so the cost of
``--access-log`` is one line formatted per connection and one ``write`` per wake-up that closed any.

The metrics (``--metrics``) count a connection when it opens and take its totals when it closes; the live
ones are read when the counts are folded into ``prometheus_client``: on each scrape in a single process, once a
second in each prefork worker (whose master serves the scrapes from the multiprocess files, and marks a reaped
worker dead).  :meth:`Observer.attach` puts the endpoint, or the folding timer, on the process's loop.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
from typing import TYPE_CHECKING, Any, Callable

from .accesslog import AccessLog, reopen_logs
from .loop import READ, WRITE, Loop, TimerHandle

if TYPE_CHECKING:  # pragma: no cover
    from .connection import Connection
    from .metrics import Metrics
    from .service import Service

__all__ = ["LoopReactor", "Observer", "totals"]

FOLD_EVERY = 1.0  # seconds between two folds of a prefork worker's counts

_TCP_INFO = getattr(socket, "TCP_INFO", None)
_TCP_INFO_BYTES = struct.Struct("QQ")  # tcpi_bytes_acked, tcpi_bytes_received (Linux 4.1+, offset 120)
_TCP_INFO_OFFSET = 120
_FIN_RECEIVED = frozenset((6, 8, 9, 11))  # TIME_WAIT, CLOSE_WAIT, LAST_ACK, CLOSING
_FIN_ACKED = frozenset((5, 6))  # FIN_WAIT2, TIME_WAIT


def _wire_bytes(conn: Connection) -> tuple[int, int] | None:
    """(bytes received, bytes sent) of the TCP stream, from the kernel; None where it does not say."""
    sock = getattr(conn.transport, "sock", None)
    if _TCP_INFO is None or sock is None or sock.family == socket.AF_UNIX:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _TCP_INFO_OFFSET + _TCP_INFO_BYTES.size)
    except OSError:
        return None
    if len(info) < _TCP_INFO_OFFSET + _TCP_INFO_BYTES.size:
        return None
    acked, received = _TCP_INFO_BYTES.unpack_from(info, _TCP_INFO_OFFSET)
    state = info[0]  # the kernel counts a FIN as a byte of the sequence space: not a byte of the stream
    return received - (state in _FIN_RECEIVED), acked - (state in _FIN_ACKED) + max(0, conn.transport.unsent())


def totals(conn: Connection) -> tuple[int, int, int, int]:
    """(frames in, frames out, bytes in, bytes out) of ``conn`` so far (bytes -1 where unknown)."""
    decoder = conn.decoder
    frames_in = decoder.completed if decoder is not None else 0
    frames_out = frames_in if conn.service.mirror and conn.frames_out == 0 else conn.frames_out
    wire = _wire_bytes(conn)
    if wire is None:
        return frames_in, frames_out, -1, -1
    return frames_in, frames_out, wire[0], wire[1]


class Observer:
    """The engine's one hook for the access log and the metrics (either may be None)."""

    def __init__(
        self,
        access_log: AccessLog | None = None,
        metrics: Metrics | None = None,
        metrics_socket: socket.socket | None = None,
        metrics_dir: str | None = None,
    ) -> None:
        self.access_log = access_log
        self.metrics = metrics
        self.metrics_socket = metrics_socket  # where /metrics is served (by the process that is not a worker)
        self.metrics_dir = metrics_dir  # a multiprocess directory this server made: removed at the end
        self._started: dict[Connection, float] = {}
        self.services: list[Service] = []  # whose events (commands, downloads) the metrics collect
        self._endpoint: Any = None
        self._owner = os.getpid()

    def attach(self, reactor: Any, serve: bool) -> None:
        """On the process's loop (a :class:`servers.metrics_http.Reactor`): serve ``/metrics`` (``serve``: the
        single process, or the prefork master), or fold the counts once a second (a prefork worker)."""
        metrics = self.metrics
        if metrics is None:
            return
        if serve and self.metrics_socket is not None:
            from .metrics_http import MetricsEndpoint

            self._endpoint = MetricsEndpoint(self.metrics_socket, metrics.render, reactor)
            self._endpoint.start()
            return
        if self.metrics_socket is not None:
            self.metrics_socket.close()  # a worker's copy: the master serves it

        def fold() -> None:
            metrics.fold()
            reactor.call_later(FOLD_EVERY, fold)

        reactor.call_later(FOLD_EVERY, fold)

    def collect(self, metrics: Metrics) -> None:
        """Before a fold: the services' own events (see :meth:`servers.service.Service.tally`)."""
        for service in self.services:
            events = service.take_events()
            if not events:
                continue
            counts = metrics.service(service.name)
            counts.download(events.pop("download_bytes", 0), events.pop("download", 0))
            for event, n in events.items():
                if event.startswith("command:"):
                    counts.command(event[8:], n)

    def datagrams(self, service: Service) -> Callable[[bytes, bytes | None], None] | None:
        """What counts each datagram of ``service`` and its reply, with --metrics (None without)."""
        if self.metrics is None:
            return None
        counts = self.metrics.service(service.name)

        def tally(data: bytes, reply: bytes | None) -> None:
            counts.count(1, reply is not None, len(data), len(reply) if reply is not None else 0)

        return tally

    def worker_gone(self, pid: int) -> None:
        """The prefork master reaped a worker: its live gauges stop counting."""
        if self.metrics is not None:
            from .metrics import mark_process_dead

            mark_process_dead(pid)

    def opened(self, conn: Connection, now: float) -> None:
        if self.access_log is not None:
            self._started[conn] = now
        if self.metrics is not None:
            self.metrics.service(conn.service.name).opened(conn)

    def closed(self, conn: Connection, now: float) -> None:
        """Called while the socket is still open (its totals are read from it)."""
        if self.access_log is None and self.metrics is None:
            return  # (--log-file alone)
        counts = totals(conn)
        if self.metrics is not None:
            self.metrics.service(conn.service.name).closed(conn, counts)
            if conn.end not in ("eof", "closed", "shutdown"):
                self.metrics.service(conn.service.name).error(conn.end)
        started = self._started.pop(conn, None)
        if self.access_log is not None and started is not None:
            frames_in, frames_out, bytes_in, bytes_out = counts
            self.access_log.log(
                conn.service.name, conn.peer, now - started, frames_in, frames_out,
                _shown(bytes_in), _shown(bytes_out), conn.end, proxy=conn.proxy,
            )  # fmt: skip

    def flush(self) -> None:
        """Once per loop wake-up: write what was logged in it."""
        if self.access_log is not None:
            self.access_log.flush()

    def reopen(self) -> int:
        """SIGUSR1: reopen the access log and the error log file; how many files were reopened."""
        return reopen_logs([self.access_log] if self.access_log is not None else [])

    def finish(self) -> None:
        """The loop ends: write what is pending; a worker publishes its last counts."""
        self.flush()
        if self.metrics is not None and self._endpoint is None:
            self.metrics.fold()

    def close(self) -> None:
        if self.access_log is not None:
            self.access_log.close()
        if self._endpoint is not None:
            self._endpoint.close()
        if self.metrics_dir is not None and os.getpid() == self._owner:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)


class LoopReactor:
    """The five loop calls :class:`servers.metrics_http.MetricsEndpoint` needs, over the engine's loop."""

    def __init__(self, loop: Loop) -> None:
        self.loop = loop

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        self.loop.add(fd, READ, lambda events: callback())

    def add_writer(self, fd: int, callback: Callable[[], None]) -> None:
        self.loop.add(fd, WRITE, lambda events: callback())

    def remove_reader(self, fd: int) -> None:
        self.loop.remove(fd)

    remove_writer = remove_reader

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        return self.loop.call_later(delay, callback)


def _shown(count: int) -> Any:
    return "-" if count < 0 else count
