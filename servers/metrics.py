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

*Serving* is :mod:`servers.metrics_http`'s: the endpoint runs in the single process's loop, or in the prefork
master's (no thread, which a process that forks must not have); the workers only count and fold.
"""

from __future__ import annotations

import glob
import importlib
import logging
import os
import sys
import tempfile
from collections.abc import Callable
from typing import Any, Protocol

__all__ = [
    "Metrics",
    "MetricsUnavailable",
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
        self.live[conn] = [0, 0, 0, 0]  # all it ever does counts, even bytes that came before the accept
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

    def command(self, outcome: str, n: int = 1) -> None:
        _bump(self.commands, outcome, n)

    def download(self, sent_bytes: int, complete: int = 1) -> None:
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


def _bump(table: dict[str, int], key: str, n: int = 1) -> None:
    if key not in table and len(table) >= MAX_LABEL_VALUES:
        key = "other"
    table[key] = table.get(key, 0) + n


class Metrics:
    """The process's metrics: :meth:`service` hands out each service's counts, :meth:`fold` publishes them,
    :meth:`render` is a scrape's body and content type (see the module docstring)."""

    def __init__(
        self,
        totals: Callable[[Any], tuple[int, int, int, int]] | None = None,
        collect: Callable[[Metrics], None] | None = None,
    ) -> None:
        pc = _prometheus()
        self._totals = totals
        self._collect = collect  # called first by every fold: counts kept elsewhere come in
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
        if self._collect is not None:
            self._collect(self)
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
