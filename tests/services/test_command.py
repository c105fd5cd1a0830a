"""The command service against real servers (both engines): output, exit status, limits, process cleanup."""

from __future__ import annotations

import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import harness
import pytest
from harness import Background

from fastframe.client import RemoteError, exec_command

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cmdroot")
    for name in ("alpha.txt", "beta.txt", "gamma dir"):
        (path / name).write_text(name)
    return path


@pytest.fixture(scope="module")
def server(start_server: Callable[..., Any], root: Path) -> Any:
    allow = [a for name in ("ls", "echo", "sh", "head", "sleep") for a in ("--allow", name)]
    return start_server(
        "--echo", "0", "--command", "0", *allow, "--command-timeout", "5", "--root", str(root), expect=2
    )


@pytest.fixture(scope="module")
def strict_server(start_server: Callable[..., Any]) -> Any:
    """Timeout 1 s, one command per process at a time."""
    return start_server("--command", "0", "--allow", "sh", "--allow", "sleep", "--command-timeout", "1",
                        "--max-commands", "1", expect=1)  # fmt: skip


def run(server: Any, command: Any, **kwargs: Any) -> tuple[int, bytes, bytes]:
    out, err = bytearray(), bytearray()
    host, port = server.addr("command")
    status = exec_command(host, port, command, stdout=out.extend, stderr=err.extend, timeout=15, **kwargs)
    return status, bytes(out), bytes(err)


def test_echo(server: Any) -> None:
    assert run(server, "echo hello   world") == (0, b"hello world\n", b"")
    assert run(server, ["echo", "two  spaces", "'quoted'"]) == (0, b"two  spaces 'quoted'\n", b"")


def test_ls_runs_in_the_root(server: Any) -> None:
    status, out, err = run(server, "ls -1")
    assert status == 0 and err == b""
    assert out.decode().splitlines() == ["alpha.txt", "beta.txt", "gamma dir"]


def test_both_streams(server: Any) -> None:
    assert run(server, "sh -c 'echo out; echo err >&2'") == (0, b"out\n", b"err\n")


def test_nonzero_exit(server: Any) -> None:
    assert run(server, "sh -c 'exit 7'")[0] == 7
    status, out, err = run(server, "ls /no/such/dir")
    assert status == 2 and out == b"" and b"No such file" in err


def test_killed_by_signal_is_negative(server: Any) -> None:
    assert run(server, "sh -c 'kill -9 $$'")[0] == -9


