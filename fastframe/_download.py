"""Downloading a file from a file service into ``OUT.part``, resumable, and renaming it into place.

:func:`get_file` is the client of :mod:`fastframe.wire.files`: it sends the request, reads the metadata frame,
moves the raw bytes from the socket to the file (``splice`` through a pipe where Linux offers it, else one
fixed ``recv_into`` buffer, never a whole-file buffer), checks the trailer, and only then renames
``OUT.part`` to ``OUT``.  ``OUT.part.meta`` keeps the server's validator beside a partial download, so a
resume never splices two versions of a file together.
"""

from __future__ import annotations

import _socket
import errno
import fcntl
import os
import select

from ._framed import FramedSocket
from ._session import RemoteError, open_session, unexpected
from .wire import _minijson

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (a start-up cost for the CLI)
if TYPE_CHECKING:  # pragma: no cover
    from typing import Callable

    from ._session import SSLContext

__all__ = ["get_file", "part_path"]


def _recv_into_file(
    sock: _socket.socket, fd: int, length: int, done: int, size: int, progress: Callable[[int, int], None] | None
) -> None:
    """Receive ``length`` bytes into one fixed buffer and write each chunk to ``fd``.

    A TLS socket hands out one record (16 KiB) per ``recv_into``: the buffer is filled by as many as it takes
    (what is already decrypted, or readable now, at least one) before one write, so the file sees large
    writes either way."""
    buf = bytearray(min(_RECV_BUFFER, max(length, 1)))
    view = memoryview(buf)
    remaining = length
    tls = _is_tls(sock)
    while remaining:
        want = min(remaining, len(buf))
        n = sock.recv_into(view, want)
        if not n:
            raise EOFError(f"connection closed after {done} of {size} bytes (resume with the .part file)")
        while tls and n < want and (sock.pending() or _readable_now(sock)):  # type: ignore[attr-defined]
            k = sock.recv_into(view[n:], want - n)
            if not k:
                break  # the end: noticed by the next outer recv_into
            n += k
        chunk = view[:n]
        while chunk:
            written = os.write(fd, chunk)
            chunk = chunk[written:]
        remaining -= n
        done += n
        if progress is not None:
            progress(done, size)


def _is_tls(sock: _socket.socket) -> bool:
    """An ``ssl.SSLSocket`` (what :func:`~fastframe._session.open_session` gives with ``ssl=``), not a plain one."""
    return hasattr(sock, "pending")


