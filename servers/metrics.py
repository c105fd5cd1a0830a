"""Prometheus metrics: counted in plain ints where the work happens, folded into ``prometheus_client`` rarely,
and served as ``/metrics`` by a small non-blocking HTTP responder that the engine's loop drives.

Its one job is the server's numbers for a scraper; the engine decides what happened (a connection opened, an
error of some kind), this module counts it and answers scrapes.  ``prometheus_client`` is the official client
and an optional dependency (``pip install 'fastframe[metrics]'``); without it, :class:`Metrics` raises
:class:`MetricsUnavailable` with that one line.

The metrics (every one labelled ``service``)
============================================

==========================================  =======  ==========================================================
``fastframe_connections_open``              gauge    connections open now (summed over live workers)
``fastframe_connections_total``             counter  connections accepted
``fastframe_received_frames_total``         counter  frames (or datagrams, or raw reads) received
``fastframe_sent_frames_total``             counter  frames (or datagrams) sent
``fastframe_received_bytes_total``          counter  bytes received
``fastframe_sent_bytes_total``              counter  bytes sent
``fastframe_errors_total``                  counter  errors, by ``kind`` (the engine's words: ``too_large``...)
``fastframe_commands_total``                counter  commands run, by ``outcome`` (``ok``, ``failed``, ``refused``...)
``fastframe_downloads_total``               counter  downloads completed
``fastframe_download_sent_bytes_total``     counter  file bytes sent by downloads, complete or not
==========================================  =======  ==========================================================

``kind`` and ``outcome`` take at most 32 values per service (then ``other``): they are the engine's words, but a
bound keeps a bug from becoming an unbounded number of series.

Theory of operation
===================

*Counting is free on the hot path.*  A ``prometheus_client`` call takes a lock and, under prefork, writes an
mmap'd file: one per frame would cost more than the echo it counts.  So nothing here runs per frame.  The
engine keeps four plain ints on each connection (``frames_in``, ``frames_out``, ``bytes_in``, ``bytes_out``),
bumped once per wake-up, which the access log needs anyway.  :meth:`ServiceMetrics.opened` registers a
connection and :meth:`ServiceMetrics.closed` takes its last counts; rarer events (an error, a command, a
download) are one dict or int increment.  :meth:`Metrics.fold` moves everything counted since the last fold
into the Prometheus objects -- the counts of closed connections, and the growth of live ones since they were
last seen -- in one call per series.  It runs on every scrape (single process) and on a timer, once a second,
in each prefork worker; a scrape is then at most a second behind.

*Prefork* uses ``prometheus_client``'s multiprocess mode: each process writes its values to its own files in
one directory, and the scrape merges them.  The mode is chosen when ``prometheus_client`` is imported, so the
master calls :func:`prepare_multiprocess` first (it sets ``PROMETHEUS_MULTIPROC_DIR`` and wipes what a previous
run left there); workers inherit it across ``fork()``, and ``prometheus_client`` notices the new PID and opens
files of their own.  ``connections_open`` is a ``livesum`` gauge, so when the master reaps a worker it calls
:func:`mark_process_dead` and that worker's open connections stop counting, while its counters stay in the
totals.  The master answers scrapes from the directory.

*Serving* is :class:`MetricsEndpoint`: a listening socket and its clients registered with a loop through five
calls (``add_reader``, ``remove_reader``, ``add_writer``, ``remove_writer``, ``call_later`` -- asyncio's names, so
an asyncio loop drives it as it is, and the engine's loop room provides the same five).  No thread, which a
process that forks must not have.  Each client gets one request (head only, at most 8 KiB), one answer
(``GET /metrics`` and ``HEAD``; 404, 405, 400, 431 otherwise), then the connection closes; a client that has
not finished within ``timeout`` seconds is dropped, and at most ``max_clients`` are held at once -- a new one
evicts the oldest still sending its request -- so a slow or malformed client costs one socket for a few seconds,
cannot stall the loop, and cannot lock a scraper out.  :class:`SelectorReactor` is the
same five calls over ``selectors``, for a dedicated metrics process and for tests.
"""

from __future__ import annotations

