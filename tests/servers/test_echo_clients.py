"""The echo service under real clients: many concurrent framed clients, multiprocessing.connection, Twisted's
Int32StringReceiver, and the raw (RFC 862) mode with socat and nc.  Every byte is checked (SHA-256 per frame).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import selectors
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections import deque
from multiprocessing.connection import Client

import harness

MiB = 1024 * 1024
MAX_REQUEST = MiB  # the server's default --max-request: frames of exactly this size must pass
HEADER = struct.Struct("!I")

N_CLIENTS = 200
FRAMES = 100
LOAD_DEADLINE = 120.0


def frame_sizes(rng: random.Random, idx: int) -> list[int]:
    """100 frame sizes for client ``idx``.

    Uniform sizes over 0..1 MiB would move 200 x 100 x 512 KiB ~ 10 GB each way, far too slow for CI on two
    cores.  So each client sends mostly small frames (log-uniform, 1 B..16 KiB), one empty frame and two
    large ones (64 KiB..1 MiB), and every tenth client one frame of exactly 1 MiB (the --max-request default)
    -- the edges (0 B and 1 MiB) are always hit, and the total stays around 200-250 MB each way.
    """
    sizes = [0]
    sizes.append(MAX_REQUEST if idx % 10 == 0 else rng.randint(64 * 1024, MAX_REQUEST))
    sizes.append(rng.randint(64 * 1024, MAX_REQUEST))
    while len(sizes) < FRAMES:
        sizes.append(int(2 ** rng.uniform(0, 14)))
    rng.shuffle(sizes)
    return sizes


class LoadClient:
    """One non-blocking client driven by a shared selector; replies parsed with ``struct`` and hashed."""

    def __init__(self, idx: int, sock: socket.socket, sizes: list[int], pool: memoryview, rng: random.Random,
                 pipelined: bool) -> None:  # fmt: skip
        self.idx = idx
        self.sock = sock
        self.pipelined = pipelined
        self.frames = [(rng.randrange(0, len(pool) - n + 1), n) for n in sizes]
        self.expected = [hashlib.sha256(pool[o : o + n]).digest() for o, n in self.frames]
        self.pool = pool
        self.queued = 0  # frames put on the output queue
        self.out: deque[memoryview] = deque()
        self.out_bytes = 0
        self.received = 0
        self.head = bytearray()
        self.left = -1  # payload bytes still to come for the frame being received (-1: reading a header)
        self.hasher = hashlib.sha256()
        self.errors: list[str] = []
        self.done = False

    def fill(self) -> None:
        """Queue more frames: all of them (in 256 KiB slices of the socket's appetite) when pipelined, the
        next one only when every earlier reply is in otherwise."""
        while self.queued < len(self.frames) and self.out_bytes < 256 * 1024:
            if not self.pipelined and self.received < self.queued:
                return
            off, n = self.frames[self.queued]
            self.out.append(memoryview(HEADER.pack(n)))
            self.out.append(self.pool[off : off + n])
            self.out_bytes += 4 + n
            self.queued += 1

    def on_writable(self) -> None:
        while self.out:
            bufs = [b for b in list(self.out)[:64] if len(b)]
            if not bufs:
                self.out.clear()
                break
            sent = self.sock.sendmsg(bufs)
            self.out_bytes -= sent
            while sent and self.out:
                head = self.out[0]
                if sent >= len(head):
                    sent -= len(head)
                    self.out.popleft()
                else:
                    self.out[0] = head[sent:]
                    sent = 0
            while self.out and not len(self.out[0]):
                self.out.popleft()
            if self.out:
                return
            self.fill()

    def on_readable(self, buf: memoryview) -> None:
        n = self.sock.recv_into(buf)
        if n == 0:
            self.errors.append(
                f"EOF after {self.received} of {len(self.frames)} replies (mid-frame: {self.left >= 0 or bool(self.head)})"
            )
            self.done = True
            return
        view = buf[:n]
        pos = 0
        while pos < n:
            if self.left < 0:
                take = min(4 - len(self.head), n - pos)
                self.head += view[pos : pos + take]
                pos += take
                if len(self.head) < 4:
                    break
                (self.left,) = HEADER.unpack(self.head)
                self.head.clear()
                if self.received >= self.queued:
                    self.errors.append(f"reply {self.received} arrived before its request was sent")
                    self.done = True
                    return
            take = min(self.left, n - pos)
            if take:
                self.hasher.update(view[pos : pos + take])
                pos += take
                self.left -= take
            if self.left == 0:
                k = self.received
                want = self.frames[k][1]
                if self.hasher.digest() != self.expected[k]:
                    self.errors.append(f"frame {k} ({want} bytes): reply differs")
                self.hasher = hashlib.sha256()
                self.left = -1
                self.received += 1
                if self.received == len(self.frames):
                    self.done = True
                    if pos != n:
                        self.errors.append(f"{n - pos} unexpected bytes after the last reply")
                    return
        self.fill()


def run_load(addr: tuple[str, int], n_clients: int, seed: int) -> list[LoadClient]:
    """Drive ``n_clients`` concurrent clients (half pipelined, half one frame at a time) to completion."""
    rng = random.Random(seed)
    pool = memoryview(rng.randbytes(2 * MiB + 1))
    clients = []
    sel = selectors.DefaultSelector()
    try:
        for idx in range(n_clients):
            sock = socket.create_connection(addr, timeout=10)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            crng = random.Random(seed * 1000 + idx)
            c = LoadClient(idx, sock, frame_sizes(crng, idx), pool, crng, pipelined=idx % 2 == 0)
            clients.append(c)
        for c in clients:
            c.fill()
            sel.register(c.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, c)
        buf = memoryview(bytearray(256 * 1024))
        deadline = time.monotonic() + LOAD_DEADLINE
        live = len(clients)
        while live:
            if time.monotonic() > deadline:
                slow = [(c.idx, c.received) for c in clients if not c.done][:10]
                raise AssertionError(f"{live} clients unfinished after {LOAD_DEADLINE} s (idx, replies): {slow}")
            for key, events in sel.select(1.0):
                c = key.data
                try:
                    if events & selectors.EVENT_WRITE:
                        c.on_writable()
                    if events & selectors.EVENT_READ and not c.done:
                        c.on_readable(buf)
                except OSError as exc:
                    c.errors.append(f"{type(exc).__name__}: {exc} after {c.received} replies")
                    c.done = True
                if c.done:
                    sel.unregister(c.sock)
                    c.sock.close()
                    live -= 1
                else:
                    want = selectors.EVENT_READ | (selectors.EVENT_WRITE if c.out else 0)
                    if want != key.events:
                        sel.modify(c.sock, want, c)
    finally:
        sel.close()
        for c in clients:
            c.sock.close()
    return clients


def test_200_concurrent_clients_every_byte_back(engine, serve):
    server = serve("--echo", "0", engine=engine)
    started = time.monotonic()
    clients = run_load(server.addr("echo"), N_CLIENTS, seed=7)
    elapsed = time.monotonic() - started
    errors = [(c.idx, c.errors[:3]) for c in clients if c.errors]
    assert not errors, f"{len(errors)} client(s) saw errors: {errors[:10]}\nstderr:\n{server.stderr()[-3000:]}"
    assert [c.received for c in clients] == [FRAMES] * N_CLIENTS
    sizes = [n for c in clients for _, n in c.frames]
    assert 0 in sizes and MAX_REQUEST in sizes
    total = sum(sizes)
    assert 100 * MiB < total < 400 * MiB, total  # what the size distribution promises
    assert server.proc.poll() is None, server.stderr()
    print(f"{engine}: {N_CLIENTS} clients, {total / MiB:.0f} MiB each way in {elapsed:.1f} s")


# -- multiprocessing.connection ---------------------------------------------------------------------------


def test_multiprocessing_connection_clients(engine, serve):
    """multiprocessing.connection's send_bytes/recv_bytes speak the same !I framing below 2 GiB."""
    server = serve("--echo", "0", engine=engine)
    addr = server.addr("echo")
    n_threads = 8
    failures: list[str] = []
    counts = [0] * n_threads

    def worker(t: int) -> None:
        rng = random.Random(100 + t)
        sizes = [0, MAX_REQUEST, 1, 65536] + [int(2 ** rng.uniform(0, 19)) for _ in range(36)]
        rng.shuffle(sizes)
        payloads = [rng.randbytes(n) for n in sizes]
        try:
            conn = Client(addr, authkey=None)
        except OSError as exc:
            failures.append(f"thread {t}: connect: {exc}")
            return
        try:
            i = 0
            while i < len(payloads):
                # pipelined batches of up to 4 frames when they are small, one at a time when large
                batch = 1 if t % 2 == 0 or sizes[i] > 65536 else rng.randint(1, 4)
                batch_payloads = payloads[i : i + batch]
                for p in batch_payloads:
                    conn.send_bytes(p)
                for p in batch_payloads:
                    if not conn.poll(30):
                        failures.append(f"thread {t}: no reply to frame {i} within 30 s")
                        return
                    reply = conn.recv_bytes()
                    if hashlib.sha256(reply).digest() != hashlib.sha256(p).digest():
                        failures.append(
                            f"thread {t}: frame {i} ({len(p)} bytes) came back as {len(reply)} different bytes"
                        )
                        return
                    counts[t] += 1
                    i += 1
        except (OSError, EOFError) as exc:
            failures.append(f"thread {t}: {type(exc).__name__}: {exc}")
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not any(th.is_alive() for th in threads), "multiprocessing clients did not finish in 60 s"
    assert not failures, f"{failures}\nstderr:\n{server.stderr()[-3000:]}"
    assert counts == [40] * n_threads


# -- Twisted --------------------------------------------------------------------------------------------

TWISTED_CLIENT = textwrap.dedent(
    r"""
    import hashlib, json, random, sys
    from twisted.internet import protocol, reactor
    from twisted.protocols.basic import Int32StringReceiver

    cfg = json.loads(sys.argv[1])
    results = {}
    errors = []
    live = [len(cfg["clients"])]

    class Echo(Int32StringReceiver):
        MAX_LENGTH = 1 << 20

        def connectionMade(self):
            self.replies = []
            self.sent = 0
            if self.pipelined:
                for p in self.payloads:
                    self.sendString(p)
                self.sent = len(self.payloads)
            else:
                self.sendString(self.payloads[0])
                self.sent = 1

        def stringReceived(self, data):
            self.replies.append(hashlib.sha256(data).hexdigest())
            if len(self.replies) == len(self.payloads):
                self.transport.loseConnection()
            elif not self.pipelined:
                self.sendString(self.payloads[self.sent])
                self.sent += 1

        def lengthLimitExceeded(self, length):
            errors.append(f"client {self.name}: length limit exceeded ({length})")
            self.transport.loseConnection()

        def connectionLost(self, reason):
            results[self.name] = self.replies
            live[0] -= 1
            if live[0] == 0:
                reactor.stop()

    class Factory(protocol.ClientFactory):
        def __init__(self, name, sizes, pipelined):
            rng = random.Random(cfg["seed"] * 1000 + name)
            self.payloads = [rng.randbytes(n) for n in sizes]
            self.name = name
            self.pipelined = pipelined

        def buildProtocol(self, addr):
            p = Echo()
            p.payloads, p.name, p.pipelined = self.payloads, self.name, self.pipelined
            return p

        def clientConnectionFailed(self, connector, reason):
            errors.append(f"client {self.name}: {reason.getErrorMessage()}")
            live[0] -= 1
            if live[0] == 0:
                reactor.stop()

    for name, (sizes, pipelined) in enumerate(cfg["clients"]):
        reactor.connectTCP(cfg["host"], cfg["port"], Factory(name, sizes, pipelined), timeout=10)

    def give_up():
        errors.append("timed out")
        reactor.stop()

    reactor.callLater(cfg["timeout"], give_up)
    reactor.run()
    print(json.dumps({"results": results, "errors": errors}))
    """
)


def test_twisted_int32stringreceiver_clients(engine, serve, workdir):
    server = serve("--echo", "0", engine=engine)
    host, port = server.addr("echo")
    seed = 11
    rng = random.Random(seed)
    clients = []
    for name in range(10):
        sizes = [0, MAX_REQUEST if name == 0 else rng.randint(1, MAX_REQUEST)] + [
            rng.randint(0, 5000) for _ in range(28)
        ]
        rng.shuffle(sizes)
        clients.append((sizes, name % 2 == 0))
    expected = {}
    for name, (sizes, _) in enumerate(clients):
        prng = random.Random(seed * 1000 + name)
        expected[str(name)] = [hashlib.sha256(prng.randbytes(n)).hexdigest() for n in sizes]
    script = os.path.join(workdir, "twisted_client.py")
    with open(script, "w") as f:
        f.write(TWISTED_CLIENT)
    cfg = {"host": host, "port": port, "seed": seed, "clients": clients, "timeout": 40}
    run = subprocess.run(
        [sys.executable, script, json.dumps(cfg)], check=False, capture_output=True, text=True, timeout=60, cwd=workdir
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["errors"] == [], out["errors"]
    assert out["results"] == expected


# -- raw mode with Debian's socat and nc --------------------------------------------------------------------


def _raw_data() -> bytes:
    return random.Random(5).randbytes(1 * MiB) + b"\n".join(b"line %d" % i for i in range(1000)) + b"\n"


def test_raw_mode_with_socat(engine, serve):
    socat = harness.require_tool("socat")
    server = serve("--echo", "0", "--raw", engine=engine)
    host, port = server.addr("echo")
    data = _raw_data()
    run = subprocess.run(
        [socat, "-t", "5", "-T", "20", "-", f"TCP:{host}:{port}"],
        input=data,
        check=False,
        capture_output=True,
        timeout=30,
    )
    assert run.returncode == 0, run.stderr
    assert len(run.stdout) == len(data)
    assert hashlib.sha256(run.stdout).digest() == hashlib.sha256(data).digest()


def test_raw_mode_with_nc(engine, serve):
    nc = harness.require_tool("nc")
    server = serve("--echo", "0", "--raw", engine=engine)
    host, port = server.addr("echo")
    data = _raw_data()
    # -N: shut the socket down for writing at EOF on stdin (netcat-openbsd), then read until the server closes.
    run = subprocess.run(
        [nc, "-N", "-w", "20", host, str(port)], input=data, check=False, capture_output=True, timeout=30
    )
    assert run.returncode == 0, run.stderr
    assert len(run.stdout) == len(data)
    assert hashlib.sha256(run.stdout).digest() == hashlib.sha256(data).digest()


def test_raw_mode_is_not_framed(engine, serve):
    """The raw echo sends back exactly the bytes in, no length prefix, in small pieces too."""
    server = serve("--echo", "0", "--raw", engine=engine)
    with harness.connect(server.addr("echo")) as sock:
        for piece in (b"a", b"hello\r\n", bytes(range(256)), b"\x00\x00\x00\x05"):
            sock.sendall(piece)
            assert harness.recv_exactly(sock, len(piece)) == piece
