"""Fixtures for the command, file and authentication tests: real ``fastframe serve`` subprocesses.

Every server runs under both engines (ids ``select`` and ``prefork``: two workers), on 127.0.0.1 with
ephemeral ports.  Servers are stopped with SIGTERM (so that commands they run are killed by the service
itself) and then killed by PID, with every worker the harness saw.  Test modules cannot import this file
(``--import-mode=importlib``): the helpers reach them through the ``svc`` fixture.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import time
from types import SimpleNamespace
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import pytest
from harness import ServerProcess

ENGINES = [
    pytest.param(("--engine", "select"), id="select"),
    pytest.param(("--engine", "prefork", "--workers", "2"), id="prefork"),
]

TIMEOUT = 10.0
SECRET = b"correct horse battery staple 0123456789"


@pytest.fixture(scope="module", params=ENGINES)
def engine(request: pytest.FixtureRequest) -> Tuple[str, ...]:
    return request.param  # type: ignore[no-any-return]


def stop_server(server: ServerProcess) -> None:
    """SIGTERM (graceful: the service kills what it runs), then kill by PID whatever is left."""
    server.workers()  # remember the workers, so stop() can kill them by PID
    if server.proc.poll() is None:
        server.signal(signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            pass
    server.stop()


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Where subprocesses run: never the source tree, whose fastframe/ would shadow the installed package."""
    return str(tmp_path_factory.mktemp("cwd"))


@pytest.fixture(scope="module")
def start_server(engine: Tuple[str, ...], workdir: str) -> Iterator[Callable[..., ServerProcess]]:
    """``start_server(*args, expect=N)``: a server on this module's engine, stopped at the module's end."""
    started: List[ServerProcess] = []

    def start(*args: str, expect: int, cwd: Optional[str] = None) -> ServerProcess:
        server = ServerProcess([*engine, *args], expect=expect, cwd=cwd or workdir)
        started.append(server)
        if "prefork" in engine:
            server.wait_workers(2)
        return server

    yield start
    for server in started:
        stop_server(server)


# -- helpers ------------------------------------------------------------------------------------------------


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise EOFError(f"closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def send_frame(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(struct.pack("!I", len(payload)) + payload)


def recv_frame(sock: socket.socket) -> bytes:
    (n,) = struct.unpack("!I", recv_exactly(sock, 4))
    return recv_exactly(sock, n)


def recv_frame_or_eof(sock: socket.socket) -> Optional[bytes]:
    """The next frame, or None if the server closed (or reset) the connection first."""
    try:
        return recv_frame(sock)
    except (EOFError, ConnectionResetError):
        return None


def connect(addr: Tuple[str, int], timeout: float = TIMEOUT) -> socket.socket:
    sock = socket.create_connection(addr, timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def command_replies(addr: Tuple[str, int], line: bytes, timeout: float = TIMEOUT) -> List[bytes]:
    """Send one command frame; return every reply frame up to and including the last (``X`` or ``!``)."""
    with connect(addr, timeout) as sock:
        send_frame(sock, line)
        frames = []
        while True:
            frame = recv_frame(sock)
            frames.append(frame)
            if frame[:1] in (b"X", b"!"):
                return frames


def proc_info(pid: int) -> Optional[Dict[str, object]]:
    """state, ppid, pgrp, session and cmdline of a process from /proc (None if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return {
        "pid": pid,
        "state": fields[0],
        "ppid": int(fields[1]),
        "pgrp": int(fields[2]),
        "session": int(fields[3]),
        "cmdline": [c.decode(errors="replace") for c in cmdline if c],
    }


def all_processes() -> List[Dict[str, object]]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            info = proc_info(int(name))
            if info is not None:
                out.append(info)
    return out


def group_members(pgid: int) -> List[Dict[str, object]]:
    """Every process (zombies included) whose process group or session is ``pgid``."""
    return [p for p in all_processes() if p["pgrp"] == pgid or p["session"] == pgid]


def wait_group_gone(pgid: int, timeout: float = 3.0) -> List[Dict[str, object]]:
    """Wait until no process (not even a zombie) is left in the group; return what is left at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        left = group_members(pgid)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.02)


def make_cli(workdir: str) -> Callable[..., "subprocess.CompletedProcess[bytes]"]:
    def fastframe_cli(*args: str, timeout: float = 60.0, cwd: Optional[str] = None) -> "subprocess.CompletedProcess[bytes]":
        """Run ``python -m fastframe ARGS`` (in ``workdir`` unless told) and return what it did."""
        return subprocess.run(
            [sys.executable, "-m", "fastframe", *args],
            capture_output=True,
            timeout=timeout,
            cwd=cwd or workdir,
            stdin=subprocess.DEVNULL,
        )

    return fastframe_cli


def wait_until(predicate: Callable[[], bool], timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture(scope="session")
def svc(workdir: str) -> SimpleNamespace:
    return SimpleNamespace(
        TIMEOUT=TIMEOUT,
        SECRET=SECRET,
        recv_exactly=recv_exactly,
        send_frame=send_frame,
        recv_frame=recv_frame,
        recv_frame_or_eof=recv_frame_or_eof,
        connect=connect,
        command_replies=command_replies,
        proc_info=proc_info,
        all_processes=all_processes,
        group_members=group_members,
        wait_group_gone=wait_group_gone,
        fastframe_cli=make_cli(workdir),
        workdir=workdir,
        wait_until=wait_until,
        stop_server=stop_server,
    )


@pytest.fixture(scope="session")
def secret_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("secret") / "secret"
    path.write_bytes(SECRET + b"\n")
    os.chmod(path, 0o600)
    return str(path)
