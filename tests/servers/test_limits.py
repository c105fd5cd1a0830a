"""--max-connections and --max-commands are limits for the whole server, however many prefork workers share it
(they were per worker: two workers with --max-commands 4 ran 8 commands), and a dead worker's share is freed."""

from __future__ import annotations

import os
import signal
import time

import harness
import pytest


def served(sock, tag: bytes) -> bool:
    """True if the echo service answers on ``sock``; False if the server refused it (closed it)."""
    try:
        return harness.roundtrip(sock, tag) == tag
    except (EOFError, ConnectionResetError):
        return False


@pytest.mark.parametrize("workers", [2, 3])
def test_max_connections_counts_every_worker(engine, serve, workers):
    server = serve("--echo", "0", "--max-connections", "8", engine=engine, workers=workers)
    addr = server.addr("echo")
    socks = [harness.connect(addr) for _ in range(20)]
    try:
        ok = [s for i, s in enumerate(socks) if served(s, b"%d" % i)]
        assert len(ok) == 8, f"{len(ok)} connections served with --max-connections 8"
        if engine == "prefork":
            owners = harness.port_owners(server.workers(), addr[1])
            assert len(set(owners.values())) >= 2, f"the 8 were not spread over the workers: {owners}"
        # closing some frees as many places, whichever worker held them
        for s in ok[:3]:
            s.close()
        pids = server.workers() if engine == "prefork" else [server.pid]

        def held() -> int:
            return sum(harness.socket_count(pid, addr[1], harness.NOT_LISTENING) for pid in pids)

        assert harness.wait_until(lambda: held() == 5), f"the server still holds {held()} connections, not 5"
        more = [harness.connect(addr) for _ in range(5)]
        socks += more
        assert sum(served(s, b"more") for s in more) == 3
    finally:
        for s in socks:
            s.close()


def run_sleepers(addr, n: int, seconds: float) -> list[bytes]:
    socks = [harness.connect(addr) for _ in range(n)]
    try:
        for s in socks:
            harness.send_frame(s, b"sleep %g" % seconds)
        return [harness.recv_frame(s) for s in socks]
    finally:
        for s in socks:
            s.close()


def test_max_commands_counts_every_worker(engine, serve):
    server = serve("--command", "0", "--allow", "sleep", "--max-commands", "4", engine=engine)
    replies = run_sleepers(server.addr("command"), 10, 1.0)
    ran = [r for r in replies if r == b"X0"]
    busy = [r for r in replies if r.startswith(b"!busy ")]
    assert (len(ran), len(busy)) == (4, 6), replies
    # and once they are done, four more may run
    replies = run_sleepers(server.addr("command"), 4, 0.2)
    assert replies == [b"X0"] * 4, replies


def test_a_dead_workers_share_is_freed(serve):
    """The master resets the share of a worker that died: its connections and commands no longer count."""
    server = serve("--echo", "0", "--command", "0", "--allow", "sleep", "--max-connections", "6",
                   "--max-commands", "1", expect=2, engine="prefork")  # fmt: skip
    echo, command = server.addr("echo"), server.addr("command")
    held = harness.connect(command)
    harness.send_frame(held, b"sleep 100")
    assert harness.wait_until(lambda: harness.runs(server.pid, "sleep", "100")), "the command never started"
    clients = [harness.connect(echo) for _ in range(5)]  # with the command's connection: 6 of 6
    try:
        assert all(served(s, b"x") for s in clients)
        with harness.connect(echo) as extra:
            assert not served(extra, b"over"), "a 7th connection was served with --max-connections 6"
        workers = server.workers()
        owner = next(pid for pid in workers if any(p for p in harness.descendants(pid)))  # runs the sleep
        lost = [s for s in clients if harness.port_owners([owner], echo[1]).get(s.getsockname()[1]) == owner]
        time.sleep(1.1)  # an ordinary replacement, not a boot failure
        os.kill(owner, signal.SIGKILL)
        server.wait_workers(2, exclude=[owner])
        # the command's connection and `lost` went with the worker: their places are free again, and so is its
        # command's: len(lost) echo connections and one command connection make 6 again
        fresh = [harness.connect(echo) for _ in range(len(lost))]
        clients += fresh
        assert all(served(s, b"again") for s in fresh), "the dead worker's connections still count"
        with harness.connect(command) as s:
            deadline = time.monotonic() + 5
            while (reply := harness.roundtrip(s, b"sleep 0")) != b"X0":
                assert reply.startswith(b"!busy") and time.monotonic() < deadline, reply
                time.sleep(0.1)
    finally:
        held.close()
        for s in clients:
            s.close()
