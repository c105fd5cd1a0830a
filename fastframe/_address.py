"""Addresses as people write them on a command line, parsed once into a typed value for servers and clients.

Its one job: turn ``HOST:PORT``, ``[v6]:PORT``, ``:PORT``, ``PORT`` or ``unix:PATH`` into an
:class:`InetAddress` or a :class:`UnixAddress`, and print them back the same way (``str(addr)`` parses to an
equal value).  Nothing here resolves a name or touches a socket: a server binds what it is given, a client
connects to it, and both report errors in the words the user typed.

Grammar
=======

``unix:PATH``
    A Unix domain stream socket.  ``PATH`` is non-empty, has no NUL byte and is at most 107 bytes once
    encoded (``sun_path`` holds 108 with the terminating NUL).  ``unix:@NAME`` names a socket in Linux's
    abstract namespace: no file, no mode, gone when its last descriptor closes.
``[ADDR]:PORT``
    An IPv6 literal in brackets, a scope allowed (``[fe80::1%eth0]:7007``).  A bare IPv6 address without
    brackets is refused: its last group would read as the port.
``HOST:PORT``
    A name or an IPv4 address.
``:PORT`` and ``PORT``
    The caller's default host (``127.0.0.1``: everything binds loopback unless told otherwise).

``PORT`` is decimal, 1..65535; ``0`` only where the caller allows it (a listener: the kernel picks one).
Errors are ``ValueError`` with one line that quotes the input.
"""

from __future__ import annotations

from typing import NamedTuple, Union

__all__ = ["UNIX_PATH_MAX", "Address", "InetAddress", "UnixAddress", "parse_address"]

#: Bytes a Unix socket path may take (``sizeof(sun_path) - 1``: the kernel's NUL-terminated form).
UNIX_PATH_MAX = 107


class InetAddress(NamedTuple):
    """A TCP/UDP address: ``host`` is a name, an IPv4 or an IPv6 literal (no brackets), ``port`` 0..65535."""

    host: str
    port: int

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


class UnixAddress(NamedTuple):
    """A Unix domain socket: a file ``path``, or an abstract name written ``@name``."""

    path: str

    @property
    def abstract(self) -> bool:
        return self.path.startswith("@")

    def sockaddr(self) -> str | bytes:
        """What ``socket.bind``/``connect`` take: the path, or ``b"\\0name"`` for an abstract name."""
        if self.abstract:
            return b"\0" + self.path[1:].encode("utf-8", "surrogateescape")
        return self.path

    def __str__(self) -> str:
        return "unix:" + self.path


Address = Union[InetAddress, UnixAddress]


def parse_address(
    text: str, default_host: str = "127.0.0.1", *, allow_port_zero: bool = False, allow_unix: bool = True
) -> Address:
    """Parse one address (see the module docstring for the grammar); ``ValueError`` with one line if bad."""
    text = text.strip()
    if text.startswith("unix:"):
        if not allow_unix:
            raise ValueError(f"bad address {text!r}: a Unix socket is not allowed here")
        return _unix(text, text[5:])
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    if host.startswith("["):
        if not host.endswith("]") or len(host) < 3:
            raise ValueError(f"bad address {text!r}: expected [IPV6]:PORT")
        host = host[1:-1]
        if ":" not in host:
            raise ValueError(f"bad address {text!r}: brackets are for IPv6 addresses")
    elif ":" in host:
        raise ValueError(f"bad address {text!r}: write an IPv6 address as [addr]:port")
    elif "]" in host or any(c.isspace() for c in host):
        raise ValueError(f"bad address {text!r}: expected HOST:PORT")
    if not port.isdigit() or not port.isascii() or len(port) > 5:
        raise ValueError(f"bad address {text!r}: expected HOST:PORT")
    number = int(port)
    if number > 65535 or (number == 0 and not allow_port_zero):
        raise ValueError(f"bad address {text!r}: port out of range")
    return InetAddress(host or default_host, number)


def _unix(text: str, path: str) -> UnixAddress:
    if not path or path == "@":
        raise ValueError(f"bad address {text!r}: expected unix:/path/to/socket")
    if "\0" in path:
        raise ValueError(f"bad address {text!r}: a NUL byte in the path")
    size = len(path.encode("utf-8", "surrogateescape"))
    if size > UNIX_PATH_MAX:
        raise ValueError(f"bad address {text!r}: the path is {size} bytes long, at most {UNIX_PATH_MAX} fit")
    return UnixAddress(path)
