"""Test helpers, importable by every test module (``import harness``; tests/ is on pytest's pythonpath).

Running `fastframe serve` as a real subprocess: start, read the ports it prints, signal, clean up -- everything
it starts is killed by PID (the server and, for prefork, every worker it saw), never by name.  And the socket
helpers every network test needs, written once: :func:`recv_exactly`, :func:`recv_frame`, :func:`send_frame`,
:func:`wait_until`.
"""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

_HEADER = struct.Struct("!I")


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
    sock.sendall(_HEADER.pack(len(payload)) + payload)


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
    (n,) = _HEADER.unpack(head)
    try:
        return recv_exactly(sock, n)
    except EOFError as exc:
        raise EOFError(f"partial payload: {exc}") from None


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``predicate()`` until it is true (True) or ``timeout`` seconds pass (False): wait for a condition,
    never for a fixed time."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


LINE = re.compile(r"^(\w+) (tcp|udp) (\[[0-9a-fA-F:.]+\]|[^\s:]+):(\d+)$")
UNIX_LINE = re.compile(r"^(\w+) unix (\S+)$")  # echo unix /run/e.sock


class ServerProcess:
    """``fastframe serve ARGS`` in a subprocess; ``expect`` is how many listening lines to wait for."""

    def __init__(
        self,
        args: Sequence[str],
        expect: int,
        env: Optional[Dict[str, str]] = None,
        timeout: float = 20.0,
        cwd: Optional[str] = None,
    ) -> None:
        self.args = list(args)
        full_env = dict(os.environ)
        full_env.update(env or {})
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fastframe", "serve", *self.args],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=full_env,
            # Never the repository root: `python -m fastframe` would import the unbuilt source tree there.
            cwd=cwd or tempfile.gettempdir(),
            start_new_session=True,  # a Ctrl-C in the test terminal does not reach it; we signal it ourselves
        )
        self.pid = self.proc.pid
        self.listeners: Dict[Tuple[str, str], Tuple[str, int]] = {}
        self.stdout_lines: List[str] = []
        self._seen_children: set = set()
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

    def addr(self, name: str, transport: str = "tcp") -> Tuple[str, int]:
        return self.listeners[(name, transport)]

    def port(self, name: str, transport: str = "tcp") -> int:
        return self.listeners[(name, transport)][1]

    def workers(self) -> List[int]:
        """PIDs of the server's direct children (prefork workers)."""
        pids: List[int] = []
        try:
            for tid in os.listdir(f"/proc/{self.pid}/task"):
                with open(f"/proc/{self.pid}/task/{tid}/children") as f:
                    pids.extend(int(p) for p in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            return []
        self._seen_children.update(pids)
        return sorted(pids)

    def wait_workers(self, count: int, timeout: float = 10.0, exclude: Sequence[int] = ()) -> List[int]:
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
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

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

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def socket_count(pid: int, port: int) -> int:
    """How many established TCP connections on local ``port`` the process ``pid`` holds (via /proc)."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except FileNotFoundError:
        return 0
    # Each socket once: the kernel writes /proc/net/tcp a page at a time, and a table that changes between two
    # pages (connections of other processes coming and going) can list a row twice.
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for row in f:
                    parts = row.split()
                    local, state, inode = parts[1], parts[3], parts[9]
                    if state == "01" and int(local.rsplit(":", 1)[1], 16) == port and inode in inodes:
                        found.add(inode)
        except FileNotFoundError:
            pass
    return len(found)


class Background:
    """Run ``fn(*args)`` in a thread; ``join()`` returns its result or re-raises its exception."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self.result: Any = None
        self.error: Optional[BaseException] = None

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
