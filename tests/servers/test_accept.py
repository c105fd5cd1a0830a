"""The accept path under pressure: bursts on several listeners at once, running out of file descriptors."""

from __future__ import annotations

import threading
import time

import pytest


def test_bursts_on_two_listeners_crash_no_worker(engine, serve, net):
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
                    socks.append(net.connect(addr))  # held open, so that the workers' loads drift apart
                for s in socks:
                    if addr == addrs[0]:
                        assert net.roundtrip(s, b"burst") == b"burst"
                    else:
                        assert len(net.recv_exactly(s, 4)) == 4
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
    with net.connect(addrs[0]) as s:
        assert net.roundtrip(s, b"after") == b"after"
    assert server.proc.poll() is None
