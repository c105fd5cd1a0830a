"""``Type=notify`` under a stand-in for systemd: a Unix datagram socket the test binds and names in
NOTIFY_SOCKET, reading the sender's PID from SCM_CREDENTIALS (systemd's NotifyAccess=main check).  READY=1 from
the main process once it serves (prefork: once every worker accepts), STOPPING=1 on a graceful stop, WATCHDOG=1
when WATCHDOG_USEC asks for it, and NOTIFY_SOCKET kept from the commands the server runs.
(The datagram protocol itself is checked against systemd-notify in tests/deploy/test_sdnotify.py.)
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import pytest
from harness import booted, recv_frame, send_frame

TIMEOUT = 10.0


class Manager:
    """systemd's end: each datagram as (sender pid, {KEY: VALUE})."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="ff-sd-")
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.settimeout(TIMEOUT)

    def receive(self, timeout: float = TIMEOUT) -> tuple[int, dict[str, str]]:
        self.sock.settimeout(timeout)
        data, ancdata, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        pid = -1
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("iII", payload[:12])[0]
        return pid, dict(line.split("=", 1) for line in data.decode().splitlines())

    def wait_for(self, key: str, timeout: float = TIMEOUT) -> tuple[int, dict[str, str], list[dict[str, str]]]:
        """The first message carrying ``key``, and every message before it."""
        deadline = time.monotonic() + timeout
        before: list[dict[str, str]] = []
        while True:
            pid, message = self.receive(max(0.01, deadline - time.monotonic()))
            if key in message:
                return pid, message, before
            before.append(message)

    def close(self) -> None:
        self.sock.close()
        os.unlink(self.path)
        os.rmdir(self.dir)


@pytest.fixture
def manager() -> Iterator[Manager]:
    m = Manager()
    yield m
    m.close()


def test_ready_once_serving_and_stopping_on_sigterm(serve, engine, manager: Manager) -> None:  # type: ignore[no-untyped-def]
    proc = serve("--echo", "0", engine=engine, env={"NOTIFY_SOCKET": manager.path})
    pid, message, before = manager.wait_for("READY")
    assert pid == proc.pid and message["READY"] == "1" and before == []
    if engine == "prefork":
        assert len(proc.workers()) == 2
    with socket.create_connection(proc.addr("echo"), timeout=TIMEOUT) as sock:
        send_frame(sock, b"ready")
        assert recv_frame(sock) == b"ready"
    proc.signal(signal.SIGTERM)
    pid, message, _ = manager.wait_for("STOPPING")
    assert pid == proc.pid and message["STOPPING"] == "1"
    assert proc.wait(TIMEOUT) == 0


def test_prefork_ready_waits_for_every_worker(manager: Manager, workdir) -> None:  # type: ignore[no-untyped-def]
    """When READY=1 arrives, each of the workers already runs its engine (its signal handlers are installed,
    which it does just before it starts listening): the master does not say READY when it has merely forked."""
    env = dict(os.environ, NOTIFY_SOCKET=manager.path)
    proc = subprocess.Popen([sys.executable, "-m", "fastframe", "serve", "--echo", "0", "--engine", "prefork",
                             "--workers", "4"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=workdir,
                            start_new_session=True)  # fmt: skip
    try:
        pid, message, _ = manager.wait_for("READY")
        assert pid == proc.pid
        children = []
        for tid in os.listdir(f"/proc/{proc.pid}/task"):
            with open(f"/proc/{proc.pid}/task/{tid}/children") as f:
                children += [int(p) for p in f.read().split()]
        assert len(children) == 4
        assert all(booted(child) for child in children)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(TIMEOUT)
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]


def test_watchdog_pings_from_the_main_process(serve, engine, manager: Manager) -> None:  # type: ignore[no-untyped-def]
    proc = serve("--echo", "0", engine=engine, env={"NOTIFY_SOCKET": manager.path, "WATCHDOG_USEC": "200000"})
    pings = []
    started = time.monotonic()
    while len(pings) < 4:
        pid, message, _ = manager.wait_for("WATCHDOG", timeout=2.0)
        assert pid == proc.pid and message["WATCHDOG"] == "1"
        pings.append(time.monotonic())
    assert pings[-1] - started < 3.0


def test_no_watchdog_unless_asked(serve, manager: Manager) -> None:  # type: ignore[no-untyped-def]
    serve("--echo", "0", env={"NOTIFY_SOCKET": manager.path})
    manager.wait_for("READY")
    with pytest.raises(socket.timeout):
        manager.receive(timeout=0.6)


def test_commands_do_not_inherit_notify_socket(serve, engine, manager: Manager) -> None:  # type: ignore[no-untyped-def]
    proc = serve("--command", "0", "--allow", "env", engine=engine, env={"NOTIFY_SOCKET": manager.path})
    manager.wait_for("READY")
    host, port = proc.addr("command")
    run = subprocess.run([sys.executable, "-m", "fastframe", "exec", f"{host}:{port}", "--", "env"],
                         capture_output=True, text=True, timeout=60, cwd="/", check=False)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "PATH=" in run.stdout and "NOTIFY_SOCKET" not in run.stdout
