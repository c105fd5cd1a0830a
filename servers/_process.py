"""Process trees, Linux-style: becoming a child subreaper, and finding and ending what hangs below a process.

A child subreaper adopts every orphan among its descendants (instead of init).  A server process running
commands is one, so a grandchild that calls ``setsid`` and loses its parent still comes back to it; the prefork
master is one too, so the commands of a worker that dies -- each in its own session, unknown to the master --
become its children, and it can end them.  Everything here reads ``/proc``; where that is missing it finds
nothing and does nothing.
"""

from __future__ import annotations

import ctypes
import os
import signal
from typing import List, Tuple

__all__ = ["become_subreaper", "children", "kill_tree", "state_and_session"]

_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make this process the subreaper of its descendants (Linux 3.4+); False where that is not possible."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0  # type: ignore[no-any-return]
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return False


def children(pid: int) -> List[int]:
    """The direct children of ``pid``, zombies included (from /proc/PID/task/*/children)."""
    out: List[int] = []
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


def state_and_session(pid: int) -> Tuple[bytes, int]:
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
