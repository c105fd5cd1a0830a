"""The file service: download regular files from under one root directory, zero-copy, resumable.

Wire format
===========

Request: one frame (at most ``MAX_FILE_REQUEST``, 32 KiB) holding a UTF-8 JSON object::

    {"path": "dir/name.txt", "offset": 0}

``path`` (a string, required) is relative to the served root, components separated by ``/``; ``offset``
(a non-negative integer, optional, default 0) is where to start, for resuming.  Other keys are ignored.
Because the path is a JSON string, every byte of it is explicit: a NUL (``\\u0000``) is detected and refused,
and nothing is percent-decoded -- ``%2e%2e/x`` names a directory literally called ``%2e%2e``.

Reply: one metadata frame, then (on success) raw, unframed file bytes::

    b"S" + JSON {"size": S, "offset": O, "length": L}     then exactly L = S - O raw bytes
    b"!" + code + b" " + message                          nothing follows

``size`` is the size of the file actually opened (its ``fstat``), taken once: a file that grows meanwhile is
sent up to that size; one that shrinks cuts the connection short, so the client sees fewer than L bytes.
Error codes: ``bad-request`` (not a JSON object, no string path, a bad offset type, nesting deeper than the
JSON parser takes, a NUL byte, a frame over the size limit), ``forbidden`` (an absolute path, a ``..``
component, a hidden component -- one that starts with ``.`` -- unless the server runs with ``allow_hidden``,
a symbolic link anywhere on the way, permission denied), ``not-found``, ``not-a-file`` (a directory, FIFO,
socket or device), ``bad-offset`` (offset beyond the end of the file) and -- from :mod:`servers.auth` --
``auth``.  Requests on one connection are answered one after another, in order.

Confinement
===========

The root is opened once, at start-up, as a directory descriptor.  Each request walks its path component by
component from that descriptor with ``openat(O_NOFOLLOW)`` -- ``O_DIRECTORY`` for the intermediate ones,
``O_NONBLOCK`` for the last one so that a FIFO can never block the loop -- and only a descriptor whose
``fstat`` says "regular file" is served.  No path string is ever resolved by the kernel from ``/`` and no
symbolic link is ever followed, so nothing outside the root can be reached by renaming or re-linking things
while a request is in flight.  Symbolic links *inside* the root are refused too, even when they point
inside it: that is the simplest rule that is obviously safe.  (A hard link or a bind mount placed inside the
root by its owner is, by construction, part of the root.)  Hidden components (``.git``, ``.ssh``, ``.env``)
are refused unless the service was started with ``allow_hidden``: a directory served whole usually holds
some that were never meant to be.

The bytes go out with ``sendfile`` driven by the engine's loop, a slice per wake-up, so one large download
never stalls another client, and the file is never read into memory.  The descriptor is closed when the
transfer ends, fails, or the connection goes away.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
from collections import deque
from typing import TYPE_CHECKING, Callable, Deque, List, Optional, Tuple, Union

from .auth import AuthenticatedService
from .command import is_loopback
from .config import ServeConfig, register_factory
from .service import Conn, Service

if TYPE_CHECKING:  # pragma: no cover
    from fastframe.exceptions import FrameError

__all__ = ["MAX_FILE_REQUEST", "FileService", "build_file_service", "parse_request"]

log = logging.getLogger("fastframe.server")

#: The largest request frame: a JSON object holding one path (a PATH_MAX path fits even fully \u-escaped).
MAX_FILE_REQUEST = 32 * 1024

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0)
_MAX_DIGITS = 20  # an offset never needs more; int() of a long digit string is quadratic before Python 3.11


class RequestError(Exception):
    """A request that gets an error frame: ``code`` and a one-line message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def frame(self) -> bytes:
        return b"!" + self.code.encode() + b" " + self.message.encode("utf-8", "replace")


