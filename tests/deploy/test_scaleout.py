"""Scale-out behind a real HAProxy: one frontend balancing over three prefork ``fastframe serve`` processes
(each on a loopback address of its own, standing for a host of its own) with ``send-proxy-v2`` and echo health
checks, under a steady closed-loop load.

* the servers' access logs name the clients' real addresses (the clients connect from 127.0.0.3; HAProxy
  reaches the servers from 127.0.0.1, the one trusted proxy);
* ``kill -9`` of one server: HAProxy marks it down, and no request started after that fails;
* a rolling restart -- each server in turn drained through HAProxy's runtime API, stopped with SIGTERM once
  HAProxy holds no connection to it, started again on its address, set ready, healthy again -- loses nothing.

A request is one connection and one frame.  It counts as lost when it gets no reply even after one retry on a
fresh connection, and the client retries only when the connection closed before any byte of the reply (as a
client may: the request was then not answered, so nothing is duplicated).
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest
from haproxy import Backend, HAProxy, require_haproxy
from harness import ServerProcess, wait_until

TIMEOUT = 10.0
HOSTS = ("127.0.0.11", "127.0.0.12", "127.0.0.13")
CLIENT_HOST = "127.0.0.3"
CLIENTS = 4


class Server:
    """One prefork ``fastframe serve --proxy-protocol`` on ``host`` (port 0 the first time, then the same)."""

    def __init__(self, name: str, host: str, logdir: str) -> None:
        self.name, self.host, self.port = name, host, 0
        self.access_log = os.path.join(logdir, f"{name}.access")
        self.proc: ServerProcess | None = None

    def start(self) -> None:
        self.proc = ServerProcess(["--host", self.host, "--echo", str(self.port), "--engine", "prefork",
                                   "--workers", "2", "--proxy-protocol", "--trusted-proxy", "127.0.0.1",
                                   "--access-log", self.access_log, "--graceful-timeout", "5"], expect=1)  # fmt: skip
        self.port = self.proc.port("echo")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def lines(self) -> list[str]:
        try:
            with open(self.access_log) as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return []


class Load:
    """``CLIENTS`` threads, each sending one request after the other through the balancer until stopped."""

    def __init__(self, frontend: tuple[str, int]) -> None:
        self.frontend = frontend
        self.results: list[tuple[float, str]] = []  # (when the request started, "ok" | "retried" | why lost)
        self.lock = threading.Lock()
        self.running = True
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(CLIENTS)]
        for t in self.threads:
            t.start()

    def _attempt(self, payload: bytes) -> tuple[bool, str]:
        """(answered, why not); the reply bytes seen decide whether a retry is allowed."""
        got = b""
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.settimeout(TIMEOUT)
                s.bind((CLIENT_HOST, 0))
                s.connect(self.frontend)
                s.sendall(struct.pack("!I", len(payload)) + payload)
                want = 4 + len(payload)
                while len(got) < want:
                    chunk = s.recv(want - len(got))
                    if not chunk:
                        break
                    got += chunk
        except OSError as exc:
            if got:
                return False, f"failed after {len(got)} reply bytes: {exc!r}"
            return False, f"retryable: {exc!r}"
        if got == struct.pack("!I", len(payload)) + payload:
            return True, ""
        return False, (f"closed after {len(got)} reply bytes" if got else "retryable: closed before any reply byte")

    def _run(self, index: int) -> None:
        n = 0
        while self.running:
            n += 1
            payload = b"client %d request %d" % (index, n)
            started = time.monotonic()
            ok, why = self._attempt(payload)
            outcome = "ok"
            if not ok:
                if why.startswith("retryable"):
                    ok, why2 = self._attempt(payload)
                    outcome = "retried" if ok else f"lost: {why}; then {why2}"
                else:
                    outcome = f"lost: {why}"
            with self.lock:
                self.results.append((started, outcome))

    def since(self, t: float) -> list[str]:
        with self.lock:
            return [outcome for started, outcome in self.results if started >= t]

    def count(self) -> int:
        with self.lock:
            return len(self.results)

    def stop(self) -> None:
        self.running = False
        for t in self.threads:
            t.join(TIMEOUT)


@pytest.fixture
def cluster(tmp_path) -> Iterator[tuple[list[Server], HAProxy]]:  # type: ignore[no-untyped-def]
    require_haproxy()
    servers = [Server(f"s{i}", host, str(tmp_path)) for i, host in enumerate(HOSTS, 1)]
    try:
        for server in servers:
            server.start()
        with HAProxy([Backend(s.name, s.host, s.port) for s in servers], inter_ms=200, fall=2, rise=2) as ha:
            for s in servers:
                ha.wait_state(s.name, "UP")
            yield servers, ha
    finally:
        for server in servers:
            server.stop()


def progress(load: Load, requests: int) -> None:
    """Let the load make ``requests`` more requests (bounded wait)."""
    target = load.count() + requests
    assert wait_until(lambda: load.count() >= target, TIMEOUT), f"the load stalled at {load.count()}"


def test_scale_out_kill_and_rolling_restart(cluster) -> None:  # type: ignore[no-untyped-def]
    servers, ha = cluster
    load = Load(ha.frontend)
    try:
        progress(load, 60)
        # The servers saw the clients, not the balancer: peer= is 127.0.0.3, proxy= is HAProxy's 127.0.0.1.
        for s in servers:
            assert wait_until(lambda s=s: any(f"peer={CLIENT_HOST}:" in line for line in s.lines()), TIMEOUT), s.lines()
            line = next(line for line in s.lines() if f"peer={CLIENT_HOST}:" in line)
            assert " proxy=127.0.0.1:" in line and " end=eof" in line, line
        assert not [o for o in load.since(0) if o.startswith("lost")]

        # kill -9: marked down, and nothing started afterwards fails (not even once).
        victim = servers[0]
        victim.stop()  # SIGKILL to the master and every worker
        ha.wait_state(victim.name, "DOWN")
        down_at = time.monotonic()
        progress(load, 60)
        after = load.since(down_at)
        assert after and all(o == "ok" for o in after), [o for o in after if o != "ok"][:5]
        # Before HAProxy marks it down, a request may hit the dying server twice (its kernel can still complete
        # a handshake while its processes die, and HAProxy retries only failed connects): the bar for
        # kill -9 is "after that no request fails", checked above; zero lost is the rolling restart's bar.
        window = [o for o in load.since(0) if o.startswith("lost")]
        print(f"kill -9: {len(window)} request(s) lost before HAProxy marked the server down")
        victim.start()
        ha.wait_state(victim.name, "UP")

        # The rolling restart: drain, wait for HAProxy's connections to end, stop, start, ready, healthy.
        roll_started = time.monotonic()
        for s in servers:
            ha.set_state(s.name, "drain")
            ha.wait_state(s.name, "DRAIN")
            assert wait_until(lambda s=s: ha.sessions(s.name) == 0, TIMEOUT), f"{s.name} kept its sessions"
            assert s.proc is not None
            s.proc.signal(signal.SIGTERM)
            assert s.proc.wait(TIMEOUT) == 0, s.proc.stderr()[-2000:]
            s.stop()
            s.start()
            ha.set_state(s.name, "ready")
            ha.wait_state(s.name, "UP")
            progress(load, 20)
        roll = load.since(roll_started)
    finally:
        load.stop()
    print(f"rolling restart: {len(roll)} requests, {roll.count('retried')} retried once")
    lost = [o for o in roll if o.startswith("lost")]
    assert len(roll) > 100 and not lost, (len(roll), lost[:5])
    for s in servers:  # every server served again after its restart
        assert wait_until(lambda s=s: any(f"peer={CLIENT_HOST}:" in line for line in s.lines()), TIMEOUT)