import errno
import glob
import heapq
import importlib
import logging
import os
import selectors
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any, Protocol

__all__ = [
    "Metrics",
    "MetricsEndpoint",
    "MetricsUnavailable",
    "Reactor",
    "SelectorReactor",
    "ServiceMetrics",
    "mark_process_dead",
    "prepare_multiprocess",
]

log = logging.getLogger("fastframe.server")

MAX_LABEL_VALUES = 32
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class MetricsUnavailable(RuntimeError):
    """prometheus_client is not installed."""


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ModuleNotFoundError:
        raise MetricsUnavailable("--metrics needs prometheus_client: pip install 'fastframe[metrics]'") from None
    return prometheus_client


def _multiprocess() -> Any:
    return importlib.import_module("prometheus_client.multiprocess")


# -- multiprocess mode (prefork) ------------------------------------------------------------------------------


def prepare_multiprocess(directory: str | None = None) -> str:
    """Choose prometheus_client's multiprocess mode, before it is imported: set ``PROMETHEUS_MULTIPROC_DIR``
    (``directory``, else the variable's current value, else a new temporary directory) and wipe the ``*.db``
    files a previous run left there.  Returns the directory.  Raises RuntimeError if prometheus_client was
    already imported in single-process mode (its storage is chosen at import and cannot change)."""
    path = directory or os.environ.get(MULTIPROC_ENV) or tempfile.mkdtemp(prefix="fastframe-metrics-")
    loaded = sys.modules.get("prometheus_client.values")
    if loaded is not None and not getattr(loaded.ValueClass, "_multiprocess", False):
        raise RuntimeError("prometheus_client was imported before prepare_multiprocess(); call it first")
    os.makedirs(path, exist_ok=True)
    for stale in glob.glob(os.path.join(path, "*.db")):
        os.unlink(stale)
    os.environ[MULTIPROC_ENV] = path
    return path


def mark_process_dead(pid: int) -> None:
    """A reaped worker's live gauges stop counting (its counters stay).  No-op outside multiprocess mode."""
    path = os.environ.get(MULTIPROC_ENV)
    if path:
        _multiprocess().mark_process_dead(pid, path)


# -- counting -------------------------------------------------------------------------------------------------


class Counted(Protocol):
    """What the engine's connection offers: four plain ints, bumped once per wake-up."""

    frames_in: int
    frames_out: int
    bytes_in: int
    bytes_out: int


class ServiceMetrics:
    """One service's counts since the last fold (plain ints), and the live connections to read at fold time."""

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "commands",
        "connections",
        "download_bytes",
        "downloads",
        "errors",
        "frames_in",
        "frames_out",
        "live",
        "name",
        "totals",
    )

    def __init__(self, name: str, totals: Callable[[Any], tuple[int, int, int, int]] | None = None) -> None:
        self.name = name
        self.totals = totals or _attributes
        self.live: dict[Counted, list[int]] = {}  # connection -> its counts when last folded
        self.connections = self.frames_in = self.frames_out = self.bytes_in = self.bytes_out = 0
        self.downloads = self.download_bytes = 0
        self.errors: dict[str, int] = {}
        self.commands: dict[str, int] = {}

    def opened(self, conn: Any) -> None:
        self.live[conn] = [max(0, n) for n in self.totals(conn)]
        self.connections += 1

    def closed(self, conn: Any, counts: tuple[int, int, int, int] | None = None) -> None:
        """``conn`` ended; ``counts`` its last totals, if the caller has them already."""
        seen = self.live.pop(conn, None)
        if seen is not None:
            self._take(conn, seen, counts)

    def count(self, frames_in: int = 0, frames_out: int = 0, bytes_in: int = 0, bytes_out: int = 0) -> None:
        """Traffic that belongs to no connection (UDP datagrams)."""
        self.frames_in += frames_in
        self.frames_out += frames_out
        self.bytes_in += bytes_in
        self.bytes_out += bytes_out

    def error(self, kind: str) -> None:
        _bump(self.errors, kind)

    def command(self, outcome: str) -> None:
        _bump(self.commands, outcome)

    def download(self, sent_bytes: int, complete: bool = True) -> None:
        self.downloads += complete
        self.download_bytes += sent_bytes

    @property
    def open(self) -> int:
        return len(self.live)

    def _take(self, conn: Any, seen: list[int], counts: tuple[int, int, int, int] | None = None) -> None:
        fi, fo, bi, bo = (max(0, n) for n in (counts or self.totals(conn)))  # (-1: unknown, counted as 0)
        self.frames_in += fi - seen[0]
        self.frames_out += fo - seen[1]
        self.bytes_in += bi - seen[2]
        self.bytes_out += bo - seen[3]
        seen[:] = fi, fo, bi, bo

    def take_live(self) -> None:
        """Count what live connections did since they were last seen."""
        for conn, seen in self.live.items():
            self._take(conn, seen)


