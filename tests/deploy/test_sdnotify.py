"""servers.sdnotify against a receiver that does what systemd's side does (a Unix datagram socket in
NOTIFY_SOCKET, the sender's credentials, barrier file descriptors closed), itself proven first against the real
systemd-notify; then readiness, stopping, status, the watchdog, and what children inherit.

systemd itself cannot run here; systemd-notify (from the systemd package) can.
"""

from __future__ import annotations

import array
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator

import pytest
from peertools import require_tool

from fastframe.servers.sdnotify import NOTIFY_VARIABLES, Notifier, child_environ

TIMEOUT = 10.0


class Receiver:
    """systemd's end of the notification socket, for tests: datagrams of KEY=VALUE lines, with the sender's
    PID from SCM_CREDENTIALS (how systemd enforces NotifyAccess=main); file descriptors passed with a message
    (systemd-notify's BARRIER=1) are closed at once, which is what releases the sender's barrier."""

    def __init__(self, abstract: bool = False) -> None:
        self.dir = tempfile.mkdtemp(prefix="ff-notify-")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = "fastframe-notify-" + uuid.uuid4().hex
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            self.address = os.path.join(self.dir, "notify")
            self.sock.bind(self.address)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)

    def receive(self, timeout: float = TIMEOUT) -> tuple[int, list[str]] | None:
        """(sender PID, the message's assignments), or None if nothing came within ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12) + socket.CMSG_SPACE(4 * 16))
        except (TimeoutError, socket.timeout):
            return None
        pid = -1
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("iII", payload[:12])[0]
            elif level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                for fd in fds:
                    os.close(fd)
        return pid, data.decode().split("\n")

    def close(self) -> None:
        self.sock.close()
        if os.path.exists(os.path.join(self.dir, "notify")):
            os.unlink(os.path.join(self.dir, "notify"))
        os.rmdir(self.dir)


@pytest.fixture(params=["path", "abstract"])
def receiver(request: pytest.FixtureRequest) -> Iterator[Receiver]:
    r = Receiver(abstract=request.param == "abstract")
    try:
        yield r
    finally:
        r.close()


def assignments(lines: list[str]) -> dict[str, str]:
    return dict(line.split("=", 1) for line in lines if line)


def systemd_notify(receiver: Receiver, *args: str) -> list[list[str]]:
    """Run the real systemd-notify towards ``receiver``; every message it sent, barrier messages included."""
    tool = require_tool("systemd-notify")
    env = {**os.environ, "NOTIFY_SOCKET": receiver.address}
    proc = subprocess.Popen([tool, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    messages = []
    deadline = time.monotonic() + TIMEOUT
    while proc.poll() is None and time.monotonic() < deadline:
        got = receiver.receive(timeout=0.2)
        if got is not None:  # systemd-notify speaks for its caller: it sends our PID as its credentials
            assert got[0] in (os.getpid(), proc.pid)
            messages.append(got[1])
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err.decode()  # 0 only if our receiver released its barrier
    while (got := receiver.receive(timeout=0.05)) is not None:
        messages.append(got[1])
    return messages


# -- the receiver is a faithful peer: proven with systemd-notify ------------------------------------------------


def test_receiver_speaks_systemd_notifys_protocol(receiver: Receiver) -> None:
    messages = systemd_notify(receiver, "--ready", "--status=serving on 3 ports")
    assert messages[0] == ["READY=1", "STATUS=serving on 3 ports"]
    assert any("BARRIER=1" in m for m in messages[1:])  # and systemd-notify waited for us to close its fd


def test_our_messages_match_systemd_notifys(receiver: Receiver) -> None:
    """For the same notification, our datagram carries exactly the assignments systemd-notify sends."""
    theirs = systemd_notify(receiver, "--ready", "--status=echo tcp 127.0.0.1:7007")[0]
    notifier = Notifier(receiver.address)
    assert notifier.ready(status="echo tcp 127.0.0.1:7007")
    pid, ours = receiver.receive()  # type: ignore[misc]
    assert pid == os.getpid() and ours == theirs
    for args, call in [(["STOPPING=1"], notifier.stopping), (["RELOADING=1"], notifier.reloading)]:
        theirs = systemd_notify(receiver, *args)[0]
        assert call()
        assert receiver.receive()[1] == theirs  # type: ignore[index]
    notifier.close()


# -- the notifier -------------------------------------------------------------------------------------------


def test_ready_status_stopping_watchdog(receiver: Receiver) -> None:
    notifier = Notifier(receiver.address, watchdog_usec=3_000_000)
    assert notifier.enabled and notifier.watchdog_interval == 1.5
    assert notifier.ready()
    assert notifier.status("3 workers, 12 connections")
    assert notifier.watchdog()
    assert notifier.stopping(status="draining")
    assert notifier.notify("EXTEND_TIMEOUT_USEC=5000000", ERRNO=0)
    got = [receiver.receive() for _ in range(5)]
    assert [m for _, m in got] == [  # type: ignore[misc]
        ["READY=1"],
        ["STATUS=3 workers, 12 connections"],
        ["WATCHDOG=1"],
        ["STOPPING=1", "STATUS=draining"],
        ["EXTEND_TIMEOUT_USEC=5000000", "ERRNO=0"],
    ]
    assert {pid for pid, _ in got} == {os.getpid()}  # type: ignore[misc]
    notifier.close()


def test_status_is_one_line(receiver: Receiver) -> None:
    notifier = Notifier(receiver.address)
    notifier.status("line one\nREADY=1\r\nthree")
    assert receiver.receive()[1] == ["STATUS=line one READY=1 three"]  # type: ignore[index]  # no forged READY
    notifier.close()


def test_no_socket_is_a_quiet_no_op() -> None:
    notifier = Notifier.from_environ({})
    assert not notifier.enabled and notifier.watchdog_interval is None
    assert not notifier.ready() and not notifier.watchdog() and not notifier.stopping()


def test_unusable_address_turns_notifications_off(caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier("vsock:2:1234")  # systemd 254 may hand these out; not supported here
    assert not notifier.enabled and not notifier.ready()
    assert "notifications are off" in caplog.text


def test_a_missing_socket_warns_and_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier("/nonexistent/notify.sock")
    assert notifier.enabled and notifier.ready() is False
    assert "not delivered" in caplog.text
    notifier.close()


@pytest.mark.timing
def test_a_manager_that_does_not_read_never_blocks(receiver: Receiver) -> None:
    notifier = Notifier(receiver.address)
    start = time.monotonic()
    results = [notifier.status(f"n={i}") for i in range(2000)]  # far beyond net.unix.max_dgram_qlen
    assert time.monotonic() - start < 5.0
    assert results[0] and not all(results)  # the queue filled: dropped, not blocked
    notifier.close()


def test_from_environ_takes_the_variables_away(monkeypatch: pytest.MonkeyPatch, receiver: Receiver) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", receiver.address)
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    notifier = Notifier.from_environ()
    assert notifier.enabled and notifier.watchdog_interval == 5.0
    assert not any(name in os.environ for name in NOTIFY_VARIABLES)
    # a child started afterwards (a worker's command, say) inherits none of it
    out = subprocess.run(
        [sys.executable, "-c", "import os; print([k for k in os.environ if 'NOTIFY' in k or 'WATCHDOG' in k])"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.stdout.strip() == "[]"
    assert notifier.ready()
    assert receiver.receive()[1] == ["READY=1"]  # type: ignore[index]
    notifier.close()


def test_from_environ_can_leave_them(receiver: Receiver) -> None:
    env = {"NOTIFY_SOCKET": receiver.address, "PATH": "/bin"}
    notifier = Notifier.from_environ(env, unset=False)
    assert notifier.enabled and env["NOTIFY_SOCKET"] == receiver.address
    notifier.close()


@pytest.mark.parametrize(
    ("usec", "pid", "interval"),
    [("2000000", None, 1.0), ("2000000", "self", 1.0), ("2000000", "other", None), ("0", None, None),
     ("-5", None, None), ("soon", None, None), ("2000000", "x", None), ("", None, None)],
)  # fmt: skip
def test_watchdog_only_when_asked_of_this_process(usec: str, pid: str | None, interval: float | None) -> None:
    env = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": usec}
    if pid is not None:
        env["WATCHDOG_PID"] = {"self": str(os.getpid()), "other": str(os.getpid() + 1)}.get(pid, pid)
    notifier = Notifier.from_environ(env)
    assert notifier.watchdog_interval == interval
    assert env == {}
    notifier.close()


def test_child_environ() -> None:
    env = {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "2", "PATH": "/bin", "LANG": "C"}
    assert child_environ(env) == {"PATH": "/bin", "LANG": "C"}
    assert env["NOTIFY_SOCKET"] == "/x"  # the original is left alone


def test_a_forked_worker_stays_silent(receiver: Receiver) -> None:
    """A prefork worker inherits the master's notifier; only the master may speak (NotifyAccess=main)."""
    notifier = Notifier(receiver.address)
    pid = os.fork()
    if pid == 0:
        try:
            code = 0 if notifier.ready() is False and notifier.status("worker") is False else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert notifier.status("master")
    assert receiver.receive() == (os.getpid(), ["STATUS=master"])  # the first and only message: the master's
    assert receiver.receive(timeout=0.2) is None
    notifier.close()
