"""Server-wide counts with a ceiling -- open connections, running commands -- for one process, or shared by the
workers of a prefork server through a table in shared memory.

An engine takes a unit with ``acquire(name, limit)`` (refused, nothing counted, when ``limit`` are counted
already) and gives it back with ``release(name)``.  A single process counts in a dict (:class:`Counts`).  A
prefork server's workers count in one :class:`Balancer` table, each through its own :class:`WorkerShare`, so
that ``max_connections`` and ``max_commands`` hold for the whole server; the same table spreads accepts over
the workers and carries their heartbeats.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import tempfile
import time

__all__ = ["MAX_SLOTS", "SHARED_COUNTS", "Balancer", "Counts", "WorkerShare"]

#: The counts a prefork server keeps for all its workers together.
SHARED_COUNTS = ("connections", "commands")
MAX_SLOTS = 256
_STALE_BEAT = 3.0  # a worker whose heartbeat is older than this does not count as the least loaded one

FREE, ACTIVE, RETIRED = 0, 1, 2  # the state of a slot in the shared table


class Counts:
    """Counts with a ceiling for a single process."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def acquire(self, name: str, limit: int) -> bool:
        """Count one more ``name`` if fewer than ``limit`` are counted; False (nothing counted) otherwise."""
        n = self._counts.get(name, 0)
        if n >= limit:
            return False
        self._counts[name] = n + 1
        return True

    def release(self, name: str) -> None:
        """Give back one ``name`` taken with :meth:`acquire`."""
        n = self._counts.get(name, 0)
        if n > 0:
            self._counts[name] = n - 1


class Balancer:
    """The table the workers share: per worker (one slot per live worker process) its state, its heartbeat and
    its share of every server-wide count.  The master's side: it allocates and frees the slots.

    It lives in an anonymous shared mapping made before the first fork.  Layout, 8-byte cells: one past the
    highest slot ever used; the slots' states (free, active, retired); their heartbeats (monotonic seconds);
    then, for each name in :data:`SHARED_COUNTS`, one count per slot.  The master allocates and frees slots
    (a dead worker's share is reset with its slot); each worker writes only its own slot.

    A limit is checked and a unit taken under a lock -- a POSIX record lock (``lockf``) on an anonymous file,
    held by one process at a time and dropped by the kernel if its holder dies -- so two workers can never
    both take the last place.  Giving a unit back needs no lock: a total read meanwhile can only be too high,
    which refuses one request a moment early and never lets one too many in.
    """

    def __init__(self) -> None:
        n = MAX_SLOTS
        self._mm = mmap.mmap(-1, 8 * (1 + (2 + len(SHARED_COUNTS)) * n))  # anonymous: shared with later children
        table = memoryview(self._mm)
        self.top = table[:8].cast("q")
        self.states = table[8 : 8 * (1 + n)].cast("q")
        self.beats = table[8 * (1 + n) : 8 * (1 + 2 * n)].cast("d")
        self.columns = {
            name: table[8 * (1 + (2 + i) * n) : 8 * (1 + (3 + i) * n)].cast("q") for i, name in enumerate(SHARED_COUNTS)
        }
        self.lock_fd = _anonymous_file()
        self._free: list[int] = list(range(n - 1, -1, -1))

    def allocate(self) -> int:
        """A slot for a new worker, active from now on."""
        if not self._free:
            raise RuntimeError(f"more than {MAX_SLOTS} worker processes")
        slot = self._free.pop()
        self.beats[slot] = time.monotonic()
        for column in self.columns.values():
            column[slot] = 0
        self.states[slot] = ACTIVE
        self.top[0] = max(self.top[0], slot + 1)
        return slot

    def free(self, slot: int) -> None:
        """The worker in ``slot`` is gone (reaped): what it counted is no longer in use anywhere."""
        self.states[slot] = FREE
        for column in self.columns.values():
            column[slot] = 0
        self._free.append(slot)

    def retire(self, slot: int) -> None:
        """A worker that is being replaced no longer competes for connections (what it holds still counts)."""
        self.states[slot] = RETIRED

    def last_beat(self, slot: int) -> float:
        """When the worker in ``slot`` last beat (monotonic seconds)."""
        return self.beats[slot]

    def worker(self, slot: int) -> WorkerShare:
        """The worker's side of the table, for the worker in ``slot`` (made in that worker, after the fork)."""
        return WorkerShare(self, slot)


class WorkerShare(Counts):
    """One worker's view of the :class:`Balancer` table: it counts in its own slot and reads the others."""

    def __init__(self, table: Balancer, slot: int) -> None:
        super().__init__()
        self.slot = slot
        self._top = table.top
        self._states = table.states
        self._beats = table.beats
        self._columns = table.columns
        self._connections = table.columns["connections"]
        self._lock_fd = table.lock_fd

    def acquire(self, name: str, limit: int) -> bool:
        column = self._column(name)
        states = self._states
        fcntl.lockf(self._lock_fd, fcntl.LOCK_EX)
        try:
            total = 0
            for i in range(self._top[0]):
                if states[i] != FREE:
                    total += column[i]
            if total >= limit:
                return False
            column[self.slot] += 1
            return True
        finally:
            fcntl.lockf(self._lock_fd, fcntl.LOCK_UN)

    def release(self, name: str) -> None:
        column = self._column(name)
        if column[self.slot] > 0:
            column[self.slot] -= 1

    def _column(self, name: str) -> memoryview:
        try:
            return self._columns[name]
        except KeyError:
            raise ValueError(f"no server-wide count named {name!r} (known: {', '.join(SHARED_COUNTS)})") from None

    def retired(self) -> bool:
        """The master replaced this worker (SIGHUP, SIGTTOU): the others keep listening on the shared sockets."""
        return self._states[self.slot] == RETIRED

    def beat(self, now: float) -> None:
        self._beats[self.slot] = now

    def may_accept(self) -> bool:
        """True unless this worker holds clearly more connections than the least loaded live worker (one more,
        plus an eighth, so that bursts are not throttled by workers taking turns).

        Workers that stopped beating (hung, or being killed) do not count, so one stuck worker cannot
        stop the others from accepting."""
        states = self._states
        if states[self.slot] != ACTIVE:
            return False
        counts = self._connections
        beats = self._beats
        mine = counts[self.slot]
        stale = time.monotonic() - _STALE_BEAT
        low = mine
        for i in range(self._top[0]):
            c = counts[i]
            if c < low and states[i] == ACTIVE and beats[i] > stale:
                low = c
        return mine <= low + 1 + low // 8


def _anonymous_file() -> int:
    """A descriptor of a file nobody else can open (for the table's lock); inherited by forked workers."""
    if hasattr(os, "memfd_create"):
        return os.memfd_create("fastframe-counts")
    fd, path = tempfile.mkstemp(prefix="fastframe-counts-")  # pragma: no cover - no memfd (not Linux)
    os.unlink(path)  # pragma: no cover
    return fd  # pragma: no cover
