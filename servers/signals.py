"""Signals for both engines: which ones a server handles, handlers that only record, and the dispatch.

A signal handler here does one thing: it appends the signal to a queue.  ``signal.set_wakeup_fd`` writes a
byte to a pipe as well, so whatever waits (the select engine's poller, the prefork master's ``select``) wakes
up; the waiting side then takes the queue and calls :func:`dispatch`, which looks for a method named after the
signal on its owner -- ``handle_term`` for SIGTERM, ``handle_usr1`` for SIGUSR1 (gunicorn's arbiter does the
same) -- and logs any other signal as ignored.  So every decision is taken in the loop, in order, and no
catchable signal ends a server without a log line: those whose default action would end (or stop) the
process and that mean nothing to a server are in :data:`IGNORED_SIGNALS`, handled (not set to ``SIG_IGN``,
which the commands a server runs would inherit) and logged.  The fault signals (SIGSEGV, SIGBUS, SIGFPE,
SIGILL, SIGABRT) still end the process, after :mod:`faulthandler` has printed the Python stack on stderr.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import select
import signal
from collections import deque
from collections.abc import Sequence
from typing import Any

__all__ = ["IGNORED_SIGNALS", "SignalRelay", "dispatch", "enable_faulthandler", "install_handlers", "signal_name"]

log = logging.getLogger("fastframe.server")


def _ignored_signals() -> tuple[int, ...]:
    names = (
        "SIGUSR2", "SIGWINCH", "SIGALRM", "SIGVTALRM", "SIGPROF", "SIGXCPU", "SIGXFSZ", "SIGPWR", "SIGSYS",
        "SIGSTKFLT", "SIGIO", "SIGTRAP", "SIGTTIN", "SIGTTOU",
    )  # fmt: skip
    found = {getattr(signal, name) for name in names if hasattr(signal, name)}
    if hasattr(signal, "SIGRTMIN"):
        found.update(range(signal.SIGRTMIN, signal.SIGRTMAX + 1))
    return tuple(sorted(found))


#: Signals whose default action ends (or, SIGTTIN/SIGTTOU, stops) a process and that mean nothing to a server
#: (and SIGWINCH, harmless by default, which gunicorn users may send): they are logged and ignored.  Handled,
#: not set to SIG_IGN, so that the commands a server runs do not inherit them ignored.
IGNORED_SIGNALS = _ignored_signals()


def signal_name(signum: int) -> str:
    """``SIGUSR1``; ``SIGRTMIN+3`` for the unnamed real-time ones."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        rtmin = getattr(signal, "SIGRTMIN", 0)
        return f"SIGRTMIN+{signum - rtmin}" if rtmin and signum > rtmin else f"signal {signum}"


def install_handlers(signals: Sequence[int], handler: Any) -> dict[int, Any]:
    """Set ``handler`` for each signal that can be caught here; return the handlers replaced.

    A signal the runtime keeps for itself (valgrind takes a real-time one: setting it fails with EINVAL) is
    skipped: it cannot reach the process as a plain signal anyway."""
    previous: dict[int, Any] = {}
    for signum in signals:
        try:
            previous[signum] = signal.signal(signum, handler)
        except (OSError, ValueError) as exc:
            log.debug("cannot handle %s here: %s", signal_name(signum), exc)
    return previous


def enable_faulthandler() -> bool:
    """Print the Python stack on stderr when a fault signal ends the process; True if this call enabled it."""
    if faulthandler.is_enabled():
        return False
    try:
        faulthandler.enable()
    except (RuntimeError, ValueError, OSError, AttributeError):  # no usable stderr (closed, or replaced)
        return False
    return True


def dispatch(owner: object, signum: int) -> None:
    """Call ``owner.handle_<name>()`` (``handle_term`` for SIGTERM); log any other signal as ignored."""
    name = signal_name(signum)
    handler = getattr(owner, "handle_" + name[3:].lower(), None) if name.startswith("SIG") else None
    if handler is None:
        log.warning("%s ignored", name)
    else:
        handler()


class SignalRelay:
    """Handlers that record the signals they get, and the pipe that wakes whoever waits for them.

    :meth:`install` sets the handlers and ``set_wakeup_fd``, :meth:`restore` puts back what was there;
    :attr:`fd` is the pipe's read end, to poll; :meth:`take` empties it and returns the signals recorded."""

    def __init__(self, signals: Sequence[int]) -> None:
        self.signals = tuple(signals)
        self.fd = -1
        self._write_fd = -1
        self._queue: deque[int] = deque()
        self._previous: dict[int, Any] = {}
        self._wakeup: Any = -1
        self._faulthandler = False  # enabled by this relay (and so disabled by restore())

    def install(self) -> None:
        self.fd, self._write_fd = os.pipe()
        for fd in (self.fd, self._write_fd):
            os.set_blocking(fd, False)
        self._previous = install_handlers(self.signals, self._record)
        self._wakeup = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        self._faulthandler = enable_faulthandler()

    def _record(self, signum: int, frame: Any) -> None:
        self._queue.append(signum)

    def take(self) -> list[int]:
        """Empty the pipe; the signals recorded since the last call, in order."""
        try:
            while os.read(self.fd, 4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        queue = self._queue
        return [queue.popleft() for _ in range(len(queue))]

    def wait(self, timeout: float) -> None:
        """Block until a signal arrives or ``timeout`` seconds pass (for a process with no poller of its own)."""
        try:
            select.select([self.fd], [], [], max(0.0, timeout))
        except InterruptedError:  # pragma: no cover
            pass

    def detach(self) -> None:
        """Stop waking the pipe and close it; the handlers stay (a forked child replaces them, a prefork master
        on its way out keeps recording into nothing rather than die of a late signal)."""
        signal.set_wakeup_fd(-1)
        self._close_pipe()

    def restore(self) -> None:
        signal.set_wakeup_fd(self._wakeup)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
        if self._faulthandler:
            faulthandler.disable()
            self._faulthandler = False
        self._close_pipe()

    def _close_pipe(self) -> None:
        for fd in (self.fd, self._write_fd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.fd = self._write_fd = -1
