"""The access log and the log files that reopen: one ``key=value`` line per finished connection, and SIGUSR1.

Its one job is the operator's record of connections and the files it goes to; what a connection did is counted
by the engine, which hands the totals over once, when the connection ends.

The line
========

::

    time=2026-12-02T06:13:00.123Z service=echo peer=203.0.113.7:51234 proxy=127.0.0.1:40022 duration=0.004120
    frames_in=3 frames_out=3 bytes_in=47 bytes_out=47 end=eof

(one line; wrapped here).  The keys, always in this order: ``time`` (UTC, milliseconds, when it ended),
``service``, ``peer`` (the client: behind a balancer, the address its PROXY header gave), ``proxy`` (the
balancer's own address when there was one, else ``-``), ``duration`` (seconds), ``frames_in``, ``frames_out``,
``bytes_in``, ``bytes_out``, and ``end``, how it ended -- the engine's word for it: ``eof`` (the client
closed), ``closed`` (the service closed it), ``idle`` and ``frame_timeout`` (timed out), ``stalled`` (the
client read nothing), ``too_large`` and ``bad_frame`` (refused input), ``reset`` (a send or receive failed),
``error`` (the service failed), ``shutdown`` (the server stopped it), ``proxy_error`` (a bad PROXY header) and
``untrusted`` (a peer outside ``--trusted-proxy``).

Peers print as ``1.2.3.4:5``, ``[2001:db8::1]:5``, ``unix:/path`` or ``unix`` (an unnamed Unix client).

Every line parses back (:func:`parse_line`), whatever the values hold: a value made only of letters, digits and
``_ . : / @ + - [ ] % ,`` is written bare; any other is double-quoted, with ``\\\\``, ``\\"``, ``\\n``, ``\\r``,
``\\t`` and ``\\xHH`` / ``\\uHHHH`` / ``\\UHHHHHHHH`` for every other character outside printable ASCII (lone
surrogates included).  So a line is always one line of ASCII, and no value can forge a key.

Theory of operation
===================

:class:`AccessLog` formats a line when a connection ends and keeps it in memory; :meth:`AccessLog.flush` -- which
the engine calls once per loop wake-up, and which runs again on reopen and close -- writes the pending lines
with ``os.write`` on an ``O_APPEND`` descriptor: nothing is held longer than one wake-up, and lines from
prefork workers sharing the file never mix, because each write holds whole lines and at most ``PIPE_BUF``
bytes, the size up to which a write to a pipe (``-`` may be one) is atomic.
A failing write (disk full, a closed pipe) drops those lines with one warning, never an exception into the
engine.

logrotate renames the file and sends SIGUSR1.  Until the signal the old descriptor keeps writing into the
renamed file, so nothing is lost; on the signal the engine's loop calls :meth:`AccessLog.reopen` (flush to the
old file, open the path anew) and, for the error log (``--log-file``), :class:`ReopeningFileHandler.reopen`;
:func:`reopen_logs` does both.  ``-`` is standard output and is never reopened.
"""

from __future__ import annotations

import logging
import os
import re
import select
import sys
import time
from collections.abc import Iterable
from typing import Any

__all__ = [
    "FIELDS",
    "AccessLog",
    "ReopeningFileHandler",
    "format_line",
    "format_peer",
    "log_to_file",
    "parse_line",
    "reopen_logs",
]

log = logging.getLogger("fastframe.server")

FIELDS = ("time", "service", "peer", "proxy", "duration", "frames_in", "frames_out", "bytes_in", "bytes_out", "end")

_BARE = re.compile(r"[A-Za-z0-9_.:/@+\-\[\]%,]+\Z")
_MUST_ESCAPE = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")  # all but printable ASCII, '"' and '\'
_SHORT_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_PAIR = re.compile(r'([a-z_][a-z0-9_]*)=("(?:[^"\\]|\\.)*"|[^\s"=]*)')
_ESCAPE = re.compile(r'\\(?:([\\"nrt])|x([0-9a-f]{2})|u([0-9a-f]{4})|U([0-9a-f]{8}))')
_UNESCAPE_SHORT = {"\\": "\\", '"': '"', "n": "\n", "r": "\r", "t": "\t"}
_PIPE_BUF = getattr(select, "PIPE_BUF", 512)


def _escape_char(match: re.Match[str]) -> str:
    c = match.group()
    short = _SHORT_ESCAPES.get(c)
    if short is not None:
        return short
    code = ord(c)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _quote(value: str) -> str:
    if _BARE.match(value):
        return value
    return '"' + _MUST_ESCAPE.sub(_escape_char, value) + '"'


def _unescape(match: re.Match[str]) -> str:
    short, hex2, hex4, hex8 = match.groups()
    if short is not None:
        return _UNESCAPE_SHORT[short]
    return chr(int(hex2 or hex4 or hex8, 16))


def format_line(pairs: Iterable[tuple[str, object]]) -> str:
    """``key=value`` pairs as one line (no newline); values quoted as the module docstring says."""
    return " ".join(f"{key}={_quote(str(value))}" for key, value in pairs)


def parse_line(line: str) -> dict[str, str]:
    """The inverse of :func:`format_line`: ``{key: value}``; ``ValueError`` if the line is not such a line."""
    out: dict[str, str] = {}
    pos, end = 0, len(line.rstrip("\n"))
    while pos < end:
        m = _PAIR.match(line, pos)
        if m is None or (m.end() < end and line[m.end()] != " "):
            raise ValueError(f"not a key=value line at column {pos}: {line[pos : pos + 40]!r}")
        key, raw = m.groups()
        if raw.startswith('"'):
            inner = raw[1:-1]
            if _ESCAPE.sub("", inner).count("\\"):
                raise ValueError(f"bad escape in the value of {key!r}")
            raw = _ESCAPE.sub(_unescape, inner)
        out[key] = raw
        pos = m.end() + 1
    return out