def _readable_now(sock: _socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


def _splice_into(
    sock: _socket.socket, fd: int, length: int, done: int, size: int, progress: Callable[[int, int], None] | None
) -> int:
    """Move up to ``length`` bytes from the socket to ``fd`` through a pipe with ``splice`` (Linux): the kernel
    hands the pages over and no byte is copied through user space.  Returns how many bytes it moved; 0
    when splice is unavailable here (the caller then receives the rest with recv_into)."""
    splice = getattr(os, "splice", None)
    if splice is None or not length or _is_tls(sock):  # no splice, or a TLS socket
        return 0
    r, w = os.pipe()
    moved = 0
    try:
        try:
            fcntl.fcntl(w, getattr(fcntl, "F_SETPIPE_SZ", 1031), _RECV_BUFFER)
        except OSError:
            pass  # the default pipe size works too, in smaller steps
        timeout = sock.gettimeout()
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        while moved < length:
            try:
                n = splice(sock.fileno(), w, min(length - moved, _RECV_BUFFER))
            except BlockingIOError:  # a socket with a timeout is non-blocking underneath
                if not poller.poll(None if timeout is None else timeout * 1000):
                    raise _socket.timeout("timed out") from None
                continue
            except OSError as exc:
                if moved == 0 and exc.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    return 0  # e.g. an output that cannot take spliced pages: receive normally
                raise
            if not n:
                raise EOFError(f"connection closed after {done + moved} of {size} bytes (resume with the .part file)")
            while n:
                try:
                    k = splice(r, fd, n)
                except OSError as exc:
                    if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                        raise
                    # The output takes no spliced pages: copy out what is in the pipe, then receive normally.
                    while n:
                        chunk = memoryview(os.read(r, n))
                        n -= len(chunk)
                        moved += len(chunk)
                        while chunk:
                            chunk = chunk[os.write(fd, chunk) :]
                    return moved
                n -= k
                moved += k
            if progress is not None:
                progress(done + moved, size)
    finally:
        os.close(r)
        os.close(w)
    return moved


def part_path(out_path: str) -> str:
    """Where :func:`get_file` keeps an unfinished download of ``out_path`` (``OUT.part``, same directory)."""
    return out_path + ".part"


def _meta_path(tmp: str) -> str:
    return tmp + ".meta"


def _read_validator(meta_path: str) -> str | None:
    """The validator saved beside a partial download, or None (no file, unreadable, or an old server's)."""
    try:
        with open(meta_path, "rb") as f:
            saved = _minijson.loads(f.read(_MAX_META).decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    found = saved.get("validator") if isinstance(saved, dict) else None
    return found if isinstance(found, str) else None


def _write_validator(meta_path: str, found: str | None, size: int) -> None:
    if found is None:
        _unlink(meta_path)  # an old server: nothing to check a later resume against
        return
    with open(meta_path, "w", encoding="utf-8") as f:
        f.write(_minijson.dumps({"validator": found, "size": size}))


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


_RECV_BUFFER = 1024 * 1024
_MAX_META = 64 * 1024


def get_file(
    host: str,
    port: int,
    path: str,
    out_path: str,
    resume: bool = False,
    secret: bytes | None = None,
    progress: Callable[[int, int], None] | None = None,
    timeout: float | None = 60.0,
    fsync: bool = False,
    *,
    ssl: SSLContext = None,
    server_hostname: str | None = None,
) -> int:
    """Download ``path`` from a file service into ``out_path``; return the file's size.

    Over TLS (``ssl``) splice cannot help (the bytes must be decrypted in user space): they are received in
    1 MiB blocks with ``recv_into`` and written to ``OUT.part`` as they come.

    The bytes go from the socket to ``OUT.part`` with ``splice`` where Linux offers it (no copy through user
    space), else through one fixed 1 MiB ``recv_into`` buffer -- never a whole-file buffer -- (see
    :func:`part_path`) in the same directory; only when every byte has arrived, and the server confirmed that
    the file did not change while it was sent, is it renamed to ``out_path`` (``os.replace``), so ``out_path``
    is never a truncated or mixed file.  If the transfer breaks, ``OUT.part`` stays behind for a later resume.

    Beside it, ``OUT.part.meta`` (a small JSON file) keeps the server's validator of the file being fetched.
    A file rather than an extended attribute: it works on every file system (tmpfs and many network file
    systems take no user xattrs), and a user who deletes the partial download sees what belongs to it.  With
    ``resume=True`` an existing ``OUT.part`` is continued from its size, and the validator is sent along:
    if the file changed on the server since, the server starts over from byte 0 and so does the client.  A
    partial download without a validator (none saved, or an old server that sends none) starts over too.
    A file that changes during the download raises :class:`RemoteError` with the code ``changed``.
    ``progress(done, total)`` is called as bytes arrive (``done`` counts the resumed part too).  ``timeout``
    applies to each receive.
    """
    from .wire.errors import WireError
    from .wire.files import MAX_METADATA, METADATA, TRAILER_OK, parse_metadata, request_frame

    tmp = part_path(out_path)
    meta_path = _meta_path(tmp)
    saved = _read_validator(meta_path) if resume else None
    flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
    if saved is None:
        flags |= os.O_TRUNC  # nothing to check a resume against: start over
    fd = os.open(tmp, flags, 0o644)
    try:
        offset = os.lseek(fd, 0, os.SEEK_END)
        # Frames read exactly (header, then payload), never ahead: the raw file bytes follow the metadata.
        sock = open_session(host, port, secret, timeout, ssl, server_hostname)
        with FramedSocket(sock, max_frame=MAX_METADATA, read_ahead=False) as fs:
            fs.send(request_frame(path, offset, saved, trailer=True))
            meta = fs.recv()
            if meta[:1] != METADATA:
                raise unexpected(meta)
            try:
                info = parse_metadata(meta)
            except WireError as exc:
                raise RemoteError(exc.code, exc.message) from None
            size, length = info.size, info.length
            if info.offset != offset:
                if info.offset != 0 or saved is None:
                    raise RemoteError("protocol", f"the bytes start at {info.offset}, not at the {offset} asked for")
                # The file changed on the server since the partial download began: it starts over.
                os.ftruncate(fd, 0)
                offset = os.lseek(fd, 0, os.SEEK_SET)
            if info.validator != saved or not offset:
                _write_validator(meta_path, info.validator, size)
            if progress is not None:
                progress(offset, size)
            received = _splice_into(sock, fd, length, offset, size, progress)
            if received < length:
                _recv_into_file(sock, fd, length - received, offset + received, size, progress)
            if info.trailer:
                trailer = fs.recv()
                if trailer != TRAILER_OK:
                    raise unexpected(trailer)
        if os.fstat(fd).st_size != size:
            raise EOFError(f"{tmp} holds {os.fstat(fd).st_size} bytes, expected {size}")
        if fsync:
            os.fsync(fd)
    except BaseException:
        try:
            if not os.fstat(fd).st_size:
                os.unlink(tmp)  # nothing worth resuming: leave no empty .part behind
                _unlink(meta_path)
        except OSError:
            pass
        raise
    finally:
        os.close(fd)
    os.replace(tmp, out_path)
    _unlink(meta_path)
    return size
