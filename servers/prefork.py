"""The prefork engine: a master that binds every socket and supervises N workers running the select loop.

Theory of operation
===================

The master binds (or inherits from systemd) every listening socket, then forks the workers; each worker runs
a :class:`~servers.engine.SelectEngine` on the inherited sockets.  The master itself serves nothing: its loop
waits on a wake-up pipe written by ``signal.set_wakeup_fd``, and its signal handlers only append the signal
to a queue, so every decision is taken in one place, in order:

* ``SIGCHLD``: reap with ``waitpid(-1, WNOHANG)`` until nothing is left, and respawn the missing workers.
  A worker that dies within a second of its birth counts as a boot failure, and each consecutive one
  doubles the delay before the next spawn (0.1 s up to 10 s), so a worker that cannot start is not forked
  in a tight loop.  The master is the child subreaper of everything below it: the commands of a worker that
  died (each in a session of its own) become its children, and it ends them;
* ``SIGTERM``: stop accepting (the master closes its copies of the sockets), tell every worker to stop
  gracefully -- each first takes what waits in the accept queues, since the last close of a listening socket
  resets them -- wait for them for at most ``graceful_timeout``, then kill what is left;
* ``SIGINT`` / ``SIGQUIT``: tell the workers to stop at once; kill them after a second;
* ``SIGHUP``: start a fresh set of workers, and gracefully stop the old ones, which finish what they received
  but leave the accept queues to the new ones; the listening sockets stay open in the master throughout, so
  no connection attempt is refused;
* ``SIGTTIN`` / ``SIGTTOU``: one worker more / one fewer (never fewer than one);
* ``SIGUSR1``: :meth:`PreforkEngine.handle_usr1` (passed on to the workers); every other signal that would end
  the process is logged and ignored.

Accepts are spread by the kernel and a shared table: every worker registers the shared listening socket
with ``EPOLLEXCLUSIVE`` (one idle worker is woken per connection, not all), takes one connection per
wake-up and re-registers (moving to the back of the kernel's queue of waiters, so idle workers take turns),
and steps out of the queue while it holds clearly more connections than the least loaded live worker.  The
table (:class:`Balancer`) lives in an anonymous shared mapping made before the first fork: per worker its
state, a heartbeat and its share of the server-wide counts (connections, commands), so that
``max_connections`` and ``max_commands`` hold for the whole server.  The heartbeat doubles as a watchdog: a
worker that stops beating for ``worker_timeout`` is killed and replaced.  A worker whose master died (its
parent PID changed) stops gracefully on its own.

A worker always leaves through ``os._exit``, never by returning into the master's code.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
import select
import signal
import tempfile
import time
from collections import deque
from typing import Any, Deque, Dict, List, Optional, Sequence

from ._process import become_subreaper, children, kill_tree
from .engine import (
    IGNORED_SIGNALS,
    SHARED_COUNTS,
    Counts,
    Limits,
    Listener,
    SelectEngine,
    enable_faulthandler,
    install_handlers,
    signal_name,
)

__all__ = ["Balancer", "PreforkEngine"]

log = logging.getLogger("fastframe.server")

MAX_SLOTS = 256
BOOT_WINDOW = 1.0  # a worker dying younger than this failed to boot
MAX_BACKOFF = 10.0
FAST_STOP_GRACE = 1.0


FREE, ACTIVE, RETIRED = 0, 1, 2  # the state of a slot in the shared table


class Balancer(Counts):
    """The table the workers share: per worker (one slot per live worker process) its state, its heartbeat and
    its share of every server-wide count.

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
        self._top = table[:8].cast("q")
        self.states = table[8 : 8 * (1 + n)].cast("q")
        self.beats = table[8 * (1 + n) : 8 * (1 + 2 * n)].cast("d")
        self._columns = {
            name: table[8 * (1 + (2 + i) * n) : 8 * (1 + (3 + i) * n)].cast("q")
            for i, name in enumerate(SHARED_COUNTS)
        }
        self._connections = self._columns["connections"]
        self.slot = -1
        self._free: List[int] = list(range(n - 1, -1, -1))
        self._lock_fd = _anonymous_file()

    # master side
    def allocate(self) -> int:
        if not self._free:
            raise RuntimeError(f"more than {MAX_SLOTS} worker processes")
        slot = self._free.pop()
        self.beats[slot] = time.monotonic()
        for column in self._columns.values():
            column[slot] = 0
        self.states[slot] = ACTIVE
        self._top[0] = max(self._top[0], slot + 1)
        return slot

    def free(self, slot: int) -> None:
        """The worker in ``slot`` is gone (reaped): what it counted is no longer in use anywhere."""
        self.states[slot] = FREE
        for column in self._columns.values():
            column[slot] = 0
        self._free.append(slot)

    def retire(self, slot: int) -> None:
        """A worker that is being replaced no longer competes for connections (what it holds still counts)."""
        self.states[slot] = RETIRED

    # worker side
    def acquire(self, name: str, limit: int) -> bool:
        column = self._column(name)
        states = self.states
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
        return self.states[self.slot] == RETIRED

    def beat(self, now: float) -> None:
        self.beats[self.slot] = now

    def may_accept(self) -> bool:
        """True unless this worker holds clearly more connections than the least loaded live worker (one more,
        plus an eighth, so that bursts are not throttled by workers taking turns).

        Workers that stopped beating (hung, or being killed) do not count, so one stuck worker cannot
        stop the others from accepting."""
        if self.states[self.slot] != ACTIVE:
            return False
        counts = self._connections
        states = self.states
        beats = self.beats
        mine = counts[self.slot]
        stale = time.monotonic() - 3.0
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


