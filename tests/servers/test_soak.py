"""The mixed soak: a prefork server under well-formed load on every service and hostile clients at once.

Well-formed clients (echo, UDP and TCP time, commands and downloads behind a shared secret) must see no failure
at all; hostile ones (oversized headers, slowloris, garbage, abrupt resets, connect floods) must cost nothing
but their own connections; no worker may crash; the resident memory of the master and its workers must stay
flat (within 20%) over the second half.  FASTFRAME_SOAK_SECONDS sets the duration (default 300 s).
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import socket
import struct
import threading
import time
import traceback

import harness
import pytest

from fastframe.client import exec_command, get_file

SECRET = b"soak secret, 32 bytes long .....!"


class Loop(threading.Thread):
    """Runs ``step()`` until stopped; well-formed loops record every failure, hostile ones only count."""

    hostile = False

    def __init__(self, name: str, stop: threading.Event, seed: int) -> None:
        super().__init__(name=name, daemon=True)
        self.stop_flag = stop
        self.rng = random.Random(seed)
        self.ok = 0
        self.failures: list[str] = []

    def step(self) -> None:
        raise NotImplementedError

    def run(self) -> None:
        while not self.stop_flag.is_set():
            try:
                self.step()
                self.ok += 1
            except Exception as exc:  # noqa: BLE001 - every failure is recorded (and judged by the test)
                if not self.hostile and not self.stop_flag.is_set():
                    where = traceback.extract_tb(exc.__traceback__)[-1]
                    self.failures.append(f"{time.strftime('%H:%M:%S')} {self.name}: {exc!r} at line {where.lineno}")
                self.after_failure()

    def after_failure(self) -> None:
        """Start afresh after a failed step (and not in a tight loop)."""
        self.pause(0.05, 0.1)

    def pause(self, low: float, high: float) -> None:
        self.stop_flag.wait(self.rng.uniform(low, high))


def reset(sock: socket.socket) -> None:
    """Close with a RST instead of a FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        sock.close()


# -- well-formed clients --------------------------------------------------------------------------------------


