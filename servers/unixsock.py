"""Unix domain listening sockets: bound with a mode, replacing only a stale file, removing only their own.

Its one job is the life of a listening socket's *file*; what is served on the socket is the engine's business.

Theory of operation
===================

A Unix stream socket lives at a path, and the path outlives the process: a server killed by SIGKILL leaves a
socket file that nothing listens on, and the next ``bind`` fails with EADDRINUSE.  Deleting the file blindly
is worse -- a second server started by mistake would steal the path from a live one, whose clients would then
connect to the intruder.  So, before binding:

* no file: bind;
* a socket file: try to ``connect`` to it.  Refused (ECONNREFUSED) means nobody listens: the file is stale and
  is removed.  Accepted, or EAGAIN (a listener whose backlog is full), means it is in use: refuse to start.
  Any other answer (a socket of another type, no permission) is also a refusal: we cannot prove it stale;
* anything else at the path (a regular file, a directory, a symlink): refuse, never delete it.

The mode is right from the first instant: the socket is bound under a umask that leaves exactly ``mode``
(``--unix-mode``, octal, default 0660), so no client can connect through looser permissions in a window
between ``bind`` and ``chmod``.  (The umask is process-wide; listeners are bound at start-up, before the
engine has any other thread or child.)

After binding, the listener remembers the file's (device, inode) and the PID that bound it.  On exit it
removes the path only if the path still names that same inode and it is that same process -- not a prefork
worker that inherited the socket, and not when an operator or a second server has put another file there
meanwhile.  Abstract names (``unix:@name``) have no file: nothing to check, chmod or remove.

One race is left, as in every server that does this: two servers started at the same instant on the same path
can both find it stale; then the second removes the first one's new file and binds its own, and the first
listens on a socket no client can reach (and, on exit, leaves the second's file alone: not its inode).
Service managers do not start the same unit twice at once.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat

from fastframe._address import UnixAddress, parse_address

__all__ = ["DEFAULT_UNIX_MODE", "UnixListener", "bind_unix", "parse_mode", "probe_unix"]

log = logging.getLogger("fastframe.server")

DEFAULT_UNIX_MODE = 0o660
BACKLOG = 1024


def parse_mode(text: str) -> int:
    """``--unix-mode``: an octal permission mode, ``660``, ``0660`` or ``0o660``; ``ValueError`` if not."""
    digits = text.strip()
    if digits[:2] in ("0o", "0O"):
        digits = digits[2:]
    if not digits or len(digits) > 4 or any(c not in "01234567" for c in digits):
        raise ValueError(f"bad mode {text!r}: expected octal permissions such as 0660")
    mode = int(digits, 8)
    if mode > 0o777:
        raise ValueError(f"bad mode {text!r}: only permission bits (at most 0777) apply to a socket")
    return mode


def probe_unix(path: str) -> str:
    """What answers at ``path``: ``"listening"``, ``"stale"`` (a socket nobody listens on), ``"absent"``,
    ``"not-a-socket"``, or ``"unknown: REASON"`` (a socket we cannot prove stale)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "absent"
    if not stat.S_ISSOCK(st.st_mode):
        return "not-a-socket"
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.setblocking(False)
        code = probe.connect_ex(path)
    finally:
        probe.close()
    if code in (0, errno.EAGAIN, errno.EINPROGRESS):
        return "listening"
    if code == errno.ECONNREFUSED:
        return "stale"
    if code == errno.ENOENT:
        return "absent"
    return "unknown: " + os.strerror(code)


class UnixListener:
    """A bound, listening, non-blocking Unix stream socket and the ownership of its file."""

    def __init__(self, sock: socket.socket, address: UnixAddress, identity: tuple[int, int] | None) -> None:
        self.sock = sock
        self.address = address
        self.owner_pid = os.getpid()
        self._identity = identity  # (st_dev, st_ino) of the file we created; None for an abstract name

    @property
    def path(self) -> str:
        return self.address.path

    def owns_file(self) -> bool:
        """True while the path still names the very file this listener created, and this is the process that
        created it."""
        if self._identity is None or os.getpid() != self.owner_pid:
            return False
        try:
            st = os.lstat(self.address.path)
        except OSError:
            return False
        return stat.S_ISSOCK(st.st_mode) and (st.st_dev, st.st_ino) == self._identity

    def unlink(self) -> bool:
        """Remove the socket file if it is still ours (see :meth:`owns_file`); True if it was removed."""
        if not self.owns_file():
            return False
        try:
            os.unlink(self.address.path)
        except FileNotFoundError:
            return False
        self._identity = None
        return True

    def close(self) -> None:
        """Close the socket and remove its file if it is still ours.  Safe to call twice."""
        self.unlink()
        self.sock.close()

    def __repr__(self) -> str:
        return f"<UnixListener {self.address} fd={self.sock.fileno()}>"


def bind_unix(address: UnixAddress | str, mode: int = DEFAULT_UNIX_MODE, backlog: int = BACKLOG) -> UnixListener:
    """Bind and listen on a Unix stream socket (``address`` a :class:`UnixAddress` or ``"unix:/path"`` text).

    Raises ``OSError`` with a one-line message: EADDRINUSE when something listens there (or might), EEXIST
    when the path is not a socket.  See the module docstring for what is replaced and what is refused.
    """
    if isinstance(address, str):
        if not address.strip().startswith("unix:"):
            raise ValueError(f"not a Unix socket address: {address!r}")
        parsed = parse_address(address)
        assert isinstance(parsed, UnixAddress)
        address = parsed
    if not 0 <= mode <= 0o777:
        raise ValueError(f"bad mode {mode:#o}")
    path = address.path
    if not address.abstract:
        state = probe_unix(path)
        if state == "listening":
            raise OSError(errno.EADDRINUSE, f"{address}: another process is listening on it")
        if state == "not-a-socket":
            raise OSError(errno.EEXIST, f"{address}: the path exists and is not a socket; not replacing it")
        if state.startswith("unknown"):
            raise OSError(errno.EADDRINUSE, f"{address}: cannot tell whether it is in use ({state[9:]})")
        if state == "stale":
            log.info("%s: removing a stale socket file (nothing listens on it)", address)
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    identity: tuple[int, int] | None = None
    try:
        if address.abstract:
            sock.bind(address.sockaddr())
        else:
            old_umask = os.umask(0o777 & ~mode)
            try:
                sock.bind(path)
            finally:
                os.umask(old_umask)
            st = os.lstat(path)
            identity = (st.st_dev, st.st_ino)
            if stat.S_IMODE(st.st_mode) != mode:  # a filesystem that ignores the umask for sockets
                os.chmod(path, mode)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException as exc:
        UnixListener(sock, address, identity).close()  # removes the file if bind created it
        if isinstance(exc, FileNotFoundError) and identity is None:
            where = os.path.dirname(path) or "."
            raise OSError(errno.ENOENT, f"{address}: the directory {where} does not exist") from None
        raise
    return UnixListener(sock, address, identity)
