"""``fastframe serve --echo unix:/path``: the TCP services on Unix stream sockets, on both engines.

The socket file's life (mode, stale file replaced, a live one refused, removed on exit by the process that
made it) and the framed echo over it; the clients' ``unix:/path``.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import pytest
from harness import recv_frame, send_frame, wait_until

TIMEOUT = 10.0


@pytest.fixture
def sockdir() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="ffu-") as d:  # short: sun_path holds 107 bytes
        yield d


def unix_client(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    sock.connect(path)
    return sock


def test_framed_echo_over_a_unix_socket(serve, engine, sockdir: str) -> None:  # type: ignore[no-untyped-def]
    path = os.path.join(sockdir, "e.sock")
    proc = serve("--echo", f"unix:{path}", engine=engine)
    assert f"echo unix {path}" in proc.stdout_lines
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o660
    with unix_client(path) as a, unix_client(path) as b:
        for i in range(20):
            send_frame(a, b"x" * i)
            send_frame(b, b"%d" % i)
            assert recv_frame(a) == b"x" * i
            assert recv_frame(b) == b"%d" % i
    proc.signal(signal.SIGTERM)
    assert proc.wait(TIMEOUT) == 0
    assert not os.path.exists(path), "the socket file outlived the server"


def test_unix_and_tcp_side_by_side(serve, sockdir: str) -> None:  # type: ignore[no-untyped-def]
    path = os.path.join(sockdir, "c.sock")
    proc = serve("--echo", "0", "--files", f"unix:{path}", "--root", sockdir, "--unix-mode", "0600", expect=2)
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
    assert proc.addr("files", "unix")[0] == path
    with socket.create_connection(proc.addr("echo"), timeout=TIMEOUT) as sock:
        send_frame(sock, b"tcp")
        assert recv_frame(sock) == b"tcp"


def test_a_stale_socket_file_is_replaced(serve, engine, sockdir: str) -> None:  # type: ignore[no-untyped-def]
    path = os.path.join(sockdir, "e.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # the file stays; nothing listens on it
    proc = serve("--echo", f"unix:{path}", engine=engine)
    with unix_client(path) as sock:
        send_frame(sock, b"fresh")
        assert recv_frame(sock) == b"fresh"
    assert "stale socket file" in proc.stderr()


def test_a_live_socket_is_never_taken_over(serve, sockdir: str) -> None:  # type: ignore[no-untyped-def]
    path = os.path.join(sockdir, "e.sock")
    serve("--echo", f"unix:{path}")
    run = subprocess.run([sys.executable, "-m", "fastframe", "serve", "--echo", f"unix:{path}"], capture_output=True,
                         text=True, timeout=60, cwd="/", check=False)  # fmt: skip
    assert run.returncode != 0
    assert "another process is listening on it" in run.stderr, run.stderr
    with unix_client(path) as sock:  # the first server still has its file
        send_frame(sock, b"mine")
        assert recv_frame(sock) == b"mine"


def test_a_prefork_worker_never_removes_the_file(serve, sockdir: str) -> None:  # type: ignore[no-untyped-def]
    path = os.path.join(sockdir, "e.sock")
    proc = serve("--echo", f"unix:{path}", engine="prefork", workers=2)
    old = proc.workers()
    os.kill(old[0], signal.SIGTERM)
    proc.wait_workers(2, exclude=old[:1])
    assert os.path.exists(path)
    with unix_client(path) as sock:
        send_frame(sock, b"after")
        assert recv_frame(sock) == b"after"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--time", "unix:/tmp/t.sock"], "argument --time"),
        (["--echo", "unix:"], "expected unix:/path/to/socket"),
        (["--echo", "unix:/nonexistent-dir/e.sock"], "does not exist"),
        (["--echo", "unix:/tmp/e.sock", "--unix-mode", "999"], "expected octal permissions"),
    ],
)
def test_unix_errors_are_one_line(args: list[str], message: str) -> None:
    run = subprocess.run([sys.executable, "-m", "fastframe", "serve", *args], capture_output=True, text=True,
                         timeout=60, cwd="/", check=False)  # fmt: skip
    assert run.returncode != 0
    assert message in run.stderr, run.stderr
    assert "Traceback" not in run.stderr


def test_the_cli_client_speaks_unix(serve, sockdir: str) -> None:  # type: ignore[no-untyped-def]
    path = os.path.join(sockdir, "e.sock")
    serve("--echo", f"unix:{path}")
    run = subprocess.run([sys.executable, "-m", "fastframe", "echo", f"unix:{path}", "one", "two"], capture_output=True,
                         timeout=60, cwd="/", check=False)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout == b"one\ntwo\n"
    assert wait_until(lambda: os.path.exists(path), 1.0)


def test_no_proxy_header_is_expected_on_a_unix_socket(serve, engine, sockdir: str) -> None:  # type: ignore[no-untyped-def]
    path = os.path.join(sockdir, "e.sock")
    proc = serve("--echo", f"unix:{path}", "--time", "0", "--proxy-protocol", "--trusted-proxy", "127.0.0.1",
                 engine=engine, expect=3)  # fmt: skip
    with unix_client(path) as sock:
        send_frame(sock, b"no header")
        assert recv_frame(sock) == b"no header"
    with socket.create_connection(proc.addr("time"), timeout=TIMEOUT) as tcp:  # its TCP half does expect one
        tcp.sendall(b"GET / HTTP/1.0\r\n\r\n")
        try:
            assert tcp.recv(10) == b""
        except ConnectionResetError:  # closed with the request unread: a reset
            pass
    assert wait_until(lambda: "not a PROXY protocol header" in proc.stderr(), TIMEOUT), proc.stderr()
