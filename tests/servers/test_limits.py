"""--max-connections and --max-commands are limits for the whole server, however many prefork workers share it
(they were per worker: two workers with --max-commands 4 ran 8 commands), and a dead worker's share is freed."""

from __future__ import annotations

import os
import signal
import time

import pytest


def served(net, sock, tag: bytes) -> bool:
    """True if the echo service answers on ``sock``; False if the server refused it (closed it)."""
    try:
        return net.roundtrip(sock, tag) == tag
    except (EOFError, ConnectionResetError):
        return False


@pytest.mark.parametrize("workers", [2, 3])
def test_max_connections_counts_every_worker(engine, serve, net, workers):
    server = serve("--echo", "0", "--max-connections", "8", engine=engine, workers=workers)
    addr = server.addr("echo")
    socks = [net.connect(addr) for _ in range(20)]
    try:
        ok = [s for i, s in enumerate(socks) if served(net, s, b"%d" % i)]
        assert len(ok) == 8, f"{len(ok)} connections served with --max-connections 8"
        if engine == "prefork":
            owners = net.port_owners(server.workers(), addr[1])
            assert len(set(owners.values())) >= 2, f"the 8 were not spread over the workers: {owners}"
        # closing some frees as many places, whichever worker held them
        for s in ok[:3]:
            s.close()
        time.sleep(0.2)
        more = [net.connect(addr) for _ in range(5)]
        socks += more
        assert sum(served(net, s, b"more") for s in more) == 3
    finally:
        for s in socks:
            s.close()


def run_sleepers(net, addr, n: int, seconds: float) -> list[bytes]:
    socks = [net.connect(addr) for _ in range(n)]
    try:
        for s in socks:
            net.send_frame(s, b"sleep %g" % seconds)
        return [net.recv_frame(s) for s in socks]
    finally:
        for s in socks:
            s.close()


def test_max_commands_counts_every_worker(engine, serve, net):
    server = serve("--command", "0", "--allow", "sleep", "--max-commands", "4", engine=engine)
    replies = run_sleepers(net, server.addr("command"), 10, 1.0)
    ran = [r for r in replies if r == b"X0"]
    busy = [r for r in replies if r.startswith(b"!busy ")]
    assert (len(ran), len(busy)) == (4, 6), replies
    # and once they are done, four more may run
    replies = run_sleepers(net, server.addr("command"), 4, 0.2)
    assert replies == [b"X0"] * 4, replies


def test_a_dead_workers_share_is_freed(serve, net):
    """The master resets the share of a worker that died: its connections and commands no longer count."""
    server = serve("--echo", "0", "--command", "0", "--allow", "sleep", "--max-connections", "6",
                   "--max-commands", "1", expect=2, engine="prefork")  # fmt: skip
    echo, command = server.addr("echo"), server.addr("command")
    held = net.connect(command)
    net.send_frame(held, b"sleep 100")
    time.sleep(0.3)
    clients = [net.connect(echo) for _ in range(5)]  # with the command's connection: 6 of 6
    try:
        assert all(served(net, s, b"x") for s in clients)
        with net.connect(echo) as extra:
            assert not served(net, extra, b"over"), "a 7th connection was served with --max-connections 6"
        workers = server.workers()
        owner = next(pid for pid in workers if any(p for p in net.descendants(pid)))  # runs the sleep
        lost = [s for s in clients if net.port_owners([owner], echo[1]).get(s.getsockname()[1]) == owner]
        time.sleep(1.1)  # an ordinary replacement, not a boot failure
        os.kill(owner, signal.SIGKILL)
        server.wait_workers(2, exclude=[owner])
        # the command's connection and `lost` went with the worker: their places are free again, and so is its
        # command's: len(lost) echo connections and one command connection make 6 again
        fresh = [net.connect(echo) for _ in range(len(lost))]
        clients += fresh
        assert all(served(net, s, b"again") for s in fresh), "the dead worker's connections still count"
        with net.connect(command) as s:
            deadline = time.monotonic() + 5
            while (reply := net.roundtrip(s, b"sleep 0")) != b"X0":
                assert reply.startswith(b"!busy") and time.monotonic() < deadline, reply
                time.sleep(0.1)
    finally:
        held.close()
        for s in clients:
            s.close()