def test_minimal_environment_and_no_stdin(server: Any) -> None:
    _, out, _ = run(server, "sh -c 'env; read line; echo read=$?'")
    env = dict(line.split("=", 1) for line in out.decode().splitlines() if "=" in line and not line.startswith("read="))
    env.pop("PWD", None)  # sh sets these itself
    env.pop("SHLVL", None)
    env.pop("_", None)
    assert env == {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    assert b"read=1" in out  # stdin is /dev/null: read hits end-of-file at once


def test_only_standard_fds_are_inherited(server: Any) -> None:
    status, out, _ = run(server, "ls /proc/self/fd")
    # 0, 1, 2 and the directory ls itself opened to list them
    assert status == 0 and len(out.split()) <= 4, out


def test_not_allowed(server: Any) -> None:
    with pytest.raises(RemoteError) as info:
        run(server, "cat /etc/passwd")
    assert info.value.code == "not-allowed"


@pytest.mark.parametrize(
    "line",
    [b"", b"   ", b"echo 'unbalanced", b"echo \xff\xfe", b"echo hi\x00there"],
    ids=["empty", "blank", "quote", "utf8", "nul"],
)
def test_bad_request(server: Any, line: bytes) -> None:
    frames = harness.command_replies(server.addr("command"), line)
    assert len(frames) == 1 and frames[0].startswith(b"!bad-request "), frames


def test_output_streams_while_running(server: Any) -> None:
    host, port = server.addr("command")
    arrivals: list[tuple[float, bytes]] = []
    start = time.monotonic()
    status = exec_command(host, port, "sh -c 'echo first; sleep 1; echo second'",
                          stdout=lambda b: arrivals.append((time.monotonic() - start, b)), timeout=15)  # fmt: skip
    end = time.monotonic() - start
    assert status == 0
    assert b"".join(b for _, b in arrivals) == b"first\nsecond\n"
    assert arrivals[0][0] < 0.7, arrivals  # "first" came long before the command ended
    assert end >= 1.0


def test_queued_commands_run_in_order(server: Any) -> None:
    with harness.connect(server.addr("command")) as sock:
        sock.sendall(
            b"".join(
                struct.pack("!I", len(c)) + c
                for c in (b"echo one", b"nosuch", b"sh -c 'sleep 0.2; echo two'", b"echo three")
            )
        )
        frames = [harness.recv_frame(sock) for _ in range(7)]
    assert frames == [
        b"Oone\n",
        b"X0",
        b"!not-allowed 'nosuch' is not on the allow-list",
        b"Otwo\n",
        b"X0",
        b"Othree\n",
        b"X0",
    ]


def test_half_close_cancels_the_command(server: Any) -> None:
    # The protocol has no use for a half-closed client: its end of stream cancels, like a close.
    with harness.connect(server.addr("command")) as sock:
        harness.send_frame(sock, b"sh -c 'echo $$; exec sleep 100'")
        pgid = int(harness.recv_frame(sock)[1:])
        harness.send_frame(sock, b"echo queued")  # dropped with the rest
        sock.shutdown(socket.SHUT_WR)
        assert harness.recv_frame_or_eof(sock) is None  # closed at once, not after the 5 s timeout
    assert harness.wait_group_gone(pgid, timeout=2.0) == []


def test_client_close_cancels_a_silent_command(server: Any) -> None:
    # A command that writes nothing never hits a closed socket: only the end of stream can tell.
    sock = harness.connect(server.addr("command"))
    harness.send_frame(sock, b"sh -c 'echo $$; exec sleep 100'")
    pgid = int(harness.recv_frame(sock)[1:])
    sock.close()  # FIN, no RST
    assert harness.wait_group_gone(pgid, timeout=2.0) == []  # the server's timeout is 5 s


def test_ctrl_c_on_exec_kills_the_remote_command(server: Any, workdir: str) -> None:
    host, port = server.addr("command")
    client = subprocess.Popen(
        [sys.executable, "-m", "fastframe", "exec", f"{host}:{port}", "--", "sh", "-c", "echo $$; exec sleep 100"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=workdir,
    )  # fmt: skip
    try:
        assert client.stdout is not None
        pgid = int(client.stdout.readline())
        assert harness.group_members(pgid)
        client.send_signal(signal.SIGINT)
        assert client.wait(10) == 130
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert harness.wait_group_gone(pgid, timeout=2.0) == []


def test_output_cap_kills_the_group(server: Any) -> None:
    # The default cap is 1 MiB; the command would print 50 MiB.
    frames = harness.command_replies(server.addr("command"), b"sh -c 'echo $$; exec head -c 52428800 /dev/zero'")
    assert frames[-1].startswith(b"!output-cap "), frames[-1]
    out = b"".join(f[1:] for f in frames[:-1])
    assert all(f[:1] == b"O" for f in frames[:-1])
    assert len(out) == MiB
    pgid = int(out.split(b"\n", 1)[0])
    assert out.split(b"\n", 1)[1].strip(b"\0") == b""
    assert harness.wait_group_gone(pgid) == []


def test_output_cap_plain_head(server: Any) -> None:
    out = bytearray()
    host, port = server.addr("command")
    with pytest.raises(RemoteError) as info:
        exec_command(host, port, "head -c 52428800 /dev/zero", stdout=out.extend, timeout=15)
    assert info.value.code == "output-cap"
    assert len(out) == MiB and not out.strip(b"\0")


@pytest.mark.timing
def test_timeout_kills_grandchildren_holding_the_pipes(strict_server: Any) -> None:
    start = time.monotonic()
    frames = harness.command_replies(strict_server.addr("command"), b"sh -c 'echo $$; sleep 100 & sleep 100'")
    elapsed = time.monotonic() - start
    assert frames[-1].startswith(b"!timeout "), frames
    assert 0.9 < elapsed < 3.0
    pgid = int(frames[0][1:])
    assert harness.wait_group_gone(pgid) == []  # no process and no zombie left in the group
    assert not [p for p in harness.all_processes() if p["cmdline"] == ["sleep", "100"] and p["session"] == pgid]


def test_max_commands_busy(strict_server: Any) -> None:
    # --max-commands 1 for the whole server (every prefork worker together): of three concurrent commands, two
    # are refused.
    addr = strict_server.addr("command")
    socks = [harness.connect(addr) for _ in range(3)]
    try:
        for sock in socks:
            harness.send_frame(sock, b"sleep 5")
        results = [harness.recv_frame(sock) for sock in socks]
    finally:
        for sock in socks:
            sock.close()
    busy = [r for r in results if r.startswith(b"!busy ")]
    timed_out = [r for r in results if r.startswith(b"!timeout ")]
    assert len(busy) + len(timed_out) == 3, results
    assert len(busy) == 2


def test_connection_reset_kills_the_group(server: Any) -> None:
    sock = harness.connect(server.addr("command"))
    harness.send_frame(sock, b"sh -c 'echo $$; sleep 100 & sleep 100'")
    pgid = int(harness.recv_frame(sock)[1:])
    assert harness.group_members(pgid)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # RST: the server's next read fails, and the connection is lost
    assert harness.wait_group_gone(pgid) == []


@pytest.mark.timing
def test_echo_answers_while_a_command_runs(server: Any) -> None:
    host, port = server.addr("command")
    result: list[Any] = []
    runner = threading.Thread(target=lambda: result.append(exec_command(host, port, "sleep 2", timeout=15)))
    started = time.monotonic()
    runner.start()
    rtts = []
    try:
        with harness.connect(server.addr("echo")) as echo:
            assert harness.wait_until(lambda: harness.runs(server.pid, "sleep", "2")), "the command never started"
            while time.monotonic() - started < 1.8:
                t0 = time.perf_counter()
                harness.send_frame(echo, b"ping")
                assert harness.recv_frame(echo) == b"ping"
                rtts.append(time.perf_counter() - t0)
                time.sleep(0.05)
    finally:
        runner.join(15)
    assert result == [0]
    assert time.monotonic() - started >= 2.0
    assert len(rtts) >= 10
    assert max(rtts) < 0.5, sorted(rtts)[-3:]  # not held up for the command's 2 s


def test_large_streaming_output_under_the_cap(server: Any) -> None:
    # 900 KiB through the pipes and the backpressure path, byte-exact.
    status, out, _ = run(server, "head -c 921600 /dev/zero")
    assert status == 0 and len(out) == 921600


def rss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                total += next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
        except (FileNotFoundError, StopIteration):
            pass
    return total


def test_backpressure_when_the_client_does_not_read(start_server: Callable[..., Any]) -> None:
    server = start_server("--command", "0", "--allow", "head", "--output-cap", "64M", expect=1)
    pids = [server.pid, *server.workers()]
    before = rss(pids)
    size = 48 * MiB
    with harness.connect(server.addr("command"), timeout=30) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        harness.send_frame(sock, f"head -c {size} /dev/zero".encode())
        time.sleep(1.5)  # not reading: the server must stop reading the pipes, not buffer 48 MiB
        grown = rss(pids) - before
        got = 0
        while True:
            frame = harness.recv_frame(sock)
            if frame[:1] != b"O":
                break
            got += len(frame) - 1
    assert frame == b"X0" and got == size
    assert grown < 16 * MiB, f"the server grew by {grown / MiB:.1f} MiB while the client did not read"


def test_graceful_stop_kills_running_commands(start_server: Callable[..., Any]) -> None:
    server = start_server("--command", "0", "--allow", "sh", "--graceful-timeout", "1", expect=1)
    with harness.connect(server.addr("command")) as sock:
        harness.send_frame(sock, b"sh -c 'echo $$; sleep 100 & sleep 100'")
        pgid = int(harness.recv_frame(sock)[1:])
        assert harness.wait_until(lambda: len(harness.group_members(pgid)) == 3)
        server.workers()
        server.signal(signal.SIGTERM)
        assert server.wait(10) == 0
    assert harness.wait_group_gone(pgid, timeout=1.0) == []  # nothing left behind, not even a zombie


# -- containment: a descendant that leaves the command's session is ended with it -----------------------------


def server_children(server: Any) -> list[dict[str, object]]:
    """Every process (zombies included) whose parent is the server or one of its prefork workers."""
    parents = {server.pid, *server.workers()}
    return [p for p in harness.all_processes() if p["ppid"] in parents and p["pid"] not in parents]


def assert_tree_gone(server: Any, pid: int) -> None:
    """``pid`` is gone (not even a zombie), and the server is left with no child: nothing escaped."""
    assert harness.wait_until(lambda: harness.proc_info(pid) is None, timeout=2.0), harness.proc_info(pid)
    assert harness.wait_until(lambda: not server_children(server), timeout=2.0), server_children(server)


ESCAPEE = 'setsid sh -c "echo \\$\\$ >&2; exec {}" &'  # a grandchild in a session of its own; its PID on stderr


@pytest.mark.timing
def test_setsid_grandchild_ends_with_the_command(server: Any) -> None:
    # The command exits after 0.5 s; its grandchild would hold the output pipes open for 100 s.
    start = time.monotonic()
    frames = harness.command_replies(
        server.addr("command"), f"sh -c '{ESCAPEE.format('sleep 100')} sleep 0.5'".encode()
    )
    assert frames[-1] == b"X0", frames
    assert time.monotonic() - start < 3.0  # not the server's 5 s timeout
    pid = int(b"".join(f[1:] for f in frames if f[:1] == b"E"))
    assert_tree_gone(server, pid)


def test_setsid_grandchild_ends_at_the_timeout(strict_server: Any) -> None:
    line = f"sh -c '{ESCAPEE.format('sleep 100')} exec sleep 100'"
    frames = harness.command_replies(strict_server.addr("command"), line.encode())
    assert frames[-1].startswith(b"!timeout "), frames
    pid = int(b"".join(f[1:] for f in frames if f[:1] == b"E"))
    assert_tree_gone(strict_server, pid)


def test_setsid_grandchild_writing_hits_the_output_cap(server: Any) -> None:
    # The grandchild writes 50 MiB; the cap (1 MiB) must stop it, not just its parent.
    line = f"sh -c '{ESCAPEE.format('head -c 52428800 /dev/zero')} wait'"
    frames = harness.command_replies(server.addr("command"), line.encode())
    assert frames[-1].startswith(b"!output-cap "), frames[-1]
    pid = int(b"".join(f[1:] for f in frames if f[:1] == b"E"))
    assert_tree_gone(server, pid)


def test_orphan_still_in_its_commands_session_is_left_alone(server: Any) -> None:
    # A double fork inside a running command orphans a process in the command's session: it is adopted by
    # the server, but belongs to a command still running, so sweeps (another command ending) spare it.
    host, port = server.addr("command")
    line = "sh -c '( (sleep 0.6; echo still here) & ); sleep 1.2'"
    runner = Background(lambda: harness.command_replies((host, port), line.encode()))
    assert harness.wait_until(lambda: harness.runs(server.pid, "sleep", "0.6")), "the orphan was never started"
    for _ in range(3):
        assert harness.command_replies((host, port), b"sh -c 'exit 3'") == [b"X3"]  # each end sweeps
    assert runner.join() == [b"Ostill here\n", b"X0"]


def test_abandoned_command_leaves_no_zombie(server: Any) -> None:
    sock = harness.connect(server.addr("command"))
    harness.send_frame(sock, f"sh -c '{ESCAPEE.format('sleep 100')} exec sleep 100'".encode())
    pid = int(harness.recv_frame(sock)[1:])
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # RST
    assert_tree_gone(server, pid)


# -- requests that can never succeed, and requests that could freeze the loop ---------------------------------


def test_argument_over_128_kib_is_a_bad_request(server: Any) -> None:
    # Not "busy" (retry later): no retry can ever make it run.
    frames = harness.command_replies(server.addr("command"), b"echo " + b"A" * (128 * 1024 + 1))
    assert frames[-1].startswith(b"!bad-request "), frames[-1][:80]


def test_too_many_words_is_a_bad_request(server: Any) -> None:
    frames = harness.command_replies(server.addr("command"), b"echo" + b" a" * 2048)
    assert frames[-1].startswith(b"!bad-request ") and b"2048" in frames[-1], frames[-1][:80]
    assert harness.command_replies(server.addr("command"), b"echo" + b" a" * 2047)[-1] == b"X0"


LIMIT = 16 * 1024
WORST = {
    "one 1 MiB word": b"x" + b"A" * (2**20 - 1),  # shlex.split: 62-69 s
    "one word at the limit": b"x" + b"A" * (LIMIT - 1),
    "empty quotes": b"echo " + b"''" * ((LIMIT - 5) // 2),
    "word and quotes": b"echo " + b"a''" * ((LIMIT - 5) // 3),
    "double quotes and escapes": b"echo " + b'"\\""' * ((LIMIT - 5) // 4),  # "\"" repeated: one step each
    "escapes": b"echo " + b"\\a" * ((LIMIT - 5) // 2),
    "most words": b"echo" + b" a" * 2047,
    "unclosed quote at the end": b"echo " + b"a" * (LIMIT - 7) + b' "',
    "a byte over the limit": b"echo " + b"a" * (LIMIT - 4),
}


@pytest.mark.timing
@pytest.mark.parametrize("name", list(WORST))
def test_worst_case_request_is_cheap(server: Any, name: str) -> None:
    line = WORST[name]
    start = time.monotonic()
    frames = harness.command_replies(server.addr("command"), line, timeout=5.0)
    elapsed = time.monotonic() - start
    assert frames[-1][:1] in (b"X", b"!"), frames[-1][:80]
    assert elapsed < 0.5, f"{name}: {elapsed:.3f} s"


@pytest.mark.timing
def test_echo_stays_prompt_during_worst_case_requests(server: Any) -> None:
    addr = server.addr("command")
    stop = threading.Event()
    sent = []

    def flood() -> None:
        while not stop.is_set():
            for line in WORST.values():
                harness.command_replies(addr, line, timeout=5.0)
                sent.append(line)

    flooder = Background(flood)
    rtts = []
    try:
        with harness.connect(server.addr("echo")) as echo:
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                t0 = time.perf_counter()
                harness.send_frame(echo, b"ping")
                assert harness.recv_frame(echo) == b"ping"
                rtts.append(time.perf_counter() - t0)
                time.sleep(0.01)
    finally:
        stop.set()
        flooder.join()
    assert len(sent) >= len(WORST), len(sent)  # every kind of request was processed meanwhile
    assert max(rtts) < 0.25, sorted(rtts)[-3:]
