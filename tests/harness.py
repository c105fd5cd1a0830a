"""The tests' one helper module, importable by every test module (``import harness``; tests/ is on pytest's
pythonpath, and under ``--import-mode=importlib`` a conftest cannot be imported).  Conftests hold fixtures only.

- Sockets, written once against :mod:`struct` (never against the code under test, so a reply is judged by an
  independent parser): :func:`connect`, :func:`recv_exactly`, :func:`send_frame`, :func:`recv_frame`,
  :func:`roundtrip`, :func:`read_to_eof`, :func:`wait_closed`, :func:`tcp_pair`.
- Waiting: :func:`wait_until` -- wait for a condition, never for a fixed time.
- `fastframe serve` (or any command line) as a real subprocess, :class:`ServerProcess`: start, read the ports it
  prints, signal, clean up -- everything it starts is killed by PID (the server and, for prefork, every worker it
  saw), never by name.  :func:`stop_gracefully`, :func:`wait_exit`, :func:`fastframe_cli`.
- What a process holds and does, from /proc: :func:`socket_count` and :func:`port_owners` (distinct socket
  inodes), :func:`descendants`, :func:`proc_info`, :func:`group_members`, :func:`cpu_seconds`, :func:`rss_kib`,
  prefork boot state (:func:`wait_booted`).
- The codec tests' drivers: :func:`encode` / :func:`header` (from :mod:`reference`), :func:`feed_via_buffer`,
  :func:`decode_chunks`, :func:`pseudo_random`.
"""

from __future__ import annotations

import os
import random
import re
import resource
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any, Callable

import pytest
import reference
from peertools import require_tool  # noqa: F401 - re-exported: harness.require_tool

#: Timeout (seconds) on every socket the tests create and the default for every wait: a hang becomes a failure.
TIMEOUT = 10.0
HEADER = struct.Struct("!I")
#: The shared secret of the authentication tests (what the ``secret_file`` fixture holds).
SECRET = b"correct horse battery staple 0123456789"

# -- sockets ----------------------------------------------------------------------------------------------


