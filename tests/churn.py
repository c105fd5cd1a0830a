"""Loopback connection churn beside the test suite: the "suite five times in a row under churn" proof.

Theory of operation: one master process opens a listener of its own on 127.0.0.1 (port 0), accepts in a
thread and closes every connection it gets after reading what the client sent; it forks ``--procs`` worker
processes, each running ``--threads`` threads that connect, send a few bytes, and close (half of them with
an RST: ``SO_LINGER`` 0), as fast as they can.  That keeps the kernel's TCP tables, the ephemeral port range
and the two CPUs busy the way a loaded CI machine is, which is what flushed out the suite's races (a
``/proc/net/tcp`` read that counted one socket twice, fixed sleeps that were too short).

Everything is bounded: ``--seconds`` (required) ends the run by itself; a worker leaves when its master is gone
(its parent PID changes); ``stop`` ends a run started with ``start`` by the PID in its pidfile (SIGTERM to the
master, which kills its workers by PID).  Nothing is ever killed by name.  Not part of ``.ci/run``::

    python tests/churn.py start --seconds 3600 --pidfile /tmp/churn.pid    # prints the master's PID
    ... run the suite ...
    python tests/churn.py stop --pidfile /tmp/churn.pid                     # prints what the churn did
    python tests/churn.py run --seconds 10                                  # in the foreground
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import struct
import sys
import threading
import time

_LINGER_RST = struct.pack("ii", 1, 0)


def _listener() -> socket.socket:
    srv = socket.create_server(("127.0.0.1", 0), backlog=1024)
    srv.settimeout(0.5)
    return srv


def _serve(srv: socket.socket, stop: threading.Event, counts: list[int]) -> None:
    while not stop.is_set():
        try:
            conn, _ = srv.accept()
        except socket.timeout:
            continue
        except OSError:
            if stop.is_set():
                return
            time.sleep(0.01)  # EMFILE and the like: back off, the clients will retry
            continue
        with conn:
            conn.settimeout(0.5)
            try:
                conn.recv(64)
            except OSError:
                pass
        counts[0] += 1


def _client(addr: tuple[str, int], deadline: float, parent: int, rst: bool, counts: list[int], index: int) -> None:
    while time.monotonic() < deadline and os.getppid() == parent:
        try:
            with socket.create_connection(addr, timeout=2.0) as sock:
                sock.sendall(b"churn\n")
                if rst:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
            counts[index] += 1
        except OSError:
            counts[index + 1] += 1
            time.sleep(0.01)


def _worker(addr: tuple[str, int], deadline: float, threads: int) -> None:
    """A child process: ``threads`` connect/close loops until the deadline or the master's death."""
    parent = os.getppid()
    counts = [0] * (2 * threads)
    pool = [
        threading.Thread(target=_client, args=(addr, deadline, parent, i % 2 == 1, counts, 2 * i), daemon=True)
        for i in range(threads)
    ]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    os._exit(0)


def run(seconds: float, procs: int, threads: int) -> int:
    """Churn for ``seconds`` (or until SIGTERM/SIGINT); print a one-line summary; return 0."""
    deadline = time.monotonic() + seconds
    srv = _listener()
    addr = srv.getsockname()
    stop = threading.Event()
    accepted = [0]
    acceptor = threading.Thread(target=_serve, args=(srv, stop, accepted), daemon=True)
    acceptor.start()
    children: list[int] = []
    for _ in range(procs):
        pid = os.fork()
        if pid == 0:
            try:
                _worker(addr, deadline, threads)
            finally:
                os._exit(1)
        children.append(pid)

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    start = time.monotonic()
    while not stop.is_set() and time.monotonic() < deadline and any(_alive(pid) for pid in children):
        stop.wait(0.2)
    stop.set()
    for pid in children:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
    acceptor.join(2.0)
    srv.close()
    took = time.monotonic() - start
    print(
        f"churn: {accepted[0]} connections accepted in {took:.0f} s ({accepted[0] / max(took, 1e-9):.0f}/s) "
        f"by {procs} processes x {threads} threads on {addr[0]}:{addr[1]}",
        flush=True,
    )
    return 0


def _alive(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    return done == 0


def start(args: argparse.Namespace) -> int:
    """Run in the background (its own session, output to ``--log``), write its PID to ``--pidfile``."""
    log = open(args.log, "ab")  # noqa: SIM115 - handed to the child
    pid = os.fork()
    if pid == 0:
        os.setsid()
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        code = 1
        try:
            code = run(args.seconds, args.procs, args.threads)
        finally:
            os._exit(code)
    log.close()
    with open(args.pidfile, "w") as f:
        f.write(f"{pid}\n")
    print(pid)
    return 0


def stop(args: argparse.Namespace) -> int:
    """SIGTERM the PID in ``--pidfile`` and wait (bounded) for it to go; remove the pidfile."""
    with open(args.pidfile) as f:
        pid = int(f.read().split()[0])
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        print(f"churn {pid} had already ended")
    else:
        deadline = time.monotonic() + 10
        while _exists(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _exists(pid):
            os.kill(pid, signal.SIGKILL)
    os.unlink(args.pidfile)
    return 0


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("run", "start"):
        p = sub.add_parser(name)
        p.add_argument("--seconds", type=float, required=True, help="the run ends by itself after this long")
        p.add_argument("--procs", type=int, default=2, help="client processes (default 2)")
        p.add_argument("--threads", type=int, default=4, help="connect/close threads per process (default 4)")
        if name == "start":
            p.add_argument("--pidfile", required=True)
            p.add_argument("--log", default=os.devnull, help="where the background run writes (default: nowhere)")
    p = sub.add_parser("stop")
    p.add_argument("--pidfile", required=True)
    args = parser.parse_args(argv)
    if args.cmd == "run":
        return run(args.seconds, args.procs, args.threads)
    return start(args) if args.cmd == "start" else stop(args)


if __name__ == "__main__":
    sys.exit(main())
