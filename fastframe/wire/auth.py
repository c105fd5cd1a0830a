"""The shared-secret handshake in front of the command and file services: mutual HMAC-SHA256 challenge-response.

Wire format
===========

Every message is one ``"!I"`` frame; ``S`` is the shared secret, ``||`` concatenation::

    server -> client   b"FFAUTH1 " || Ns                                  challenge (40 bytes)
    client -> server   Nc || HMAC-SHA256(S, b"client" || Ns || Nc)        response (64 bytes)
    server -> client   b"+" || HMAC-SHA256(S, b"server" || Nc || Ns)      accepted (33 bytes)
                 or    b"!auth " || reason                                refused: the server closes

``Ns`` and ``Nc`` are 32 fresh random bytes each (``secrets.token_bytes``).  The server sends its challenge
as soon as a client connects.  The client proves it knows ``S`` for this connection's fresh ``Ns`` (so a
response recorded from an earlier connection is worthless), and the server proves it back over the client's
fresh ``Nc`` (mutual: a client never sends a request to an impostor).  The ``client``/``server`` labels keep
one side's proof from being reflected as the other's.  Every comparison of a proof is constant-time
(``hmac.compare_digest``).  After the server's ``+`` frame the connection carries the service's own protocol;
nothing of it is read or run before -- though a client may send its first requests right behind its
response, at its own risk.  The refusal is an error frame (:mod:`fastframe.wire.errors`, code ``auth``);
the reasons a server gives are ``denied`` (a wrong proof or a response of the wrong size), ``bad handshake``
(a frame it cannot decode) and ``handshake timed out``.

Limits: a handshake message is at most ``HANDSHAKE_MAX_FRAME`` (256) bytes; the server allows
``HANDSHAKE_TIMEOUT`` (5) seconds from the connect to a valid response; a secret is at least ``MIN_SECRET``
(16) bytes, read from a file with surrounding whitespace stripped (:func:`load_secret`).

The functions below make and check each message without touching a socket (the service in
``fastframe.servers.auth`` drives them from its event loop); :func:`client_handshake` is the blocking client,
over a :class:`~fastframe.FramedSocket` that never reads past the frame asked for, so that the socket goes on
to the service's protocol (a ``splice`` download included) with nothing taken from it.
"""

from __future__ import annotations

import _socket
import hashlib
import hmac
import secrets
import socket

from .._framed import FramedSocket
from .errors import error_frame, is_error, parse_error

__all__ = [
    "ACCEPTED",
    "CHALLENGE",
    "HANDSHAKE_MAX_FRAME",
    "HANDSHAKE_TIMEOUT",
    "MAC_SIZE",
    "MIN_SECRET",
    "NONCE_SIZE",
    "HandshakeError",
    "accept_frame",
    "challenge_frame",
    "check_accept",
    "check_response",
    "client_handshake",
    "client_proof",
    "is_challenge",
    "load_secret",
    "new_nonce",
    "parse_challenge",
    "refusal_frame",
    "response_frame",
    "server_proof",
]

CHALLENGE = b"FFAUTH1 "
ACCEPTED = b"+"
NONCE_SIZE = 32
MAC_SIZE = 32
MIN_SECRET = 16
#: The largest handshake message either side accepts.
HANDSHAKE_MAX_FRAME = 256
#: Seconds the server gives a client to complete the handshake (from connecting).
HANDSHAKE_TIMEOUT = 5.0


