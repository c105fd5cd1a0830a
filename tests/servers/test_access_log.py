"""``--access-log FILE|-`` and ``--log-file FILE``, and SIGUSR1 reopening both (logrotate's rename), on both
engines.  Each line is parsed here with a regular expression of the test's own, not with the module's parser.
(USR2, WINCH and the other signals gunicorn users send are logged and ignored: tests/servers/test_signals.py.)
"""

from __future__ import annotations

import datetime
import os
import re
import select
import signal
import socket
import struct
import time

import pytest
from harness import recv_frame, send_frame, wait_until

TIMEOUT = 10.0
PAIR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')
KEYS = ["time", "service", "peer", "proxy", "duration", "frames_in", "frames_out", "bytes_in", "bytes_out", "end"]


def parse(line: str) -> dict[str, str]:
    pairs = PAIR.findall(line)
    assert " ".join(f"{k}={v}" for k, v in pairs) == line.rstrip("\n"), line
    return dict(pairs)


def lines_of(path: str) -> list[dict[str, str]]:
    try:
        with open(path) as f:
            return [parse(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def wait_lines(path: str, count: int) -> list[dict[str, str]]:
    assert wait_until(lambda: len(lines_of(path)) >= count, TIMEOUT), lines_of(path)
    return lines_of(path)


def talk(port: int, frames: int, header: bytes = b"") -> int:
    """``frames`` frames of b"hello" through the echo, then a clean close; the client's own port."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(header)
        for _ in range(frames):
            send_frame(sock, b"hello")
            assert recv_frame(sock) == b"hello"
        return int(sock.getsockname()[1])


def test_one_line_per_connection(serve, engine, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "access.log")
    proc = serve("--echo", "0", "--access-log", path, engine=engine)
    before = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=1)
    ports = [talk(proc.port("echo"), n) for n in (1, 3)]
    lines = wait_lines(path, 2)
    assert len(lines) == 2
    by_port = {int(line["peer"].rsplit(":", 1)[1]): line for line in lines}
    for port, frames in zip(ports, (1, 3)):
        line = by_port[port]
        assert list(line) == KEYS
        assert line["service"] == "echo" and line["peer"] == f"127.0.0.1:{port}" and line["proxy"] == "-"
        assert line["frames_in"] == line["frames_out"] == str(frames)
        assert line["bytes_in"] == line["bytes_out"] == str(9 * frames)
        assert line["end"] == "eof"
        assert 0 <= float(line["duration"]) < TIMEOUT
        when = datetime.datetime.strptime(line["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)
        assert before <= when <= datetime.datetime.now(datetime.timezone.utc)


def test_behind_a_proxy_the_real_peer_and_how_it_ended(serve, engine, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "access.log")
    proc = serve("--echo", "0", "--access-log", path, "--proxy-protocol", "--trusted-proxy", "127.0.0.1",
                 engine=engine)  # fmt: skip
    port = proc.port("echo")
    talk(port, 2, b"PROXY TCP4 203.0.113.7 127.0.0.1 4242 7007\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(b"PROXY TCP4 198.51.100.1 127.0.0.1 5353 7007\r\n" + struct.pack("!I", 0x7FFFFFFF))
        assert sock.recv(100) is not None
    untrusted = socket.socket()
    untrusted.bind(("127.0.0.2", 0))
    untrusted.settimeout(TIMEOUT)
    untrusted.connect(("127.0.0.1", port))
    untrusted.close()
    lines = {line["peer"]: line for line in wait_lines(path, 3)}
    ok = lines["203.0.113.7:4242"]
    assert ok["end"] == "eof" and ok["frames_in"] == "2" and ok["proxy"].startswith("127.0.0.1:")
    assert lines["198.51.100.1:5353"]["end"] == "too_large"
    (refused,) = [line for peer, line in lines.items() if peer.startswith("127.0.0.2:")]
    assert refused["end"] == "untrusted" and refused["frames_in"] == "0"


def test_dash_is_standard_output_after_the_listening_lines(serve, engine) -> None:  # type: ignore[no-untyped-def]
    proc = serve("--echo", "0", "--time", "0", "--access-log", "-", engine=engine, expect=3)
    assert len(proc.stdout_lines) == 3
    talk(proc.port("echo"), 1)
    fd = proc.proc.stdout.fileno()
    data = b""
    deadline = time.monotonic() + TIMEOUT
    while b"\n" not in data and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.1)[0]:
            data += os.read(fd, 4096)
    line = parse(data.decode().splitlines()[0])
    assert line["service"] == "echo" and line["end"] == "eof"


def rotate(path: str) -> None:
    os.rename(path, path + ".1")


@pytest.mark.parametrize("where", ["access", "error"])
def test_sigusr1_reopens_after_a_rename(serve, engine, tmp_path, where: str) -> None:  # type: ignore[no-untyped-def]
    access, errors = str(tmp_path / "access.log"), str(tmp_path / "error.log")
    proc = serve("--echo", "0", "--access-log", access, "--log-file", errors, engine=engine)
    assert proc.stderr() == ""  # the error log went to its file
    assert wait_until(lambda: "serving with the" in open(errors).read(), TIMEOUT)
    port = proc.port("echo")
    talk(port, 1)
    wait_lines(access, 1)
    rotate(access)
    rotate(errors)
    talk(port, 2)  # before the signal: still into the renamed file
    assert wait_until(lambda: len(lines_of(access + ".1")) == 2, TIMEOUT)
    proc.signal(signal.SIGUSR1)
    processes = 3 if engine == "prefork" else 1  # the master passes it on to both workers
    assert wait_until(lambda: open(errors).read().count("log file(s) reopened") == processes if os.path.exists(errors)
                      else False, TIMEOUT), proc.stderr()  # fmt: skip
    assert "2 log file(s) reopened" in open(errors).read()
    talk(port, 3)
    (line,) = wait_lines(access, 1)
    assert line["frames_in"] == "3"
    assert len(lines_of(access + ".1")) == 2
    assert proc.proc.poll() is None
    if where == "error":
        assert "SIGUSR1" not in open(errors + ".1").read()


def test_unopenable_logs_are_one_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    for flag in ("--access-log", "--log-file"):
        run = subprocess.run([sys.executable, "-m", "fastframe", "serve", "--echo", "0", flag,
                              str(tmp_path / "missing" / "x.log")], capture_output=True, text=True, timeout=60,
                             cwd="/", check=False)  # fmt: skip
        assert run.returncode != 0 and f"cannot open {flag}" in run.stderr, run.stderr
        assert "Traceback" not in run.stderr
