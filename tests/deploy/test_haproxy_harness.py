"""The HAProxy harness (tests/haproxy.py), proven against a framed-echo backend of the test's own
(echo_backend.py: standard library, its own PROXY v2 reading): traffic and real client addresses, draining
through the runtime API, a killed backend marked down, and an echo health check that a wedged server fails.

This is the harness the scale-out test of fastframe serve (issue 11) builds on.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import harness
import pytest
from haproxy import Backend, HAProxy, require_haproxy

BACKEND_SCRIPT = os.path.join(os.path.dirname(__file__), "echo_backend.py")
TIMEOUT = 10.0


class EchoBackend:
    """echo_backend.py in a subprocess on ``host`` (port 0, read back); its output lines collected."""

    def __init__(self, name: str, host: str, mute: bool = False) -> None:
        self.name = name
        argv = [sys.executable, BACKEND_SCRIPT, host] + (["--mute"] if mute else [])
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], TIMEOUT)
        first = self.proc.stdout.readline().decode().split() if ready else []
        if first[:1] != ["listening"]:
            self.kill()
            raise RuntimeError(f"echo backend did not start: {first}")
        self.address = Backend(name, first[1], int(first[2]))
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._cond:
                self.lines.append(raw.decode().strip())
                self._cond.notify_all()

    def clients(self) -> list[str]:
        with self._cond:
            return [line.split()[2] for line in self.lines if line.startswith("conn PROXY")]

    def wait_line(self, line: str, timeout: float = TIMEOUT) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: line in self.lines, timeout):
                raise TimeoutError(f"{self.name} never printed {line!r}; it printed {self.lines[-5:]}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(TIMEOUT)


@pytest.fixture
def backends() -> Iterator[list[EchoBackend]]:
    require_haproxy()
    started: list[EchoBackend] = []
    # 127.0.0.2 and 127.0.0.3: each backend stands for a host of its own
    try:
        for i, host in enumerate(["127.0.0.2", "127.0.0.3"], 1):
            started.append(EchoBackend(f"b{i}", host))
        yield started
    finally:
        for b in started:
            b.kill()


@pytest.fixture
def balancer(backends: list[EchoBackend]) -> Iterator[HAProxy]:
    with HAProxy([b.address for b in backends]) as ha:
        for b in backends:
            ha.wait_state(b.name, "UP")
        yield ha


def request(ha: HAProxy, payload: bytes) -> tuple[str, bytes]:
    """One connection through the balancer, one frame: (the client's own 'ip:port', the reply)."""
    with socket.create_connection(ha.frontend, timeout=TIMEOUT) as c:
        c.sendall(struct.pack("!I", len(payload)) + payload)
        head = harness.recv_exactly(c, 4)
        reply = harness.recv_exactly(c, struct.unpack("!I", head)[0])
        me = c.getsockname()
    return f"{me[0]}:{me[1]}", reply


def test_traffic_and_real_client_addresses(balancer: HAProxy, backends: list[EchoBackend]) -> None:
    me = [request(balancer, b"hello %d" % i) for i in range(10)]
    assert [reply for _, reply in me] == [b"hello %d" % i for i in range(10)]
    clients = {addr for addr, _ in me}
    assert harness.wait_until(lambda: clients <= set(backends[0].clients() + backends[1].clients())), (
        "every client logged"
    )
    assert backends[0].clients() and backends[1].clients(), "round robin used both backends"
    assert all(c.startswith("127.0.0.1:") for c in clients)  # the client's address, not haproxy's 127.0.0.x
    backends[0].wait_line("conn LOCAL")  # the echo health checks carry a LOCAL header
    assert f"{balancer.frontend[0]}" == "127.0.0.1" and "send-proxy-v2" in balancer.config


def test_drain_through_the_runtime_api(balancer: HAProxy, backends: list[EchoBackend]) -> None:
    b1, b2 = backends
    # an established connection to b1 survives the drain; only new connections avoid b1
    established = None
    for _ in range(4):
        sock = socket.create_connection(balancer.frontend, timeout=TIMEOUT)
        sock.sendall(struct.pack("!I", 1) + b"x")
        harness.recv_exactly(sock, 5)
        mine = "{}:{}".format(*sock.getsockname()[:2])
        assert harness.wait_until(lambda: mine in b1.clients() + b2.clients()), "the connection logged"  # noqa: B023
        if mine in b1.clients():
            established = sock
            break
        sock.close()
    assert established is not None, "round robin never picked b1"
    with established:
        balancer.set_state("b1", "drain")
        assert balancer.wait_state("b1", "DRAIN") == "DRAIN"
        before = len(b1.clients())
        for i in range(8):
            assert request(balancer, b"%d" % i)[1] == b"%d" % i
        assert len(b1.clients()) == before, "a drained server got new connections"
        established.sendall(struct.pack("!I", 5) + b"still")
        assert harness.recv_exactly(established, 9)[4:] == b"still"
    balancer.set_state("b1", "ready")
    balancer.wait_state("b1", "UP")
    for i in range(4):
        request(balancer, b"%d" % i)
    assert harness.wait_until(lambda: len(b1.clients()) > before), "b1 serving again after ready"


def test_maintenance_state(balancer: HAProxy) -> None:
    balancer.set_state("b2", "maint")
    assert balancer.wait_state("b2", "MAINT") == "MAINT"
    with pytest.raises(RuntimeError, match="set server be/nope"):
        balancer.set_state("nope", "drain")


def test_killed_backend_is_marked_down(balancer: HAProxy, backends: list[EchoBackend]) -> None:
    b1, b2 = backends
    b1.kill()
    # retries + redispatch: even before the checks notice, a refused connection is retried on b2
    for i in range(10):
        assert request(balancer, b"k%d" % i)[1] == b"k%d" % i
    assert balancer.wait_state("b1", "DOWN") == "DOWN"
    served = len(b2.clients())
    for i in range(10):
        assert request(balancer, b"d%d" % i)[1] == b"d%d" % i
    assert harness.wait_until(lambda: len(b2.clients()) >= served + 10), "b2 serving everything"


@pytest.mark.parametrize(("check", "state"), [("echo", "DOWN"), ("connect", "UP")])
def test_echo_check_catches_a_wedged_server(check: str, state: str) -> None:
    """A server that accepts but never answers: the echo check takes it down, a connect check does not."""
    require_haproxy()
    wedged = EchoBackend("w", "127.0.0.2", mute=True)
    try:
        with HAProxy([wedged.address], check=check) as ha:
            deadline = time.monotonic() + 3.0  # fall 2 x inter 200 ms, plus the 1 s check timeout
            seen = set()
            while time.monotonic() < deadline:
                seen.add(ha.states()["w"])
                time.sleep(0.05)
            assert ha.states()["w"] == state, seen
    finally:
        wedged.kill()


def test_stop_cleans_up() -> None:
    require_haproxy()
    ha = HAProxy([Backend("x", "127.0.0.2", 9)], check=None)
    pid, workdir = ha.pid, ha.dir
    assert os.path.exists(ha.admin_path)
    ha.stop()
    ha.stop()
    assert not os.path.exists(workdir)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_bad_configuration_is_reported() -> None:
    require_haproxy()
    with pytest.raises(ValueError, match="send_proxy must be"):
        HAProxy([Backend("x", "127.0.0.2", 9)], send_proxy="v3")
