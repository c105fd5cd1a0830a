"""Process trees, Linux-style: becoming a child subreaper, and finding and ending what hangs below a process.

A child subreaper adopts every orphan among its descendants (instead of init).  The prefork master is one, so the
commands of a worker that dies -- each in its own session, unknown to the master -- become its children, and it
can end them.  Everything here reads ``/proc``; where that is missing it finds nothing and does nothing.
"""

from __future__ import annotations

import ctypes
import os
import signal
from typing import Dict, List

__all__ = ["become_subreaper", "children", "descendants", "kill_tree"]

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


def _parents() -> Dict[int, List[int]]:
    """{ppid: [pid, ...]} for every process, from /proc/*/stat."""
    tree: Dict[int, List[int]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return tree
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
            ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        tree.setdefault(ppid, []).append(int(name))
    return tree


def descendants(pid: int) -> List[int]:
    """Every process below ``pid``, children first."""
    tree = _parents()
    out: List[int] = []
    todo = list(tree.get(pid, ()))
    while todo:
        p = todo.pop(0)
        out.append(p)
        todo.extend(tree.get(p, ()))
    return out


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` (one of our children: its PID cannot be reused before we reap it), its process group, and
    every process below it.  Those are read from /proc a moment before they are signalled; any that escape the
    walk (a PID reused in that moment is the only risk, which is why our own children are the roots) become our
    children when their parent dies, and the next call ends them."""
    below = descendants(pid)
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for target in (pid, *below):
        try:
            os.kill(target, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
