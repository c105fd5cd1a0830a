"""Opening a client connection: the address, TCP, TLS, the shared-secret handshake, and the service's errors.

Every client in :mod:`fastframe.client` starts here.  :func:`connect` gives a connected TCP socket
(``TCP_NODELAY``, the timeout on each call) and, with ``ssl=`` (an ``ssl.SSLContext``, e.g. from
``fastframe._tls.client_context``), completes the TLS handshake right away, checking the certificate against
``server_hostname`` (default: the host); a failed handshake raises ``fastframe._tls.TLSError`` (a
ConnectionError) with one line.  :func:`open_session` then runs the shared-secret handshake, inside TLS when
both are set, before anything else is sent.  A service that answers with an error frame raises
:class:`RemoteError` (:class:`AuthError` for the handshake).

Start-up is most of a small request, so nothing here imports more than sockets: ssl only with ``ssl=``, the
handshake (hashlib, hmac, secrets) only with a secret, typing never.
"""

from __future__ import annotations

import _socket  # the C module: socket.py (enum, selectors, its IntEnum tables) is a start-up cost

from .wire.errors import is_error, parse_error

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (a start-up cost for the CLI)
if TYPE_CHECKING:  # pragma: no cover
    import socket
    import ssl as _ssl
    from typing import Optional

    SSLContext = Optional[_ssl.SSLContext]

__all__ = [
    "DEFAULT_TIMEOUT",
    "AuthError",
    "RemoteError",
    "connect",
    "open_session",
    "parse_address",
    "resolvable",
    "tcp_connect",
    "unexpected",
]

DEFAULT_TIMEOUT = 10.0


def parse_address(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
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


def resolvable(host: str) -> str | bytes:
    """``host`` as ``getaddrinfo`` takes it without loading the idna codec: the bytes the codec would give.

    getaddrinfo encodes a ``str`` with the "idna" codec, whose import (encodings.idna, stringprep,
    unicodedata) is a start-up cost.  For an ASCII name the codec only checks label lengths and returns the
    same characters, so such a name is passed as those bytes; any other (or one the codec would refuse, so
    that its error stays the same) is passed as it is."""
    if not host.isascii():
        return host
    labels = host.split(".")
    if any(not 0 < len(label) < 64 for label in labels[:-1]) or len(labels[-1]) >= 64:
        return host
    return host.encode("ascii")


def tcp_connect(host: str, port: int, timeout: float | None) -> _socket.socket:
    """``socket.create_connection`` with the C socket type, and TCP_NODELAY set: each address ``host`` resolves
    to is tried in turn, and if none connects, the first one's error is raised.

    The C type does all a client here needs (it lacks only ``makefile`` and the ``with`` statement), and
    socket.py is not imported: its import (enum, selectors, and the IntEnum tables it builds from the C
    module's constants) costs a plain client command a third of the interpreter's own start-up.

    A ``host`` of ``unix:/path`` (what :func:`parse_address` gives for one) is a Unix stream socket there."""
    if host.startswith("unix:"):
        from ._address import UnixAddress

        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(UnixAddress(host[5:]).sockaddr())
        except BaseException:
            sock.close()
            raise
        return sock
    errors: list[OSError] = []
    for family, kind, proto, _, address in _socket.getaddrinfo(resolvable(host), port, 0, _socket.SOCK_STREAM):
        sock = _socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(address)
        except OSError as exc:
            sock.close()
            errors.append(exc)
            continue
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        return sock
    raise errors[0] if errors else OSError("getaddrinfo returned no address")


def connect(
    host: str,
    port: int,
    timeout: float | None = DEFAULT_TIMEOUT,
    ssl: SSLContext = None,
    server_hostname: str | None = None,
) -> socket.socket:
    """A connected TCP socket (TCP_NODELAY, ``timeout`` on each call), or a Unix one for ``host`` ``unix:/path``
    (``port`` unused); with ``ssl``, a TLS socket whose
    handshake is complete (the certificate checked against ``server_hostname``, default ``host``)."""
    import socket

    raw = tcp_connect(host, port, timeout)
    sock = socket.socket(raw.family, raw.type, raw.proto, raw.detach())
    sock.settimeout(timeout)
    if ssl is not None:
        from ._tls import connect as tls_connect

        where = f" with {host}:{port}" if ":" not in host else f" with [{host}]:{port}"
        return tls_connect(sock, ssl, server_hostname or host, where)
    return sock


class RemoteError(Exception):
    """The server answered with an error frame (``b"!" + code + b" " + message``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message

    @classmethod
    def from_frame(cls, frame: bytes) -> RemoteError:
        code, message = parse_error(frame)
        if code == "auth":
            return AuthError(message or "authentication failed")
        return cls(code or "error", message)


class AuthError(RemoteError):
    """The shared-secret handshake failed (wrong or missing secret, or the server could not prove its own)."""

    def __init__(self, message: str) -> None:
        super().__init__("auth", message)


def open_session(
    host: str,
    port: int,
    secret: bytes | None,
    timeout: float | None,
    ssl: SSLContext = None,
    server_hostname: str | None = None,
) -> _socket.socket:
    """Connect (with ``ssl``: and complete the TLS handshake) and, with a secret, authenticate (mutually, inside
    TLS when both are set) before anything else is sent.  Without ``ssl`` the socket is of the C type
    (:func:`tcp_connect`): close it, or hand it to a FramedSocket that does."""
    sock = connect(host, port, timeout, ssl, server_hostname) if ssl is not None else tcp_connect(host, port, timeout)
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


def unexpected(frame: bytes) -> RemoteError:
    """What to raise for a reply frame the protocol does not expect here: its error, or a protocol error."""
    if is_error(frame):
        return RemoteError.from_frame(frame)
    from .wire.auth import is_challenge  # (hashlib and hmac: only on this path, or with a secret)

    if is_challenge(frame):
        return AuthError("the server requires a shared secret (give --secret-file)")
    return RemoteError("protocol", f"unexpected reply frame {frame[:16]!r}")
