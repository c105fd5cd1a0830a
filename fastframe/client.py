"""Clients for the fastframe services (the CLI's client subcommands use these)."""

from __future__ import annotations

import errno
import fcntl
import os
import select
import socket
import sys
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Iterable, List, Optional, Sequence, Tuple, Union

from ._framed import FramedSocket
from .wire.errors import is_error, parse_error

if TYPE_CHECKING:  # pragma: no cover
    import ssl as _ssl

    SSLContext = Optional[_ssl.SSLContext]

# json, shlex, ssl and the handshake (hashlib, hmac, secrets) are imported by the calls that use them: each CLI
# command is a process, and its start-up is most of a small request.
#
# TLS: every client takes ``ssl=`` (an ``ssl.SSLContext``, e.g. from ``fastframe._tls.client_context``) and
# ``server_hostname=`` (the name the server's certificate must carry; default: ``host``).  The handshake runs
# right after the TCP connect, before anything else -- the shared-secret handshake included, which then runs
# inside TLS.  A failed TLS handshake raises ``fastframe._tls.TLSError`` (a ConnectionError) with one line.

__all__ = [
    "AuthError",
    "RemoteError",
    "connect",
    "echo",
    "echo_raw",
    "exec_command",
    "get_file",
    "get_time",
    "parse_address",
    "part_path",
]

DEFAULT_TIMEOUT = 10.0


def parse_address(text: str, default_host: str = "127.0.0.1") -> Tuple[str, int]:
    """``HOST:PORT``, ``[v6]:PORT``, ``:PORT`` or ``PORT`` -> (host, port); ``unix:/path`` -> (``unix:/path``, 0),
    which :func:`connect` takes as a Unix stream socket."""
    text = text.strip()
    if text.startswith("unix:"):
        from ._address import parse_address as parse

        return str(parse(text)), 0
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"bad address {text!r}: write an IPv6 address as [addr]:port")
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"bad address {text!r}: expected HOST:PORT") from None
    if not 0 < number < 65536:
        raise ValueError(f"bad address {text!r}: port out of range")
    return host or default_host, number


def connect(
    host: str,
    port: int,
    timeout: Optional[float] = DEFAULT_TIMEOUT,
    ssl: "SSLContext" = None,
    server_hostname: Optional[str] = None,
) -> socket.socket:
    """A connected TCP socket (TCP_NODELAY, ``timeout`` on each call), or a Unix one for ``host`` ``unix:/path``
    (``port`` unused); with ``ssl``, a TLS socket whose
    handshake is complete (the certificate checked against ``server_hostname``, default ``host``)."""
    if host.startswith("unix:"):
        from ._address import UnixAddress

        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(UnixAddress(host[5:]).sockaddr())
        except BaseException:
            sock.close()
            raise
    else:
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if ssl is not None:
        from ._tls import connect as tls_connect

        where = f" with {host}:{port}" if ":" not in host else f" with [{host}]:{port}"
        return tls_connect(sock, ssl, server_hostname or host, where)
    return sock


def echo(
    host: str,
    port: int,
    messages: Iterable[bytes],
    timeout: Optional[float] = DEFAULT_TIMEOUT,
    *,
    ssl: "SSLContext" = None,
    server_hostname: Optional[str] = None,
) -> List[bytes]:
    """Send each message as a frame to a framed echo service; return the replies in order."""
    items = list(messages)
    with FramedSocket(connect(host, port, timeout, ssl, server_hostname)) as fs:
        fs.send_many(items)
        return [fs.recv() for _ in items]


def echo_raw(
    host: str,
    port: int,
    data: bytes,
    timeout: Optional[float] = DEFAULT_TIMEOUT,
    *,
    ssl: "SSLContext" = None,
    server_hostname: Optional[str] = None,
) -> bytes:
    """Send bytes to a raw (RFC 862) echo service and return as many bytes back."""
    with connect(host, port, timeout, ssl, server_hostname) as sock:
        sock.sendall(data)
        if ssl is None:
            sock.shutdown(socket.SHUT_WR)  # (TLS has no half-close: the replies are counted instead)
        chunks = []
        got = 0
        while got < len(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)


def get_time(
    host: str,
    port: int,
    fmt: str = "unix",
    tcp: bool = False,
    timeout: Optional[float] = DEFAULT_TIMEOUT,
    *,
    ssl: "SSLContext" = None,
    server_hostname: Optional[str] = None,
) -> int:
    """Ask a time service (RFC 868, UDP by default; with ``ssl``, TCP inside TLS) and return seconds since
    1970."""
    from .wire.timeformat import decode_time

    if tcp or ssl is not None:
        with connect(host, port, timeout, ssl, server_hostname) as sock:
            reply = b""
            while len(reply) < 4:
                chunk = sock.recv(4 - len(reply))
                if not chunk:
                    break
                reply += chunk
    else:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0][0]
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout)
            sock.connect((host, port))
            sock.send(b"")
            reply = sock.recv(64)
    return decode_time(reply, fmt)


# -- command and file services --------------------------------------------------------------------------