def _attributes(conn: Counted) -> tuple[int, int, int, int]:
    return conn.frames_in, conn.frames_out, conn.bytes_in, conn.bytes_out


def _bump(table: dict[str, int], key: str) -> None:
    if key not in table and len(table) >= MAX_LABEL_VALUES:
        key = "other"
    table[key] = table.get(key, 0) + 1


class Metrics:
    """The process's metrics: :meth:`service` hands out each service's counts, :meth:`fold` publishes them,
    :meth:`render` is a scrape's body and content type (see the module docstring)."""

    def __init__(self, totals: Callable[[Any], tuple[int, int, int, int]] | None = None) -> None:
        pc = _prometheus()
        self._totals = totals
        self._pc = pc
        self.multiprocess_dir = (
            os.environ.get(MULTIPROC_ENV) if pc.values.ValueClass is not pc.values.MutexValue else None
        )
        self.registry = pc.CollectorRegistry()
        label = ["service"]
        r = self.registry
        self._open = pc.Gauge(
            "fastframe_connections_open", "Connections open now.", label, registry=r, multiprocess_mode="livesum"
        )
        self._series = {
            "connections": pc.Counter("fastframe_connections", "Connections accepted.", label, registry=r),
            "frames_in": pc.Counter("fastframe_received_frames", "Frames received.", label, registry=r),
            "frames_out": pc.Counter("fastframe_sent_frames", "Frames sent.", label, registry=r),
            "bytes_in": pc.Counter("fastframe_received_bytes", "Bytes received.", label, registry=r),
            "bytes_out": pc.Counter("fastframe_sent_bytes", "Bytes sent.", label, registry=r),
            "downloads": pc.Counter("fastframe_downloads", "Downloads completed.", label, registry=r),
            "download_bytes": pc.Counter("fastframe_download_sent_bytes", "File bytes sent.", label, registry=r),
        }
        self._errors = pc.Counter("fastframe_errors", "Errors, by kind.", ["service", "kind"], registry=r)
        self._commands = pc.Counter(
            "fastframe_commands", "Commands run, by outcome.", ["service", "outcome"], registry=r
        )
        self._services: dict[str, ServiceMetrics] = {}

    def service(self, name: str) -> ServiceMetrics:
        counts = self._services.get(name)
        if counts is None:
            counts = self._services[name] = ServiceMetrics(name, self._totals)
            self._open.labels(name).set(0)  # every service shows up from the first scrape, at zero
            for series in self._series.values():
                series.labels(name).inc(0)
        return counts

    def fold(self) -> None:
        """Publish every count taken since the last fold (cheap when nothing happened)."""
        for name, counts in self._services.items():
            counts.take_live()
            self._open.labels(name).set(counts.open)
            for attr, series in self._series.items():
                value = getattr(counts, attr)
                if value:
                    series.labels(name).inc(value)
                    setattr(counts, attr, 0)
            for table, series in ((counts.errors, self._errors), (counts.commands, self._commands)):
                for key, value in table.items():
                    if value:
                        series.labels(name, key).inc(value)
                        table[key] = 0

    def render(self) -> tuple[bytes, str]:
        """A scrape: (body, content type).  Folds this process's counts first; under prefork, merges every
        process's files."""
        self.fold()
        pc = self._pc
        if self.multiprocess_dir:
            registry = pc.CollectorRegistry()
            _multiprocess().MultiProcessCollector(registry, path=self.multiprocess_dir)
            return pc.generate_latest(registry), pc.CONTENT_TYPE_LATEST
        return pc.generate_latest(self.registry), pc.CONTENT_TYPE_LATEST


