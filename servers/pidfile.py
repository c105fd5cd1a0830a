"""The pidfile: written once at start-up for whichever engine runs, refused while another server holds it, and
removed on the way out only if it is still ours.

The rules (gunicorn's, plus the last one):

* a pidfile naming a live process -- ``kill(pid, 0)`` succeeds, or fails with EPERM (alive, someone else's) --
  is refused: :class:`PidfileBusy`, one line, and the server does not start;
* a pidfile naming no live process (stale, left by a crash), or holding no PID at all, is replaced;
* the file is written whole or not at all (a temporary file renamed over it), so a reader never sees half;
* on exit it is removed only if it still holds our PID: a second server that replaced it (after we were
  thought dead) keeps its own.
"""

from __future__ import annotations

import errno
import logging
import os

__all__ = ["Pidfile", "PidfileBusy"]

log = logging.getLogger("fastframe.server")


class PidfileBusy(OSError):
    """The pidfile names a process that is alive; ``pid`` is that process."""

    def __init__(self, path: str, pid: int) -> None:
        super().__init__(errno.EEXIST, f"pidfile names process {pid}, which is running", path)
        self.pid = pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # EPERM: it exists, and belongs to someone else
        return True
    return True


class Pidfile:
    """``create()`` at start-up, ``remove()`` on the way out (see the module docstring)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.pid: int | None = None  # ours, once written

    def holder(self) -> int | None:
        """The PID the file names, if it names a live process other than this one."""
        try:
            with open(self.path) as f:
                text = f.read(64)
        except FileNotFoundError:
            return None
        try:
            pid = int(text.strip())
        except ValueError:
            return None
        if pid <= 0 or pid == os.getpid():  # kill(0 or less, 0) would ask about process groups
            return None
        return pid if _alive(pid) else None

    def create(self) -> None:
        """Write our PID; raise :class:`PidfileBusy` if a live process holds the file, OSError if it cannot be
        written."""
        holder = self.holder()
        if holder is not None:
            raise PidfileBusy(self.path, holder)
        pid = os.getpid()
        tmp = f"{self.path}.{pid}.tmp"
        try:
            with open(tmp, "w") as f:
                f.write(f"{pid}\n")
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        self.pid = pid

    def remove(self) -> None:
        """Remove the file if it still holds the PID we wrote (nothing happens if we wrote none)."""
        if self.pid is None:
            return
        try:
            with open(self.path) as f:
                if f.read(64).strip() != str(self.pid):
                    return
            os.unlink(self.path)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                log.warning("could not remove pidfile %s: %s", self.path, exc)
