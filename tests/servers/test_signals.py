"""No catchable signal ends the server without a log line.

SIGUSR1 (what logrotate sends) used to kill both engines silently (status -10); so did every other signal whose
default action is to terminate and that the server did not handle.  Now each one is either logged and ignored --
the server keeps serving -- or, for the fault signals, ends the process after faulthandler has printed where.
"""

from __future__ import annotations

import os
import signal
import time

import harness
import pytest

# Default action "terminate" (or "core"), catchable, and meaning nothing to a server: logged, then ignored.
IGNORED = [
    signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH, signal.SIGALRM, signal.SIGVTALRM, signal.SIGPROF,
    signal.SIGXCPU, signal.SIGXFSZ, signal.SIGPWR, signal.SIGSYS, signal.SIGSTKFLT, signal.SIGIO, signal.SIGTRAP,
    signal.SIGTTIN, signal.SIGTTOU,
]  # fmt: skip
REALTIME = list(range(signal.SIGRTMIN, signal.SIGRTMAX + 1))
FAULTS = [signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGABRT]


def name_of(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"SIGRTMIN+{signum - signal.SIGRTMIN}"


def expect_logged(server, pid: int, signum: int, seen: int) -> int:
    """Send ``signum`` to ``pid``; wait until the server's log has one more line naming it from that process."""
    tag = f"[{pid}] {name_of(signum)}"
    if signum == signal.SIGRTMIN:
        tag += " "  # not SIGRTMIN+1..
    os.kill(pid, signum)
    deadline = time.monotonic() + 5
    while server.stderr().count(tag) <= seen:
        assert server.proc.poll() is None, f"{name_of(signum)} ended the server:\n{server.stderr()[-2000:]}"
        assert time.monotonic() < deadline, f"no log line for {name_of(signum)} from {pid}:\n{server.stderr()[-2000:]}"
        time.sleep(0.01)
    return server.stderr().count(tag)


@pytest.mark.parametrize("group", ["named", "realtime"])
def test_catchable_signals_are_logged_and_ignored(engine, serve, group):
    server = serve("--echo", "0", engine=engine)
    addr = server.addr("echo")
    workers = server.workers() if engine == "prefork" else []
    targets = [server.pid, *workers[:1]]  # the master (or the one process) and one worker
    signals = IGNORED if group == "named" else REALTIME
    with harness.connect(addr) as s:
        for signum in signals:
            for pid in targets:
                expect_logged(server, pid, signum, server.stderr().count(f"[{pid}] {name_of(signum)}"))
                assert (
                    harness.roundtrip(s, b"after " + name_of(signum).encode()) == b"after " + name_of(signum).encode()
                )
    if engine == "prefork":
        assert server.workers() == workers, f"a worker was replaced:\n{server.stderr()[-3000:]}"
    assert "SIGUSR1" not in {name_of(s) for s in signals} or "log file(s) reopened" in server.stderr()
    server.signal(signal.SIGTERM)
    code, _ = harness.wait_exit(server, 10)
    assert code == 0, server.stderr()[-3000:]


@pytest.mark.parametrize("signum", [signal.SIGSEGV, signal.SIGABRT], ids=name_of)
def test_a_fault_signal_ends_the_server_with_a_traceback(engine, serve, signum):
    server = serve("--echo", "0", engine=engine)
    with harness.connect(server.addr("echo")) as s:
        assert harness.roundtrip(s, b"x") == b"x"
    server.signal(signum)
    code, _ = harness.wait_exit(server, 10)
    assert code == -signum
    err = server.stderr()
    assert "Fatal Python error" in err and "File " in err, err[-3000:]


def test_a_fault_signal_in_a_worker_is_logged_and_the_worker_replaced(serve):
    server = serve("--echo", "0", engine="prefork")
    victim = server.workers()[0]
    time.sleep(1.1)  # past the boot window: an ordinary replacement, no back-off
    os.kill(victim, signal.SIGSEGV)
    new = server.wait_workers(2, exclude=[victim])
    err = server.stderr()
    assert "Fatal Python error: Segmentation fault" in err, err[-3000:]
    assert f"worker {victim} died (killed by SIGSEGV)" in err, err[-3000:]
    assert len(new) == 2
    with harness.connect(server.addr("echo")) as s:
        assert harness.roundtrip(s, b"y") == b"y"


def test_every_fatal_signal_is_covered():
    """The server's list is the one tested above, and with the signals it stops on, the faults, SIGPIPE (which
    Python ignores) and those whose default action neither ends nor stops a process, it covers every signal."""
    from fastframe.servers.signals import IGNORED_SIGNALS

    assert set(IGNORED_SIGNALS) | {signal.SIGUSR1} == set(IGNORED) | set(REALTIME)
    stops = {signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP}
    harmless = {signal.SIGCHLD, signal.SIGCONT, signal.SIGURG, signal.SIGTSTP, signal.SIGPIPE}
    uncatchable = {signal.SIGKILL, signal.SIGSTOP}
    covered = set(IGNORED_SIGNALS) | {signal.SIGUSR1} | set(FAULTS) | stops | harmless | uncatchable
    assert set(signal.valid_signals()) <= covered, sorted(set(signal.valid_signals()) - covered)
