"""Shared-secret authentication of the command and file services (both engines).

The command server allows ``touch``, so a request that got through would leave a marker file: every refused
handshake below also carries a ``touch MARKER`` request, and the marker must never appear.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any, Callable

import harness
import pytest

from fastframe.client import AuthError, RemoteError, exec_command, get_file
from fastframe.wire import auth as wire_auth

CHALLENGE_SIZE = len(wire_auth.CHALLENGE) + wire_auth.NONCE_SIZE


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("authroot")
    (path / "hello.txt").write_text("hello, authenticated world")
    return path


@pytest.fixture(scope="module")
def server(start_server: Callable[..., Any], root: Path, secret_file: str) -> Any:
    return start_server("--command", "0", "--files", "0", "--allow", "touch", "--allow", "echo", "--root", str(root),
                        "--secret-file", secret_file, expect=2)  # fmt: skip


def handshake_response(secret: bytes, challenge: bytes) -> bytes:
    server_nonce = wire_auth.parse_challenge(challenge)
    assert server_nonce is not None, challenge
    return wire_auth.response_frame(secret, server_nonce, wire_auth.new_nonce())


def frame(payload: bytes) -> bytes:
    return struct.pack("!I", len(payload)) + payload


def read_all_frames(sock: socket.socket) -> list[bytes]:
    frames = []
    while True:
        f = harness.recv_frame_or_eof(sock)
        if f is None:
            return frames
        frames.append(f)


def test_right_secret_runs_and_downloads(server: Any, tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    host, port = server.addr("command")
    assert exec_command(host, port, ["touch", str(marker)], secret=harness.SECRET, timeout=10) == 0
    assert marker.exists()
    out = bytearray()
    assert exec_command(host, port, "echo ok", secret=harness.SECRET, stdout=out.extend, timeout=10) == 0
    assert out == b"ok\n"
    fhost, fport = server.addr("files")
    assert get_file(fhost, fport, "hello.txt", str(tmp_path / "h"), secret=harness.SECRET, timeout=10) == 26
    assert (tmp_path / "h").read_text() == "hello, authenticated world"


def test_cli_with_secret_file(server: Any, secret_file: str, tmp_path: Path) -> None:
    host, port = server.addr("command")
    run = harness.fastframe_cli("exec", f"{host}:{port}", "--secret-file", secret_file, "--", "echo", "via cli")
    assert (run.returncode, run.stdout) == (0, b"via cli\n"), run.stderr
    fhost, fport = server.addr("files")
    out = tmp_path / "h"
    run = harness.fastframe_cli("get", f"{fhost}:{fport}", "hello.txt", "-o", str(out), "--secret-file", secret_file)
    assert run.returncode == 0, run.stderr
    assert out.read_text() == "hello, authenticated world"
    run = harness.fastframe_cli("exec", f"{host}:{port}", "--", "echo", "no secret")
    assert run.returncode == 1 and run.stdout == b""
    assert run.stderr.decode().count("\n") == 1 and "secret" in run.stderr.decode()


def test_wrong_secret(server: Any, tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    host, port = server.addr("command")
    with pytest.raises(AuthError):
        exec_command(host, port, ["touch", str(marker)], secret=b"not the secret at all, sorry", timeout=10)
    fhost, fport = server.addr("files")
    with pytest.raises(AuthError):
        get_file(fhost, fport, "hello.txt", str(tmp_path / "h"), secret=b"not the secret at all, sorry", timeout=10)
    assert not (tmp_path / "h").exists() and not (tmp_path / "h.part").exists()
    # Raw: a wrong proof with the request pipelined behind it.
    with harness.connect(server.addr("command")) as sock:
        challenge = harness.recv_frame(sock)
        sock.sendall(
            frame(handshake_response(b"wrong secret, 0123456789", challenge)) + frame(f"touch {marker}".encode())
        )
        assert read_all_frames(sock) == [b"!auth denied"]
    time.sleep(0.1)  # a window for a wrongly run command to show (nothing to wait for)
    assert not marker.exists()


def test_no_secret(server: Any, tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    host, port = server.addr("command")
    with pytest.raises(AuthError, match="requires a shared secret"):
        exec_command(host, port, ["touch", str(marker)], timeout=10)
    fhost, fport = server.addr("files")
    with pytest.raises(AuthError):
        get_file(fhost, fport, "hello.txt", str(tmp_path / "h"), timeout=10)
    with harness.connect(server.addr("files")) as sock:  # a request where the response should be
        harness.send_frame(sock, json.dumps({"path": "hello.txt"}).encode())
        frames = read_all_frames(sock)
    assert len(frames) == 2 and frames[0].startswith(b"FFAUTH1 ") and frames[1] == b"!auth denied"
    time.sleep(0.1)  # a window for a wrongly run command to show (nothing to wait for)
    assert not marker.exists()


def test_replayed_handshake(server: Any, tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    with harness.connect(server.addr("command")) as sock:  # a legitimate session, recorded
        challenge = harness.recv_frame(sock)
        recorded = handshake_response(harness.SECRET, challenge)
        harness.send_frame(sock, recorded)
        assert harness.recv_frame(sock).startswith(wire_auth.ACCEPTED)
        harness.send_frame(sock, b"echo legit")
        assert harness.recv_frame(sock) == b"Olegit\n"
    with harness.connect(server.addr("command")) as sock:  # the recording, played back
        new_challenge = harness.recv_frame(sock)
        assert new_challenge != challenge
        sock.sendall(frame(recorded) + frame(f"touch {marker}".encode()))
        assert read_all_frames(sock) == [b"!auth denied"]
    time.sleep(0.1)  # a window for a wrongly run command to show (nothing to wait for)
    assert not marker.exists()


@pytest.mark.timing
def test_truncated_and_stalled_handshakes_time_out(server: Any, tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    results: list[tuple[str, float, list[bytes]]] = []

    def attempt(kind: str) -> None:
        with harness.connect(server.addr("command"), timeout=15) as sock:
            start = time.monotonic()
            challenge = harness.recv_frame(sock)
            response = handshake_response(harness.SECRET, challenge)
            if kind == "truncated":  # the header and half the proof, then silence
                sock.sendall(frame(response)[:40])
            elif kind == "header-only":
                sock.sendall(frame(response)[:3])
            frames = read_all_frames(sock)
            results.append((kind, time.monotonic() - start, frames))

    threads = [threading.Thread(target=attempt, args=(k,)) for k in ("stalled", "truncated", "header-only")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert len(results) == 3
    for kind, elapsed, frames in results:
        assert frames == [b"!auth handshake timed out"], (kind, frames)
        assert 4.5 < elapsed < 7.0, (kind, elapsed)
    assert not marker.exists()


def test_truncated_handshake_then_close(server: Any, tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    with harness.connect(server.addr("command")) as sock:
        challenge = harness.recv_frame(sock)
        sock.sendall(frame(handshake_response(harness.SECRET, challenge))[:50])
    # The server is unharmed and still serves properly authenticated clients.
    host, port = server.addr("command")
    assert exec_command(host, port, "echo fine", secret=harness.SECRET, stdout=lambda b: None, timeout=10) == 0
    assert not marker.exists()


def test_requests_may_follow_the_proof_in_the_same_segment(server: Any) -> None:
    # A client that does not wait for the server's proof: its requests over 256 bytes (the handshake's own
    # limit) arrive in the same read as its proof, and must be served, not refused.
    line = b"echo " + b"x" * 1000
    with harness.connect(server.addr("command")) as sock:
        challenge = harness.recv_frame(sock)
        sock.sendall(frame(handshake_response(harness.SECRET, challenge)) + frame(line) + frame(b"echo second"))
        assert harness.recv_frame(sock).startswith(wire_auth.ACCEPTED)
        assert [harness.recv_frame(sock) for _ in range(4)] == [b"O" + b"x" * 1000 + b"\n", b"X0", b"Osecond\n", b"X0"]
    req = json.dumps({"path": "hello.txt", "padding": "p" * 1000}).encode()
    with harness.connect(server.addr("files")) as sock:
        challenge = harness.recv_frame(sock)
        sock.sendall(frame(handshake_response(harness.SECRET, challenge)) + frame(req))
        assert harness.recv_frame(sock).startswith(wire_auth.ACCEPTED)
        meta = harness.recv_frame(sock)
        assert meta[:1] == b"S", meta
        assert harness.recv_exactly(sock, json.loads(meta[1:])["length"]) == b"hello, authenticated world"


def test_first_frame_must_be_a_handshake_response(server: Any, tmp_path: Path) -> None:
    # The handshake's size is checked exactly, whatever the decoder's limit while it runs.
    marker = tmp_path / "MARKER"
    for first in (b"x" * 1000, b"z" * 63, b""):
        with harness.connect(server.addr("command")) as sock:
            harness.recv_frame(sock)
            sock.sendall(frame(first) + frame(f"touch {marker}".encode()))
            assert read_all_frames(sock) == [b"!auth denied"], first[:8]
    time.sleep(0.1)  # a window for a wrongly run command to show (nothing to wait for)
    assert not marker.exists()


@pytest.mark.timing
def test_huge_frame_during_handshake_is_refused_at_once(server: Any) -> None:
    with harness.connect(server.addr("command")) as sock:
        start = time.monotonic()
        harness.recv_frame(sock)
        sock.sendall(struct.pack("!I", 1 << 30))  # 1 GiB announced: refused before anything is allocated
        frames = read_all_frames(sock)
        assert time.monotonic() - start < 2.0
    assert frames in ([], [b"!auth bad handshake"])


def test_client_verifies_the_server() -> None:
    """Mutual: against an impostor that cannot prove the secret, the client sends no request."""
    received: list[bytes] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)
        port = listener.getsockname()[1]

        def impostor() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(10)
                harness.send_frame(conn, wire_auth.CHALLENGE + wire_auth.new_nonce())
                received.append(harness.recv_frame(conn))
                harness.send_frame(conn, wire_auth.ACCEPTED + b"\0" * wire_auth.MAC_SIZE)
                conn.settimeout(1)
                try:
                    while True:
                        data = conn.recv(65536)
                        if not data:
                            break
                        received.append(data)
                except OSError:
                    pass

        thread = threading.Thread(target=impostor)
        thread.start()
        try:
            with pytest.raises(AuthError, match="did not prove"):
                exec_command("127.0.0.1", port, "echo secret stuff", secret=harness.SECRET, timeout=10)
        finally:
            thread.join(10)
    assert len(received) == 1 and len(received[0]) == wire_auth.NONCE_SIZE + wire_auth.MAC_SIZE  # no request followed


def test_remote_error_class() -> None:
    err = RemoteError.from_frame(b"!timeout killed after 1 s")
    assert (err.code, err.message, str(err)) == ("timeout", "killed after 1 s", "timeout: killed after 1 s")
    assert isinstance(RemoteError.from_frame(b"!auth denied"), AuthError)


@pytest.mark.timing
def test_secret_against_a_server_without_one() -> None:
    """A server that never sends a challenge: the client gives up after the handshake deadline, sending nothing."""
    received: list[bytes] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)
        port = listener.getsockname()[1]

        def silent() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(8)
                try:
                    while True:
                        data = conn.recv(65536)
                        if not data:
                            break
                        received.append(data)
                except OSError:
                    pass

        thread = threading.Thread(target=silent)
        thread.start()
        start = time.monotonic()
        try:
            with pytest.raises(AuthError, match="did not complete the handshake"):
                exec_command("127.0.0.1", port, "echo x", secret=harness.SECRET, timeout=60)
        finally:
            thread.join(10)
    assert 4.5 < time.monotonic() - start < 7.0
    assert received == []