def connect(addr: tuple[str, int], timeout: float = TIMEOUT) -> socket.socket:
    """A TCP connection with a timeout and TCP_NODELAY."""
    sock = socket.create_connection(addr, timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """(client, server): two ends of one real 127.0.0.1 TCP connection, with timeouts."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)
        client = socket.create_connection(listener.getsockname(), timeout=TIMEOUT)
        server, _ = listener.accept()
    server.settimeout(TIMEOUT)
    return client, server


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    """Exactly ``n`` bytes; EOFError (saying how many came) if the peer closes first."""
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise EOFError(f"peer closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def send_frame(sock: socket.socket, payload: bytes) -> None:
    """One ``!I`` frame, written the way the seeds do (the reference the codec is checked against)."""
    sock.sendall(HEADER.pack(len(payload)) + payload)


def recv_frame(sock: socket.socket) -> bytes:
    """One ``!I`` frame.  EOFError("eof at boundary") on a clean close before the header; a close inside the
    header or the payload raises EOFError("partial ...")."""
    first = sock.recv(4)
    if not first:
        raise EOFError("eof at boundary")
    try:
        head = first + recv_exactly(sock, 4 - len(first)) if len(first) < 4 else first
    except EOFError as exc:
        raise EOFError(f"partial header: {exc}") from None
    (n,) = HEADER.unpack(head)
    try:
        return recv_exactly(sock, n)
    except EOFError as exc:
        raise EOFError(f"partial frame of {n} bytes: {exc}") from None


def recv_frame_or_eof(sock: socket.socket) -> bytes | None:
    """The next frame, or None if the peer closed (or reset) the connection first."""
    try:
        return recv_frame(sock)
    except (EOFError, ConnectionResetError):
        return None


def roundtrip(sock: socket.socket, payload: bytes) -> bytes:
    send_frame(sock, payload)
    return recv_frame(sock)


def read_to_eof(sock: socket.socket, limit: int = 64 << 20) -> bytes:
    """Everything until the peer closes; fails the test beyond ``limit`` bytes."""
    buf = bytearray()
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            return bytes(buf)
        buf += chunk
        assert len(buf) <= limit, "peer sent more than the test expected"


def wait_closed(sock: socket.socket, timeout: float) -> tuple[str, bytes, float]:
    """Wait for the peer to close: ("eof"|"reset"|"open", bytes received meanwhile, seconds waited)."""
    start = time.monotonic()
    got = bytearray()
    while True:
        left = timeout - (time.monotonic() - start)
        if left <= 0:
            return "open", bytes(got), time.monotonic() - start
        ready, _, _ = select.select([sock], [], [], left)
        if not ready:
            continue
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return "reset", bytes(got), time.monotonic() - start
        if not chunk:
            return "eof", bytes(got), time.monotonic() - start
        got += chunk


def command_replies(addr: tuple[str, int], line: bytes, timeout: float = TIMEOUT) -> list[bytes]:
    """Send one command frame; return every reply frame up to and including the last (``X`` or ``!``)."""
    with connect(addr, timeout) as sock:
        send_frame(sock, line)
        frames = []
        while True:
            frame = recv_frame(sock)
            frames.append(frame)
            if frame[:1] in (b"X", b"!"):
                return frames


def wait_until(predicate: Callable[[], object], timeout: float = TIMEOUT, interval: float = 0.02) -> bool:
    """Poll ``predicate()`` until it is true (True) or ``timeout`` seconds pass (False): wait for a condition,
    never for a fixed time."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def raise_nofile(wanted: int) -> int:
    """Raise this process's RLIMIT_NOFILE soft limit towards ``wanted`` (up to the hard limit); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    return soft


def soak_seconds(default: float = 300.0) -> float:
    """How long the soak tests run: FASTFRAME_SOAK_SECONDS, else ``default``."""
    return float(os.environ.get("FASTFRAME_SOAK_SECONDS", default))


# -- the codec tests' drivers ---------------------------------------------------------------------------------

PREFIXES = reference.SPEC_PREFIXES
STRUCT_PREFIXES = reference.STRUCT_OF
header = reference.header


def encode(payloads: Sequence[bytes], prefix: str = "!I") -> bytes:
    """The reference encoding of ``payloads`` (struct and a hand-rolled LEB128, never the code under test)."""
    return b"".join(header(len(p), prefix) + bytes(p) for p in payloads)


def max_payload(prefix: str) -> int:
    return reference.MAX_OF[prefix]


def feed_via_buffer(decoder: Any, chunk: bytes, sizehint: int = -1) -> list[bytes]:
    """Deliver ``chunk`` the BufferedProtocol way: copy into get_buffer() views, then buffer_updated()."""
    out: list[bytes] = []
    pos = 0
    while pos < len(chunk):
        view = decoder.get_buffer(sizehint)
        assert len(view) > 0, "get_buffer() lent an empty window while input remains"
        n = min(len(view), len(chunk) - pos)
        view[:n] = chunk[pos : pos + n]
        view.release()
        out.extend(decoder.buffer_updated(n))
        pos += n
    return out


def decode_chunks(decoder: Any, chunks: Sequence[bytes], mode: str) -> list[bytes]:
    """Feed every chunk; ``mode`` is "feed", "buffer" or "mixed" (alternating per chunk)."""
    out: list[bytes] = []
    for i, chunk in enumerate(chunks):
        if mode == "buffer" or (mode == "mixed" and i % 2 == 1):
            out.extend(feed_via_buffer(decoder, chunk))
        else:
            out.extend(decoder.feed(chunk))
    return out


def pseudo_random(n: int, seed: int = 0) -> bytes:
    return random.Random(seed * 1_000_003 + n).randbytes(n)


# -- servers as subprocesses --------------------------------------------------------------------------------

LINE = re.compile(r"^(\w+) (tcp|udp) (\[[0-9a-fA-F:.]+\]|[^\s:]+):(\d+)$")
UNIX_LINE = re.compile(r"^(\w+) unix (\S+)$")  # echo unix /run/e.sock


def engine_args(engine: str, workers: int = 2) -> list[str]:
    """``--engine ENGINE`` (and ``--workers N`` for prefork)."""
    args = ["--engine", engine]
    if engine == "prefork":
        args += ["--workers", str(workers)]
    return args


class ServerProcess:
    """``fastframe serve ARGS`` in a subprocess (or any ``command`` line that prints the same listening lines:
    the console script, a socket-activation wrapper); ``expect`` is how many listening lines to wait for."""

    def __init__(
        self,
        args: Sequence[str],
        expect: int,
        env: dict[str, str] | None = None,
        timeout: float = 20.0,
        cwd: str | None = None,
        command: Sequence[str] | None = None,
        pass_fds: Sequence[int] = (),
    ) -> None:
        self.args = list(args)
        full_env = dict(os.environ)
        full_env.update(env or {})
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            list(command) if command is not None else [sys.executable, "-m", "fastframe", "serve", *self.args],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=full_env,
            # Never the repository root: `python -m fastframe` would import the unbuilt source tree there.
            cwd=cwd or tempfile.gettempdir(),
            pass_fds=tuple(pass_fds),
            start_new_session=True,  # a Ctrl-C in the test terminal does not reach it; we signal it ourselves
        )
        self.pid = self.proc.pid
        self.listeners: dict[tuple[str, str], tuple[str, int]] = {}
        self.stdout_lines: list[str] = []
        self._seen_children: set[int] = set()
        try:
            self._read_listeners(expect, timeout)
        except BaseException:
            self.stop()
            raise

    def _read_listeners(self, expect: int, timeout: float) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        buf = b""
        while len(self.listeners) < expect:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"server printed {self.stdout_lines!r} in {timeout} s; stderr:\n{self.stderr()}")
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RuntimeError(
                    f"server exited ({self.proc.wait()}) after printing {self.stdout_lines!r}; stderr:\n{self.stderr()}"
                )
            buf += chunk
            while b"\n" in buf:
                raw, buf = buf.split(b"\n", 1)
                line = raw.decode()
                self.stdout_lines.append(line)
                m = LINE.match(line)
                if m:
                    host = m.group(3).strip("[]")
                    self.listeners[(m.group(1), m.group(2))] = (host, int(m.group(4)))
                m = UNIX_LINE.match(line)
                if m:
                    self.listeners[(m.group(1), "unix")] = (m.group(2), 0)

    def addr(self, name: str, transport: str = "tcp") -> tuple[str, int]:
        return self.listeners[(name, transport)]

    def port(self, name: str, transport: str = "tcp") -> int:
        return self.listeners[(name, transport)][1]

    def workers(self) -> list[int]:
        """PIDs of the server's direct children (prefork workers)."""
        pids: list[int] = []
        try:
            for tid in os.listdir(f"/proc/{self.pid}/task"):
                with open(f"/proc/{self.pid}/task/{tid}/children") as f:
                    pids.extend(int(p) for p in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            return []
        self._seen_children.update(pids)
        return sorted(pids)

    def wait_workers(self, count: int, timeout: float = 10.0, exclude: Sequence[int] = ()) -> list[int]:
        """Wait until exactly ``count`` workers run, none of them in ``exclude``."""
        deadline = time.monotonic() + timeout
        while True:
            pids = self.workers()
            if len(pids) == count and not set(pids) & set(exclude):
                return pids
            if time.monotonic() > deadline:
                raise TimeoutError(f"workers {pids}, wanted {count} not in {list(exclude)}")
            time.sleep(0.05)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stderr(self) -> str:
        # pread, not seek + read: the server writes through the same open file (the same offset), so a seek to 0
        # here could land its next line over the first ones (seen: a start-up warning overwritten in CI).
        fd = self._stderr.fileno()
        return os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")

    def stop(self) -> None:
        """Kill the server and every worker seen, by PID."""
        if self.proc.poll() is None:
            self.workers()
            self.proc.send_signal(signal.SIGKILL)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:  # pragma: no cover
                pass
        for pid in self._seen_children:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets ``pid`` has open (its /proc/PID/fd links)."""
    inodes: set[str] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except (FileNotFoundError, ProcessLookupError):
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _established(port: int, states: Sequence[str] = ("01",)) -> dict[str, int]:
    """{socket inode: remote port} of the TCP sockets on local ``port`` in one of ``states`` (hex, as in the
    file: "01" established, the default; "08" close-wait...).

    /proc/net/tcp is not an atomic snapshot: read while connections come and go, a row can show up twice (a
    busy CI machine once counted 859 of 501 connections) or not at all (a run under connection churn missed
    the one connection it looked for).  Keying by inode makes a duplicate harmless, and the union of three
    reads makes a miss unlikely; callers that expect a count still wait for it (:func:`wait_until`)."""
    rows: dict[str, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6") * 3:
        try:
            with open(table) as f:
                next(f)
                for row in f:
                    parts = row.split()
                    local, remote, state, inode = parts[1], parts[2], parts[3], parts[9]
                    if state in states and int(local.rsplit(":", 1)[1], 16) == port and inode != "0":
                        rows[inode] = int(remote.rsplit(":", 1)[1], 16)
        except FileNotFoundError:
            pass
    return rows


#: Every TCP state but LISTEN: a connection the process has not closed yet, whatever its peer did.
NOT_LISTENING = ("01", "02", "03", "04", "05", "06", "07", "08", "09", "0B", "0C")


def socket_count(pid: int, port: int, states: Sequence[str] = ("01",)) -> int:
    """How many distinct TCP connections on local ``port`` (established ones unless told ``states``) the
    process ``pid`` holds."""
    return len(_socket_inodes(pid) & set(_established(port, states)))


def port_owners(pids: Sequence[int], port: int) -> dict[int, int]:
    """{client-side port: server PID} for every established connection to local ``port`` held by ``pids``."""
    rows = _established(port)
    owners: dict[int, int] = {}
    for pid in pids:
        for inode in _socket_inodes(pid) & set(rows):
            owners[rows[inode]] = pid
    return owners


def stop_gracefully(server: ServerProcess, timeout: float = 15.0) -> None:
    """SIGTERM (graceful: the service kills what it runs), then kill by PID whatever is left."""
    server.workers()  # remember the workers, so stop() can kill them by PID
    if server.proc.poll() is None:
        server.signal(signal.SIGTERM)
        try:
            server.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    server.stop()


def wait_exit(proc: ServerProcess, timeout: float) -> tuple[int, float]:
    """(exit status, seconds it took) -- fails the test with the server's stderr on a timeout."""
    start = time.monotonic()
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"server {proc.pid} still running {timeout} s later; stderr:\n{proc.stderr()[-4000:]}")
    return code, time.monotonic() - start


def fastframe_cli(*args: str, timeout: float = 60.0, cwd: str | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run ``python -m fastframe ARGS`` (in ``cwd``, by default the temporary directory: never the source tree)
    and return what it did."""
    return subprocess.run(
        [sys.executable, "-m", "fastframe", *args],
        capture_output=True,
        timeout=timeout,
        cwd=cwd or tempfile.gettempdir(),
        stdin=subprocess.DEVNULL,
    )


# -- processes, from /proc -----------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (field 3 onwards), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()


def proc_start(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/PID/stat), or None if it is gone or a zombie: with the PID
    it names one process even if the PID is reused later."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] == "Z":
        return None
    return fields[19]


def still_running(pids_with_start: dict[int, str | None]) -> list[int]:
    return [pid for pid, start in pids_with_start.items() if start is not None and proc_start(pid) == start]


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime of the processes (fields 14 and 15 of /proc/PID/stat); gone ones count 0."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def rss_kib(pids: Sequence[int]) -> int:
    """Resident set size (VmRSS) of the processes together, in KiB; gone ones count 0."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def proc_info(pid: int) -> dict[str, Any] | None:
    """state, ppid, pgrp, session and cmdline of a process from /proc (None if it is gone)."""
    fields = _stat_fields(pid)
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return None
    if fields is None:
        return None
    return {
        "pid": pid,
        "state": fields[0],
        "ppid": int(fields[1]),
        "pgrp": int(fields[2]),
        "session": int(fields[3]),
        "cmdline": [c.decode(errors="replace") for c in cmdline if c],
    }


def all_processes() -> list[dict[str, Any]]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            info = proc_info(int(name))
            if info is not None:
                out.append(info)
    return out


def descendants(pid: int) -> list[int]:
    """Every living descendant of ``pid`` (children, grandchildren...), from the ppid field of /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for info in all_processes():
        children.setdefault(info["ppid"], []).append(info["pid"])
    out: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def runs(pid: int, *argv: str) -> bool:
    """Whether a descendant of ``pid`` runs exactly ``argv`` (a command the server started has begun)."""
    return any(info["cmdline"] == list(argv) for info in map(proc_info, descendants(pid)) if info is not None)


def group_members(pgid: int) -> list[dict[str, Any]]:
    """Every process (zombies included) whose process group or session is ``pgid``."""
    return [p for p in all_processes() if p["pgrp"] == pgid or p["session"] == pgid]


def wait_group_gone(pgid: int, timeout: float = 3.0) -> list[dict[str, Any]]:
    """Wait until no process (not even a zombie) is left in the group; return what is left at the deadline."""
    wait_until(lambda: not group_members(pgid), timeout)
    return group_members(pgid)


def _signal_masks(pid: int) -> dict[str, int]:
    masks = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("SigCgt", "SigIgn"):
                    masks[key] = int(value.strip(), 16)
    except (FileNotFoundError, ProcessLookupError):
        pass
    return masks


def booted(pid: int) -> bool:
    """A prefork worker has finished booting once it catches SIGTERM itself and no longer carries the master's
    SIGCHLD handler (inherited across fork() until the worker resets it; its engine does not catch SIGCHLD)."""
    masks = _signal_masks(pid)

    def bit(sig: int) -> int:
        return 1 << (sig - 1)

    return bool(masks) and bool(masks["SigCgt"] & bit(signal.SIGTERM)) and not masks["SigCgt"] & bit(signal.SIGCHLD)


def wait_booted(pids: Sequence[int], timeout: float = 5.0) -> list[int]:
    """Wait (at most ``timeout``; then carry on regardless) until every worker in ``pids`` has booted.

    Tests that signal the master right after a worker appears would otherwise hit the boot window in which a
    worker still runs the master's inherited signal handlers (see test_prefork's boot-window test)."""
    wait_until(lambda: all(booted(pid) for pid in pids), timeout, interval=0.01)
    return list(pids)


class Background:
    """Run ``fn(*args)`` in a thread; ``join()`` returns its result or re-raises its exception."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self.result: Any = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                self.result = fn(*args)
            except BaseException as exc:  # noqa: BLE001 - re-raised in join()
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self, timeout: float = 20.0) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "background thread did not finish in time"
        if self.error is not None:
            raise self.error
        return self.result
