"""fastframe.client.get_file's two receive paths (splice where Linux has it, recv_into otherwise), against a
minimal stand-in for the file service so that only the client is under test."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
import threading
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

from fastframe import client


def _serve_once(listener: socket.socket, blob: bytes, cut_after: int = -1) -> None:
    conn, _ = listener.accept()
    with conn:
        head = conn.recv(4, socket.MSG_WAITALL)
        request = json.loads(conn.recv(struct.unpack("!I", head)[0], socket.MSG_WAITALL))
        offset = request.get("offset", 0)
        meta = b"S" + json.dumps({"size": len(blob), "offset": offset, "length": len(blob) - offset}).encode()
        conn.sendall(struct.pack("!I", len(meta)) + meta)
        body = blob[offset:] if cut_after < 0 else blob[offset:cut_after]
        conn.sendall(body)


@pytest.fixture
def server() -> Iterator[Tuple[socket.socket, List[threading.Thread]]]:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    threads: List[threading.Thread] = []
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
    seen: List[int] = []
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
