"""The wire protocols' home (fastframe.wire): each message made and checked by the functions both ends use.

The services and clients are tested against each other elsewhere; these tests pin the bytes themselves
against the layouts the module docstrings specify, so that a change to a format cannot pass unnoticed by
changing both ends at once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
import struct
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastframe.client import RemoteError, get_file
from fastframe.wire import auth, command, errors, files, timeformat


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


# -- the file protocol (fastframe.wire.files) ---------------------------------------------------------------


def test_file_request_round_trip() -> None:
    frame = files.request_frame("dir/name.txt", 123, "9f2c", trailer=True)
    assert json.loads(frame) == {"path": "dir/name.txt", "offset": 123, "validator": "9f2c", "trailer": True}
    assert files.parse_request(frame) == files.FileRequest(["dir", "name.txt"], 123, "9f2c", True)
    assert json.loads(files.request_frame("a")) == {"path": "a", "offset": 0, "trailer": False}
    assert files.parse_request(files.request_frame("./a//b/")) == files.FileRequest(["a", "b"], 0, None, False)


@pytest.mark.parametrize("raw, code", [
    (b'{"path": "/etc/passwd"}', "forbidden"),
    (b'{"path": "a/../../b"}', "forbidden"),
    (b'{"path": ".ssh/id"}', "forbidden"),
    (b'{"path": "a\\u0000b"}', "bad-request"),
    (b'{"path": "a", "offset": -1}', "bad-request"),
    (b'{"path": "a", "offset": true}', "bad-request"),
    (b'{"path": "a", "offset": 1' + b"0" * 30 + b"}", "bad-request"),
    (b'{"path": "a", "validator": 7}', "bad-request"),
    (b'{"path": "a", "validator": "' + b"v" * 129 + b'"}', "bad-request"),
    (b'{"path": "a", "trailer": 1}', "bad-request"),
    (b'["a"]', "bad-request"),
    (b"\xff", "bad-request"),
    (b"[" * 100000, "bad-request"),
    (b'{"path": "' + b"a" * 40000 + b'"}', "bad-request"),
    (b'{"path": "."}', "not-a-file"),
])  # fmt: skip
def test_file_request_refusals(raw: bytes, code: str) -> None:
    with pytest.raises(errors.WireError) as info:
        files.parse_request(raw)
    assert info.value.code == code and errors.parse_error(info.value.frame())[0] == code


def test_hidden_components_only_when_allowed() -> None:
    assert files.parse_request(b'{"path": ".env"}', allow_hidden=True).parts == [".env"]


def test_metadata_round_trip() -> None:
    frame = files.metadata_frame(100, 40, "abc", trailer=True)
    assert frame[:1] == b"S"
    assert json.loads(frame[1:]) == {"size": 100, "offset": 40, "length": 60, "validator": "abc", "trailer": True}
    assert files.parse_metadata(frame) == files.FileMeta(100, 40, 60, "abc", True)
    old_server = b'S{"size": 5, "offset": 0, "length": 5}'  # no validator, no trailer
    assert files.parse_metadata(old_server) == files.FileMeta(5, 0, 5, None, False)


@pytest.mark.parametrize("frame", [
    b'S{"size": 5, "offset": 0, "length": 4, "validator": "v"}',
    b'S{"size": 5, "offset": 0}',
    b'S{"size": 5, "offset": 6, "length": -1}',
    b'S{"size": "5", "offset": 0, "length": 5}',
    b'S{"size": 5, "offset": 0, "length": 5, "trailer": "yes"}',
    b"S[]",
    b"S{",
    b'S{"size": 1' + b"0" * 30 + b', "offset": 0, "length": 5}',
    b"T",
])  # fmt: skip
def test_metadata_refusals(frame: bytes) -> None:
    with pytest.raises(errors.WireError) as info:
        files.parse_metadata(frame)
    assert info.value.code == "protocol"


def test_trailer_and_validator(tmp_path: Path) -> None:
    assert files.trailer_frame(False, "a") == files.TRAILER_OK == b"T"
    assert errors.parse_error(files.trailer_frame(True, "a/b")) == ("changed", "a/b changed during the download")
    path = tmp_path / "f"
    path.write_bytes(b"one")
    first = files.validator(os.stat(path))
    assert first == files.validator(os.stat(path)) and len(first) <= files.MAX_VALIDATOR
    path.write_bytes(b"two, longer")
    assert files.validator(os.stat(path)) != first


def test_get_file_reports_a_bad_metadata_frame(tmp_path: Path) -> None:
    """A reply that breaks the protocol is a RemoteError with the code "protocol" (it was a KeyError)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)

        def serve() -> None:
            conn, _ = listener.accept()
            with conn:
                head = conn.recv(4, socket.MSG_WAITALL)
                conn.recv(struct.unpack("!I", head)[0], socket.MSG_WAITALL)
                conn.sendall(encode(b'S{"size": 5}'))

        thread = threading.Thread(target=serve)
        thread.start()
        with pytest.raises(RemoteError) as info:
            get_file("127.0.0.1", listener.getsockname()[1], "f", str(tmp_path / "out"), timeout=10)
        thread.join(10)
    assert info.value.code == "protocol" and "inconsistent metadata" in info.value.message
    assert os.listdir(tmp_path) == []


