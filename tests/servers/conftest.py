"""Fixtures for the server tests: real ``fastframe serve`` subprocesses on 127.0.0.1, real clients.

- ``engine`` is parametrized over the two engines (ids ``select`` / ``prefork``);
- ``serve(...)`` starts a server through ``harness.ServerProcess`` (ports 0, read back from its output) and
  kills it by PID at teardown; ``spawn(...)`` does the same for any other command line (the console script,
  a socket-activation wrapper);
- ``net`` holds small client helpers written against ``struct`` only, never against the code under test, so
  that a reply is judged by an independent parser.

Test modules cannot import this file (``--import-mode=importlib``), hence the ``net`` namespace fixture.
"""

from __future__ import annotations

import os
import resource
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from types import SimpleNamespace

import pytest
from harness import ServerProcess, socket_count

#: Timeout on every socket the tests create and the default for every wait.
TIMEOUT = 10.0
HEADER = struct.Struct("!I")


@pytest.fixture(params=["select", "prefork"])
def engine(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


def engine_args(engine: str, workers: int = 2) -> list[str]:
    args = ["--engine", engine]
    if engine == "prefork":
        args += ["--workers", str(workers)]
    return args


class Spawned(ServerProcess):
    """Like ServerProcess, for an arbitrary command line (the console script, a wrapper that execs the server).

    It reuses the harness's output reading, worker listing, signalling and kill-by-PID clean-up.
    """

    def __init__(
        self,
        argv: Sequence[str],
        expect: int,
        env: dict[str, str] | None = None,
        timeout: float = 20.0,
        cwd: str | None = None,
        pass_fds: Sequence[int] = (),
    ) -> None:
        self.args = list(argv)
        full_env = dict(os.environ)
        full_env.update(env or {})
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop(), as in the harness
        self.proc = subprocess.Popen(
            list(argv),
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=full_env,
            cwd=cwd,
            pass_fds=tuple(pass_fds),
            start_new_session=True,
        )
        self.pid = self.proc.pid
        self.listeners = {}
        self.stdout_lines = []
        self._seen_children = set()
        try:
            self._read_listeners(expect, timeout)
        except BaseException:
            self.stop()
            raise


@pytest.fixture
def workdir() -> Iterator[str]:
    """A directory outside the source tree: ``python -m fastframe`` run from the repository root would import
    the uncompiled ``fastframe/`` there (sys.path[0] is the working directory) instead of the installed
    package, and fail to find ``fastframe.servers``."""
    with tempfile.TemporaryDirectory(prefix="ff-servers-") as d:
        yield d


@pytest.fixture
def serve(workdir: str) -> Iterator:
    """``serve(*args, expect=1, engine=None, workers=2)`` -> a running ServerProcess; all stopped at teardown."""
    started: list[ServerProcess] = []

    def start(
        *args: str,
        expect: int = 1,
        engine: str | None = None,
        workers: int = 2,
        env: dict[str, str] | None = None,
        timeout: float = 20.0,
    ) -> ServerProcess:
        full = (engine_args(engine, workers) if engine else []) + list(args)
        proc = ServerProcess(full, expect=expect, env=env, timeout=timeout, cwd=workdir)
        started.append(proc)
        if engine == "prefork":
            try:
                wait_booted(proc.wait_workers(workers, timeout=TIMEOUT))
            except TimeoutError as exc:
                raise AssertionError(f"{exc}; stderr:\n{proc.stderr()}") from None
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def spawn(workdir: str) -> Iterator:
    """``spawn(argv, expect, env=None, pass_fds=())`` -> a running Spawned; all stopped at teardown."""
    started: list[Spawned] = []

    def start(argv: Sequence[str], expect: int, **kwargs: object) -> Spawned:
        kwargs.setdefault("cwd", workdir)
        proc = Spawned(argv, expect, **kwargs)  # type: ignore[arg-type]
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def console_script() -> str:
    path = os.path.join(os.path.dirname(sys.executable), "fastframe")
    assert os.path.exists(path), f"the fastframe console script is not installed next to {sys.executable}"
    return path


# -- tools from Debian --------------------------------------------------------------------------------------


def require_tool(name: str) -> str:
    """The path of ``name``; skip when missing, unless FASTFRAME_REQUIRE_TOOLS=1 (CI), then fail."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if path is None:
        package = {"nc": "netcat-openbsd"}.get(name, name)
        message = f"{name} is not installed (apt-get install {package})"
        if os.environ.get("FASTFRAME_REQUIRE_TOOLS") == "1":
            pytest.fail(message + " and FASTFRAME_REQUIRE_TOOLS=1", pytrace=False)
        pytest.skip(message)
    return path


# -- client helpers (struct-based, independent of fastframe) -------------------------------------------------


def connect(addr: tuple[str, int], timeout: float = TIMEOUT) -> socket.socket:
    sock = socket.create_connection(addr, timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


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
    sock.sendall(HEADER.pack(len(payload)) + payload)


def recv_frame(sock: socket.socket) -> bytes:
    """One ``!I`` frame.  EOFError("eof at boundary") on a clean close before the header; any close inside the
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


def roundtrip(sock: socket.socket, payload: bytes) -> bytes:
    send_frame(sock, payload)
    return recv_frame(sock)


def read_to_eof(sock: socket.socket, limit: int = 64 << 20) -> bytes:
    buf = bytearray()
    while True:
        chunk = sock.recv(1 << 16)
        if not chunk:
            return bytes(buf)
        buf += chunk
        assert len(buf) <= limit


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


def port_owners(pids: Sequence[int], port: int) -> dict[int, int]:
    """{client-side port: server PID} for every established connection to local ``port`` held by ``pids``
    (read from /proc, like harness.socket_count)."""
    inode_pid: dict[str, int] = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except FileNotFoundError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inode_pid[target[8:-1]] = pid
    owners: dict[int, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for row in f:
                    parts = row.split()
                    local, remote, state, inode = parts[1], parts[2], parts[3], parts[9]
                    if state == "01" and int(local.rsplit(":", 1)[1], 16) == port and inode in inode_pid:
                        owners[int(remote.rsplit(":", 1)[1], 16)] = inode_pid[inode]
        except FileNotFoundError:
            pass
    return owners


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
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(booted(pid) for pid in pids):
        time.sleep(0.01)
    return list(pids)


def raise_nofile(wanted: int) -> int:
    """Raise this process's RLIMIT_NOFILE soft limit towards ``wanted`` (up to the hard limit); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    return soft


def wait_exit(proc: ServerProcess, timeout: float) -> tuple[int, float]:
    """(exit status, seconds it took) -- fails the test with the server's stderr on a timeout."""
    start = time.monotonic()
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"server {proc.pid} still running {timeout} s later; stderr:\n{proc.stderr()[-4000:]}")
    return code, time.monotonic() - start


def proc_start(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/PID/stat), or None if it is gone: with the PID it names one
    process even if the PID is reused later."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None  # a zombie has exited
    return fields[19]


def still_running(pids_with_start: dict[int, str | None]) -> list[int]:
    return [pid for pid, start in pids_with_start.items() if start is not None and proc_start(pid) == start]


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime of the processes (fields 14 and 15 of /proc/PID/stat); gone ones count 0."""
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
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


def descendants(pid: int) -> list[int]:
    """Every living descendant of ``pid`` (children, grandchildren...), from the ppid field of /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(name))
    out: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def wait_until(predicate, timeout: float, interval: float = 0.02) -> bool:
    """Poll ``predicate()`` until it is true (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def soak_seconds(default: float = 300.0) -> float:
    """How long the soak tests run: FASTFRAME_SOAK_SECONDS, else ``default``."""
    return float(os.environ.get("FASTFRAME_SOAK_SECONDS", default))


@pytest.fixture(scope="session")
def net() -> SimpleNamespace:
    return SimpleNamespace(
        TIMEOUT=TIMEOUT,
        HEADER=HEADER,
        connect=connect,
        recv_exactly=recv_exactly,
        send_frame=send_frame,
        recv_frame=recv_frame,
        roundtrip=roundtrip,
        read_to_eof=read_to_eof,
        wait_closed=wait_closed,
        port_owners=port_owners,
        socket_count=socket_count,
        raise_nofile=raise_nofile,
        require_tool=require_tool,
        wait_exit=wait_exit,
        engine_args=engine_args,
        proc_start=proc_start,
        still_running=still_running,
        booted=booted,
        wait_booted=wait_booted,
        cpu_seconds=cpu_seconds,
        rss_kib=rss_kib,
        descendants=descendants,
        wait_until=wait_until,
        soak_seconds=soak_seconds,
    )
