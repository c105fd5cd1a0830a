"""The command service: run allow-listed programs for a client and stream their output back.

Wire format
===========

Request: one frame holding a UTF-8 command line.  It is split with ``shlex.split`` (POSIX rules: quotes and
backslashes group words; ``;``, ``|``, ``$(...)``, backquotes and globs are ordinary characters) and the words
are passed to ``execve`` directly -- no shell ever sees them.  argv[0] must be on the allow-list given at
start-up: a bare name (``ls``) must be one of the ``--allow`` names, a name containing ``/`` must be exactly
the absolute path an allowed name resolved to at start-up.

Reply: a stream of frames, each tagged by its first byte::

    b"O" + bytes                 a chunk of the command's stdout, as it arrives
    b"E" + bytes                 a chunk of its stderr, as it arrives
    b"X" + b"0"                  last frame: the exit status in ASCII decimal; negative -N means killed by signal N
    b"!" + code + b" " + text    last frame instead of "X": the command was refused or stopped

Error codes: ``not-allowed`` (argv[0] not on the allow-list), ``not-found`` (it could not be executed),
``timeout`` (killed after ``timeout`` seconds), ``output-cap`` (killed after ``output_cap`` bytes of stdout
and stderr together; the bytes up to the cap were sent), ``bad-request`` (not UTF-8, a NUL byte, unbalanced
quotes, an empty line, a frame over the size limit), ``busy`` (``max_commands`` already running in the server,
all prefork workers together, or the server is stopping) and -- from :mod:`servers.auth` -- ``auth``.

A connection runs one command at a time; request frames that arrive meanwhile queue up and run in order,
each answered by its own stream ending in ``X`` or ``!``.

Theory of operation
===================

The child runs in a new session (so in its own process group, whose ID is its PID), with stdin from
/dev/null, ``PATH=/usr/bin:/bin LANG=C.UTF-8`` and nothing else in its environment, a fixed working directory
(the file root, else ``/``) and no inherited descriptors but its three standard ones.  Its stdout and
stderr pipes are non-blocking and watched by the engine's loop; its exit is watched through a pidfd (or,
without ``os.pidfd_open``, polled every 50 ms with ``waitid(WNOWAIT)``), so nothing here ever blocks.

When the child exits it stays a zombie until reaped, and a zombie still holds its PID and so its process
group: the group is killed with SIGKILL *before* the child is reaped, which can never hit an unrelated
group that happened to get the same number.  That takes down grandchildren that kept the pipes open
(``sh -c 'sleep 100 &'``), so the pipes reach end-of-file and the exit frame can be sent.  The server is a
child subreaper (Linux), so those orphaned grandchildren become its children and are reaped too, by a
short-lived background thread, instead of lingering as zombies under an init that may not reap them.
Timeout, output cap and a lost connection kill the group the same way.

Output backpressure: when more than ``HIGH_WATER`` bytes wait to be sent to the client, the pipes stop being
watched until the engine reports the output drained; a child that writes more then blocks on its full
pipe (the timeout still runs).
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Callable, Deque, Dict, List, Optional, Sequence, Union

from .auth import AuthenticatedService
from .config import ServeConfig, register_factory
from .service import DEFAULT_MAX_REQUEST, Conn, Service, Timer

if TYPE_CHECKING:  # pragma: no cover
    from fastframe.exceptions import FrameError

__all__ = ["CommandService", "build_command_service", "is_loopback", "resolve_allow_list"]

log = logging.getLogger("fastframe.server")

CHILD_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
READ_SIZE = 64 * 1024  # one pipe's worth: one read per readiness event
HIGH_WATER = 1024 * 1024  # stop reading the pipes while this much output waits for the client
QUEUE_LIMIT = 32  # stop reading requests from a client with this many commands waiting
POLL_INTERVAL = 0.05  # exit polling where there is no pidfd
GROUP_REAP_TIMEOUT = 5.0

_PR_SET_CHILD_SUBREAPER = 36


def resolve_allow_list(names: Sequence[str], path: Optional[str] = None) -> Dict[str, str]:
    """``{name: absolute path}`` for every allowed program, resolved once (``shutil.which``)."""
    allowed: Dict[str, str] = {}
    for name in names:
        if not name or "\x00" in name:
            raise ValueError(f"--allow {name!r}: not a program name")
        found = shutil.which(name, path=path)
        if found is None:
            raise ValueError(f"--allow {name}: no such program on PATH")
        allowed[name] = os.path.abspath(found)
    return allowed


def is_loopback(host: str) -> bool:
    """True if ``host`` only ever means this machine (127.0.0.0/8, ::1, or a name resolving only to those)."""
    if not host:
        return False
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos)


def _error(code: str, message: str) -> bytes:
    return b"!" + code.encode() + b" " + message.encode("utf-8", "replace")


def _short(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _become_subreaper() -> None:
    """Orphaned grandchildren of our commands become our children, so we can reap them (Linux only)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - someone else's group now: not ours to wait for
        return False
    return True