# -- the command protocol (fastframe.wire.command) ----------------------------------------------------------


WORDS = st.lists(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12),
                 min_size=1, max_size=6)  # fmt: skip


@given(WORDS)
@settings(max_examples=500, deadline=None)
def test_an_argv_request_splits_back_into_the_same_words(argv: list) -> None:
    frame = command.request_frame(argv)
    assert command.split_command_line(frame.decode("utf-8")) == argv
    parsed = command.parse_command(frame, lambda name: "/bin/" + name)
    if len(frame) <= command.MAX_COMMAND_LINE:
        assert parsed == ("/bin/" + argv[0], argv)


def test_a_command_line_request_is_sent_as_it_is() -> None:
    assert command.request_frame("ls -l 'a b'") == b"ls -l 'a b'"
    assert command.parse_command(b"ls -l 'a b'", {"ls": "/bin/ls"}.get) == ("/bin/ls", ["ls", "-l", "a b"])
    assert command.parse_command(b"rm -rf /", {"ls": "/bin/ls"}.get) == b"!not-allowed 'rm' is not on the allow-list"


@pytest.mark.parametrize("status", [0, 1, 255, -9])
def test_exit_frame_round_trip(status: int) -> None:
    frame = command.exit_frame(status)
    assert frame == b"X" + str(status).encode() and command.parse_exit(frame) == status


@pytest.mark.parametrize("frame", [b"X", b"Xabc", b"O0", b"X" + b"9" * 5000])
def test_parse_exit_refuses(frame: bytes) -> None:
    with pytest.raises(ValueError):
        command.parse_exit(frame)


def test_reply_tags_are_distinct() -> None:
    assert len({command.STDOUT, command.STDERR, command.EXIT, errors.ERROR}) == 4


# -- the time formats (fastframe.wire.timeformat) -----------------------------------------------------------


@pytest.mark.parametrize("fmt, now, wire", [
    ("unix", 0, b"\0\0\0\0"),
    ("unix", 1795341600.9, struct.pack("!I", 1795341600)),
    ("rfc868", 0, struct.pack("!I", 2208988800)),  # 1970 counted from 1900
    ("rfc868", 1795341600, struct.pack("!I", (1795341600 + 2208988800) % 2**32)),  # past 2036: modulo 2**32
])  # fmt: skip
def test_time_formats(fmt: str, now: float, wire: bytes) -> None:
    assert timeformat.encode_time(fmt, now) == wire
    if fmt == "unix" or now + 2208988800 < 2**32:
        assert timeformat.decode_time(wire, fmt) == int(now)


def test_time_format_errors() -> None:
    with pytest.raises(ValueError, match="unknown time format 'ntp'"):
        timeformat.encode_time("ntp", 0)
    with pytest.raises(ValueError, match="unknown time format"):
        timeformat.decode_time(b"\0\0\0\0", "ntp")
    with pytest.raises(ValueError, match="4 bytes, got 3"):
        timeformat.decode_time(b"\0\0\0", "unix")