# -- serving --------------------------------------------------------------------------------------------------


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class Reactor(Protocol):
    """The five loop calls the endpoint needs (asyncio's names and meanings)."""

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None: ...
    def remove_reader(self, fd: int) -> Any: ...
    def add_writer(self, fd: int, callback: Callable[[], None]) -> None: ...
    def remove_writer(self, fd: int) -> Any: ...
    def call_later(self, delay: float, callback: Callable[[], None]) -> Cancellable: ...


class HttpError(Exception):
    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


def parse_request(head: bytes) -> tuple[str, str]:
    """The request line of an HTTP/1.x request head: (method, path without the query).  HttpError if bad."""
    line = head.split(b"\n", 1)[0].rstrip(b"\r")
    parts = line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1.") or not parts[1].startswith(b"/"):
        raise HttpError("400 Bad Request")
    try:
        method, target = parts[0].decode("ascii"), parts[1].decode("ascii")
    except UnicodeDecodeError:
        raise HttpError("400 Bad Request") from None
    if not method.isalpha() or not method.isupper():
        raise HttpError("400 Bad Request")
    return method, target.split("?", 1)[0]


def build_response(
    status: str, body: bytes, content_type: str = "text/plain; charset=utf-8", head: bool = False, extra: str = ""
) -> bytes:
    headers = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        f"{extra}Connection: close\r\n\r\n"
    )
    return headers.encode("ascii") + (b"" if head else body)


class _Client:
    __slots__ = ("buf", "endpoint", "fd", "out", "sock", "timer")

    def __init__(self, endpoint: MetricsEndpoint, sock: socket.socket) -> None:
        self.endpoint = endpoint
        self.sock = sock
        self.fd = sock.fileno()
        self.buf = bytearray()
        self.out = memoryview(b"")
        self.timer = endpoint.reactor.call_later(endpoint.timeout, self.close)

    def readable(self) -> None:
        try:
            data = self.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        if not data:
            self.close()
            return
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end == -1:
            end = self.buf.find(b"\n\n")
        if (end == -1 and len(self.buf) > self.endpoint.max_request) or end > self.endpoint.max_request:
            self.respond(build_response("431 Request Header Fields Too Large", b"request head too large\n"))
        elif end != -1:
            self.respond(self.endpoint.answer(bytes(self.buf[:end])))

    def respond(self, response: bytes) -> None:
        self.endpoint.reactor.remove_reader(self.fd)
        self.out = memoryview(response)
        self.writable()
        if self.out and self.sock.fileno() != -1:
            self.endpoint.reactor.add_writer(self.fd, self.writable)

    def writable(self) -> None:
        try:
            while self.out:
                self.out = self.out[self.sock.send(self.out) :]
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self.close()

    def close(self) -> None:
        if self.sock.fileno() == -1:
            return
        self.timer.cancel()
        reactor = self.endpoint.reactor
        reactor.remove_reader(self.fd)
        reactor.remove_writer(self.fd)
        self.sock.close()
        self.endpoint.clients.pop(self.fd, None)