def _reap_group(pgid: int) -> bool:
    """Reap every member of ``pgid`` that is our (adopted) child and has died; True once the group is gone."""
    while True:
        try:
            pid, _ = os.waitpid(-pgid, os.WNOHANG)
        except ChildProcessError:
            break
        except OSError:  # pragma: no cover
            break
        if pid == 0:
            break
    return not _group_exists(pgid)


class _Command:
    """One running child and everything the loop watches for it."""

    __slots__ = ("proc", "pgid", "pipes", "watching", "pidfd", "timer", "poll_timer", "sent", "failure", "reaped")

    def __init__(self, proc: "subprocess.Popen[bytes]") -> None:
        self.proc = proc
        self.pgid = proc.pid  # a new session: the child leads its own process group
        self.pipes: Dict[int, bytes] = {}  # open pipe fd -> frame tag (b"O" / b"E")
        self.watching = False
        self.pidfd = -1
        self.timer: Optional[Timer] = None
        self.poll_timer: Optional[Timer] = None
        self.sent = 0  # output bytes sent (stdout and stderr together)
        self.failure: Optional[bytes] = None  # the error frame that ends this command instead of "X"
        self.reaped = False


class _ConnState:
    __slots__ = ("queue", "admitted", "cmd", "paused", "closed")

    def __init__(self) -> None:
        self.queue: Deque[bytes] = deque()
        self.admitted = 0  # how many of the queued requests came before shutdown() (they still run)
        self.cmd: Optional[_Command] = None
        self.paused = False
        self.closed = False