class Echo(Loop):
    def __init__(self, addr, *args) -> None:
        super().__init__(*args)
        self.addr = addr
        self.sock: socket.socket | None = None
        self.left = 0

    def step(self) -> None:
        if self.sock is None or self.left == 0:
            if self.sock is not None:
                self.sock.close()
            self.sock = None
            self.sock = harness.connect(self.addr, timeout=30.0)
            self.left = self.rng.randint(1, 500)  # requests before reconnecting
        window = [self.rng.randbytes(self.rng.choice([0, 10, 1000, 20000, self.rng.randint(0, 200000)]))
                  for _ in range(self.rng.randint(1, 4))]  # fmt: skip
        self.sock.sendall(b"".join(struct.pack("!I", len(p)) + p for p in window))
        for p in window:
            (n,) = struct.unpack("!I", harness.recv_exactly(self.sock, 4))
            if harness.recv_exactly(self.sock, n) != p:
                raise AssertionError(f"echo reply of {n} bytes differs")
        self.left -= 1
        self.pause(0.0, 0.01)

    def after_failure(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        super().after_failure()


class TimeUdp(Loop):
    def __init__(self, addr, *args) -> None:
        super().__init__(*args)
        self.addr = addr

    def step(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(2.0)
            for attempt in range(5):  # UDP may drop a datagram under load: that is the protocol, not a failure
                s.sendto(b"", self.addr)
                try:
                    data = s.recv(64)
                    break
                except socket.timeout:
                    if attempt == 4:
                        raise
            if len(data) != 4 or abs(struct.unpack("!I", data)[0] - time.time()) > 5:
                raise AssertionError(f"bad time datagram {data!r}")
        self.pause(0.01, 0.05)


class TimeTcp(Loop):
    def __init__(self, addr, *args) -> None:
        super().__init__(*args)
        self.addr = addr

    def step(self) -> None:
        with harness.connect(self.addr, timeout=30.0) as s:
            data = harness.recv_exactly(s, 4)
            if s.recv(1) != b"" or abs(struct.unpack("!I", data)[0] - time.time()) > 5:
                raise AssertionError("bad TCP time reply")
        self.pause(0.01, 0.05)


class Command(Loop):
    def __init__(self, addr, *args) -> None:
        super().__init__(*args)
        self.addr = addr

    def step(self) -> None:
        word = str(self.rng.randrange(1 << 30))
        out: list[bytes] = []
        status = exec_command(*self.addr, ["echo", word], secret=SECRET, stdout=out.append, timeout=30)
        if status != 0 or b"".join(out) != word.encode() + b"\n":
            raise AssertionError(f"echo {word}: status {status}, output {b''.join(out)!r}")
        self.pause(0.0, 0.02)


class Download(Loop):
    def __init__(self, addr, root: str, names: dict[str, str], outdir: str, *args) -> None:
        super().__init__(*args)
        self.addr = addr
        self.names = names
        self.out = os.path.join(outdir, self.name)

    def step(self) -> None:
        name = self.rng.choice(sorted(self.names))
        get_file(*self.addr, name, self.out, secret=SECRET, timeout=30)
        with open(self.out, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        os.unlink(self.out)
        if digest != self.names[name]:
            raise AssertionError(f"{name}: wrong content")
        self.pause(0.0, 0.05)


# -- hostile clients ------------------------------------------------------------------------------------------


class Hostile(Loop):
    hostile = True

    def __init__(self, addrs: dict, *args) -> None:
        super().__init__(*args)
        self.addrs = addrs
        self.tcp = [addrs["echo"], addrs["command"], addrs["files"], addrs["time-tcp"]]


class OversizedHeaders(Hostile):
    def step(self) -> None:
        with harness.connect(self.rng.choice(self.tcp), timeout=5) as s:
            s.sendall(struct.pack("!I", self.rng.choice([0xFFFFFFFF, (1 << 20) + 1, 1 << 30])) + b"xx")
            s.recv(1 << 16)
        self.pause(0.01, 0.05)


class Slowloris(Hostile):
    """Holds 40 connections, each dribbling a frame a byte at a time (cut by --frame-timeout, then replaced)."""

    def step(self) -> None:
        socks = []
        try:
            for _ in range(40):
                s = harness.connect(self.rng.choice(self.tcp), timeout=5)
                s.setblocking(False)
                socks.append(s)
            for _ in range(20):
                for s in socks:
                    try:
                        s.send(b"\x00")
                    except OSError:
                        pass
                self.pause(0.4, 0.6)
                if self.stop_flag.is_set():
                    return
        finally:
            for s in socks:
                s.close()


class Garbage(Hostile):
    def step(self) -> None:
        junk = self.rng.randbytes(self.rng.randint(1, 5000))
        with harness.connect(self.rng.choice(self.tcp), timeout=5) as s:
            s.sendall(junk)
            s.settimeout(0.5)
            try:
                s.recv(1 << 16)
            except OSError:
                pass
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.sendto(junk[:1400], self.addrs["time-udp"])
        self.pause(0.01, 0.05)


class Resets(Hostile):
    """Requests abandoned with a RST: mid-frame, after a command started, in the middle of a download."""

    def step(self) -> None:
        kind = self.rng.choice(["echo", "command", "files"])
        s = harness.connect(self.addrs[kind], timeout=5)
        try:
            if kind == "echo":
                s.sendall(struct.pack("!I", 100000) + b"x" * self.rng.randint(0, 50000))
            elif kind == "command":
                from fastframe.wire.auth import client_handshake

                client_handshake(s, SECRET)
                line = b"sleep 2"
                s.sendall(struct.pack("!I", len(line)) + line)
                time.sleep(self.rng.uniform(0, 0.2))
            else:
                from fastframe.wire.auth import client_handshake

                client_handshake(s, SECRET)
                req = b'{"path": "big"}'
                s.sendall(struct.pack("!I", len(req)) + req)
                s.recv(self.rng.randint(1, 1 << 20))
        finally:
            reset(s)
        self.pause(0.01, 0.1)


class Floods(Hostile):
    def step(self) -> None:
        socks = []
        try:
            for _ in range(150):
                try:
                    socks.append(harness.connect(self.rng.choice(self.tcp), timeout=5))
                except OSError:
                    break
        finally:
            for s in socks:
                if self.rng.random() < 0.5:
                    reset(s)
                else:
                    s.close()
        self.pause(0.5, 1.5)


# -- the soak -------------------------------------------------------------------------------------------------


@pytest.mark.soak
def test_mixed_soak(serve, tmp_path):
    seconds = harness.soak_seconds()
    harness.raise_nofile(8192)
    root = tmp_path / "root"
    root.mkdir()
    rng = random.Random(12)
    names = {}
    for name, size in [("small", 1000), ("medium", 1 << 20), ("big", 8 << 20), ("empty", 0)]:
        data = rng.randbytes(size)
        (root / name).write_bytes(data)
        names[name] = hashlib.sha256(data).hexdigest()
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    outdir = tmp_path / "out"
    outdir.mkdir()
    server = serve(
        "--echo", "0", "--time", "0", "--command", "0", "--allow", "echo", "--allow", "sleep", "--files", "0",
        "--root", str(root), "--secret-file", str(secret), "--idle-timeout", "5", "--frame-timeout", "3",
        "--max-commands", "32", "--command-timeout", "5",
        expect=5, engine="prefork", workers=2,
    )  # fmt: skip
    workers = server.workers()
    pids = [server.pid, *workers]
    addrs = {
        "echo": server.addr("echo"), "command": server.addr("command"), "files": server.addr("files"),
        "time-tcp": server.addr("time", "tcp"), "time-udp": server.addr("time", "udp"),
    }  # fmt: skip
    stop = threading.Event()
    good: list[Loop] = [Echo(addrs["echo"], f"echo-{i}", stop, i) for i in range(4)]
    good += [TimeUdp(addrs["time-udp"], "time-udp", stop, 10), TimeTcp(addrs["time-tcp"], "time-tcp", stop, 11)]
    good += [Command(addrs["command"], f"command-{i}", stop, 20 + i) for i in range(2)]
    good += [Download(addrs["files"], str(root), names, str(outdir), f"files-{i}", stop, 30 + i) for i in range(2)]
    bad: list[Loop] = [
        OversizedHeaders(addrs, "oversized", stop, 40), Slowloris(addrs, "slowloris", stop, 41),
        Garbage(addrs, "garbage", stop, 42), Resets(addrs, "resets", stop, 43), Floods(addrs, "floods", stop, 44),
    ]  # fmt: skip
    samples: list[tuple[float, int]] = []
    start = time.monotonic()
    for loop in good + bad:
        loop.start()
    try:
        interval = max(1.0, seconds / 60)
        while time.monotonic() - start < seconds:
            samples.append((round(time.monotonic() - start, 1), harness.rss_kib(pids)))
            if server.proc.poll() is not None:
                break
            time.sleep(interval)
        samples.append((round(time.monotonic() - start, 1), harness.rss_kib(pids)))
    finally:
        stop.set()
        for loop in good + bad:
            loop.join(60)
    err = server.stderr()
    crashes = re.findall(r"worker \d+ (?:died|has not answered)[^\n]*", err)
    failures = [f for loop in good for f in loop.failures]
    counts = {loop.name: loop.ok for loop in good + bad}
    late = [rss for t, rss in samples if t >= seconds / 2]
    summary = (
        f"{seconds:.0f} s: requests {counts}; worker crashes {len(crashes)}; failed well-formed requests "
        f"{len(failures)}; RSS KiB (master + workers) over the second half {min(late)}..{max(late)}; "
        f"samples {samples}"
    )
    print(summary)
    assert server.proc.poll() is None, f"the master died\n{summary}\n{err[-3000:]}"
    assert not crashes, f"{crashes[:5]}\n{summary}"
    assert "Traceback" not in err, err[err.index("Traceback") - 500 :][:3000]
    assert set(server.workers()) == set(workers), "a worker was replaced"
    assert not failures, f"{failures[:10]}\n{summary}"
    assert all(loop.ok > 0 for loop in good), counts
    assert max(late) <= 1.2 * min(late), f"RSS not flat over the second half\n{summary}"
    with harness.connect(addrs["echo"]) as s:
        assert harness.roundtrip(s, b"still serving") == b"still serving"
    server.signal(signal.SIGTERM)
    code, _ = harness.wait_exit(server, 20)
    assert code == 0, err[-3000:]
