"""Process trees, Linux-style: becoming a child subreaper, and finding and ending what hangs below a process.

A child subreaper adopts every orphan among its descendants (instead of init).  A server process running
commands is one, so a grandchild that calls ``setsid`` and loses its parent still comes back to it; the prefork
master is one too, so the commands of a worker that dies -- each in its own session, unknown to the master --
become its children, and it can end them.  Everything here reads ``/proc``; where that is missing it finds
nothing and does nothing.  :class:`Reaper` keeps a process's children apart: those that belong to a running
command, and the debris it ends and reaps.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # pragma: no cover
    import subprocess

__all__ = ["Reaper", "become_subreaper", "children", "kill_tree", "state_and_session"]

log = logging.getLogger("fastframe.server")

_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make this process the subreaper of its descendants (Linux 3.4+); False where that is not possible."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0  # type: ignore[no-any-return]
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return False


def children(pid: int) -> list[int]:
    """The direct children of ``pid``, zombies included (from /proc/PID/task/*/children)."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(p) for p in f.read().split())
        except OSError:  # the thread ended, or the kernel lacks CONFIG_PROC_CHILDREN
            continue
    return out


def state_and_session(pid: int) -> tuple[bytes, int]:
    """The state letter (``b"Z"`` for a zombie) and the session ID of ``pid``, from /proc (``b""``, 0: gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return b"", 0
    fields = stat[stat.rindex(b")") + 2 :].split()  # after "pid (comm) ": state, ppid, pgrp, session, ...
    return fields[0], int(fields[3])


def kill_tree(pid: int) -> int:
    """SIGKILL ``pid`` (one of our children: its PID cannot be reused before we reap it), its process group and
    every process below it; return how many processes were signalled.  Processes are not reaped here.

    The tree is read first and killed afterwards (a process killed first would hand its children to a subreaper
    before they were read).  A process forked while the tree is read is adopted by the subreaper once its parent
    dies, and the next call ends it."""
    tree = [pid]
    i = 0
    while i < len(tree) and len(tree) < 1 << 16:
        tree.extend(children(tree[i]))
        i += 1
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for target in tree:
        try:
            os.kill(target, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return len(tree)


class Tracked(Protocol):
    """What the reaper needs of a child it tracks (the command service's record of a command)."""

    proc: subprocess.Popen[bytes]
    abandoned: bool  # its owner is gone: end it and reap it
    reaped: bool  # set by the reaper once it reaped it


class Reaper:
    """Every child of this process, told apart: a tracked child (a running command, the leader of its own
    session) and what is still in its session belong to it; anything else -- the tree of a command that has
    ended, a process that left its command's session with ``setsid`` and then lost its parent, a zombie -- is
    debris, which :meth:`sweep` kills (whole tree) and reaps, with the tracked children whose owner is gone.

    A sweep runs when asked and on every ``SIGCHLD`` (from :meth:`setup`).  That handler runs in the main
    thread between two bytecodes (Python defers it there), so it may interrupt a sweep or a child being
    started: such a sweep is deferred and run by the outer one (a child not yet tracked would pass for
    debris).  It only makes non-blocking ``kill``/``waitpid`` calls on processes that no other code of the
    process waits for -- no thread is involved."""

    def __init__(self, name: str) -> None:
        self.name = name  # for the log
        self._tracked: dict[int, Tracked] = {}  # every tracked child not yet reaped, by PID (= its session ID)
        self._setup_pid = 0
        self._sweeping = False
        self._pending = False
        self._spawning = False

    def setup(self) -> None:
        """Once per process (a prefork worker is a new one): become a subreaper and sweep on SIGCHLD."""
        if self._setup_pid == os.getpid():
            return
        self._setup_pid = os.getpid()
        self._tracked.clear()  # inherited from a parent process: not our children
        become_subreaper()
        signal.signal(signal.SIGCHLD, self._on_sigchld)

    def _on_sigchld(self, signum: int, frame: Any) -> None:
        try:
            self.sweep()
        except Exception:  # raised here, it would surface wherever the loop happened to be
            log.exception("%s: sweeping the trees of ended commands failed", self.name)

    @contextlib.contextmanager
    def spawning(self) -> Iterator[None]:
        """Around starting a child and tracking it: sweeps wait until it is tracked."""
        self._spawning = True
        try:
            yield
        finally:
            self._spawning = False
            if self._pending:
                self.sweep()

    def track(self, child: Tracked) -> None:
        self._tracked[child.proc.pid] = child

    def forget(self, child: Tracked) -> None:
        """``child`` was reaped by its owner."""
        self._tracked.pop(child.proc.pid, None)

    def sweep(self) -> None:
        """Kill and reap the debris and the abandoned children, and every zombie (a nested sweep is deferred)."""
        if self._sweeping or self._spawning:
            self._pending = True
            return
        self._sweeping = True
        try:
            while True:
                self._pending = False
                for pid in self.leftovers():
                    child = self._tracked.get(pid)
                    if child is None:
                        kill_tree(pid)
                        try:
                            os.waitpid(pid, os.WNOHANG)
                        except ChildProcessError:
                            pass
                    elif child.proc.poll() is not None:
                        child.reaped = True
                        del self._tracked[pid]
                if not self._pending:
                    return
        finally:
            self._sweeping = False

    def leftovers(self) -> list[int]:
        """The children of this process to end and reap: abandoned tracked ones, and the others that are not
        (zombies aside) in the session of a tracked child still running."""
        running = {pid for pid, child in self._tracked.items() if not child.abandoned}  # = their session IDs
        found = []
        for pid in children(os.getpid()):
            child = self._tracked.get(pid)
            if child is not None:
                if child.abandoned:
                    found.append(pid)
                continue
            state, session = state_and_session(pid)
            if state == b"Z" or session not in running:
                found.append(pid)
        return found

    def reap_now(self, timeout: float) -> None:
        """Sweep until nothing is left to end and reap, for at most ``timeout`` s (when the server stops)."""
        deadline = time.monotonic() + timeout
        delay = 0.002
        while True:
            self.sweep()
            if not self.leftovers() or time.monotonic() >= deadline:
                return
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
