"""The shared-secret handshake of the command and file services (both sides' arithmetic lives here).

Wire format (every message is one ``"!I"`` frame; ``S`` is the shared secret, ``||`` concatenation)::

    server -> client   b"FFAUTH1 " || Ns                        Ns: 32 fresh random bytes
    client -> server   Nc || HMAC-SHA256(S, b"client" || Ns || Nc)       Nc: 32 fresh random bytes (64 bytes)
    server -> client   b"+" || HMAC-SHA256(S, b"server" || Nc || Ns)     (33 bytes)  -- accepted
                 or    b"!auth " || reason                               -- refused; the server closes

The client proves it knows ``S`` for this connection's fresh ``Ns`` (so a response recorded from an earlier
connection is worthless), and the server proves it back over the client's fresh ``Nc`` (mutual: a client
never sends a request to an impostor).  The ``client``/``server`` labels keep one side's proof from being
reflected as the other's.  Every comparison is ``hmac.compare_digest``.  After the server's ``+`` frame the
connection carries the service's own protocol; nothing of it is read or run before.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import socket
import struct
from typing import Optional, Tuple

from .wire.errors import is_error, parse_error

__all__ = [
    "ACCEPTED",
    "CHALLENGE",
    "HANDSHAKE_MAX_FRAME",
    "HANDSHAKE_TIMEOUT",
    "HandshakeError",
    "MAC_SIZE",
    "NONCE_SIZE",
    "client_handshake",
    "client_proof",
    "new_nonce",
    "parse_challenge",
    "recv_frame",
    "send_frame",
    "server_proof",
    "split_response",
]

CHALLENGE = b"FFAUTH1 "
ACCEPTED = b"+"
NONCE_SIZE = 32
MAC_SIZE = 32
#: The largest handshake message either side accepts (the server also lets requests follow the response).
HANDSHAKE_MAX_FRAME = 256
#: Seconds the server gives a client to complete the handshake (from connecting).
HANDSHAKE_TIMEOUT = 5.0

_HEADER = struct.Struct("!I")


def new_nonce() -> bytes:
    return secrets.token_bytes(NONCE_SIZE)


def client_proof(secret: bytes, server_nonce: bytes, client_nonce: bytes) -> bytes:
    return hmac.new(secret, b"client" + server_nonce + client_nonce, hashlib.sha256).digest()


def server_proof(secret: bytes, client_nonce: bytes, server_nonce: bytes) -> bytes:
    return hmac.new(secret, b"server" + client_nonce + server_nonce, hashlib.sha256).digest()


def parse_challenge(frame: bytes) -> Optional[bytes]:
    """The server nonce of a challenge frame, or None if ``frame`` is not one."""
    if len(frame) == len(CHALLENGE) + NONCE_SIZE and frame.startswith(CHALLENGE):
        return frame[len(CHALLENGE) :]
    return None


# -- blocking client side -------------------------------------------------------------------------------
# The file service sends raw bytes after its metadata frame, so the client reads frames exactly (header,
# then payload) and never buffers a byte beyond the frame it asked for.


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if not k:
            if got:
                raise EOFError(f"connection closed inside a frame ({got} of {n} bytes)")
            raise EOFError("connection closed by the server")
        got += k
    return bytes(buf)


def recv_frame(sock: socket.socket, limit: int) -> bytes:
    """Read exactly one ``"!I"`` frame (nothing beyond it); refuse one longer than ``limit``."""
    (length,) = _HEADER.unpack(_recv_exactly(sock, 4))
    if length > limit:
        raise EOFError(f"the server sent a {length}-byte frame where at most {limit} were expected")
    return _recv_exactly(sock, length) if length else b""


def send_frame(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(_HEADER.pack(len(payload)) + payload)


class HandshakeError(Exception):
    """The handshake failed; ``message`` says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def client_handshake(sock: socket.socket, secret: bytes) -> None:
    """Run the client side on a connected blocking socket; raise HandshakeError if it fails.

    The server allows HANDSHAKE_TIMEOUT seconds for the whole exchange, so waiting longer for its challenge
    is pointless: a server that sends none within that time does not use a secret.
    """
    previous = sock.gettimeout()
    sock.settimeout(HANDSHAKE_TIMEOUT if previous is None else min(previous, HANDSHAKE_TIMEOUT))
    try:
        _client_handshake(sock, secret)
    except socket.timeout:
        raise HandshakeError(
            f"the server did not complete the handshake within {HANDSHAKE_TIMEOUT:g} s (does it use a shared secret?)"
        ) from None
    finally:
        sock.settimeout(previous)


def _client_handshake(sock: socket.socket, secret: bytes) -> None:
    challenge = recv_frame(sock, HANDSHAKE_MAX_FRAME)
    server_nonce = parse_challenge(challenge)
    if server_nonce is None:
        raise HandshakeError("the server did not ask for the shared secret (is it started with --secret-file?)")
    client_nonce = new_nonce()
    send_frame(sock, client_nonce + client_proof(secret, server_nonce, client_nonce))
    reply = recv_frame(sock, HANDSHAKE_MAX_FRAME)
    if is_error(reply):
        code, message = parse_error(reply)
        raise HandshakeError(f"the server refused the shared secret ({message or code})")
    expected = ACCEPTED + server_proof(secret, client_nonce, server_nonce)
    if not hmac.compare_digest(reply, expected):
        raise HandshakeError("the server did not prove it knows the shared secret")


def split_response(frame: bytes) -> Tuple[bytes, bytes]:
    """(client nonce, client proof) of a response frame; ValueError if it has the wrong size."""
    if len(frame) != NONCE_SIZE + MAC_SIZE:
        raise ValueError("bad handshake response")
    return frame[:NONCE_SIZE], frame[NONCE_SIZE:]