class CommandService(Service):
    """Run allow-listed commands (see the module docstring for the protocol)."""

    name = "command"

    def __init__(
        self,
        allow: Sequence[str],
        cwd: str = "/",
        timeout: float = 10.0,
        output_cap: int = 1024 * 1024,
        max_commands: int = 8,
        max_request: int = DEFAULT_MAX_REQUEST,
        path: Optional[str] = None,
    ) -> None:
        if not allow:
            raise ValueError("no --allow list given, so no command could run")
        if not timeout > 0:
            raise ValueError("the command timeout must be positive")
        if output_cap < 0 or max_commands < 1:
            raise ValueError("bad output cap or command limit")
        self.allowed = resolve_allow_list(allow, path)
        self._by_name = {name: p for name, p in self.allowed.items() if "/" not in name}
        self._by_path = set(self.allowed.values())
        self.cwd = cwd
        self.timeout = timeout
        self.output_cap = output_cap
        self.max_commands = max_commands
        self.max_request = max_request
        self._stopping = False
        self._subreaper_pid = 0
        self._pidfd_ok = hasattr(os, "pidfd_open")

    def lookup(self, argv0: str) -> Optional[str]:
        """The executable to run for argv[0], or None if it is not allowed."""
        if "/" in argv0:
            return argv0 if argv0 in self._by_path else None
        return self._by_name.get(argv0)

    # -- the service interface ----------------------------------------------------------------------------

    def connection_made(self, conn: Conn) -> None:
        conn.state = _ConnState()

    def frames_received(self, conn: Conn, frames: List[bytes]) -> Optional[List[bytes]]:
        st: _ConnState = conn.state
        if st is None or st.closed:
            return None
        st.queue.extend(frames)
        if not self._stopping:
            st.admitted = len(st.queue)
        if len(st.queue) >= QUEUE_LIMIT and not st.paused:
            st.paused = True
            conn.pause_reading()
        if st.cmd is None:
            self._next(conn, st)
        else:
            conn.busy = True
        return None

    def frame_error(self, conn: Conn, exc: "FrameError") -> Optional[List[bytes]]:
        st: Optional[_ConnState] = conn.state
        if st is not None:
            self._abandon(conn, st)
        return [_error("bad-request", str(exc))]

    def output_drained(self, conn: Conn) -> None:
        st: Optional[_ConnState] = conn.state
        if st is None:
            return
        cmd = st.cmd
        if cmd is not None and not cmd.watching and cmd.pipes and cmd.failure is None:
            self._watch_pipes(conn, st, cmd)

    def connection_lost(self, conn: Conn) -> None:
        st: Optional[_ConnState] = conn.state
        if st is not None:
            self._abandon(conn, st)

    def shutdown(self) -> None:
        self._stopping = True

    def describe(self) -> str:
        names = ", ".join(sorted(self.allowed))
        return f"command (allowed: {names}; timeout {self.timeout:g} s, output cap {self.output_cap} bytes, cwd {self.cwd})"

    # -- running commands ---------------------------------------------------------------------------------

    def _next(self, conn: Conn, st: _ConnState) -> None:
        """Start queued commands until one is running (refusals are answered at once)."""
        while st.cmd is None and st.queue and not st.closed:
            raw = st.queue.popleft()
            if st.admitted:
                st.admitted -= 1
                refusal = self._start(conn, st, raw)
            else:
                refusal = _error("busy", "the server is shutting down")
            if refusal is not None:
                conn.send_frames([refusal])
        if st.paused and len(st.queue) < QUEUE_LIMIT // 2 and not st.closed:
            st.paused = False
            conn.resume_reading()
        conn.busy = st.cmd is not None or bool(st.queue)

    def _parse(self, raw: bytes) -> Union[List[str], bytes]:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return _error("bad-request", "the command line is not valid UTF-8")
        if "\x00" in text:
            return _error("bad-request", "NUL byte in the command line")
        try:
            argv = shlex.split(text)
        except ValueError as exc:
            return _error("bad-request", f"cannot split the command line: {exc}")
        if not argv:
            return _error("bad-request", "empty command line")
        return argv

    def _start(self, conn: Conn, st: _ConnState, raw: bytes) -> Optional[bytes]:
        argv = self._parse(raw)
        if isinstance(argv, bytes):
            return argv
        executable = self.lookup(argv[0])
        if executable is None:
            return _error("not-allowed", f"{_short(argv[0])} is not on the allow-list")
        if not conn.acquire("commands", self.max_commands):  # given back by _release (or below if none starts)
            return _error("busy", f"{self.max_commands} commands are already running; try again later")
        started = False
        if self._subreaper_pid != os.getpid():
            self._subreaper_pid = os.getpid()
            _become_subreaper()
        try:
            proc = subprocess.Popen(
                argv,
                executable=executable,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=self.cwd,
                env=CHILD_ENV,
                close_fds=True,
                start_new_session=True,
                bufsize=0,
            )
            started = True
        except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
            return _error("not-found", f"cannot execute {_short(argv[0])}: {exc.strerror}")
        except OSError as exc:
            if exc.errno == errno.ENOEXEC:
                return _error("not-found", f"cannot execute {_short(argv[0])}: {exc.strerror}")
            log.warning("%s: cannot start %s: %s", self.name, argv[0], exc)
            return _error("busy", f"cannot start a process now: {exc.strerror or exc}")
        except ValueError as exc:  # pragma: no cover - NUL bytes are refused above
            return _error("bad-request", str(exc))
        finally:
            if not started:
                conn.release("commands")
        log.debug("%s: %s runs %s as pid %d", self.name, conn.peer, argv, proc.pid)
        cmd = _Command(proc)
        st.cmd = cmd
        assert proc.stdout is not None and proc.stderr is not None
        for stream, tag in ((proc.stdout, b"O"), (proc.stderr, b"E")):
            fd = stream.fileno()
            os.set_blocking(fd, False)
            cmd.pipes[fd] = tag
        self._watch_pipes(conn, st, cmd)
        if self._pidfd_ok:
            try:
                cmd.pidfd = os.pidfd_open(proc.pid)
            except OSError:  # kernels before 5.3
                self._pidfd_ok = False
        if cmd.pidfd >= 0:
            conn.watch(cmd.pidfd, lambda: self._on_exit(conn, st, cmd))
        else:
            cmd.poll_timer = conn.call_later(POLL_INTERVAL, lambda: self._poll(conn, st, cmd))
        cmd.timer = conn.call_later(
            self.timeout, lambda: self._kill(conn, st, cmd, _error("timeout", f"killed after {self.timeout:g} s"))
        )
        return None

    def _watch_pipes(self, conn: Conn, st: _ConnState, cmd: _Command) -> None:
        for fd, tag in cmd.pipes.items():
            conn.watch(fd, self._pipe_reader(conn, st, cmd, fd, tag))
        cmd.watching = True

    def _unwatch_pipes(self, conn: Conn, cmd: _Command) -> None:
        for fd in cmd.pipes:
            conn.unwatch(fd)
        cmd.watching = False

    def _close_pipe(self, conn: Conn, cmd: _Command, fd: int) -> None:
        if cmd.pipes.pop(fd, None) is not None:
            conn.unwatch(fd)
            for stream in (cmd.proc.stdout, cmd.proc.stderr):
                if stream is not None and not stream.closed and stream.fileno() == fd:
                    stream.close()

    def _pipe_reader(self, conn: Conn, st: _ConnState, cmd: _Command, fd: int, tag: bytes) -> Callable[[], None]:
        def on_readable() -> None:
            if fd not in cmd.pipes:
                return
            try:
                data = os.read(fd, READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self._close_pipe(conn, cmd, fd)
                self._maybe_finish(conn, st, cmd)
                return
            room = self.output_cap - cmd.sent
            if len(data) > room:
                if room > 0:
                    cmd.sent += room
                    conn.send_frames([tag + data[:room]])
                self._kill(conn, st, cmd, _error("output-cap", f"output exceeded {self.output_cap} bytes; killed"))
                return
            cmd.sent += len(data)
            conn.send_frames([tag + data])
            if conn.output_pending > HIGH_WATER and cmd.watching:
                self._unwatch_pipes(conn, cmd)

        return on_readable

    def _killpg(self, cmd: _Command) -> None:
        # Only while the child is unreaped: until then its PID (and so the group ID) cannot be reused.
        if not cmd.reaped:
            try:
                os.killpg(cmd.pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def _kill(self, conn: Conn, st: _ConnState, cmd: _Command, failure: bytes) -> None:
        """Stop the command (timeout, output cap): kill its group, drop its pipes, report ``failure``."""
        if cmd.failure is not None or st.cmd is not cmd:
            return
        cmd.failure = failure
        log.info("%s: pid %d of %s: %s", self.name, cmd.proc.pid, conn.peer, failure[1:].decode(errors="replace"))
        self._killpg(cmd)
        for fd in list(cmd.pipes):
            self._close_pipe(conn, cmd, fd)
        self._maybe_finish(conn, st, cmd)

    def _poll(self, conn: Conn, st: _ConnState, cmd: _Command) -> None:
        cmd.poll_timer = None
        try:
            exited = os.waitid(os.P_PID, cmd.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except (AttributeError, ChildProcessError):  # pragma: no cover - no waitid: plain poll
            exited = True
        if exited:
            self._on_exit(conn, st, cmd)
        if not cmd.reaped:
            cmd.poll_timer = conn.call_later(POLL_INTERVAL, lambda: self._poll(conn, st, cmd))

    def _on_exit(self, conn: Conn, st: _ConnState, cmd: _Command) -> None:
        """The child has exited (it is a zombie): kill what is left of its group, then reap it."""
        if cmd.reaped:
            return
        self._killpg(cmd)
        if cmd.proc.poll() is None:
            return  # spurious wake-up
        cmd.reaped = True
        self._release(conn, cmd)
        if not _reap_group(cmd.pgid):
            _reap_group_in_background(cmd.pgid)
        self._maybe_finish(conn, st, cmd)

    def _release(self, conn: Conn, cmd: _Command) -> None:
        """The child no longer counts against ``max_commands``; drop its exit watch."""
        conn.release("commands")
        if cmd.pidfd >= 0:
            conn.unwatch(cmd.pidfd)
            os.close(cmd.pidfd)
            cmd.pidfd = -1
        if cmd.poll_timer is not None:
            cmd.poll_timer.cancel()
            cmd.poll_timer = None

    def _maybe_finish(self, conn: Conn, st: _ConnState, cmd: _Command) -> None:
        """Send the last frame once the child is reaped and its output read (or abandoned)."""
        if not cmd.reaped or (cmd.pipes and cmd.failure is None) or st.cmd is not cmd:
            return
        if cmd.timer is not None:
            cmd.timer.cancel()
        st.cmd = None
        if cmd.failure is not None:
            conn.send_frames([cmd.failure])
        else:
            conn.send_frames([b"X" + str(cmd.proc.returncode).encode()])
        self._next(conn, st)

    def _abandon(self, conn: Conn, st: _ConnState) -> None:
        """The connection is going away: kill its command, forget its queue."""
        st.closed = True
        st.queue.clear()
        st.admitted = 0
        cmd, st.cmd = st.cmd, None
        conn.busy = False
        if cmd is None:
            return
        for timer in (cmd.timer, cmd.poll_timer):
            if timer is not None:
                timer.cancel()
        self._killpg(cmd)
        for fd in list(cmd.pipes):
            self._close_pipe(conn, cmd, fd)
        if not cmd.reaped:
            cmd.reaped = True
            self._release(conn, cmd)
            if self._stopping:
                # The engine is about to exit: reap here (SIGKILL is quick), or the children outlive us as zombies.
                _reap_now(cmd.proc, cmd.pgid, 1.0)
            else:
                # SIGKILL is on its way; reaping may still take a moment, and the loop must not wait for it.
                _reap_in_background(cmd.proc, cmd.pgid)


def _reap_in_background(proc: "subprocess.Popen[bytes]", pgid: int) -> None:
    def run() -> None:
        try:
            proc.wait()
        except Exception:  # pragma: no cover
            pass
        _wait_group(pgid)

    threading.Thread(target=run, name=f"reap-{proc.pid}", daemon=True).start()


def _reap_now(proc: "subprocess.Popen[bytes]", pgid: int, timeout: float) -> None:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:  # pragma: no cover - stuck in the kernel: leave it to a thread
        _reap_in_background(proc, pgid)
        return
    _wait_group(pgid, timeout)


def _reap_group_in_background(pgid: int) -> None:
    threading.Thread(target=_wait_group, args=(pgid,), name=f"reap-group-{pgid}", daemon=True).start()


def _wait_group(pgid: int, timeout: float = GROUP_REAP_TIMEOUT) -> None:
    """Reap the killed members of a group as they die (they are our children: we are their subreaper)."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while not _reap_group(pgid) and time.monotonic() < deadline:
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def build_command_service(config: ServeConfig) -> Service:
    """The factory ``fastframe serve`` uses; ValueError says why the service cannot start."""
    if not config.allow:
        raise ValueError("no --allow list given (nothing would be allowed to run)")
    if config.secret is None and not is_loopback(config.host):
        raise ValueError(
            f"refusing to run commands for anyone who can reach {config.host}: give --secret-file, or listen on 127.0.0.1"
        )
    cwd = os.path.abspath(config.root) if config.root else "/"
    if not os.path.isdir(cwd):
        raise ValueError(f"working directory {cwd} is not a directory")
    service = CommandService(
        config.allow,
        cwd=cwd,
        timeout=config.command_timeout,
        output_cap=config.output_cap,
        max_commands=config.max_commands,
        max_request=config.max_request,
    )
    if config.secret:
        return AuthenticatedService(service, config.secret)
    return service


register_factory("command", build_command_service)
