"""The ``/metrics`` endpoint: a small non-blocking HTTP responder that a loop drives, with no thread.

Its one job is to answer scrapers; what it answers is a ``render()`` callable's (:meth:`servers.metrics.Metrics.render`).
It registers its listening socket and its clients with a loop through five calls (``add_reader``,
``remove_reader``, ``add_writer``, ``remove_writer``, ``call_later`` -- asyncio's names, so an asyncio loop drives
it as it is; the engine's loop through :class:`servers.observe.LoopReactor`; a prefork master, which has no
loop of its own, through :class:`SelectorReactor`).  Each client gets one request (head only, at most 8 KiB),
one answer (``GET /metrics`` and ``HEAD``; 404, 405, 400, 431 otherwise), then the connection closes; a client
that has not finished within ``timeout`` seconds is dropped, and at most ``max_clients`` are held at once -- a
new one evicts the oldest still sending its request -- so a slow or malformed client costs one socket for a few
seconds, cannot stall the loop, and cannot lock a scraper out.
"""

from __future__ import annotations

import errno
import heapq
import logging
import selectors
import socket
import time
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["MetricsEndpoint", "Reactor", "SelectorReactor"]

log = logging.getLogger("fastframe.server")


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
