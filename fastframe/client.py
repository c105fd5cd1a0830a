"""Clients for the fastframe services (the CLI's client subcommands use these)."""

from __future__ import annotations

import socket
from typing import Iterable, List, Optional, Tuple

from ._framed import FramedSocket

__all__ = ["connect", "echo", "echo_raw", "get_time", "parse_address"]

DEFAULT_TIMEOUT = 10.0


def parse_address(text: str, default_host: str = "127.0.0.1") -> Tuple[str, int]:
    """``HOST:PORT``, ``[v6]:PORT``, ``:PORT`` or ``PORT`` -> (host, port)."""
    text = text.strip()
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


def connect(host: str, port: int, timeout: Optional[float] = DEFAULT_TIMEOUT) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def echo(host: str, port: int, messages: Iterable[bytes], timeout: Optional[float] = DEFAULT_TIMEOUT) -> List[bytes]:
    """Send each message as a frame to a framed echo service; return the replies in order."""
    items = list(messages)
    with FramedSocket(connect(host, port, timeout)) as fs:
        fs.send_many(items)
        return [fs.recv() for _ in items]


def echo_raw(host: str, port: int, data: bytes, timeout: Optional[float] = DEFAULT_TIMEOUT) -> bytes:
    """Send bytes to a raw (RFC 862) echo service and return as many bytes back."""
    with connect(host, port, timeout) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
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
    host: str, port: int, fmt: str = "unix", tcp: bool = False, timeout: Optional[float] = DEFAULT_TIMEOUT
) -> int:
    """Ask a time service (RFC 868, UDP by default) and return seconds since 1970."""
    from fastframe.servers.timeservice import decode_time

    if tcp:
        with connect(host, port, timeout) as sock:
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