class HandshakeError(Exception):
    """The handshake failed; ``message`` says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def new_nonce() -> bytes:
    return secrets.token_bytes(NONCE_SIZE)


def client_proof(secret: bytes, server_nonce: bytes, client_nonce: bytes) -> bytes:
    return hmac.new(secret, b"client" + server_nonce + client_nonce, hashlib.sha256).digest()


def server_proof(secret: bytes, client_nonce: bytes, server_nonce: bytes) -> bytes:
    return hmac.new(secret, b"server" + client_nonce + server_nonce, hashlib.sha256).digest()


# -- the messages, in the order they travel -----------------------------------------------------------------


def challenge_frame(server_nonce: bytes) -> bytes:
    return CHALLENGE + server_nonce


def is_challenge(frame: bytes) -> bool:
    """True for a challenge: what a client that sent no secret gets instead of a reply."""
    return frame.startswith(CHALLENGE)


def parse_challenge(frame: bytes) -> bytes | None:
    """The server nonce of a challenge frame, or None if ``frame`` is not one."""
    if len(frame) == len(CHALLENGE) + NONCE_SIZE and frame.startswith(CHALLENGE):
        return frame[len(CHALLENGE) :]
    return None


def response_frame(secret: bytes, server_nonce: bytes, client_nonce: bytes) -> bytes:
    return client_nonce + client_proof(secret, server_nonce, client_nonce)


def check_response(secret: bytes, server_nonce: bytes, frame: bytes) -> bytes | None:
    """The client nonce of a response that proves the secret, else None (the proof compared in constant time)."""
    if len(frame) != NONCE_SIZE + MAC_SIZE:
        return None
    client_nonce, proof = frame[:NONCE_SIZE], frame[NONCE_SIZE:]
    if hmac.compare_digest(proof, client_proof(secret, server_nonce, client_nonce)):
        return client_nonce
    return None


def accept_frame(secret: bytes, client_nonce: bytes, server_nonce: bytes) -> bytes:
    return ACCEPTED + server_proof(secret, client_nonce, server_nonce)


def refusal_frame(reason: str) -> bytes:
    return error_frame("auth", reason)


def check_accept(secret: bytes, client_nonce: bytes, server_nonce: bytes, frame: bytes) -> None:
    """Raise HandshakeError unless ``frame`` accepts the client and proves the server knows the secret."""
    if is_error(frame):
        code, message = parse_error(frame)
        raise HandshakeError(f"the server refused the shared secret ({message or code})")
    if not hmac.compare_digest(frame, accept_frame(secret, client_nonce, server_nonce)):
        raise HandshakeError("the server did not prove it knows the shared secret")


def load_secret(path: str) -> bytes:
    """The secret in the file ``path`` (whitespace around it stripped); ValueError says why there is none."""
    try:
        with open(path, "rb") as f:
            secret = f.read().strip()
    except OSError as exc:
        raise ValueError(f"cannot read secret file {path}: {exc.strerror}") from None
    if len(secret) < MIN_SECRET:
        raise ValueError(f"secret in {path} is too short ({len(secret)} bytes; use at least {MIN_SECRET})")
    return secret


# -- the blocking client ------------------------------------------------------------------------------------


def client_handshake(sock: _socket.socket, secret: bytes) -> None:
    """Run the client side on a connected blocking socket; raise HandshakeError if it fails.

    Nothing beyond the server's last handshake frame is read.  The server allows HANDSHAKE_TIMEOUT seconds for
    the whole exchange, so waiting longer for its challenge is pointless: a server that sends none within that
    time does not use a secret.
    """
    previous = sock.gettimeout()
    sock.settimeout(HANDSHAKE_TIMEOUT if previous is None else min(previous, HANDSHAKE_TIMEOUT))
    fs = FramedSocket(sock, max_frame=HANDSHAKE_MAX_FRAME, read_ahead=False)  # not closed: the caller owns sock
    try:
        server_nonce = parse_challenge(fs.recv())
        if server_nonce is None:
            raise HandshakeError("the server did not ask for the shared secret (is it started with --secret-file?)")
        client_nonce = new_nonce()
        fs.send(response_frame(secret, server_nonce, client_nonce))
        check_accept(secret, client_nonce, server_nonce, fs.recv())
    except socket.timeout:
        raise HandshakeError(
            f"the server did not complete the handshake within {HANDSHAKE_TIMEOUT:g} s (does it use a shared secret?)"
        ) from None
    finally:
        sock.settimeout(previous)
