"""The file service: download regular files from under one root directory, zero-copy, resumable.

The protocol -- the JSON request, the ``S`` metadata frame, the raw bytes, the ``T`` or ``!changed`` trailer,
the error codes -- is specified in :mod:`fastframe.wire.files`, which both ends import.  This module is the
server's side of it: confinement to the root, sending the bytes, and checking that the file held still.

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
import logging
import os
import stat
from collections import deque
from typing import TYPE_CHECKING, Callable

from fastframe.wire.errors import WireError, error_frame, short
from fastframe.wire.files import MAX_FILE_REQUEST, FileRequest, metadata_frame, parse_request, trailer_frame, validator

from .service import Conn, Service

if TYPE_CHECKING:  # pragma: no cover
    from fastframe.exceptions import FrameError

__all__ = ["FileService", "open_beneath"]

log = logging.getLogger("fastframe.server")

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0)


def _why(exc: OSError, dir_fd: int, name: str, path: str) -> WireError:
    """Turn a failed openat into the error the client gets (refined by an lstat, for the message only)."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        st = None
    if st is not None and stat.S_ISLNK(st.st_mode):
        return WireError("forbidden", f"{short(path)}: {short(name)} is a symbolic link")
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return WireError("not-found", f"{short(path)} does not exist")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return WireError("forbidden", f"{short(path)}: permission denied")
    if exc.errno == errno.ENAMETOOLONG:
        return WireError("bad-request", "a path component is too long")
    return WireError("not-found", f"{short(path)}: {exc.strerror or exc}")


def open_beneath(root_fd: int, parts: list[str], path: str) -> tuple[int, os.stat_result]:
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
            raise WireError("forbidden", f"{short(path)}: {short(name)} is a symbolic link")
        if not stat.S_ISREG(pre.st_mode):
            raise WireError("not-a-file", f"{short(path)} is not a regular file")
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
        raise WireError("not-a-file", f"{short(path)} is not a regular file")
    return fd, st


class _ConnState:
    __slots__ = ("queue", "fd", "closed", "path", "opened", "trailer")

    def __init__(self) -> None:
        self.queue: deque[bytes] = deque()
        self.fd = -1  # the file being sent
        self.closed = False
        self.path = ""  # ... its path, for the log
        self.opened = ""  # ... its validator when it was opened
        self.trailer = False  # ... and whether the client asked for a trailer


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

    def frames_received(self, conn: Conn, frames: list[bytes]) -> list[bytes] | None:
        st: _ConnState | None = conn.state
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
            fd, request, info, offset = reply
            current = validator(info)
            length = info.st_size - offset
            conn.send_frames([metadata_frame(info.st_size, offset, current, request.trailer)])
            st.fd = fd
            st.path = "/".join(request.parts)
            st.opened = current
            st.trailer = request.trailer
            # A client without a trailer learns of a change by a short transfer: hold the last byte back.
            body = length if request.trailer else max(length - 1, 0)
            if body:
                conn.sendfile(fd, offset, body, self._on_body_sent(conn, st, fd, offset, offset + body, length - body))
            else:
                self._body_done(conn, st, fd, offset, length)
        conn.busy = st.fd >= 0 or bool(st.queue)

    def _open(self, raw: bytes) -> bytes | tuple[int, FileRequest, os.stat_result, int]:
        try:
            request = parse_request(raw, self.allow_hidden)
            fd, info = open_beneath(self.root_fd, request.parts, "/".join(request.parts))
        except WireError as exc:
            return exc.frame()
        offset = request.offset
        if request.validator is not None and request.validator != validator(info):
            offset = 0  # a different file or version now: resuming would splice two of them together
        if offset > info.st_size:
            os.close(fd)
            return error_frame("bad-offset", f"offset {offset} is beyond the end of the file ({info.st_size} bytes)")
        return fd, request, info, offset

    def _on_body_sent(
        self, conn: Conn, st: _ConnState, fd: int, start: int, tail: int, held: int
    ) -> Callable[[BaseException | None], None]:
        def done(exc: BaseException | None) -> None:
            if exc is not None or st.fd != fd or st.closed:
                self._release(st, fd)  # the connection is closing
                conn.busy = False
                return
            self.tally("download_bytes", tail - start)
            self._body_done(conn, st, fd, tail, held)
            self._next(conn, st)

        return done

    def _body_done(self, conn: Conn, st: _ConnState, fd: int, tail: int, held: int) -> None:
        """The body went out: check the file, then send the trailer or the held-back byte, or cut."""
        try:
            changed = validator(os.fstat(fd)) != st.opened
        except OSError:  # pragma: no cover
            changed = True
        if changed:
            log.info("%s: %s changed while it was sent to %s", self.name, short(st.path), conn.peer)
        if st.trailer:
            conn.send_frames([trailer_frame(changed, st.path)])
            self.tally("download", 0 if changed else 1)
            self._release(st, fd)
        elif changed:
            self._release(st, fd)
            st.closed = True  # what is queued behind would follow a transfer the client cannot complete
            st.queue.clear()
            conn.close(flush=True)
        elif held:
            conn.sendfile(fd, tail, held, self._on_tail_sent(conn, st, fd))
        else:
            self.tally("download")
            self._release(st, fd)

    def _on_tail_sent(self, conn: Conn, st: _ConnState, fd: int) -> Callable[[BaseException | None], None]:
        def done(exc: BaseException | None) -> None:
            self._release(st, fd)
            if exc is None:
                self.tally("download_bytes")  # the byte held back (see _next)
                self.tally("download")
            if exc is None and not st.closed:
                self._next(conn, st)
            else:
                conn.busy = False

        return done

    @staticmethod
    def _release(st: _ConnState, fd: int) -> None:
        if st.fd == fd:
            st.fd = -1
            os.close(fd)

    def frame_error(self, conn: Conn, exc: FrameError) -> list[bytes] | None:
        st: _ConnState | None = conn.state
        if st is not None:
            st.queue.clear()
            if st.fd >= 0:
                return None  # raw file bytes are on the wire: a frame now would be read as file data
        return [WireError("bad-request", str(exc)).frame()]

    def connection_lost(self, conn: Conn) -> None:
        st: _ConnState | None = conn.state
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
