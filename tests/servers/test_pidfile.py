"""--pidfile, on both engines: written before the listening lines, a live holder refused (one line, exit status
1), a stale file replaced, and on exit removed only while it still names the server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import harness
import pytest

from fastframe.servers import pidfile as pidfile_module
from fastframe.servers.pidfile import Pidfile, PidfileBusy


def dead_pid() -> int:
    """The PID of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(10)
    return proc.pid


def write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def test_a_live_holder_is_refused_with_one_line_and_status_1(engine, workdir):
    path = os.path.join(workdir, "ff.pid")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write(path, f"{holder.pid}\n")
        run = subprocess.run(
            [sys.executable, "-m", "fastframe", "serve", "--echo", "0", "--pidfile", path, *harness.engine_args(engine)],
            capture_output=True, text=True, timeout=30, cwd=workdir,
        )  # fmt: skip
        assert run.returncode == 1, (run.returncode, run.stderr)
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1, run.stderr
        assert str(holder.pid) in lines[0] and path in lines[0] and "Traceback" not in run.stderr, lines[0]
        assert run.stdout == "", "it announced listeners it will not serve"
        assert read(path) == str(holder.pid), "the live holder's pidfile was touched"
    finally:
        holder.kill()
        holder.wait(10)


@pytest.mark.parametrize("before", ["absent", "stale"])
def test_the_pidfile_is_written_and_removed_on_exit(engine, serve, workdir, before):
    path = os.path.join(workdir, "run", "ff.pid")
    os.makedirs(os.path.dirname(path))
    if before == "stale":
        write(path, f"{dead_pid()}\n")
    server = serve("--echo", "0", "--pidfile", path, engine=engine)
    assert read(path) == str(server.pid), "not written before the listening lines"
    with harness.connect(server.addr("echo")) as s:
        assert harness.roundtrip(s, b"pid") == b"pid"
    server.signal(signal.SIGTERM)
    code, _ = harness.wait_exit(server, 10)
    assert code == 0
    assert not os.path.exists(path), "the pidfile outlived the server"
    assert os.listdir(os.path.dirname(path)) == [], "a temporary file was left behind"


def test_a_pidfile_naming_someone_else_is_not_removed_on_exit(engine, serve, workdir):
    path = os.path.join(workdir, "ff.pid")
    server = serve("--echo", "0", "--pidfile", path, engine=engine)
    assert harness.wait_until(lambda: os.path.exists(path) and read(path) == str(server.pid), timeout=5)
    other = str(os.getpid())  # another server took the file over meanwhile
    write(path, other + "\n")
    server.signal(signal.SIGTERM)
    code, _ = harness.wait_exit(server, 10)
    assert code == 0
    assert read(path) == other, "the server removed (or rewrote) a pidfile that was no longer its own"


@pytest.mark.parametrize("text", ["", "garbage\n", "0\n", "-1\n"])
def test_a_pidfile_without_a_usable_pid_is_replaced(tmp_path, text):
    path = str(tmp_path / "ff.pid")
    write(path, text)
    pidfile = Pidfile(path)
    pidfile.create()
    assert read(path) == str(os.getpid())
    pidfile.remove()
    assert not os.path.exists(path)


def test_a_holder_we_may_not_signal_is_alive(tmp_path, monkeypatch):
    """kill(pid, 0) failing with EPERM means the process exists (it belongs to someone else)."""
    path = str(tmp_path / "ff.pid")
    write(path, "4242\n")

    def kill(pid: int, sig: int) -> None:
        assert (pid, sig) == (4242, 0)
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(pidfile_module.os, "kill", kill)
    with pytest.raises(PidfileBusy) as info:
        Pidfile(path).create()
    assert info.value.pid == 4242
    assert read(path) == "4242"
    assert os.listdir(tmp_path) == ["ff.pid"], "a temporary file was left behind"