class MetricsEndpoint:
    """``/metrics`` over HTTP on ``listener`` (a bound, listening socket), driven by ``reactor``.

    ``render()`` returns (body, content type), e.g. :meth:`Metrics.render`.  See the module docstring."""

    def __init__(
        self,
        listener: socket.socket,
        render: Callable[[], tuple[bytes, str]],
        reactor: Reactor,
        *,
        timeout: float = 5.0,
        max_clients: int = 16,
        max_request: int = 8192,
    ) -> None:
        self.listener = listener
        self.render = render
        self.reactor = reactor
        self.timeout = timeout
        self.max_clients = max_clients
        self.max_request = max_request
        self.clients: dict[int, _Client] = {}
        listener.setblocking(False)

    def start(self) -> None:
        self.reactor.add_reader(self.listener.fileno(), self._accept)

    def close(self) -> None:
        for client in list(self.clients.values()):
            client.close()
        if self.listener.fileno() != -1:
            self.reactor.remove_reader(self.listener.fileno())
            self.listener.close()

    def _accept(self) -> None:
        for _ in range(self.max_clients):
            try:
                sock, _addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno not in (errno.ECONNABORTED, errno.EPROTO):
                    log.warning("metrics: accept failed: %s", exc)
                return
            if len(self.clients) >= self.max_clients and not self._evict_one():
                sock.close()  # every slot is busy answering: the scraper retries
                continue
            sock.setblocking(False)
            client = _Client(self, sock)
            self.clients[client.fd] = client
            self.reactor.add_reader(client.fd, client.readable)

    def _evict_one(self) -> bool:
        """Make room by dropping the oldest client still sending its request: silent or dribbling connections
        cannot lock a scraper out, whose request arrives right after its connect."""
        for client in self.clients.values():  # oldest first
            if not client.out:
                client.close()
                return True
        return False

    def answer(self, head: bytes) -> bytes:
        try:
            method, path = parse_request(head)
        except HttpError as exc:
            return build_response(exc.status, exc.status.encode() + b"\n")
        if method not in ("GET", "HEAD"):
            return build_response("405 Method Not Allowed", b"GET or HEAD\n", extra="Allow: GET, HEAD\r\n")
        if path != "/metrics":
            return build_response("404 Not Found", b"metrics are at /metrics\n", head=method == "HEAD")
        try:
            body, content_type = self.render()
        except Exception:
            log.exception("metrics: rendering failed")
            return build_response("500 Internal Server Error", b"rendering failed\n")
        return build_response("200 OK", body, content_type, head=method == "HEAD")


class SelectorReactor:
    """The :class:`Reactor` calls over ``selectors``, with :meth:`run_once`: for a dedicated metrics process
    (or a test) that has no other loop."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self._timers: list[tuple[float, int, _Timer]] = []
        self._seq = 0

    def _set(self, fd: int, event: int, callback: Callable[[], None] | None) -> None:
        try:
            key = self.selector.get_key(fd)
        except KeyError:
            key = None
        callbacks = dict(key.data) if key is not None else {}
        if callback is None:
            callbacks.pop(event, None)
        else:
            callbacks[event] = callback
        mask = 0
        for ev in callbacks:
            mask |= ev
        if key is None and mask:
            self.selector.register(fd, mask, callbacks)
        elif key is not None and mask:
            self.selector.modify(fd, mask, callbacks)
        elif key is not None:
            self.selector.unregister(fd)

    def _current(self, fd: int, event: int) -> Callable[[], None] | None:
        try:
            return self.selector.get_key(fd).data.get(event)  # type: ignore[no-any-return]
        except KeyError:
            return None

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        self._set(fd, selectors.EVENT_READ, callback)

    def remove_reader(self, fd: int) -> None:
        self._set(fd, selectors.EVENT_READ, None)

    def add_writer(self, fd: int, callback: Callable[[], None]) -> None:
        self._set(fd, selectors.EVENT_WRITE, callback)

    def remove_writer(self, fd: int) -> None:
        self._set(fd, selectors.EVENT_WRITE, None)

    def call_later(self, delay: float, callback: Callable[[], None]) -> _Timer:
        timer = _Timer(callback)
        self._seq += 1
        heapq.heappush(self._timers, (time.monotonic() + delay, self._seq, timer))
        return timer

    def run_once(self, timeout: float | None = None) -> None:
        """Wait for events (at most ``timeout`` seconds, less if a timer is due), then run their callbacks."""
        if self._timers:
            due = max(0.0, self._timers[0][0] - time.monotonic())
            timeout = due if timeout is None else min(timeout, due)
        for key, events in self.selector.select(timeout):
            for event in (selectors.EVENT_READ, selectors.EVENT_WRITE):
                callback = self._current(key.fd, event) if events & event else None  # (it may be gone meanwhile)
                if callback is not None:
                    callback()
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                timer.callback()


class _Timer:
    __slots__ = ("callback", "cancelled")

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
