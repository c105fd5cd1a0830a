"""The PROXY-protocol stage: who may send a PROXY header (``--trusted-proxy``), and the first stage of a
connection that reads it before anything else (``--proxy-protocol``).

Its one job is to turn a connection from a balancer into a connection from the balancer's client; the header
format itself is :mod:`servers.proxyproto`'s.

Theory of operation
===================

A listener with ``--proxy-protocol`` puts :func:`proxy_stage` first on its :attr:`Listener.stages
<servers.listen.Listener.stages>` (a TLS handshake, if any, comes after it: HAProxy's ``send-proxy-v2`` sends
the header before the ClientHello).  For each accepted connection:

* a peer outside the trusted networks is closed at once, header or not, with a log line: only a balancer may
  say who the client is, and a server that lets anyone speak first with a header lets anyone forge addresses;
* a trusted peer must send a header first.  The stage reads ``ProxyParser.wanted`` bytes at a time, a lower
  bound on what the header still lacks, so no read ever takes a byte of the stream behind it (the framed
  stream, or TLS, reads from the socket itself afterwards);
* a malformed or truncated header, or the peer closing inside it, closes that connection with a log line; one
  that never finishes is closed by the engine's sweep once ``frame_timeout`` passes (see
  :mod:`servers.connection`);
* a complete header sets ``conn.peer`` to the real client (v2 ``LOCAL``, a balancer's health check, and v1
  ``UNKNOWN`` keep the socket's own peer), remembers the balancer's address in ``conn.proxy``, and hands over
  with ``conn.stage_done()``: the service, the logs, the limits and the access log see the client from then on.

Closes for these reasons set ``conn.end`` to ``untrusted`` or ``proxy_error`` (the access log's words).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .proxyproto import ProxyParser, ProxyProtocolError
from .readers import Reader

if TYPE_CHECKING:  # pragma: no cover
    from .connection import Connection, Stage

__all__ = ["ProxyHeaderReader", "TrustedProxies", "proxy_stage"]

log = logging.getLogger("fastframe.server")


class ProxyHeaderReader(Reader):
    """Reads one PROXY header, exactly, from a trusted peer; then hands the connection on."""

    __slots__ = ("parser", "recv", "got")

    def __init__(self, conn: Connection) -> None:
        super().__init__(conn, conn.loop, conn.transport.fileno)
        self.parser = ProxyParser()
        self.recv = conn.transport.recv
        self.got = 0

    def on_readable(self, events: int) -> None:
        conn = self.conn
        try:
            data = self.recv(self.parser.wanted)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.refuse("proxy_error", f"recv failed inside the PROXY header: {exc}")
            return
        if not data:
            self.refuse("proxy_error", f"closed after {self.got} byte(s) of a PROXY header")
            return
        self.got += len(data)
        conn.last = self.loop.now
        try:
            header = self.parser.feed(data)
        except ProxyProtocolError as exc:
            self.refuse("proxy_error", str(exc))
            return
        if header is None:
            return
        conn.proxy = conn.peer
        if header.source is not None:
            conn.peer = header.source
        log.debug("%s: %s speaks for %s (PROXY v%d %s)", conn.service.name, conn.proxy, conn.peer, header.version,
                  header.command)  # fmt: skip
        conn.stage_done()

    def refuse(self, end: str, why: str) -> None:
        conn = self.conn
        log.warning("%s: closing %s: %s", conn.service.name, conn.peer, why)
        conn.end = end
        conn.close_now()


def proxy_stage(trusted: TrustedProxies) -> Stage:
    """The stage factory for a listener taking PROXY headers from ``trusted`` peers only."""

    def start(conn: Connection) -> Reader:
        reader = ProxyHeaderReader(conn)
        if conn.peer not in trusted:
            reader.refuse("untrusted", "not a trusted proxy (--trusted-proxy); PROXY headers are required here")
        return reader

    start.name = "PROXY header"  # type: ignore[attr-defined]
    return start


class TrustedProxies:
    """The ``--trusted-proxy`` networks (repeatable): which peers may, and must, send a PROXY header.

    Each entry is a CIDR (``10.0.0.0/8``, ``2001:db8::/32``) or a single address; an entry with host bits set
    (``10.0.0.1/8``) is refused as a likely typo.  ``peer in trusted`` takes an ``accept()`` address (a tuple),
    a host string, or a Unix peer (never trusted: PROXY headers are not expected on Unix sockets).
    """

    __slots__ = ("_v4", "_v6", "networks")

    def __init__(self, networks: Iterable[str]) -> None:
        self.networks = tuple(self.parse(text) for text in networks)
        self._v4 = tuple(n for n in self.networks if isinstance(n, ipaddress.IPv4Network))
        self._v6 = tuple(n for n in self.networks if isinstance(n, ipaddress.IPv6Network))

    @staticmethod
    def parse(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        try:
            return ipaddress.ip_network(text.strip(), strict=True)
        except ValueError as exc:
            raise ValueError(f"bad --trusted-proxy {text!r}: {exc}") from None

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __contains__(self, peer: Any) -> bool:
        if isinstance(peer, tuple) and peer:
            host = peer[0]
        elif isinstance(peer, str):
            host = peer
        else:
            return False
        if not isinstance(host, str) or not host:
            return False
        try:
            addr = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address):
            mapped = addr.ipv4_mapped
            return any(addr in n for n in self._v6) or (mapped is not None and any(mapped in n for n in self._v4))
        as_v6 = ipaddress.IPv6Address("::ffff:" + host)
        return any(addr in n for n in self._v4) or any(as_v6 in n for n in self._v6)

    def __repr__(self) -> str:
        return f"TrustedProxies({[str(n) for n in self.networks]!r})"
