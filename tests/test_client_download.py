"""fastframe.client.get_file's two receive paths (splice where Linux has it, recv_into otherwise), against a
minimal stand-in for the file service so that only the client is under test."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fastframe import client


def _serve_once(
    listener: socket.socket, blob: bytes, cut_after: int = -1, validator: str = "v1", trailer: bytes = b"T"
) -> list[dict[str, Any]]:
    """Answer one request as the file service does (validator, restart, trailer); return the request seen."""
    seen = []
    conn, _ = listener.accept()
    with conn:
        head = conn.recv(4, socket.MSG_WAITALL)
        request = json.loads(conn.recv(struct.unpack("!I", head)[0], socket.MSG_WAITALL))
        seen.append(request)
        offset = request.get("offset", 0)
        if request.get("validator", validator) != validator:
            offset = 0
        info = {"size": len(blob), "offset": offset, "length": len(blob) - offset, "validator": validator}
        if request.get("trailer"):
            info["trailer"] = True
        meta = b"S" + json.dumps(info).encode()
        conn.sendall(struct.pack("!I", len(meta)) + meta)
        body = blob[offset:] if cut_after < 0 else blob[offset:cut_after]
        conn.sendall(body)
        if cut_after < 0 and request.get("trailer"):
            conn.sendall(struct.pack("!I", len(trailer)) + trailer)
    return seen


@pytest.fixture
def server() -> Iterator[tuple[socket.socket, list[threading.Thread]]]:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    threads: list[threading.Thread] = []
    yield listener, threads
    for t in threads:
        t.join(10)
    listener.close()


@pytest.fixture(params=["splice", "recv_into"])
def path_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "recv_into":
        monkeypatch.delattr(os, "splice", raising=False)
    elif not hasattr(os, "splice"):
        pytest.skip("os.splice needs Python 3.10+ on Linux; the recv_into variant covers this interpreter")
    return str(request.param)


@pytest.mark.parametrize("size", [0, 1, 5 * 1024 * 1024 + 17])
def test_download_both_paths(server, path_kind: str, size: int, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    listener, threads = server
    blob = os.urandom(size)
    t = threading.Thread(target=_serve_once, args=(listener, blob))
    t.start()
    threads.append(t)
    seen: list[int] = []
    out = tmp_path / "out.bin"
    got = client.get_file("127.0.0.1", listener.getsockname()[1], "x", str(out), progress=lambda d, s: seen.append(d))
    assert got == size
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(blob).digest()
    assert not (tmp_path / "out.bin.part").exists()
    assert seen and seen[-1] == size and seen == sorted(seen)


def test_cut_transfer_keeps_part_and_resumes(server, path_kind: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    listener, threads = server
    blob = os.urandom(3 * 1024 * 1024 + 5)
    out = tmp_path / "out.bin"
    t = threading.Thread(target=_serve_once, args=(listener, blob, 1024 * 1024 + 3))
    t.start()
    threads.append(t)
    with pytest.raises(EOFError):
        client.get_file("127.0.0.1", listener.getsockname()[1], "x", str(out))
    t.join(10)
    part = tmp_path / "out.bin.part"
    assert not out.exists(), "a truncated download must never sit under the final name"
    assert part.read_bytes() == blob[: 1024 * 1024 + 3]
    t2 = threading.Thread(target=_serve_once, args=(listener, blob))
    t2.start()
    threads.append(t2)
    assert client.get_file("127.0.0.1", listener.getsockname()[1], "x", str(out), resume=True) == len(blob)
    assert out.read_bytes() == blob
    assert not part.exists()


def _serve_in_thread(listener: socket.socket, threads: list[threading.Thread], *args: Any) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    t = threading.Thread(target=lambda: seen.extend(_serve_once(listener, *args)))
    t.start()
    threads.append(t)
    return seen


def test_resume_sends_the_validator_and_restarts_when_it_changed(server, path_kind: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    listener, threads = server
    port = listener.getsockname()[1]
    old, new = os.urandom(3 * 1024 * 1024), os.urandom(3 * 1024 * 1024)
    out = tmp_path / "out.bin"
    _serve_in_thread(listener, threads, old, 1024 * 1024, "v1")
    with pytest.raises(EOFError):
        client.get_file("127.0.0.1", port, "x", str(out))
    threads[-1].join(10)
    assert json.loads((tmp_path / "out.bin.part.meta").read_text()) == {"validator": "v1", "size": len(old)}
    seen = _serve_in_thread(listener, threads, new, -1, "v2")  # the file changed on the server meanwhile
    assert client.get_file("127.0.0.1", port, "x", str(out), resume=True) == len(new)
    threads[-1].join(10)
    assert seen == [{"path": "x", "offset": 1024 * 1024, "trailer": True, "validator": "v1"}]
    assert out.read_bytes() == new  # not old's first MiB spliced onto new's rest
    assert sorted(os.listdir(tmp_path)) == ["out.bin"]


def test_resume_without_saved_validator_starts_over(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    listener, threads = server
    blob = os.urandom(100000)
    (tmp_path / "out.bin.part").write_bytes(b"not the start of the file")
    seen = _serve_in_thread(listener, threads, blob)
    out = tmp_path / "out.bin"
    assert client.get_file("127.0.0.1", listener.getsockname()[1], "x", str(out), resume=True) == len(blob)
    threads[-1].join(10)
    assert seen[0]["offset"] == 0 and "validator" not in seen[0]
    assert (tmp_path / "out.bin").read_bytes() == blob


def test_changed_trailer_fails_and_keeps_the_part(server, path_kind: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    listener, threads = server
    blob = os.urandom(2 * 1024 * 1024)
    _serve_in_thread(listener, threads, blob, -1, "v1", b"!changed x changed during the download")
    out = tmp_path / "out.bin"
    with pytest.raises(client.RemoteError) as info:
        client.get_file("127.0.0.1", listener.getsockname()[1], "x", str(out))
    assert info.value.code == "changed"
    assert not out.exists() and (tmp_path / "out.bin.part").exists()


def test_missing_trailer_fails(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # The server promised a trailer and closed instead: the download is not complete.
    listener, threads = server
    blob = os.urandom(1000)
    _serve_in_thread(listener, threads, blob, len(blob), "v1")
    with pytest.raises(EOFError):
        client.get_file("127.0.0.1", listener.getsockname()[1], "x", str(tmp_path / "out.bin"))
    assert not (tmp_path / "out.bin").exists()
