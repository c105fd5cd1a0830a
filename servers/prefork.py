"""The prefork master: it holds every listening socket and supervises N workers running the select engine.

Theory of operation
===================

The master binds (or inherits from systemd) every listening socket, then forks the workers; each worker runs
a :class:`~servers.engine.SelectEngine` on the inherited sockets.  The master itself serves nothing: its loop
waits on a wake-up pipe written by ``signal.set_wakeup_fd``, and its signal handlers only append the signal
to a queue (:mod:`servers.signals`); the loop hands each to ``handle_<signal>``, so every decision is taken in
one place, in order:

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
table (:class:`servers.counts.Balancer`) lives in an anonymous shared mapping made before the first fork: per worker its
state, a heartbeat and its share of the server-wide counts (connections, commands), so that
``max_connections`` and ``max_commands`` hold for the whole server.  The heartbeat doubles as a watchdog: a
worker that stops beating for ``worker_timeout`` is killed and replaced.  A worker whose master died (its
parent PID changed) stops gracefully on its own.

Under systemd (``Type=notify``) the master says READY=1 once every worker has beaten after it started
listening (each beats right then), STOPPING=1 on SIGTERM, and WATCHDOG=1 when asked.  With ``--metrics`` its
wait is a :class:`~servers.metrics_http.SelectorReactor` over the signal pipe and the ``/metrics`` endpoint, so
the master answers scrapes from the workers' multiprocess files without a thread; it marks each reaped worker
dead for ``prometheus_client``.

A worker always leaves through ``os._exit``, never by returning into the master's code.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Sequence

from ._process import become_subreaper, children, kill_tree
from .counts import Balancer
from .engine import SelectEngine
from .limits import Limits
from .listen import Listener
from .metrics_http import SelectorReactor
from .observe import Observer
from .sdnotify import Notifier
from .signals import IGNORED_SIGNALS, SignalRelay, dispatch, install_handlers

__all__ = ["PreforkEngine"]

log = logging.getLogger("fastframe.server")

BOOT_WINDOW = 1.0  # a worker dying younger than this failed to boot
MAX_BACKOFF = 10.0
FAST_STOP_GRACE = 1.0


class _Worker:
    __slots__ = ("pid", "slot", "born", "retiring")

    def __init__(self, pid: int, slot: int, born: float) -> None:
        self.pid = pid
        self.slot = slot
        self.born = born
        self.retiring = False


class PreforkEngine:
    """Run ``workers`` select-loop processes on ``listeners`` and supervise them until stopped."""

    #: The signals the master handles (block them before ``run``, which unblocks them once it handles them).
    SIGNALS = tuple(
        dict.fromkeys((
            signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP,
            signal.SIGTTIN, signal.SIGTTOU, signal.SIGCHLD, signal.SIGUSR1, *IGNORED_SIGNALS,
        ))
    )  # fmt: skip

    def __init__(
        self,
        listeners: Sequence[Listener],
        workers: int | None = None,
        limits: Limits | None = None,
        worker_timeout: float = 30.0,
        observer: Observer | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.listeners = list(listeners)
        self.observer = observer
        self.notifier = notifier
        self._ready = False
        self._next_watchdog = 0.0
        self._reactor: SelectorReactor | None = None  # the master's loop for the /metrics endpoint
        self.target = max(1, workers or os.cpu_count() or 1)
        self.limits = limits or Limits()
        self.worker_timeout = worker_timeout
        self.balancer = Balancer()
        self.workers: dict[int, _Worker] = {}
        self._relay = SignalRelay(self.SIGNALS)
        self._stopping = False
        self._deadline = 0.0
        self._next_spawn = 0.0
        self._failures = 0
        self._master_pid = os.getpid()
        self._orphans_possible = False  # a child was reaped since the last look for orphans

    # -- workers --------------------------------------------------------------------------------------

    def _spawn(self) -> None:
        slot = self.balancer.allocate()
        # Signals stay blocked across the fork: a SIGTERM meant for the new worker must not land in the
        # master's handler (inherited, until the worker installs its own) and be lost there.  The worker
        # unblocks them once its engine's handlers are in place; pending ones are delivered then.
        signal.pthread_sigmask(signal.SIG_BLOCK, self.SIGNALS)
        pid = -1
        try:
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child; covered by the subprocess tests
                code = 1
                try:
                    code = self.run_worker(slot)
                except BaseException:
                    log.exception("worker crashed")
                finally:
                    os._exit(code)
        finally:
            if pid != 0:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, self.SIGNALS)
        self.workers[pid] = _Worker(pid, slot, time.monotonic())
        log.info("worker %d started (slot %d)", pid, slot)

    def run_worker(self, slot: int) -> int:  # pragma: no cover - child process
        """In a freshly forked worker (signals still blocked): serve the listeners until stopped."""
        self._relay.detach()
        if self._reactor is not None:
            self._reactor.selector.close()  # the master's: this process answers no scrapes
        install_handlers(self.SIGNALS, signal.SIG_DFL)  # still blocked: the engine installs its own, then unblocks
        engine = SelectEngine(
            self.listeners,
            self.limits,
            balancer=self.balancer.worker(slot),
            exclusive_accept=True,
            parent_pid=self._master_pid,
            observer=self.observer,
        )
        return engine.run(unblock_signals=self.SIGNALS)

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
            if self.observer is not None:
                self.observer.worker_gone(pid)
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

    def _tell_systemd(self) -> None:
        """READY=1 once every worker accepts (it beat after it started listening); WATCHDOG=1 when due."""
        notifier = self.notifier
        if notifier is None:
            return
        if not self._ready:
            active = self._active()
            if len(active) == self.target and all(self.balancer.last_beat(w.slot) > w.born for w in active):
                self._ready = True
                notifier.ready(f"serving with {self.target} worker(s)")
        interval = notifier.watchdog_interval
        now = time.monotonic()
        if interval is not None and now >= self._next_watchdog:
            notifier.watchdog()
            self._next_watchdog = now + interval

    def _wait(self, timeout: float) -> None:
        """Until a signal arrives or ``timeout`` passes; with --metrics, answering scrapes meanwhile."""
        if self._reactor is None:
            self._relay.wait(timeout)
        else:
            self._reactor.run_once(timeout)

    def _active(self) -> list[_Worker]:
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
            if now - self.balancer.last_beat(worker.slot) > self.worker_timeout:
                log.error("worker %d has not answered for %.0f s; killing it", worker.pid, self.worker_timeout)
                self._kill(worker.pid, signal.SIGKILL)

    # -- signals (see servers.signals: the loop dispatches them to these) --------------------------------

    def handle_chld(self) -> None:
        self._reap()

    def handle_term(self) -> None:
        self._stop(graceful=True)

    def handle_int(self) -> None:
        self._stop(graceful=False)

    def handle_quit(self) -> None:
        self._stop(graceful=False)

    def handle_hup(self) -> None:
        if self._stopping:
            return
        old = self._active()
        log.info("SIGHUP: replacing all %d worker(s)", len(old))
        self._failures = 0
        self._next_spawn = 0.0
        for _ in range(self.target):
            self._spawn()
        for worker in old:
            self._retire(worker)

    def handle_ttin(self) -> None:
        if not self._stopping:
            self.target += 1
            log.info("SIGTTIN: %d worker(s)", self.target)

    def handle_ttou(self) -> None:
        if not self._stopping:
            self.target = max(1, self.target - 1)
            log.info("SIGTTOU: %d worker(s)", self.target)

    def handle_usr1(self) -> None:
        """SIGUSR1, logrotate's signal: reopen the log files here and in every worker (each holds its own
        descriptors of --access-log and --log-file)."""
        count = self.observer.reopen() if self.observer is not None else 0
        log.info("SIGUSR1: %d log file(s) reopened; passing it on to the workers", count)
        for worker in self.workers.values():
            self._kill(worker.pid, signal.SIGUSR1)

    def _stop(self, graceful: bool) -> None:
        first = not self._stopping
        self._stopping = True
        if graceful:
            if first:
                log.info("SIGTERM: stopping gracefully (at most %g s)", self.limits.graceful_timeout)
                if self.notifier is not None:
                    self.notifier.stopping()
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

    def run(self, unblock_signals: Sequence[int] = ()) -> int:
        """Supervise until stopped; return the exit status.

        ``unblock_signals`` are unblocked once the master's handlers are installed (block :attr:`SIGNALS` while
        announcing the server, so that a signal sent as soon as it is announced is not lost)."""
        self._relay.install()
        if self.observer is not None and self.observer.metrics is not None:
            self._reactor = SelectorReactor()
            self._reactor.add_reader(self._relay.fd, lambda: None)  # (taken by the loop below)
            self.observer.attach(self._reactor, serve=True)
        if unblock_signals:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, unblock_signals)
        try:
            log.info("prefork master %d: %d worker(s)", os.getpid(), self.target)
            become_subreaper()
            self._maintain()
            while True:
                for signum in self._relay.take():
                    dispatch(self, signum)
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
                self._tell_systemd()
                timeout = 1.0 if self._ready or self.notifier is None else 0.02
                if self.notifier is not None and self.notifier.watchdog_interval is not None:
                    timeout = min(timeout, max(0.0, self._next_watchdog - time.monotonic()))
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
            self._relay.detach()
        log.info("prefork master %d: stopped", os.getpid())
        return 0


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        try:
            return "killed by " + signal.Signals(os.WTERMSIG(status)).name
        except ValueError:
            return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit status {os.WEXITSTATUS(status)}"
