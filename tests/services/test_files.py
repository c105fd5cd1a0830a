"""The file service against real servers (both engines): exact downloads, resume, confinement, concurrency."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import harness
import pytest

from fastframe.client import RemoteError, get_file

MiB = 1024 * 1024


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(4 * MiB)
            if not block:
                return h.hexdigest()
            h.update(block)


def vm_hwm(pid: int) -> int:
    """Peak resident set size of a live process, in bytes (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("files")
    root = base / "root"
    root.mkdir()
    (base / "outside.txt").write_text("secret outside the root")
    (root / "empty").write_bytes(b"")
    (root / "one").write_bytes(b"\x07")
    (root / "ten").write_bytes(os.urandom(10 * MiB))
    (root / "sub").mkdir()
    (root / "sub" / "inner.txt").write_text("inner")
    (root / "%2e%2e").mkdir()
    (root / "%2e%2e" / "x").write_text("literally percent-two-e")
    (root / "escape").symlink_to(base / "outside.txt")
    (root / "passwd").symlink_to("/etc/passwd")
    (root / "etc").symlink_to("/etc")
    (root / "inlink").symlink_to("one")
    (root / "sublink").symlink_to("sub")
    (root / "zero").symlink_to("/dev/zero")
    (root / "up").symlink_to("..")
    os.mkfifo(root / "fifo")
    (root / ".hidden").write_text("a dotfile")
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("[core]")
    (root / "sub" / ".env").write_text("TOKEN=secret")
    return root


@pytest.fixture(scope="module")
def server(start_server: Callable[..., Any], root: Path) -> Any:
    return start_server("--files", "0", "--root", str(root), expect=1)


def request(server: Any, req: Any, raw: bytes | None = None) -> tuple[bytes, bytes]:
    """(metadata frame, the raw bytes that followed it) for one request."""
    with harness.connect(server.addr("files")) as sock:
        harness.send_frame(sock, raw if raw is not None else json.dumps(req).encode())
        meta = harness.recv_frame(sock)
        body = b""
        if meta.startswith(b"S"):
            body = harness.recv_exactly(sock, json.loads(meta[1:])["length"])
        return meta, body


def download(server: Any, path: str, out: Path, **kwargs: Any) -> int:
    host, port = server.addr("files")
    return get_file(host, port, path, str(out), timeout=30, **kwargs)


@pytest.mark.parametrize("name", ["empty", "one", "ten"])
def test_download_exact(server: Any, root: Path, tmp_path: Path, name: str) -> None:
    out = tmp_path / "out"
    assert download(server, name, out) == (root / name).stat().st_size
    assert sha256_file(out) == sha256_file(root / name)
    assert not (tmp_path / "out.part").exists()


def test_metadata_frame(server: Any, root: Path) -> None:
    meta, body = request(server, {"path": "sub/inner.txt"})
    assert meta[:1] == b"S"
    info = json.loads(meta[1:])
    assert isinstance(info.pop("validator"), str) and info == {"size": 5, "offset": 0, "length": 5}
    assert body == b"inner"


def test_offset(server: Any, root: Path) -> None:
    data = (root / "ten").read_bytes()
    meta, body = request(server, {"path": "ten", "offset": 12345})
    info = json.loads(meta[1:])
    assert info.pop("validator") and info == {"size": len(data), "offset": 12345, "length": len(data) - 12345}
    assert body == data[12345:]
    meta, body = request(server, {"path": "ten", "offset": len(data)})
    assert json.loads(meta[1:])["length"] == 0 and body == b""
    meta, _ = request(server, {"path": "ten", "offset": len(data) + 1})
    assert meta.startswith(b"!bad-offset ")


def interrupt_after(limit: int) -> Callable[[int, int], None]:
    def progress(done: int, total: int) -> None:
        if done > limit:
            raise KeyboardInterrupt

    return progress


def test_resume_from_part_file(server: Any, root: Path, tmp_path: Path) -> None:
    out = tmp_path / "ten"
    data = (root / "ten").read_bytes()
    with pytest.raises(KeyboardInterrupt):
        download(server, "ten", out, progress=interrupt_after(3 * MiB))
    kept = (tmp_path / "ten.part").stat().st_size
    assert json.loads((tmp_path / "ten.part.meta").read_text())["validator"]
    seen: list[tuple[int, int]] = []
    assert download(server, "ten", out, resume=True, progress=lambda d, t: seen.append((d, t))) == len(data)
    assert seen[0] == (kept, len(data)) and seen[-1] == (len(data), len(data))
    assert out.read_bytes() == data
    assert sorted(os.listdir(tmp_path)) == ["ten"]  # neither ten.part nor ten.part.meta is left


def test_resume_without_a_validator_starts_over(server: Any, root: Path, tmp_path: Path) -> None:
    # A partial file with nothing to check it against (made by hand, or by an older client) is not trusted.
    data = (root / "ten").read_bytes()
    (tmp_path / "ten.part").write_bytes(b"\xff" * MiB)
    seen: list[int] = []
    assert download(server, "ten", tmp_path / "ten", resume=True, progress=lambda d, t: seen.append(d)) == len(data)
    assert seen[0] == 0 and (tmp_path / "ten").read_bytes() == data


def test_interrupted_download_leaves_only_the_part_file(server: Any, root: Path, tmp_path: Path) -> None:
    out = tmp_path / "ten"
    data = (root / "ten").read_bytes()

    def stop_midway(done: int, total: int) -> None:
        if done > 2 * MiB:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        download(server, "ten", out, progress=stop_midway)
    assert not out.exists()
    part = (tmp_path / "ten.part").read_bytes()
    assert 2 * MiB < len(part) < len(data) and data.startswith(part)
    assert download(server, "ten", out, resume=True) == len(data)
    assert out.read_bytes() == data


def test_without_resume_starts_over(server: Any, root: Path, tmp_path: Path) -> None:
    (tmp_path / "one.part").write_bytes(b"garbage that is not the file")
    assert download(server, "one", tmp_path / "one") == 1
    assert (tmp_path / "one").read_bytes() == b"\x07"


def test_error_leaves_no_files(server: Any, tmp_path: Path) -> None:
    with pytest.raises(RemoteError) as info:
        download(server, "missing", tmp_path / "missing")
    assert info.value.code == "not-found"
    assert os.listdir(tmp_path) == []


TRAVERSAL = [
    ("../etc/passwd", "forbidden"),
    ("/etc/passwd", "forbidden"),
    ("a/../../x", "forbidden"),
    ("sub/../one", "forbidden"),
    ("..", "forbidden"),
    ("sub/..", "forbidden"),
    ("escape", "forbidden"),  # symlink to a file outside
    ("passwd", "forbidden"),  # symlink to /etc/passwd
    ("etc/passwd", "forbidden"),  # symlinked directory component
    ("etc/../one", "forbidden"),
    ("up/outside.txt", "forbidden"),  # symlink to the parent directory
    ("inlink", "forbidden"),  # symlink inside the root: refused too (documented choice)
    ("sublink/inner.txt", "forbidden"),
    ("zero", "forbidden"),  # /dev/zero via a symlink
    ("fifo", "not-a-file"),  # must not hang
    ("sub", "not-a-file"),
    ("sub/", "not-a-file"),
    ("", "not-a-file"),
    (".", "not-a-file"),
    ("one/x", "not-found"),
    ("%2e%2e/passwd", "not-found"),  # taken literally: no such file in the directory named %2e%2e
    (".hidden", "forbidden"),  # hidden components are refused without --allow-hidden
    ("./.hidden", "forbidden"),
    (".git/config", "forbidden"),
    ("sub/.env", "forbidden"),
    (".git", "forbidden"),
    ("sub\x00/../../etc/passwd", "bad-request"),
    ("one\x00", "bad-request"),
]


@pytest.mark.timing
@pytest.mark.parametrize("path,code", TRAVERSAL, ids=[repr(p) for p, _ in TRAVERSAL])
def test_confinement(server: Any, path: str, code: str) -> None:
    start = time.monotonic()
    meta, _ = request(server, {"path": path})
    assert meta.startswith(b"!" + code.encode() + b" "), meta
    assert time.monotonic() - start < 2.0
    assert b"secret outside" not in meta and b"root:" not in meta


def test_percent_encoding_is_literal(server: Any) -> None:
    meta, body = request(server, {"path": "%2e%2e/x"})
    assert meta[:1] == b"S" and body == b"literally percent-two-e"


@pytest.mark.parametrize(
    "raw",
    [b"not json", b'["one"]', b"{}", b'{"path": 1}', b'{"path": "one", "offset": -1}', b'{"path": "one", "offset": true}',
     b'{"path": "one", "offset": 1.5}', b"\xff\xfe", b'{"path": "one\\u0000"}'],
    ids=["text", "list", "nopath", "intpath", "negative", "bool", "float", "utf8", "nul-escape"],
)  # fmt: skip
def test_malformed_requests(server: Any, raw: bytes) -> None:
    meta, _ = request(server, None, raw=raw)
    assert meta.startswith(b"!bad-request "), meta


DEEP = b'{"path": "one", "x": ' + b"[" * 10000 + b"]" * 10000 + b"}"


@pytest.mark.parametrize(
    "raw",
    [DEEP, b"[" * 30000, b'{"path": "one", "offset": 1' + b"0" * 20000 + b"}", b'{"path": "one", "validator": 7}',
     b'{"path": "one", "trailer": "yes"}', b'{"path": "one", "validator": "' + b"v" * 200 + b'"}'],
    ids=["deep-object", "deep-list", "huge-offset", "int-validator", "str-trailer", "long-validator"],
)  # fmt: skip
def test_hostile_requests_get_an_error_frame(server: Any, raw: bytes) -> None:
    assert len(raw) < 32 * 1024  # within the size limit: the parser itself must cope
    meta, _ = request(server, None, raw=raw)
    assert meta.startswith(b"!bad-request "), meta
    assert "Traceback" not in server.stderr()


def test_oversized_request_is_refused_by_its_header(server: Any) -> None:
    with harness.connect(server.addr("files")) as sock:
        sock.sendall(struct.pack("!I", 32 * 1024 + 1))
        assert harness.recv_frame(sock).startswith(b"!bad-request ")
        assert harness.recv_frame_or_eof(sock) is None


def test_requests_on_one_connection_in_order(server: Any, root: Path) -> None:
    with harness.connect(server.addr("files")) as sock:
        payloads = [json.dumps({"path": p}).encode() for p in ("one", "missing", "ten", "sub/inner.txt")]
        sock.sendall(b"".join(len(p).to_bytes(4, "big") + p for p in payloads))
        got = []
        for _ in payloads:
            meta = harness.recv_frame(sock)
            body = harness.recv_exactly(sock, json.loads(meta[1:])["length"]) if meta[:1] == b"S" else b""
            got.append((meta[:1], body))
    assert got == [(b"S", b"\x07"), (b"!", b""), (b"S", (root / "ten").read_bytes()), (b"S", b"inner")]


def test_fifo_does_not_block_the_server(server: Any) -> None:
    meta, _ = request(server, {"path": "fifo"})
    assert meta.startswith(b"!not-a-file ")
    meta, body = request(server, {"path": "one"})
    assert body == b"\x07"


def test_twenty_clients_at_once(server: Any, root: Path, tmp_path: Path) -> None:
    expected = sha256_file(root / "ten")
    results: dict[int, Any] = {}

    def fetch(i: int) -> None:
        try:
            out = tmp_path / f"out{i}"
            download(server, "ten", out)
            results[i] = sha256_file(out)
        except BaseException as exc:  # reported below
            results[i] = exc

    threads = [threading.Thread(target=fetch, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {i: expected for i in range(20)}


def test_one_gib_download_with_small_client_memory(server: Any, root: Path, tmp_path: Path, workdir: str) -> None:
    big = root / "big"
    source_hash = hashlib.sha256()
    try:
        with open(big, "wb") as f:
            for _ in range(64):
                block = os.urandom(MiB)
                for _ in range(16):  # 16 MiB of random data repeated with varying offsets: not sparse, not one block
                    f.write(block)
                    source_hash.update(block)
                    block = block[1:] + block[:1]
        assert big.stat().st_size == 1024 * MiB
        out = tmp_path / "big.out"
        errors = tmp_path / "stderr"
        host, port = server.addr("files")
        with open(errors, "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "fastframe", "get", f"{host}:{port}", "big", "-o", str(out)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, cwd=workdir,
            )  # fmt: skip
        # The client's peak RSS: VmHWM of its own (post-exec) address space, sampled until it exits.  (wait4's
        # ru_maxrss is no use here: it also counts the pre-exec copy of this big pytest process.)
        peak = 0
        try:
            while proc.poll() is None:
                peak = max(peak, vm_hwm(proc.pid))
                time.sleep(0.02)
        finally:
            if proc.returncode is None:  # pragma: no cover - interrupted
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, errors.read_text()
        assert 0 < peak < 64 * MiB, f"client peak RSS {peak / MiB:.0f} MiB for a 1 GiB download"
        assert out.stat().st_size == 1024 * MiB
        assert sha256_file(out) == source_hash.hexdigest()
    finally:
        big.unlink(missing_ok=True)
        for name in ("big.out", "big.out.part"):
            (tmp_path / name).unlink(missing_ok=True)


@pytest.mark.timing
def test_a_stalled_download_does_not_stall_others(server: Any, root: Path) -> None:
    with harness.connect(server.addr("files")) as slow:
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        harness.send_frame(slow, json.dumps({"path": "ten"}).encode())
        meta = harness.recv_frame(slow)  # ... and then read nothing: 10 MiB wait in the server's sendfile
        assert meta[:1] == b"S"
        time.sleep(0.2)  # the slow reader stays stalled while the others download (the sleep is the test)
        for _ in range(10):
            t0 = time.perf_counter()
            _, body = request(server, {"path": "one"})
            assert body == b"\x07"
            assert time.perf_counter() - t0 < 1.0  # not held up behind the 10 MiB nobody reads
        # The stalled client can still take its file afterwards, byte-exact.
        assert harness.recv_exactly(slow, json.loads(meta[1:])["length"]) == (root / "ten").read_bytes()


def test_allow_hidden_serves_hidden_files(start_server: Callable[..., Any], root: Path) -> None:
    server = start_server("--files", "0", "--root", str(root), "--allow-hidden", expect=1)
    for path, data in ((".hidden", b"a dotfile"), (".git/config", b"[core]"), ("sub/.env", b"TOKEN=secret")):
        meta, body = request(server, {"path": path})
        assert meta[:1] == b"S" and body == data, (path, meta)
    meta, _ = request(server, {"path": ".git/../one"})
    assert meta.startswith(b"!forbidden "), meta  # '..' stays refused


# -- a file that changes: on the server between two attempts, or while it is being sent -----------------------


@pytest.fixture
def mutable(root: Path, request: pytest.FixtureRequest) -> Any:
    """A 40 MiB file of its own under the root (large enough that the loopback buffers cannot hold it all)."""
    path = root / f"mutable-{abs(hash(request.node.nodeid))}"
    path.write_bytes(os.urandom(40 * MiB))
    yield path
    path.unlink(missing_ok=True)


def rewrite_in_place(path: Path) -> bytes:
    """New content, same size, same inode (what ``cat new > file`` or a database does)."""
    new = os.urandom(path.stat().st_size)
    with open(path, "r+b") as f:
        f.write(new)
    return new


def test_stale_validator_restarts_from_zero(server: Any, mutable: Path) -> None:
    meta, _ = request(server, {"path": mutable.name, "offset": 40 * MiB})
    old = json.loads(meta[1:])["validator"]
    meta, body = request(server, {"path": mutable.name, "offset": 40 * MiB, "validator": old})
    assert json.loads(meta[1:])["offset"] == 40 * MiB and body == b""  # unchanged: the resume point holds
    new = rewrite_in_place(mutable)
    meta, body = request(server, {"path": mutable.name, "offset": 1000, "validator": old})
    info = json.loads(meta[1:])
    assert (info["offset"], info["length"]) == (0, 40 * MiB) and info["validator"] != old
    assert body == new


def test_resume_after_the_file_changed_gets_the_new_file(server: Any, mutable: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        download(server, mutable.name, out, progress=interrupt_after(5 * MiB))
    new = rewrite_in_place(mutable)
    seen: list[int] = []
    assert download(server, mutable.name, out, resume=True, progress=lambda d, t: seen.append(d)) == len(new)
    assert seen[0] == 0  # started over
    assert out.read_bytes() == new  # before: the old file's first megabytes, then the new one's rest
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_rewrite_during_download_is_reported(server: Any, mutable: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    rewritten: list[bytes] = []

    def rewrite_once(done: int, total: int) -> None:
        if done and not rewritten:
            rewritten.append(rewrite_in_place(mutable))

    with pytest.raises(RemoteError) as info:
        download(server, mutable.name, out, progress=rewrite_once)
    assert info.value.code == "changed"
    assert rewritten and not out.exists()
    assert (tmp_path / "out.part").exists()  # kept, and not renamed: it may mix the two versions
    # A resume cannot splice the two together: the validator of the partial download is stale.
    assert download(server, mutable.name, out, resume=True) == 40 * MiB
    assert out.read_bytes() == rewritten[0]


def test_rewrite_during_download_cuts_an_old_client(server: Any, mutable: Path) -> None:
    # A client that predates the trailer: it must see a short transfer, never a complete mixed file.
    with harness.connect(server.addr("files"), timeout=30) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        harness.send_frame(sock, json.dumps({"path": mutable.name}).encode())
        length = json.loads(harness.recv_frame(sock)[1:])["length"]
        received = len(harness.recv_exactly(sock, 64 * 1024))
        rewrite_in_place(mutable)
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            received += len(chunk)
    assert received == length - 1  # the last byte is held back, then the connection closes


def test_unchanged_file_gets_a_clean_trailer(server: Any, root: Path) -> None:
    with harness.connect(server.addr("files")) as sock:
        paths = ("one", "empty", "missing", "sub/inner.txt")
        sock.sendall(b"".join(len(p).to_bytes(4, "big") + p for p in
                              (json.dumps({"path": path, "trailer": True}).encode() for path in paths)))  # fmt: skip
        got = []
        for _ in paths:
            meta = harness.recv_frame(sock)
            if meta[:1] != b"S":
                got.append((meta[:1], b"", None))
                continue
            info = json.loads(meta[1:])
            assert info["trailer"] is True
            got.append((b"S", harness.recv_exactly(sock, info["length"]), harness.recv_frame(sock)))
    assert got == [(b"S", b"\x07", b"T"), (b"S", b"", b"T"), (b"!", b"", None), (b"S", b"inner", b"T")]
