"""Clients for the fastframe services, one function per service (the CLI's client subcommands use these).

This module is the public face: :func:`echo` and :func:`echo_raw` (the echo service), :func:`get_time` (RFC 868
time), :func:`exec_command` (the command service) and, re-exported, :func:`get_file` (the file service,
``fastframe._download``), :func:`connect`, :func:`parse_address` and the errors (``fastframe._session``).

Each CLI command is a process, and its start-up is most of a small request: shlex, ssl and the handshake
(hashlib, hmac, secrets) are imported by the calls that use them, typing and json never.

TLS: every client takes ``ssl=`` (an ``ssl.SSLContext``, e.g. from ``fastframe._tls.client_context``) and
``server_hostname=`` (the name the server's certificate must carry; default: ``host``).  The handshake runs
right after the TCP connect, before anything else -- the shared-secret handshake included, which then runs
inside TLS.  A failed TLS handshake raises ``fastframe._tls.TLSError`` (a ConnectionError) with one line.
"""

from __future__ import annotations

import _socket  # (not socket.py: its import is a start-up cost, see fastframe._session)
import sys

from ._download import get_file, part_path
from ._framed import FramedSocket
from ._session import (
    DEFAULT_TIMEOUT,
    AuthError,
    RemoteError,
    connect,
    open_session,
    parse_address,
    resolvable,
    unexpected,
)  # fmt: skip

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (a start-up cost for the CLI)
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Iterable, Sequence
    from typing import Any, BinaryIO, Callable, Union

    from ._session import SSLContext

    Sink = Union[Callable[[bytes], Any], BinaryIO, None]

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


def echo(
    host: str,
    port: int,
    messages: Iterable[bytes],
    timeout: float | None = DEFAULT_TIMEOUT,
    *,
    ssl: SSLContext = None,
    server_hostname: str | None = None,
) -> list[bytes]:
    """Send each message as a frame to a framed echo service; return the replies in order."""
    items = list(messages)
    with FramedSocket(open_session(host, port, None, timeout, ssl, server_hostname)) as fs:
        fs.send_many(items)
        return [fs.recv() for _ in items]


def echo_raw(
    host: str,
    port: int,
    data: bytes,
    timeout: float | None = DEFAULT_TIMEOUT,
    *,
    ssl: SSLContext = None,
    server_hostname: str | None = None,
) -> bytes:
    """Send bytes to a raw (RFC 862) echo service and return as many bytes back."""
    with connect(host, port, timeout, ssl, server_hostname) as sock:
        sock.sendall(data)
        if ssl is None:
            sock.shutdown(_socket.SHUT_WR)  # (TLS has no half-close: the replies are counted instead)
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
    timeout: float | None = DEFAULT_TIMEOUT,
    *,
    ssl: SSLContext = None,
    server_hostname: str | None = None,
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
        family = _socket.getaddrinfo(resolvable(host), port, type=_socket.SOCK_DGRAM)[0][0]
        udp = _socket.socket(family, _socket.SOCK_DGRAM)
        try:
            udp.settimeout(timeout)
            udp.connect((host, port))
            udp.send(b"")
            reply = udp.recv(64)
        finally:
            udp.close()
    return decode_time(reply, fmt)


# -- the command service --------------------------------------------------------------------------------


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
    command: str | Sequence[str],
    secret: bytes | None = None,
    stdout: Sink = None,
    stderr: Sink = None,
    timeout: float | None = 60.0,
    *,
    ssl: SSLContext = None,
    server_hostname: str | None = None,
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
    with FramedSocket(open_session(host, port, secret, timeout, ssl, server_hostname)) as fs:
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
                raise unexpected(frame)
