"""Listening sockets: binding them, taking them over from systemd socket activation, and pairing each with the
service it serves (:class:`Listener`)."""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .service import Address, Service

if TYPE_CHECKING:  # pragma: no cover
    from .connection import Stage

log = logging.getLogger("fastframe.server")

__all__ = ["Listener", "bind_tcp", "bind_udp", "bind_tcp_udp_pair", "match_systemd", "systemd_sockets"]

BACKLOG = 1024
SD_LISTEN_FDS_START = 3


class Listener:
    """A bound socket and the service it serves (TCP: listening; UDP: bound).

    ``stages``: what runs on each accepted connection before the service hears of it, in order (a PROXY-protocol
    header, then a TLS handshake): factories of read strategies, see :class:`servers.connection.Connection`.
    """

    def __init__(
        self, sock: socket.socket, service: Service, stages: Sequence[Stage] = (), unix_file: Any | None = None
    ) -> None:
        self.sock = sock
        self.service = service
        self.stages: tuple[Stage, ...] = tuple(stages)
        self.unix_file = unix_file  # a unix: listener's file (servers.unixsock.UnixListener), removed at exit

    @property
    def address(self) -> Address:
        return self.sock.getsockname()  # type: ignore[no-any-return]

    @property
    def transport(self) -> str:
        if self.sock.family == socket.AF_UNIX:
            return "unix"
        return "udp" if self.sock.type == socket.SOCK_DGRAM else "tcp"

    def describe(self) -> str:
        """``echo tcp 127.0.0.1:40123`` (``echo unix /run/e.sock``): the line printed for it at start-up."""
        addr = self.address
        if self.sock.family == socket.AF_UNIX:
            path = addr if isinstance(addr, str) else "@" + bytes(addr)[1:].decode("utf-8", "surrogateescape")
            return f"{self.service.name} unix {path}"
        host = f"[{addr[0]}]" if ":" in addr[0] else addr[0]
        return f"{self.service.name} {self.transport} {host}:{addr[1]}"


def _resolve(host: str, port: int, kind: int) -> tuple[int, tuple[object, ...]]:
    infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, kind, 0, socket.AI_PASSIVE)
    if not infos:  # pragma: no cover - getaddrinfo raises instead
        raise OSError(f"cannot resolve {host!r}")
    family, _, _, _, addr = infos[0]
    return family, addr


def bind_tcp(host: str, port: int, backlog: int = BACKLOG) -> socket.socket:
    family, addr = _resolve(host, port, socket.SOCK_STREAM)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(addr)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def bind_udp(host: str, port: int) -> socket.socket:
    family, addr = _resolve(host, port, socket.SOCK_DGRAM)
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(addr)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def bind_tcp_udp_pair(host: str, port: int, attempts: int = 20) -> tuple[socket.socket, socket.socket]:
    """A UDP and a TCP socket on the same port number (RFC 868 uses one port for both).

    With port 0 the kernel picks the UDP port, and the TCP socket tries to take the same number.
    """
    last: OSError | None = None
    for _ in range(attempts if port == 0 else 1):
        udp = bind_udp(host, port)
        try:
            tcp = bind_tcp(host, udp.getsockname()[1])
        except OSError as exc:
            udp.close()
            if exc.errno != errno.EADDRINUSE:
                raise
            last = exc
            continue
        return udp, tcp
    assert last is not None
    raise last


def systemd_sockets() -> list[tuple[str | None, socket.socket]] | None:
    """The sockets passed by systemd socket activation (LISTEN_FDS/LISTEN_PID), with their names.

    Returns None when the process was not socket-activated.  The variables are removed from the
    environment so that children (workers, commands) do not mistake them for their own.
    """
    pid = os.environ.get("LISTEN_PID")
    count = os.environ.get("LISTEN_FDS")
    if not pid or not count:
        return None
    names_var = os.environ.get("LISTEN_FDNAMES", "")
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(var, None)
    try:
        if int(pid) != os.getpid():
            return None
        n = int(count)
    except ValueError:
        log.warning("ignoring malformed LISTEN_PID/LISTEN_FDS")
        return None
    names: list[str | None] = list(names_var.split(":")) if names_var else []
    names += [None] * (n - len(names))
    out = []
    for i in range(n):
        fd = SD_LISTEN_FDS_START + i
        sock = socket.socket(fileno=fd)
        os.set_inheritable(fd, False)
        sock.setblocking(False)
        out.append((names[i] or None, sock))
    return out


def match_systemd(
    wanted: list[tuple[str, str]], passed: list[tuple[str | None, socket.socket]]
) -> dict[tuple[str, str], socket.socket]:
    """Assign passed sockets to (service, transport) slots: by FileDescriptorName when given
    (``echo``, ``time``, ``time-tcp``, ``command``, ``files``), else in order, by socket type."""
    result: dict[tuple[str, str], socket.socket] = {}
    unnamed = []
    for name, sock in passed:
        transport = "udp" if sock.type == socket.SOCK_DGRAM else "tcp"
        key = None
        if name:
            base = name[:-4] if name.endswith("-tcp") or name.endswith("-udp") else name
            if name.endswith("-udp"):
                transport = "udp"
            if (base, transport) in wanted:
                key = (base, transport)
        if key is None:
            unnamed.append((transport, sock))
        elif key in result:
            raise ValueError(f"two systemd sockets for {key[0]} ({key[1]})")
        else:
            result[key] = sock
    for transport, sock in unnamed:
        for slot in wanted:
            if slot[1] == transport and slot not in result:
                result[slot] = sock
                break
        else:
            log.warning("systemd passed a %s socket no service wants; closing it", transport)
            sock.close()
    return result
