"""The prefork master under real signals: a worker killed under load, SIGHUP, SIGTTIN/SIGTTOU, and how evenly
connections spread over the workers."""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import textwrap
import threading
import time

import harness
import pytest


class LoopClient(threading.Thread):
    """Round trips on one connection, as fast as the server answers, checking every reply.

    ``reconnect``: on a clean EOF at a frame boundary, connect again and resend the unanswered request.
    Everything else (a wrong reply, a partial frame, a reset, a refused connection) is an error.
    """

    def __init__(self, addr, idx: int, reconnect: bool = False, pause: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.addr = addr
        self.idx = idx
        self.reconnect = reconnect
        self.pause = pause
        self.rng = random.Random(idx)
        self.sock: socket.socket | None = None
        self.replies: list[float] = []  # monotonic time of every correct reply
        self.errors: list[str] = []
        self.reconnects = 0
        self.stop_flag = threading.Event()
        self.ready = threading.Event()
        self.local_port = 0

    def _connect(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock = harness.connect(self.addr)
        self.local_port = self.sock.getsockname()[1]

    def run(self) -> None:
        try:
            self._connect()
        except OSError as exc:
            self.errors.append(f"connect: {exc}")
            self.ready.set()
            return
        deadline = time.monotonic() + 60
        n = 0
        while not self.stop_flag.is_set() and time.monotonic() < deadline:
            payload = b"%d:%d:" % (self.idx, n) + self.rng.randbytes(self.rng.randint(0, 3000))
            try:
                reply = harness.roundtrip(self.sock, payload)
            except EOFError as exc:
                if self.reconnect and str(exc) == "eof at boundary":
                    self.reconnects += 1
                    try:
                        self._connect()
                    except OSError as exc2:
                        self.errors.append(f"{time.monotonic():.3f} reconnect: {exc2}")
                        break
                    continue
                self.errors.append(f"{time.monotonic():.3f} {exc}")
                break
            except OSError as exc:
                self.errors.append(f"{time.monotonic():.3f} {type(exc).__name__}: {exc}")
                break
            if reply != payload:
                self.errors.append(f"{time.monotonic():.3f} reply {n} differs ({len(reply)} bytes for {len(payload)})")
                break
            self.replies.append(time.monotonic())
            self.ready.set()
            n += 1
            if self.pause:
                time.sleep(self.pause)
        self.ready.set()
        if self.sock is not None:
            self.sock.close()

    def finish(self, timeout: float = 15.0) -> None:
        self.stop_flag.set()
        self.join(timeout)
        assert not self.is_alive(), f"client {self.idx} did not stop"


def start_clients(addr, n, **kw) -> list[LoopClient]:
    clients = [LoopClient(addr, i, **kw) for i in range(n)]
    for c in clients:
        c.start()
    for c in clients:
        assert c.ready.wait(15), f"client {c.idx} got no reply in 15 s"
        assert not c.errors, c.errors
    return clients


@pytest.mark.timing
def test_kill_9_worker_under_load(serve):
    server = serve("--echo", "0", engine="prefork", workers=3)
    addr = server.addr("echo")
    clients = start_clients(addr, 24, pause=0.002)
    try:
        workers = server.workers()
        time.sleep(1.2)  # older than the master's boot window, so the replacement is not backed off
        owners = harness.port_owners(workers, addr[1])
        by_worker = {pid: [c for c in clients if owners.get(c.local_port) == pid] for pid in workers}
        assert sum(len(v) for v in by_worker.values()) == len(clients), (owners, [c.local_port for c in clients])
        victim = max(workers, key=lambda pid: len(by_worker[pid]))
        survivors = [c for pid in workers if pid != victim for c in by_worker[pid]]
        assert by_worker[victim] and survivors, by_worker

        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        try:
            new = server.wait_workers(3, timeout=2.0, exclude=[victim])
        except TimeoutError as exc:
            pytest.fail(f"no replacement worker within 2 s: {exc}\nstderr:\n{server.stderr()[-3000:]}")
        replaced_in = time.monotonic() - killed_at
        # the survivors keep going while the replacement starts
        harness.wait_until(lambda: all(c.replies[-1] > killed_at + 0.5 for c in survivors if c.replies), 10)
        # the replacement accepts new connections (the others hold ~8 each, it holds none)
        (fresh,) = set(new) - set(workers)
        extra = [harness.connect(addr) for _ in range(6)]
        try:
            for i, s in enumerate(extra):
                assert harness.roundtrip(s, b"new %d" % i) == b"new %d" % i
            owners_after = harness.port_owners(new, addr[1])
            assert fresh in {owners_after.get(s.getsockname()[1]) for s in extra}, owners_after
        finally:
            for s in extra:
                s.close()
    finally:
        for c in clients:
            c.finish()
    bad = {c.idx: c.errors for c in survivors if c.errors}
    assert not bad, f"clients of other workers noticed the kill: {bad}\nstderr:\n{server.stderr()[-3000:]}"
    for c in survivors:
        assert any(t > killed_at + 0.5 for t in c.replies), f"client {c.idx} made no progress after the kill"
    assert replaced_in < 2.0


def test_sighup_replaces_every_worker_while_a_client_keeps_getting_answers(serve):
    server = serve("--echo", "0", engine="prefork", workers=2)
    addr = server.addr("echo")
    old = server.workers()
    clients = start_clients(addr, 3, reconnect=True, pause=0.005)
    try:
        hup_at = time.monotonic()
        server.signal(signal.SIGHUP)
        try:
            new = server.wait_workers(2, timeout=10, exclude=old)
        except TimeoutError as exc:
            pytest.fail(f"{exc}\nstderr:\n{server.stderr()[-3000:]}")
        changed_at = time.monotonic()

        def moved() -> bool:
            owners = harness.port_owners(new, addr[1])
            return all(c.errors or (c.replies[-1] > changed_at and owners.get(c.local_port) in new) for c in clients)

        harness.wait_until(moved, 10)
        owners = harness.port_owners(new, addr[1])
    finally:
        for c in clients:
            c.finish()
    assert not set(new) & set(old)
    for c in clients:
        assert not c.errors, f"client {c.idx}: {c.errors}; stderr:\n{server.stderr()[-3000:]}"
        assert any(t > changed_at for t in c.replies), f"client {c.idx} got no answer after the workers changed"
        assert c.reconnects >= 1, f"client {c.idx} was never moved off the old workers"
        assert owners.get(c.local_port) in new, (c.local_port, owners)
    assert server.proc.poll() is None
    assert hup_at < changed_at


def test_sigttin_sigttou_change_the_worker_count(serve):
    server = serve("--echo", "0", engine="prefork", workers=2)
    addr = server.addr("echo")

    def expect(count: int) -> list[int]:
        try:
            pids = harness.wait_booted(server.wait_workers(count, timeout=10))
        except TimeoutError as exc:
            pytest.fail(f"{exc}\nstderr:\n{server.stderr()[-3000:]}")
        with harness.connect(addr) as s:
            assert harness.roundtrip(s, b"still serving") == b"still serving"
        return pids

    # one signal at a time: two of the same standard signal sent back to back may coalesce into one
    for sig, count in [(signal.SIGTTIN, 3), (signal.SIGTTIN, 4), (signal.SIGTTOU, 3), (signal.SIGTTOU, 2),
                       (signal.SIGTTOU, 1)]:  # fmt: skip
        server.signal(sig)
        expect(count)
    server.signal(signal.SIGTTOU)  # never fewer than one worker
    time.sleep(1.5)  # a window for a wrong removal to show (nothing to wait for)
    assert len(expect(1)) == 1
    server.signal(signal.SIGTTIN)
    expect(2)


# Injected from outside, the way production code never sees: a sitecustomize module on PYTHONPATH, imported by
# the server's interpreter at start-up, makes every worker fail as it starts (the master never calls it).
FAULTY_WORKER = textwrap.dedent(
    """
    from fastframe.servers.prefork import PreforkEngine

    def run_worker(self, slot):
        raise RuntimeError("fault injected at worker boot")

    PreforkEngine.run_worker = run_worker
    """
)


def test_a_worker_that_cannot_boot_is_respawned_with_a_growing_delay(serve, tmp_path):
    (tmp_path / "sitecustomize.py").write_text(FAULTY_WORKER)
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    server = serve("--echo", "0", "--engine", "prefork", "--workers", "1", env={"PYTHONPATH": path})
    died = re.compile(r"worker (\d+) died [\d.]+ s after start \(exit status 1\); next spawn in ([\d.]+) s")
    assert harness.wait_until(lambda: len(died.findall(server.stderr())) >= 4, timeout=15), server.stderr()[-3000:]
    err = server.stderr()
    assert "fault injected at worker boot" in err, err[-3000:]
    delays = [float(d) for _, d in died.findall(err)]
    assert delays[:4] == [0.1, 0.2, 0.4, 0.8], delays  # doubling: a worker that cannot start is no fork bomb
    started = re.findall(r"worker (\d+) started", err)
    assert len(started) <= len(delays) + 1, "a worker was spawned before the delay after the last failure"
    assert server.proc.poll() is None, "the master died with its workers"
    server.signal(signal.SIGTERM)
    code, _ = harness.wait_exit(server, 15)
    assert code == 0, server.stderr()[-3000:]


def test_worker_retired_while_booting_still_stops(serve):
    """SIGTTOU right after SIGTTIN: the master retires the worker it has just forked (the newest) with SIGTERM,
    possibly before that worker has replaced the signal handlers it inherited from the master.  The worker must
    still stop, whenever the SIGTERM lands.  The window is a millisecond or so, hence several attempts; each
    passes quickly when the bug is absent."""
    server = serve("--echo", "0", engine="prefork", workers=2)
    addr = server.addr("echo")
    for attempt in range(8):
        before = set(harness.wait_booted(server.wait_workers(2, timeout=10)))
        server.signal(signal.SIGTTIN)
        deadline = time.monotonic() + 5
        while not set(server.workers()) - before:  # no sleep: signal as soon as the fork is visible
            assert time.monotonic() < deadline, "SIGTTIN started no worker"
        server.signal(signal.SIGTTOU)
        try:
            server.wait_workers(2, timeout=5)
        except TimeoutError as exc:
            booting = {pid: harness.booted(pid) for pid in server.workers()}
            pytest.fail(
                f"attempt {attempt}: a worker retired by SIGTTOU right after its fork never stopped: {exc} "
                f"(booted: {booting})\nstderr:\n{server.stderr()[-2500:]}"
            )
        with harness.connect(addr) as s:
            assert harness.roundtrip(s, b"ok") == b"ok"


def test_connections_spread_evenly_over_4_workers(serve):
    harness.raise_nofile(2048)
    server = serve("--echo", "0", engine="prefork", workers=4)
    addr = server.addr("echo")
    workers = server.workers()
    socks = []
    try:
        for _ in range(200):  # a burst: connect everything first, talk afterwards
            socks.append(harness.connect(addr))
        for i, s in enumerate(socks):
            assert harness.roundtrip(s, b"%d" % i) == b"%d" % i
        counts = {pid: harness.socket_count(pid, addr[1]) for pid in workers}
        assert sum(counts.values()) == 200, counts
        print("spread:", sorted(counts.values()))
        fair = 200 / 4
        assert max(counts.values()) <= 2 * fair, f"uneven spread over the workers: {counts}"
    finally:
        for s in socks:
            s.close()


@pytest.mark.timing
def test_sighup_answers_every_request_in_flight(serve):
    """SIGHUP replaces the workers gracefully: the old ones stop accepting and finish what they received (commands
    that take 0.5 s, 1 MiB echoes read slowly, requests on connections still in the accept queue), the new ones
    take every connection made from then on, and the old ones exit."""
    server = serve("--echo", "0", "--command", "0", "--allow", "sleep", "--max-commands", "100", "--graceful-timeout",
                   "10", expect=2, engine="prefork")  # fmt: skip
    old = server.workers()
    echo, command = server.addr("echo"), server.addr("command")
    big = os.urandom(1 << 20)
    results: dict[str, str] = {}

    def slow_echo(i: int, sock: socket.socket) -> None:
        try:
            got = bytearray()
            while len(got) < 4 + len(big):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                got += chunk
                time.sleep(0.01)  # ~1.5 s for the whole reply
            results[f"echo {i}"] = "ok" if bytes(got) == harness.HEADER.pack(len(big)) + big else f"{len(got)} bytes"
        except OSError as exc:
            results[f"echo {i}"] = repr(exc)

    def command_reply(i: int, sock: socket.socket) -> None:
        try:
            results[f"command {i}"] = "ok" if harness.recv_frame(sock) == b"X0" else "wrong reply"
        except (OSError, EOFError) as exc:
            results[f"command {i}"] = repr(exc)

    socks, threads = [], []
    try:
        for i in range(60):
            s = harness.connect(echo if i % 2 else command)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            socks.append(s)
        # accepted, spread over the old workers
        assert harness.wait_until(
            lambda: len(harness.port_owners(old, echo[1])) + len(harness.port_owners(old, command[1])) == 60
        ), "the old workers did not accept all 60 connections"
        for i, s in enumerate(socks):
            if i % 2:
                harness.send_frame(s, big)
                threads.append(threading.Thread(target=slow_echo, args=(i, s)))
            else:
                harness.send_frame(s, b"sleep 0.5")
                threads.append(threading.Thread(target=command_reply, args=(i, s)))
        for t in threads:
            t.start()
        time.sleep(0.05)  # the HUP lands while those requests are in flight (the sleep is the test)
        hup_at = time.monotonic()
        server.signal(signal.SIGHUP)
        late = []  # connected and sent around the HUP: old or new workers, every one answered
        for i in range(30):
            s = harness.connect(echo)
            harness.send_frame(s, b"late %d" % i)
            late.append(s)
        for i, s in enumerate(late):
            results[f"late {i}"] = "ok" if harness.recv_frame(s) == b"late %d" % i else "wrong reply"
            s.close()
        for t in threads:
            t.join(20)
        try:
            new = server.wait_workers(2, timeout=15, exclude=old)
        except TimeoutError as exc:
            pytest.fail(f"{exc}\nstderr:\n{server.stderr()[-3000:]}")
        after = [harness.connect(echo) for _ in range(6)]
        try:
            for i, s in enumerate(after):
                assert harness.roundtrip(s, b"after %d" % i) == b"after %d" % i
            owners = harness.port_owners(new, echo[1])
            assert {owners.get(s.getsockname()[1]) for s in after} <= set(new), owners
        finally:
            for s in after:
                s.close()
    finally:
        for s in socks:
            s.close()
    bad = {k: v for k, v in results.items() if v != "ok"}
    assert len(results) == 90 and not bad, f"{bad}\nstderr:\n{server.stderr()[-3000:]}"
    assert time.monotonic() - hup_at < 15
    assert server.proc.poll() is None


def test_commands_of_a_killed_worker_are_ended(serve):
    """A command runs in its own session, so a worker killed with SIGKILL used to leave it (and whatever it
    started) running with nobody to stop it.  The master is their subreaper: it ends them and reaps them."""
    server = serve("--command", "0", "--allow", "sh", engine="prefork", workers=2)
    tree: dict[int, str | None] = {}
    try:
        with harness.connect(server.addr("command")) as s:
            harness.send_frame(s, b"sh -c 'echo $$; sleep 100 & setsid sleep 101 & sleep 102'")
            first = harness.recv_frame(s)
            assert first[:1] == b"O", first
            sh = int(first[1:])
            assert harness.wait_until(lambda: len(harness.descendants(sh)) == 3, 5), harness.descendants(sh)
            tree = {pid: harness.proc_start(pid) for pid in [sh, *harness.descendants(sh)]}
            owner = next(pid for pid in server.workers() if sh in harness.descendants(pid))
            time.sleep(1.1)  # an ordinary replacement, not a boot failure
            os.kill(owner, signal.SIGKILL)
            gone = harness.wait_until(lambda: not harness.still_running(tree), 5)
            assert gone, f"still running 5 s after their worker died: {harness.still_running(tree)}"

        # still_running() counts a zombie as ended, but the master reaps it on SIGCHLD, in its own time
        def unreaped() -> list[int]:
            return [p for p in harness.descendants(server.pid) if p not in server.workers()]

        assert harness.wait_until(lambda: not unreaped(), 5), f"not reaped: {unreaped()}"
        server.wait_workers(2, exclude=[owner])
        assert "Traceback" not in server.stderr()
    finally:
        for pid in harness.still_running(tree):
            os.kill(pid, signal.SIGKILL)
