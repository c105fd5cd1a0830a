"""The command service: run allow-listed programs for a client and stream their output back.

The protocol -- the command line and how it is split, the ``O``/``E``/``X`` reply frames, the error codes,
one command at a time per connection, the client's end of stream as a cancel -- is specified in
:mod:`fastframe.wire.command`, which both ends import.  This module is the server's side: running the
commands, and containing them.

Theory of operation
===================

The child runs in a new session (so in its own process group, whose ID is its PID), with stdin from
/dev/null, ``PATH=/usr/bin:/bin LANG=C.UTF-8`` and nothing else in its environment, a fixed working directory
(the file root, else ``/``) and no inherited descriptors but its three standard ones.  Its stdout and
stderr pipes are non-blocking and watched by the engine's loop; its exit is watched through a pidfd (or,
without ``os.pidfd_open``, polled every 50 ms with ``waitid(WNOWAIT)``), so nothing here ever blocks.

Containment.  A process group does not hold a command: any descendant can ``setsid`` into a session of its
own and outlive a group kill.  Parenthood cannot be shed, so a command is ended as a tree: :func:`kill_tree`
walks ``/proc/PID/task/*/children`` from the command down and kills everything it finds -- that is how a
timeout, the output cap, a cancel or a lost connection end one.  A process whose parent dies leaves that
tree; the server process is a child subreaper (``PR_SET_CHILD_SUBREAPER``), so it is adopted by the server
rather than by init, and the server never starts a child other than a command, so every other child it has
came out of a command's tree.  Such a child is told apart by its session: one still in the session of a
running command belongs to it and is left alone; any other -- from a command that has ended, or one that
left its command's session with ``setsid`` and then lost its parent -- is debris, and the service's
:class:`~servers._process.Reaper` kills its tree and reaps it, when a command ends and on every ``SIGCHLD``.
So when a command ends, nothing of it is left, not even a zombie; and a process that both leaves its
command's session and loses its parent is ended as soon as a sweep sees it, even while its command still
runs.  The children themselves are still started with ``vfork``: no Python code runs in them before
``execve``.  When a prefork worker dies, its commands and what they adopted
go to the nearest living subreaper above (the prefork master, if it is one), which must end those trees:
every one of its children that is not a worker, with :func:`kill_tree`.  (A cgroup would hold a tree as
well, but is writable only where one was delegated to the server; /proc and prctl work for any Linux user.)

Output backpressure: when more than ``HIGH_WATER`` bytes wait to be sent to the client, the pipes stop being
watched until the engine reports the output drained; a child that writes more then blocks on its full
pipe (the timeout still runs).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import subprocess
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Callable

from fastframe.wire.command import MAX_COMMAND_LINE, STDERR, STDOUT, exit_frame, parse_command
from fastframe.wire.errors import error_frame, short

from ._process import Reaper, kill_tree
from .service import Conn, Service, Timer

if TYPE_CHECKING:  # pragma: no cover
    from fastframe.exceptions import FrameError

__all__ = ["CommandService", "resolve_allow_list"]

log = logging.getLogger("fastframe.server")

CHILD_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
READ_SIZE = 64 * 1024  # one pipe's worth: one read per readiness event
HIGH_WATER = 1024 * 1024  # stop reading the pipes while this much output waits for the client
QUEUE_LIMIT = 32  # stop reading requests from a client with this many commands waiting
POLL_INTERVAL = 0.05  # exit polling where there is no pidfd
STOP_REAP_TIMEOUT = 1.0  # how long a stopping server waits for the trees it killed

# -- processes --------------------------------------------------------------------------------------------


def resolve_allow_list(names: Sequence[str], path: str | None = None) -> dict[str, str]:
    """``{name: absolute path}`` for every allowed program, resolved once (``shutil.which``)."""
    allowed: dict[str, str] = {}
    for name in names:
        if not name or "\x00" in name:
            raise ValueError(f"--allow {name!r}: not a program name")
        found = shutil.which(name, path=path)
        if found is None:
            raise ValueError(f"--allow {name}: no such program on PATH")
        allowed[name] = os.path.abspath(found)
    return allowed


class _Command:
    """One running child and everything the loop watches for it."""

    __slots__ = ("proc", "pid", "pipes", "watching", "pidfd", "timer", "poll_timer", "sent", "failure", "reaped",
                 "abandoned")  # fmt: skip

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.pid = proc.pid  # a new session: the child leads its own process group too
        self.pipes: dict[int, bytes] = {}  # open pipe fd -> frame tag (STDOUT / STDERR)
        self.watching = False
        self.pidfd = -1
        self.timer: Timer | None = None
        self.poll_timer: Timer | None = None
        self.sent = 0  # output bytes sent (stdout and stderr together)
        self.failure: bytes | None = None  # the error frame that ends this command instead of "X"
        self.reaped = False
        self.abandoned = False  # its connection is gone: killed, and reaped by a sweep


class _ConnState:
    __slots__ = ("queue", "admitted", "cmd", "paused", "closed")

    def __init__(self) -> None:
        self.queue: deque[bytes] = deque()
        self.admitted = 0  # how many of the queued requests came before shutdown() (they still run)
        self.cmd: _Command | None = None
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
        max_request: int = MAX_COMMAND_LINE,
        path: str | None = None,
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
        # A longer frame could never be a command line: refuse its header before buffering it.
        self.max_request = min(max_request, MAX_COMMAND_LINE)
        self._stopping = False
        self._pidfd_ok = hasattr(os, "pidfd_open")
        self._reaper = Reaper(self.name)  # every command child of this process not yet reaped, and the debris

    def lookup(self, argv0: str) -> str | None:
        """The executable to run for argv[0], or None if it is not allowed."""
        if "/" in argv0:
            return argv0 if argv0 in self._by_path else None
        return self._by_name.get(argv0)

    # -- the service interface ----------------------------------------------------------------------------

    def connection_made(self, conn: Conn) -> None:
        conn.state = _ConnState()

    def frames_received(self, conn: Conn, frames: list[bytes]) -> list[bytes] | None:
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

    def eof_received(self, conn: Conn) -> None:
        st: _ConnState | None = conn.state
        if st is not None and not st.closed and (st.cmd is not None or st.queue):
            log.info("%s: %s closed its side: cancelling its command", self.name, conn.peer)
            self._abandon(conn, st)

    def frame_error(self, conn: Conn, exc: FrameError) -> list[bytes] | None:
        st: _ConnState | None = conn.state
        if st is not None:
            self._abandon(conn, st)
        return [error_frame("bad-request", str(exc))]

    def output_drained(self, conn: Conn) -> None:
        st: _ConnState | None = conn.state
        if st is None:
            return
        cmd = st.cmd
        if cmd is not None and not cmd.watching and cmd.pipes and cmd.failure is None:
            self._watch_pipes(conn, st, cmd)

    def connection_lost(self, conn: Conn) -> None:
        st: _ConnState | None = conn.state
        if st is not None:
            self._abandon(conn, st)

    def shutdown(self) -> None:
        self._stopping = True

    def describe(self) -> str:
        names = ", ".join(sorted(self.allowed))
        limits = f"timeout {self.timeout:g} s, output cap {self.output_cap} bytes"
        return f"command (allowed: {names}; {limits}, cwd {self.cwd})"

    # -- running commands ---------------------------------------------------------------------------------

    def _next(self, conn: Conn, st: _ConnState) -> None:
        """Start queued commands until one is running (refusals are answered at once)."""
        while st.cmd is None and st.queue and not st.closed:
            raw = st.queue.popleft()
            if st.admitted:
                st.admitted -= 1
                refusal = self._start(conn, st, raw)
            else:
                refusal = error_frame("busy", "the server is shutting down")
            if refusal is not None:
                self.tally("command:" + refusal[1:].split(b" ", 1)[0].decode("ascii", "replace"))
                conn.send_frames([refusal])
        if st.paused and len(st.queue) < QUEUE_LIMIT // 2 and not st.closed:
            st.paused = False
            conn.resume_reading()
        conn.busy = st.cmd is not None or bool(st.queue)

    def _start(self, conn: Conn, st: _ConnState, raw: bytes) -> bytes | None:
        parsed = parse_command(raw, self.lookup)
        if isinstance(parsed, bytes):
            return parsed
        executable, argv = parsed
        if not conn.acquire("commands", self.max_commands):  # given back by _release (or below if none starts)
            return error_frame("busy", f"{self.max_commands} commands are already running; try again later")
        started = False
        self._reaper.setup()
        try:
            with self._reaper.spawning():  # until the child is tracked, a sweep would take it for debris
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
                cmd = _Command(proc)
                self._reaper.track(cmd)
            started = True
        except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
            return error_frame("not-found", f"cannot execute {short(argv[0])}: {exc.strerror}")
        except OSError as exc:
            if exc.errno == errno.ENOEXEC:
                return error_frame("not-found", f"cannot execute {short(argv[0])}: {exc.strerror}")
            if exc.errno == errno.E2BIG:  # can never succeed: not worth a retry
                return error_frame("bad-request", f"the kernel refuses arguments this long: {exc.strerror}")
            log.warning("%s: cannot start %s: %s", self.name, argv[0], exc)
            return error_frame("busy", f"cannot start a process now: {exc.strerror or exc}")
        except (ValueError, subprocess.SubprocessError) as exc:  # pragma: no cover - NUL bytes are refused above
            log.warning("%s: cannot start %s: %s", self.name, argv[0], exc)
            return error_frame("busy", f"cannot start a process now: {exc}")
        finally:
            if not started:
                conn.release("commands")
        log.debug("%s: %s runs %s as pid %d", self.name, conn.peer, argv, proc.pid)
        st.cmd = cmd
        assert proc.stdout is not None and proc.stderr is not None
        for stream, tag in ((proc.stdout, STDOUT), (proc.stderr, STDERR)):
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
            self.timeout, lambda: self._kill(conn, st, cmd, error_frame("timeout", f"killed after {self.timeout:g} s"))
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
                self._kill(conn, st, cmd, error_frame("output-cap", f"output exceeded {self.output_cap} bytes; killed"))
                return
            cmd.sent += len(data)
            conn.send_frames([tag + data])
            if conn.output_pending > HIGH_WATER and cmd.watching:
                self._unwatch_pipes(conn, cmd)

        return on_readable

    def _end_tree(self, cmd: _Command) -> None:
        """SIGKILL the command's whole tree (and its process group, for good measure)."""
        # Only while the child is unreaped: until then its PID (and so the group ID) cannot be reused.
        if not cmd.reaped:
            kill_tree(cmd.pid)
            try:
                os.killpg(cmd.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def _kill(self, conn: Conn, st: _ConnState, cmd: _Command, failure: bytes) -> None:
        """Stop the command (timeout, output cap): kill its tree, drop its pipes, report ``failure``."""
        if cmd.failure is not None or st.cmd is not cmd:
            return
        cmd.failure = failure
        log.info("%s: pid %d of %s: %s", self.name, cmd.pid, conn.peer, failure[1:].decode(errors="replace"))
        self._end_tree(cmd)
        self._reaper.sweep()
        for fd in list(cmd.pipes):
            self._close_pipe(conn, cmd, fd)
        self._maybe_finish(conn, st, cmd)

    def _poll(self, conn: Conn, st: _ConnState, cmd: _Command) -> None:
        cmd.poll_timer = None
        try:
            exited = os.waitid(os.P_PID, cmd.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except (AttributeError, ChildProcessError):  # pragma: no cover - no waitid: plain poll
            exited = True
        if exited:
            self._on_exit(conn, st, cmd)
        if not cmd.reaped:
            cmd.poll_timer = conn.call_later(POLL_INTERVAL, lambda: self._poll(conn, st, cmd))

    def _on_exit(self, conn: Conn, st: _ConnState, cmd: _Command) -> None:
        """The child has exited (it is a zombie): end what is left of its tree, then reap it."""
        if cmd.reaped:
            return
        try:
            os.killpg(cmd.pid, signal.SIGKILL)  # still ours: the zombie holds the group ID
        except (ProcessLookupError, PermissionError):
            pass
        if cmd.proc.poll() is None:
            return  # spurious wake-up
        cmd.reaped = True
        self._reaper.forget(cmd)
        self._release(conn, cmd)
        self._reaper.sweep()  # its orphans are ours now: kill and reap them, so the pipes reach end-of-file
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
            self.tally("command:" + cmd.failure[1:].split(b" ", 1)[0].decode("ascii", "replace"))
            conn.send_frames([cmd.failure])
        else:
            self.tally("command:ok" if cmd.proc.returncode == 0 else "command:failed")
            conn.send_frames([exit_frame(cmd.proc.returncode)])
        self._next(conn, st)

    def _abandon(self, conn: Conn, st: _ConnState) -> None:
        """The connection is going away (or its client ended the stream): kill its command, forget its queue."""
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
        self._end_tree(cmd)
        for fd in list(cmd.pipes):
            self._close_pipe(conn, cmd, fd)
        if cmd.reaped:
            return
        cmd.abandoned = True
        self._release(conn, cmd)
        if self._stopping:
            # The engine is about to exit: reap here (SIGKILL is quick), or the trees outlive us as zombies.
            self._reaper.reap_now(STOP_REAP_TIMEOUT)
        else:
            self._reaper.sweep()  # reaps it now if it is already gone; else the SIGCHLD of its death will