def _short(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _parse_int(digits: str) -> int:
    if len(digits) > _MAX_DIGITS:
        raise ValueError("number too long")
    return int(digits)


def parse_request(raw: bytes, allow_hidden: bool = False) -> Tuple[List[str], int]:
    """(path components, offset) of a request frame; RequestError if it is malformed or not allowed (nothing
    else is raised)."""
    if len(raw) > MAX_FILE_REQUEST:
        raise RequestError("bad-request", f"the request is {len(raw)} bytes; the limit is {MAX_FILE_REQUEST}")
    try:
        request = json.loads(raw.decode("utf-8"), parse_int=_parse_int)
    except (UnicodeDecodeError, ValueError):
        raise RequestError("bad-request", 'expected a UTF-8 JSON object like {"path": "a/b.txt", "offset": 0}') from None
    except RecursionError:  # the json module's own depth limit
        raise RequestError("bad-request", "the request is nested too deeply") from None
    if not isinstance(request, dict):
        raise RequestError("bad-request", 'expected a JSON object like {"path": "a/b.txt", "offset": 0}')
    path = request.get("path")
    offset = request.get("offset", 0)
    if not isinstance(path, str):
        raise RequestError("bad-request", '"path" must be a string')
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise RequestError("bad-request", '"offset" must be a non-negative integer')
    if "\x00" in path:
        raise RequestError("bad-request", "NUL byte in the path")
    if path.startswith("/"):
        raise RequestError("forbidden", f"{_short(path)} is absolute; paths are relative to the served root")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise RequestError("forbidden", f"{_short(path)} has a '..' component")
    if not allow_hidden and any(p.startswith(".") for p in parts):
        raise RequestError("forbidden", f"{_short(path)} has a hidden component (starting with '.')")
    if not parts:
        raise RequestError("not-a-file", f"{_short(path)} is the root directory")
    return parts, offset


def _why(exc: OSError, dir_fd: int, name: str, path: str) -> RequestError:
    """Turn a failed openat into the error the client gets (refined by an lstat, for the message only)."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        st = None
    if st is not None and stat.S_ISLNK(st.st_mode):
        return RequestError("forbidden", f"{_short(path)}: {_short(name)} is a symbolic link")
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return RequestError("not-found", f"{_short(path)} does not exist")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return RequestError("forbidden", f"{_short(path)}: permission denied")
    if exc.errno == errno.ENAMETOOLONG:
        return RequestError("bad-request", "a path component is too long")
    return RequestError("not-found", f"{_short(path)}: {exc.strerror or exc}")


def open_beneath(root_fd: int, parts: List[str], path: str) -> Tuple[int, os.stat_result]:
    """Open the regular file ``parts`` under ``root_fd`` without following any symlink; (fd, fstat)."""
    cur = root_fd
    try:
        for name in parts[:-1]:
            try:
                nxt = os.open(name, _DIR_FLAGS, dir_fd=cur)
            except OSError as exc:
                raise _why(exc, cur, name, path) from None
            if cur != root_fd:
                os.close(cur)
            cur = nxt
        name = parts[-1]
        # Look before opening, so that opening has no side effect on a device; the fstat below is the check.
        try:
            pre = os.stat(name, dir_fd=cur, follow_symlinks=False)
        except OSError as exc:
            raise _why(exc, cur, name, path) from None
        if stat.S_ISLNK(pre.st_mode):
            raise RequestError("forbidden", f"{_short(path)}: {_short(name)} is a symbolic link")
        if not stat.S_ISREG(pre.st_mode):
            raise RequestError("not-a-file", f"{_short(path)} is not a regular file")
        try:
            fd = os.open(name, _FILE_FLAGS, dir_fd=cur)
        except OSError as exc:
            raise _why(exc, cur, name, path) from None
    finally:
        if cur != root_fd:
            os.close(cur)
    try:
        st = os.fstat(fd)
    except OSError:  # pragma: no cover
        os.close(fd)
        raise
    if not stat.S_ISREG(st.st_mode):  # swapped between the look and the open
        os.close(fd)
        raise RequestError("not-a-file", f"{_short(path)} is not a regular file")
    return fd, st


class _ConnState:
    __slots__ = ("queue", "fd", "closed")

    def __init__(self) -> None:
        self.queue: Deque[bytes] = deque()
        self.fd = -1  # the file being sent
        self.closed = False


class FileService(Service):
    """Serve regular files under ``root`` (see the module docstring for the protocol)."""

    name = "files"

    def __init__(self, root: str, max_request: int = MAX_FILE_REQUEST, allow_hidden: bool = False) -> None:
        self.root = os.path.abspath(root)
        try:
            self.root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise ValueError(f"cannot serve {self.root}: {exc.strerror or exc}") from None
        # A longer frame could never be a request: refuse its header before buffering it.
        self.max_request = min(max_request, MAX_FILE_REQUEST)
        self.allow_hidden = allow_hidden

    def connection_made(self, conn: Conn) -> None:
        conn.state = _ConnState()

    def frames_received(self, conn: Conn, frames: List[bytes]) -> Optional[List[bytes]]:
        st: Optional[_ConnState] = conn.state
        if st is None or st.closed:
            return None
        st.queue.extend(frames)
        if st.fd < 0:
            self._next(conn, st)
        return None

    def _next(self, conn: Conn, st: _ConnState) -> None:
        while st.fd < 0 and st.queue and not st.closed:
            reply = self._open(st.queue.popleft())
            if isinstance(reply, bytes):
                conn.send_frames([reply])
                continue
            fd, size, offset = reply
            length = size - offset
            conn.send_frames([b"S" + json.dumps({"size": size, "offset": offset, "length": length}).encode()])
            if not length:
                os.close(fd)
                continue
            st.fd = fd
            conn.sendfile(fd, offset, length, self._done_callback(conn, st, fd))
        conn.busy = st.fd >= 0 or bool(st.queue)

    def _open(self, raw: bytes) -> Union[bytes, Tuple[int, int, int]]:
        try:
            parts, offset = parse_request(raw, self.allow_hidden)
            fd, info = open_beneath(self.root_fd, parts, "/".join(parts))
        except RequestError as exc:
            return exc.frame()
        if offset > info.st_size:
            os.close(fd)
            return RequestError("bad-offset", f"offset {offset} is beyond the end of the file ({info.st_size} bytes)").frame()
        return fd, info.st_size, offset

    def _done_callback(self, conn: Conn, st: _ConnState, fd: int) -> Callable[[Optional[BaseException]], None]:
        def done(exc: Optional[BaseException]) -> None:
            if st.fd == fd:
                st.fd = -1
                os.close(fd)
            if exc is None and not st.closed:
                self._next(conn, st)

        return done

    def frame_error(self, conn: Conn, exc: "FrameError") -> Optional[List[bytes]]:
        st: Optional[_ConnState] = conn.state
        if st is not None:
            st.queue.clear()
            if st.fd >= 0:
                return None  # raw file bytes are on the wire: a frame now would be read as file data
        return [RequestError("bad-request", str(exc)).frame()]

    def connection_lost(self, conn: Conn) -> None:
        st: Optional[_ConnState] = conn.state
        if st is None:
            return
        st.closed = True
        st.queue.clear()
        if st.fd >= 0:
            os.close(st.fd)
            st.fd = -1

    def describe(self) -> str:
        hidden = "hidden files served" if self.allow_hidden else "hidden files refused"
        return f"files (root {self.root}; symbolic links refused; {hidden})"


def build_file_service(config: ServeConfig) -> Service:
    """The factory ``fastframe serve`` uses; ValueError says why the service cannot start."""
    if not config.root:
        raise ValueError("no --root given (the file service serves only a directory named explicitly)")
    service = FileService(config.root, max_request=config.max_request, allow_hidden=config.allow_hidden)
    if not is_loopback(config.host):
        if config.secret:
            log.warning("files: %s is served beyond loopback (%s) without TLS: its bytes cross the network "
                        "unencrypted (the shared secret authenticates the connection only)",
                        service.root, config.host)  # fmt: skip
        else:
            log.warning("files: %s is served beyond loopback (%s) without TLS or --secret-file: anyone who can "
                        "reach %s can download from it", service.root, config.host, config.host)  # fmt: skip
    if config.secret:
        return AuthenticatedService(service, config.secret)
    return service


register_factory("files", build_file_service)