def format_peer(addr: Any) -> str:
    """An ``accept()`` address as the log writes it: ``host:port``, ``[v6]:port``, ``unix:/path``, ``unix``."""
    if addr is None:
        return "-"
    if isinstance(addr, tuple) and len(addr) >= 2:
        host, port = addr[0], addr[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    if isinstance(addr, bytes):  # an abstract Unix name, b"\0name"
        return "unix:@" + addr[1:].decode("utf-8", "surrogateescape") if addr else "unix"
    if isinstance(addr, str):
        return "unix:" + addr if addr else "unix"
    return str(addr)


def _timestamp(now: float) -> str:
    seconds = int(now)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int((now - seconds) * 1000):03d}Z"


class AccessLog:
    """The ``--access-log FILE|-`` writer (see the module docstring): :meth:`log` per finished connection,
    :meth:`flush` once per loop wake-up, :meth:`reopen` on SIGUSR1, :meth:`close` at exit."""

    def __init__(self, target: str, mode: int = 0o640, max_pending: int = 64 * 1024) -> None:
        self.target = target
        self.mode = mode
        self.max_pending = max_pending
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._failing = False
        self._fd = 1 if target == "-" else self._open()

    def _open(self) -> int:
        return os.open(self.target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, self.mode)

    def log(
        self,
        service: str,
        peer: Any,
        duration: float,
        frames_in: int,
        frames_out: int,
        bytes_in: int | str,
        bytes_out: int | str,
        end: str,
        proxy: Any = None,
        now: float | None = None,
    ) -> None:
        """Record one finished connection (``peer`` the client, ``proxy`` the balancer's address if any)."""
        line = format_line(
            (
                ("time", _timestamp(time.time() if now is None else now)),
                ("service", service),
                ("peer", format_peer(peer)),
                ("proxy", format_peer(proxy)),
                ("duration", f"{duration:.6f}"),
                ("frames_in", frames_in),
                ("frames_out", frames_out),
                ("bytes_in", bytes_in),
                ("bytes_out", bytes_out),
                ("end", end),
            )
        )
        self.write(line)

    def write(self, line: str) -> None:
        """Queue one line (no newline); written by the next :meth:`flush`, at once if much is pending."""
        data = line.encode("ascii", "backslashreplace") + b"\n"
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._pending_bytes >= self.max_pending:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        lines, self._pending, self._pending_bytes = self._pending, [], 0
        if self._fd == 1:
            sys.stdout.flush()  # what print() buffered (the listening lines) goes first
        chunk: list[bytes] = []
        size = 0
        for line in lines:  # whole lines, at most PIPE_BUF bytes a write (unless one line is longer)
            if chunk and size + len(line) > _PIPE_BUF:
                self._write(b"".join(chunk))
                chunk, size = [], 0
            chunk.append(line)
            size += len(line)
        self._write(b"".join(chunk))

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            if not self._failing:
                log.warning("access log %s: %s; dropping lines until a write succeeds", self.target, exc)
            self._failing = True
            return
        self._failing = False

    def reopen(self) -> None:
        """Flush into the current file, then open the path anew (logrotate has renamed it).  ``-``: flush only."""
        self.flush()
        if self._fd == 1:
            return
        try:
            new = self._open()
        except OSError as exc:
            log.error("access log %s: cannot reopen (%s); still writing to the old file", self.target, exc)
            return
        old, self._fd = self._fd, new
        os.close(old)

    def close(self) -> None:
        self.flush()
        if self._fd not in (-1, 1):
            os.close(self._fd)
        self._fd = -1


class ReopeningFileHandler(logging.FileHandler):
    """The error log (``--log-file``): a FileHandler whose :meth:`reopen` opens its path anew.

    Like ``logging.handlers.WatchedFileHandler``, but reopened when the server is told to (SIGUSR1, from the
    engine's loop), not by a ``stat`` before every record."""

    def __init__(self, filename: str, encoding: str | None = "utf-8") -> None:
        super().__init__(filename, mode="a", encoding=encoding)

    def reopen(self) -> None:
        self.acquire()
        try:
            old = self.stream
            if old is not None:
                old.flush()
            self.stream = self._open()
            if old is not None:
                old.close()
        finally:
            self.release()


def log_to_file(path: str) -> ReopeningFileHandler:
    """``--log-file``: the root logger's handlers (standard error) give way to ``path``, same format."""
    handler = ReopeningFileHandler(path)
    root = logging.getLogger()
    for old in list(root.handlers):
        if handler.formatter is None and old.formatter is not None:
            handler.setFormatter(old.formatter)
        root.removeHandler(old)
    root.addHandler(handler)
    return handler


def reopen_logs(access_logs: Iterable[AccessLog] = (), loggers: Iterable[logging.Logger] | None = None) -> int:
    """SIGUSR1: reopen every access log and every :class:`ReopeningFileHandler` of ``loggers`` (default: the
    root logger and ``fastframe``'s).  Returns how many files were reopened."""
    count = 0
    for access in access_logs:
        access.reopen()
        count += access.target != "-"
    seen: set[int] = set()
    for logger in loggers if loggers is not None else (logging.getLogger(), logging.getLogger("fastframe")):
        for handler in logger.handlers:
            if isinstance(handler, ReopeningFileHandler) and id(handler) not in seen:
                seen.add(id(handler))
                try:
                    handler.reopen()
                except OSError as exc:
                    log.error("log file %s: cannot reopen: %s", handler.baseFilename, exc)
                    continue
                count += 1
    return count
