"""The wire protocols' home (fastframe.wire): each message made and checked by the functions both ends use.

The services and clients are tested against each other elsewhere; these tests pin the bytes themselves
against the layouts the module docstrings specify, so that a change to a format cannot pass unnoticed by
changing both ends at once.
"""

from __future__ import annotations

import hashlib
import hmac
import socket
import struct
import threading
from pathlib import Path

import pytest

from fastframe.wire import auth, errors


def encode(payload: bytes) -> bytes:
    """A "!I" frame, written independently of the codec under test."""
    return struct.pack("!I", len(payload)) + payload


@pytest.mark.parametrize("code", sorted(errors.CODES))
def test_error_frame_round_trip(code: str) -> None:
    frame = errors.error_frame(code, "héllo wörld: it broke")
    assert frame == b"!" + code.encode() + b" " + "héllo wörld: it broke".encode()
    assert errors.is_error(frame)
    assert errors.parse_error(frame) == (code, "héllo wörld: it broke")
    assert f"``{code}``" in (errors.__doc__ or "")  # the table in the docstring lists it


def test_error_frame_refuses_an_unlisted_code() -> None:
    with pytest.raises(ValueError, match="unknown error code"):
        errors.error_frame("oops", "no such code")


@pytest.mark.parametrize("frame, parsed", [
    (b"!newer-code what a newer server says", ("newer-code", "what a newer server says")),
    (b"!auth", ("auth", "")),
    (b"!", ("", "")),
    (b"!busy \xff\xfe", ("busy", "\ufffd\ufffd")),
])  # fmt: skip
def test_parse_error_takes_any_frame(frame: bytes, parsed: tuple) -> None:
    assert errors.parse_error(frame) == parsed


def test_not_an_error() -> None:
    assert not errors.is_error(b"X0") and not errors.is_error(b"") and not errors.is_error(b"S{}")


def test_wire_error_frame_and_short() -> None:
    exc = errors.WireError("forbidden", f"{errors.short('x' * 200)} has a '..' component")
    code, message = errors.parse_error(exc.frame())
    assert code == "forbidden" and message == str(exc)
    assert message.startswith("'" + "x" * 80 + "...'")


# -- the handshake (fastframe.wire.auth) --------------------------------------------------------------------

SECRET = b"a shared secret of some length"


def test_handshake_messages_have_the_specified_layout() -> None:
    ns, nc = auth.new_nonce(), auth.new_nonce()
    assert len(ns) == len(nc) == 32 and ns != nc
    challenge = auth.challenge_frame(ns)
    assert challenge == b"FFAUTH1 " + ns and len(challenge) == 40
    assert auth.parse_challenge(challenge) == ns and auth.is_challenge(challenge)
    response = auth.response_frame(SECRET, ns, nc)
    assert response == nc + hmac.new(SECRET, b"client" + ns + nc, hashlib.sha256).digest()
    assert auth.check_response(SECRET, ns, response) == nc
    accepted = auth.accept_frame(SECRET, nc, ns)
    assert accepted == b"+" + hmac.new(SECRET, b"server" + nc + ns, hashlib.sha256).digest()
    auth.check_accept(SECRET, nc, ns, accepted)  # no exception
    assert auth.refusal_frame("denied") == b"!auth denied"


def test_parse_challenge_refuses_what_is_not_one() -> None:
    ns = auth.new_nonce()
    for frame in (b"FFAUTH1 " + ns[:-1], b"FFAUTH1 " + ns + b"x", b"FFAUTH2 " + ns, b"X0"):
        assert auth.parse_challenge(frame) is None


def test_check_response_refuses_wrong_secret_size_and_reflection() -> None:
    ns, nc = auth.new_nonce(), auth.new_nonce()
    good = auth.response_frame(SECRET, ns, nc)
    assert auth.check_response(b"another secret of some length", ns, good) is None
    assert auth.check_response(SECRET, auth.new_nonce(), good) is None  # a response recorded from another connection
    assert auth.check_response(SECRET, ns, good[:-1]) is None and auth.check_response(SECRET, ns, good + b"x") is None
    # the server's own proof reflected back as a client's fails: the labels differ
    assert auth.check_response(SECRET, ns, nc + auth.server_proof(SECRET, ns, nc)) is None


def test_check_accept_reports_a_refusal_and_an_impostor() -> None:
    ns, nc = auth.new_nonce(), auth.new_nonce()
    with pytest.raises(auth.HandshakeError, match=r"refused the shared secret \(denied\)"):
        auth.check_accept(SECRET, nc, ns, b"!auth denied")
    with pytest.raises(auth.HandshakeError, match="did not prove"):
        auth.check_accept(SECRET, nc, ns, b"+" + b"\0" * 32)
    with pytest.raises(auth.HandshakeError, match="did not prove"):
        auth.check_accept(b"another secret of some length", nc, ns, auth.accept_frame(SECRET, nc, ns))


def test_client_handshake_reads_nothing_past_the_handshake() -> None:
    """The accept frame and the first bytes of the service's own reply arrive in one segment: every byte after
    the accept frame is still in the socket for the caller (a splice download needs exactly that)."""
    client, server = socket.socketpair()
    with client, server:
        server.settimeout(10)
        client.settimeout(10)
        ns = auth.new_nonce()

        def serve() -> None:
            server.sendall(encode(auth.challenge_frame(ns)))
            head = server.recv(4, socket.MSG_WAITALL)
            response = server.recv(struct.unpack("!I", head)[0], socket.MSG_WAITALL)
            nc = auth.check_response(SECRET, ns, response)
            assert nc is not None
            server.sendall(encode(auth.accept_frame(SECRET, nc, ns)) + b"RAW FILE BYTES")

        thread = threading.Thread(target=serve)
        thread.start()
        auth.client_handshake(client, SECRET)
        thread.join(10)
        assert client.recv(100) == b"RAW FILE BYTES"
        assert client.gettimeout() == 10  # restored


def test_client_handshake_without_a_challenge() -> None:
    client, server = socket.socketpair()
    with client, server:
        server.sendall(encode(b"X0"))
        with pytest.raises(auth.HandshakeError, match="did not ask for the shared secret"):
            auth.client_handshake(client, SECRET)


def test_load_secret(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b"  sixteen bytes!!!\n")
    assert auth.load_secret(str(path)) == b"sixteen bytes!!!"
    path.write_bytes(b"fifteen bytes!!\n")
    with pytest.raises(ValueError, match=r"too short \(15 bytes; use at least 16\)"):
        auth.load_secret(str(path))
    with pytest.raises(ValueError, match="cannot read secret file .*: No such file"):
        auth.load_secret(str(tmp_path / "missing"))
