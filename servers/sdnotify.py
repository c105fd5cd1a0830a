"""systemd ``Type=notify``: telling the service manager the server is ready, stopping, alive, and what it does.

Its one job is the notification protocol; *when* to say ready (every listener up and, under prefork, every
worker accepting) is the engine's decision.

The protocol (``sd_notify(3)``)
===============================

systemd puts the path of a Unix datagram socket in ``NOTIFY_SOCKET`` -- a file path, or ``@name`` for Linux's
abstract namespace -- and the service sends datagrams of newline-separated ``KEY=VALUE`` assignments to it:
``READY=1`` once it serves, ``STOPPING=1`` when a graceful stop begins, ``STATUS=...`` as a one-line status for
``systemctl status``, ``RELOADING=1``, and ``WATCHDOG=1`` as a keep-alive when the unit sets ``WatchdogSec=``:
then ``WATCHDOG_USEC`` holds the interval in microseconds and ``WATCHDOG_PID`` (if set) the PID meant to send
it.  sd_watchdog_enabled(3) advises pinging at half the interval, which :attr:`Notifier.watchdog_interval`
returns.  systemd accepts only the main process's messages by default (``NotifyAccess=main``): the master
notifies, the workers never do -- a notifier inherited across ``fork()`` stays silent in the child.

Theory of operation
===================

:meth:`Notifier.from_environ` reads the variables once and, by default, removes them from ``os.environ``
(sd_notify's ``unset_environment``), so that nothing forked or executed afterwards -- prefork workers, the
command service's children -- can notify on the server's behalf or find a socket it has no business with;
:func:`child_environ` makes such a clean copy of any environment.  Without ``NOTIFY_SOCKET`` every call is a
no-op, so the engine calls it unconditionally.

Sending never blocks the engine's loop and never raises: the socket is non-blocking, and a datagram the manager
cannot take (its queue full, the socket gone) is dropped with a warning -- readiness is advisory, the server
goes on serving.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping, MutableMapping

__all__ = ["NOTIFY_VARIABLES", "Notifier", "child_environ"]

log = logging.getLogger("fastframe.server")

#: The variables a service manager sets for the process it notifies about; children must not inherit them.
NOTIFY_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def child_environ(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``environ`` (default ``os.environ``) without the notification variables."""
    source = os.environ if environ is None else environ
    return {k: v for k, v in source.items() if k not in NOTIFY_VARIABLES}


class Notifier:
    """Sends ``sd_notify`` messages to ``address`` (a path or ``@abstract``; None: do nothing)."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec
        self.owner_pid = os.getpid()
        self._sock: socket.socket | None = None
        self._target: str | bytes | None = None
        if address is None:
            return
        if address.startswith("@"):
            self._target = b"\0" + address[1:].encode("utf-8", "surrogateescape")
        elif address.startswith("/"):
            self._target = address
        else:
            log.warning("NOTIFY_SOCKET=%r: not a Unix socket path or @name; systemd notifications are off", address)
            self.address = None
            return
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None, unset: bool = True) -> Notifier:
        """Read ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` (default: ``os.environ``), and remove
        them unless ``unset=False``.  The watchdog is on only if ``WATCHDOG_USEC`` is a positive integer and
        ``WATCHDOG_PID``, when given, is this process."""
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        usec_text, pid_text = env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID")
        if unset:
            for name in NOTIFY_VARIABLES:
                env.pop(name, None)
        usec: int | None = None
        if usec_text:
            try:
                usec = int(usec_text)
                if pid_text and int(pid_text) != os.getpid():
                    usec = None  # the watchdog is another process's duty
            except ValueError:
                log.warning("ignoring malformed WATCHDOG_USEC=%r / WATCHDOG_PID=%r", usec_text, pid_text)
                usec = None
            if usec is not None and usec <= 0:
                usec = None
        return cls(address, usec)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between two ``WATCHDOG=1`` pings (half the unit's ``WatchdogSec=``), or None when not asked."""
        return None if self.watchdog_usec is None else self.watchdog_usec / 2_000_000

    def notify(self, *assignments: str, **fields: object) -> bool:
        """Send one datagram: ``notify("READY=1")`` or ``notify(READY=1, STATUS="serving")``.  True if sent.

        Values are made one line (a newline would start a new assignment).  Only the process that created the
        notifier sends: a forked worker that inherited it gets False, as systemd would reject it anyway."""
        if self._sock is None or self._target is None or os.getpid() != self.owner_pid:
            return False
        parts = list(assignments) + [f"{k}={_one_line(v)}" for k, v in fields.items()]
        message = "\n".join(parts).encode("utf-8", "surrogateescape")
        try:
            self._sock.sendto(message, self._target)
        except OSError as exc:
            log.warning("systemd notification %r not delivered to %s: %s", parts[0] if parts else "", self.address, exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify(**({"READY": 1} if status is None else {"READY": 1, "STATUS": status}))

    def stopping(self, status: str | None = None) -> bool:
        return self.notify(**({"STOPPING": 1} if status is None else {"STOPPING": 1, "STATUS": status}))

    def reloading(self) -> bool:
        return self.notify(RELOADING=1)

    def status(self, text: str) -> bool:
        return self.notify(STATUS=text)

    def watchdog(self) -> bool:
        """``WATCHDOG=1``, if the unit asked for a watchdog (see :attr:`watchdog_interval`)."""
        if self.watchdog_usec is None:
            return False
        return self.notify(WATCHDOG=1)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _one_line(value: object) -> str:
    return " ".join(str(value).splitlines())