class RemoteError(Exception):
    """The server answered with an error frame (``b"!" + code + b" " + message``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message

    @classmethod
    def from_frame(cls, frame: bytes) -> "RemoteError":
        code, message = parse_error(frame)
        if code == "auth":
            return AuthError(message or "authentication failed")
        return cls(code or "error", message)


class AuthError(RemoteError):
    """The shared-secret handshake failed (wrong or missing secret, or the server could not prove its own)."""

    def __init__(self, message: str) -> None:
        super().__init__("auth", message)


def _open_session(
    host: str,
    port: int,
    secret: Optional[bytes],
    timeout: Optional[float],
    ssl: "SSLContext" = None,
    server_hostname: Optional[str] = None,
) -> socket.socket:
    """Connect (with ``ssl``: and complete the TLS handshake) and, with a secret, authenticate (mutually, inside
    TLS when both are set) before anything else is sent."""
    sock = connect(host, port, timeout, ssl, server_hostname)
    try:
        if secret is not None:
            from .wire.auth import HandshakeError, client_handshake

            try:
                client_handshake(sock, secret)
            except HandshakeError as exc:
                raise AuthError(exc.message) from None
    except BaseException:
        sock.close()
        raise
    return sock


def _unexpected(frame: bytes) -> RemoteError:
    """What to raise for a reply frame the protocol does not expect here: its error, or a protocol error."""
    if is_error(frame):
        return RemoteError.from_frame(frame)
    from .wire.auth import is_challenge  # (hashlib and hmac: only on this path, or with a secret)

    if is_challenge(frame):
        return AuthError("the server requires a shared secret (give --secret-file)")
    return RemoteError("protocol", f"unexpected reply frame {frame[:16]!r}")


Sink = Union[Callable[[bytes], Any], BinaryIO, None]


def _writer(sink: Sink, default: BinaryIO) -> Callable[[bytes], None]:
    if sink is None:

        def write_default(data: bytes) -> None:
            default.write(data)
            default.flush()

        return write_default
    write = getattr(sink, "write", None)
    if write is not None:
        return write  # type: ignore[no-any-return]
    return sink  # type: ignore[return-value]


def exec_command(
    host: str,
    port: int,
    command: Union[str, Sequence[str]],
    secret: Optional[bytes] = None,
    stdout: Sink = None,
    stderr: Sink = None,
    timeout: Optional[float] = 60.0,
    *,
    ssl: "SSLContext" = None,
    server_hostname: Optional[str] = None,
) -> int:
    """Run ``command`` on a command service; stream its output; return its exit status.

    ``command`` is a command line (split by the server with shlex rules, never by a shell) or an argv list
    (quoted with ``shlex.join`` so the server gets exactly these words).  ``stdout``/``stderr`` receive each
    chunk as it arrives: a callable, or a binary file (default: this process's stdout/stderr).  The status is
    negative (-N) when signal N killed the command.  An error frame raises :class:`RemoteError` (``code``:
    not-allowed, not-found, timeout, output-cap, bad-request, busy) or :class:`AuthError`.  ``timeout`` is how
    long to wait for each reply frame, not for the whole command.
    """
    from .wire.command import EXIT, STDERR, STDOUT, parse_exit, request_frame

    request = request_frame(command)
    out = _writer(stdout, sys.stdout.buffer)
    err = _writer(stderr, sys.stderr.buffer)
    with FramedSocket(_open_session(host, port, secret, timeout, ssl, server_hostname)) as fs:
        fs.send(request)
        while True:
            frame = fs.recv()
            kind = frame[:1]
            if kind == STDOUT:
                out(frame[1:])
            elif kind == STDERR:
                err(frame[1:])
            elif kind == EXIT:
                return parse_exit(frame)
            else:
                raise _unexpected(frame)


def _recv_into_file(
    sock: socket.socket, fd: int, length: int, done: int, size: int, progress: Optional[Callable[[int, int], None]]
) -> None:
    """Receive ``length`` bytes into one fixed buffer and write each chunk to ``fd``.

    A TLS socket hands out one record (16 KiB) per ``recv_into``: the buffer is filled by as many as it takes
    (what is already decrypted, or readable now, at least one) before one write, so the file sees large
    writes either way."""
    buf = bytearray(min(_RECV_BUFFER, max(length, 1)))
    view = memoryview(buf)
    remaining = length
    tls = type(sock) is not socket.socket and hasattr(sock, "pending")
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


def _readable_now(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


def _splice_into(
    sock: socket.socket, fd: int, length: int, done: int, size: int, progress: Optional[Callable[[int, int], None]]
) -> int:
    """Move up to ``length`` bytes from the socket to ``fd`` through a pipe with ``splice`` (Linux): the kernel
    hands the pages over and no byte is copied through user space.  Returns how many bytes it moved; 0
    when splice is unavailable here (the caller then receives the rest with recv_into)."""
    splice = getattr(os, "splice", None)
    if splice is None or not length or type(sock) is not socket.socket:  # no splice, or a TLS socket
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
                    raise socket.timeout("timed out") from None
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


def _read_validator(meta_path: str) -> Optional[str]:
    """The validator saved beside a partial download, or None (no file, unreadable, or an old server's)."""
    import json

    try:
        with open(meta_path, "rb") as f:
            saved = json.loads(f.read(_MAX_META))
    except (OSError, ValueError):
        return None
    found = saved.get("validator") if isinstance(saved, dict) else None
    return found if isinstance(found, str) else None


def _write_validator(meta_path: str, found: Optional[str], size: int) -> None:
    if found is None:
        _unlink(meta_path)  # an old server: nothing to check a later resume against
        return
    import json

    with open(meta_path, "w", encoding="utf-8") as f:
        json.dump({"validator": found, "size": size}, f)


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
    secret: Optional[bytes] = None,
    progress: Optional[Callable[[int, int], None]] = None,
    timeout: Optional[float] = 60.0,
    fsync: bool = False,
    *,
    ssl: "SSLContext" = None,
    server_hostname: Optional[str] = None,
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
        with _open_session(host, port, secret, timeout, ssl, server_hostname) as sock:
            # Frames read exactly (header, then payload), never ahead: the raw file bytes follow the metadata.
            fs = FramedSocket(sock, max_frame=MAX_METADATA, read_ahead=False)
            fs.send(request_frame(path, offset, saved, trailer=True))
            meta = fs.recv()
            if meta[:1] != METADATA:
                raise _unexpected(meta)
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
                    raise _unexpected(trailer)
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
