"""The accept path under pressure: bursts on several listeners at once, running out of file descriptors."""

from __future__ import annotations

import select
import sys
import threading
import time

import harness
import pytest


def test_bursts_on_two_listeners_crash_no_worker(engine, serve):
    """Connects to two TCP listeners at once: a prefork worker that steps out of the accept queue while both are
    ready in one wake-up must not trip over the second one (it used to exit 1, dropping all its connections)."""
    server = serve("--echo", "0", "--time", "0", expect=3, engine=engine)
    workers = server.workers()
    addrs = [server.addr("echo"), server.addr("time", "tcp")]
    failures: list[str] = []
    answered = [0]

    def burst(addr, stop_at: float) -> None:
        while time.monotonic() < stop_at:
            socks = []
            try:
                for _ in range(60):
                    socks.append(harness.connect(addr))  # held open, so that the workers' loads drift apart
                for s in socks:
                    if addr == addrs[0]:
                        assert harness.roundtrip(s, b"burst") == b"burst"
                    else:
                        assert len(harness.recv_exactly(s, 4)) == 4
                    answered[0] += 1
            except (OSError, EOFError, AssertionError) as exc:
                failures.append(f"{addr}: {type(exc).__name__}: {exc}")
                return
            finally:
                for s in socks:
                    s.close()

    stop_at = time.monotonic() + 3.0
    threads = [threading.Thread(target=burst, args=(addr, stop_at)) for addr in addrs for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    err = server.stderr()
    assert not failures, f"{failures[:5]}\nstderr:\n{err[-3000:]}"
    assert answered[0] > 200
    assert "Traceback" not in err and " died " not in err, err[-3000:]
    assert server.workers() == workers, "a worker was replaced"
    with harness.connect(addrs[0]) as s:
        assert harness.roundtrip(s, b"after") == b"after"
    assert server.proc.poll() is None


# A server started with RLIMIT_NOFILE 64: it runs out of descriptors after a few dozen connections.
LOW_NOFILE = (
    "import os, resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64)); "
    "os.execv(sys.executable, [sys.executable, '-m', 'fastframe', 'serve'] + sys.argv[1:])"
)


@pytest.mark.timing
def test_out_of_descriptors_backs_off_quietly_and_recovers(engine, spawn):
    """EMFILE: the accept queue fills while every descriptor is taken.  The server must wait for one to free up
    without spinning (prefork workers used to run at 98% CPU) or flooding its log (30,000 lines a second; the
    select engine 10), and answer every queued client once descriptors are free again."""
    harness.raise_nofile(2048)
    argv = [sys.executable, "-c", LOW_NOFILE, "--echo", "0", *harness.engine_args(engine)]
    server = spawn(argv, expect=1)
    if engine == "prefork":
        harness.wait_booted(server.wait_workers(2))
    addr = server.addr("echo")
    socks = []
    try:
        for i in range(300):  # the kernel completes these handshakes: the backlog holds what is not accepted
            s = harness.connect(addr)
            harness.send_frame(s, b"%d" % i)
            socks.append(s)
        assert harness.wait_until(lambda: "accept failed" in server.stderr()), (
            "running out of descriptors was never logged"
        )
        pids = [server.pid, *server.workers()]
        lines0, cpu0, t0 = server.stderr().count("accept failed"), harness.cpu_seconds(pids), time.monotonic()
        time.sleep(4.0)
        lines1, cpu1, t1 = server.stderr().count("accept failed"), harness.cpu_seconds(pids), time.monotonic()
        cpu = (cpu1 - cpu0) / (t1 - t0)
        rate = (lines1 - lines0) / (t1 - t0)
        print(f"{engine}: {cpu:.1%} CPU, {rate:.2f} 'accept failed' lines/s while out of descriptors")
        assert lines1 >= 1, "running out of descriptors was never logged"
        assert cpu < 0.15, f"{cpu:.0%} of a CPU spent waiting for descriptors"
        assert rate <= 0.5, f"{rate:.1f} log lines a second"
        # Free descriptors: every client still waiting in the queue is accepted and answered, none lost.
        answered: set[int] = set()
        deadline = time.monotonic() + 60
        while len(answered) < len(socks):
            assert time.monotonic() < deadline, f"{len(socks) - len(answered)} queued clients never answered"
            pending = [s for i, s in enumerate(socks) if i not in answered]
            ready, _, _ = select.select(pending, [], [], 1.0)
            for s in ready:
                i = socks.index(s)
                assert harness.recv_frame(s) == b"%d" % i
                answered.add(i)
                s.close()  # frees the server's descriptor for the next one in the queue
    finally:
        for s in socks:
            s.close()
    assert server.proc.poll() is None
    if engine == "prefork":
        assert " died " not in server.stderr()
