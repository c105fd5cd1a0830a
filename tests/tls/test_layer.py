"""servers.tlslayer.TLSLayer's own rules, on a real loopback socket: the handshake by readiness, its deadline,
reads before the handshake, close_notify without a session, and the retry rule of a write cut short.

The layer at work inside the engine -- every service, real peers, every bad input of issue 10 -- is in
tests/tls/test_engine.py.
"""

from __future__ import annotations

import socket
import ssl

import pytest

from fastframe.servers.tlslayer import READ, TLSFailure, TLSLayer

TIMEOUT = 10.0


def test_handshake_readiness_deadline_and_retry_rule(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
    lsock = socket.create_server(("127.0.0.1", 0))
    with lsock, socket.create_connection(lsock.getsockname(), timeout=TIMEOUT) as raw:
        accepted, _ = lsock.accept()
        layer = TLSLayer(accepted, server_ctx, handshake_timeout=5.0, now=100.0)
        try:
            assert layer.handshake() == READ  # nothing from the client yet
            layer.check_deadline(104.9)
            with pytest.raises(TLSFailure, match="TLS handshake timed out"):
                layer.check_deadline(105.0)
            with pytest.raises(BlockingIOError):
                layer.recv_into(bytearray(10))  # (a read before the handshake waits like one)
            assert layer.pending() == 0
            assert layer.close_notify() == 0  # no session yet: nothing to say
            layer._owed = 10  # as if a write had been cut short after 10 bytes
            with pytest.raises(ValueError, match="same 10 bytes"):
                layer.send(b"short")
        finally:
            layer.close()
        assert raw.recv(10) == b""