class _Worker:
    __slots__ = ("pid", "slot", "born", "retiring")

    def __init__(self, pid: int, slot: int, born: float) -> None:
        self.pid = pid
        self.slot = slot
        self.born = born
        self.retiring = False


class PreforkEngine:
    """Run ``workers`` select-loop processes on ``listeners`` and supervise them until stopped."""

    def __init__(
        self,
        listeners: Sequence[Listener],
        workers: Optional[int] = None,
        limits: Optional[Limits] = None,
        pidfile: Optional[str] = None,
        worker_timeout: float = 30.0,
    ) -> None:
        self.listeners = list(listeners)
        self.target = max(1, workers or os.cpu_count() or 1)
        self.limits = limits or Limits()
        self.pidfile = pidfile
        self.worker_timeout = worker_timeout
        self.balancer = Balancer()
        self.workers: Dict[int, _Worker] = {}
        self._signals: Deque[int] = deque()
        self._stopping = False
        self._deadline = 0.0
        self._next_spawn = 0.0
        self._failures = 0
        self._master_pid = os.getpid()
        self._orphans_possible = False  # a child was reaped since the last look for orphans
        self._wake_r = self._wake_w = -1

    # -- signals --------------------------------------------------------------------------------------

    #: The signals the master handles (block them before ``run``, which unblocks them once it handles them).
    SIGNALS = _HANDLED = tuple(
        dict.fromkeys((
            signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP,
            signal.SIGTTIN, signal.SIGTTOU, signal.SIGCHLD, signal.SIGUSR1, *IGNORED_SIGNALS,
        ))
    )  # fmt: skip

    def _record(self, signum: int, frame: Any) -> None:
        self._signals.append(signum)

    def _install_signals(self) -> None:
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        install_handlers(self._HANDLED, self._record)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        enable_faulthandler()

    # -- workers --------------------------------------------------------------------------------------

    def _spawn(self) -> None:
        slot = self.balancer.allocate()
        # Signals stay blocked across the fork: a SIGTERM meant for the new worker must not land in the
        # master's handler (inherited, until the worker installs its own) and be lost there.  The worker
        # unblocks them once its engine's handlers are in place; pending ones are delivered then.
        signal.pthread_sigmask(signal.SIG_BLOCK, self._HANDLED)
        pid = -1
        try:
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child; covered by the subprocess tests
                code = 1
                try:
                    code = self._worker_main(slot)
                except BaseException:
                    log.exception("worker crashed")
                finally:
                    os._exit(code)
        finally:
            if pid != 0:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, self._HANDLED)
        self.workers[pid] = _Worker(pid, slot, time.monotonic())
        log.info("worker %d started (slot %d)", pid, slot)

    def _worker_main(self, slot: int) -> int:  # pragma: no cover - child process
        signal.set_wakeup_fd(-1)
        install_handlers(self._HANDLED, signal.SIG_DFL)  # still blocked: the engine installs its own, then unblocks
        os.close(self._wake_r)
        os.close(self._wake_w)
        if os.environ.get("FASTFRAME_TEST_FAULT") == "worker-boot":
            signal.pthread_sigmask(signal.SIG_UNBLOCK, self._HANDLED)
            raise RuntimeError("fault injected at worker boot (FASTFRAME_TEST_FAULT=worker-boot)")
        self.balancer.slot = slot
        engine = SelectEngine(self.listeners, self.limits, balancer=self.balancer, exclusive_accept=True)
        engine.parent_pid = self._master_pid
        return engine.run(unblock_signals=self._HANDLED)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self._orphans_possible = True
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue  # an orphan we adopted and ended (see _end_orphans)
            self.balancer.free(worker.slot)
            age = time.monotonic() - worker.born
            how = _describe_status(status)
            if worker.retiring or self._stopping:
                log.info("worker %d exited (%s)", pid, how)
                continue
            if age < BOOT_WINDOW:
                self._failures += 1
                delay = min(MAX_BACKOFF, 0.1 * 2 ** (self._failures - 1))
                self._next_spawn = time.monotonic() + delay
                log.error("worker %d died %.2f s after start (%s); next spawn in %.1f s", pid, age, how, delay)
            else:
                self._failures = 0
                log.warning("worker %d died (%s); replacing it", pid, how)

    def _end_orphans(self) -> None:
        """End every child of the master that is not a worker, with everything below it.

        The master is the child subreaper of its workers' descendants: when a worker dies, the commands it ran
        (each in a session of its own, which nothing else would ever signal) become the master's children.
        They are killed, with their process groups and descendants; what they leave behind is adopted in turn
        and ended on the next call (each death is a SIGCHLD, and every reap calls this again)."""
        self._orphans_possible = False
        for pid in children(os.getpid()):
            if pid not in self.workers:
                log.warning("ending process %d, left behind by a worker that died", pid)
                kill_tree(pid)

    def _end_all_orphans(self, timeout: float = 2.0) -> None:
        """On the way out, with no worker left: end and reap whatever the workers left behind."""
        deadline = time.monotonic() + timeout
        while True:
            self._end_orphans()
            try:
                while os.waitpid(-1, os.WNOHANG)[0]:
                    pass
            except ChildProcessError:
                return  # no child left at all
            if time.monotonic() >= deadline:
                log.warning("processes left behind by the workers did not die within %g s", timeout)
                return
            time.sleep(0.01)

    def _active(self) -> List[_Worker]:
        return [w for w in self.workers.values() if not w.retiring]

    def _maintain(self) -> None:
        if self._stopping:
            return
        active = self._active()
        while len(active) > self.target:
            victim = max(active, key=lambda w: w.born)
            self._retire(victim)
            active.remove(victim)
        now = time.monotonic()
        while len(active) < self.target and now >= self._next_spawn:
            self._spawn()
            active = self._active()
            if self._failures:
                # Still backing off: one at a time, so a broken worker cannot multiply.
                self._next_spawn = now + min(MAX_BACKOFF, 0.1 * 2 ** (self._failures - 1))
                break

    def _retire(self, worker: _Worker, signum: int = signal.SIGTERM) -> None:
        worker.retiring = True
        self.balancer.retire(worker.slot)
        self._kill(worker.pid, signum)

    def _kill(self, pid: int, signum: int) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    def _check_heartbeats(self) -> None:
        now = time.monotonic()
        for worker in list(self.workers.values()):
            if now - worker.born < self.worker_timeout:
                continue
            if now - self.balancer.beats[worker.slot] > self.worker_timeout:
                log.error("worker %d has not answered for %.0f s; killing it", worker.pid, self.worker_timeout)
                self._kill(worker.pid, signal.SIGKILL)

    # -- the master loop ------------------------------------------------------------------------------

    def _handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.popleft()
            if signum == signal.SIGCHLD:
                self._reap()
            elif signum == signal.SIGTERM:
                self._stop(graceful=True)
            elif signum in (signal.SIGINT, signal.SIGQUIT):
                self._stop(graceful=False)
            elif signum == signal.SIGHUP and not self._stopping:
                log.info("SIGHUP: replacing all %d worker(s)", len(self._active()))
                old = self._active()
                self._failures = 0
                self._next_spawn = 0.0
                for _ in range(self.target):
                    self._spawn()
                for worker in old:
                    self._retire(worker)
            elif signum == signal.SIGTTIN and not self._stopping:
                self.target += 1
                log.info("SIGTTIN: %d worker(s)", self.target)
            elif signum == signal.SIGTTOU and not self._stopping:
                self.target = max(1, self.target - 1)
                log.info("SIGTTOU: %d worker(s)", self.target)
            elif signum == signal.SIGUSR1:
                self.handle_usr1()
            elif signum not in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU):
                log.warning("%s ignored", signal_name(signum))

    def handle_usr1(self) -> None:
        """SIGUSR1, logrotate's signal: reopen the log files here and in every worker.  Logs go to stderr for now:
        the master has nothing to reopen, and passes the signal on for the workers to say the same."""
        log.info("SIGUSR1: nothing to reopen (the log goes to stderr); passing it on to the workers")
        for worker in self.workers.values():
            self._kill(worker.pid, signal.SIGUSR1)

    def _stop(self, graceful: bool) -> None:
        first = not self._stopping
        self._stopping = True
        if graceful:
            if first:
                log.info("SIGTERM: stopping gracefully (at most %g s)", self.limits.graceful_timeout)
                # Each worker gives its in-flight work graceful_timeout from when *it* gets the signal, and then
                # still has to close what is left (kill running commands): kill it only if it overstays that.
                self._deadline = time.monotonic() + self.limits.graceful_timeout + FAST_STOP_GRACE
            signum = signal.SIGTERM
        else:
            log.info("stopping now")
            self._deadline = min(self._deadline or float("inf"), time.monotonic() + FAST_STOP_GRACE)
            signum = signal.SIGQUIT
        for listener in self.listeners:
            listener.sock.close()
        for worker in self.workers.values():
            worker.retiring = True
            self._kill(worker.pid, signum)

    def _wait(self, timeout: float) -> None:
        try:
            ready, _, _ = select.select([self._wake_r], [], [], max(0.0, timeout))
        except InterruptedError:  # pragma: no cover
            return
        if ready:
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except (BlockingIOError, InterruptedError):
                pass

    def run(self, unblock_signals: Sequence[int] = ()) -> int:
        """Supervise until stopped; return the exit status.

        ``unblock_signals`` are unblocked once the master's handlers are installed (block :attr:`SIGNALS` while
        announcing the server, so that a signal sent as soon as it is announced is not lost)."""
        self._install_signals()
        if unblock_signals:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, unblock_signals)
        if self.pidfile:
            _write_pidfile(self.pidfile)
        try:
            log.info("prefork master %d: %d worker(s)", os.getpid(), self.target)
            become_subreaper()
            self._maintain()
            while True:
                self._handle_signals()
                self._reap()
                if self._orphans_possible:
                    self._end_orphans()
                if self._stopping:
                    if not self.workers:
                        break
                    if time.monotonic() >= self._deadline:
                        log.warning("killing %d worker(s) that did not stop in time", len(self.workers))
                        for pid in list(self.workers):
                            self._kill(pid, signal.SIGKILL)
                        self._deadline = float("inf")
                    self._wait(0.05)
                    continue
                self._maintain()
                self._check_heartbeats()
                timeout = 1.0
                if len(self._active()) < self.target:
                    timeout = max(0.0, min(timeout, self._next_spawn - time.monotonic()))
                self._wait(timeout)
        finally:
            for worker in list(self.workers.values()):
                self._kill(worker.pid, signal.SIGKILL)
            for pid in list(self.workers):
                try:
                    os.waitpid(pid, 0)
                except ChildProcessError:
                    pass
            self.workers.clear()
            self._end_all_orphans()
            for listener in self.listeners:
                listener.sock.close()
            if self.pidfile:
                _remove_pidfile(self.pidfile)
            signal.set_wakeup_fd(-1)
        log.info("prefork master %d: stopped", os.getpid())
        return 0


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        try:
            return "killed by " + signal.Signals(os.WTERMSIG(status)).name
        except ValueError:
            return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit status {os.WEXITSTATUS(status)}"


def _write_pidfile(path: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{os.getpid()}\n")
    os.replace(tmp, path)


def _remove_pidfile(path: str) -> None:
    try:
        with open(path) as f:
            if f.read().strip() != str(os.getpid()):
                return
        os.unlink(path)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            log.warning("could not remove pidfile %s: %s", path, exc)
