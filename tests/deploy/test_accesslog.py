"""servers.accesslog: lines that always parse back, and files that reopen after logrotate without losing a line."""

from __future__ import annotations

import datetime
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastframe.servers import accesslog
from fastframe.servers.accesslog import (
    FIELDS,
    AccessLog,
    ReopeningFileHandler,
    format_line,
    format_peer,
    parse_line,
    reopen_logs,
)

HOSTILE = [
    "",
    " ",
    "a b",
    "x=y",
    'say "hi"',
    "back\\slash",
    "\\",
    '\\"',
    "new\nline",
    "\r\n",
    "tab\there",
    "nul\0byte",
    "\x7f\x1b[31mred",
    "é",
    "\u2028",
    "\U0001f600",
    "\udcff",  # a lone surrogate, as surrogateescape makes from a bad byte in a path
    "x end=eof peer=forged",
    '" end="forged',
    "\\x41",
    "\\u0041",
]


@pytest.fixture
def logdir(tmp_path: object) -> Iterator[str]:
    yield str(tmp_path)


def read_lines(path: str) -> list[str]:
    with open(path, encoding="ascii") as f:
        return f.read().splitlines()


# -- the line -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_round_trip(value: str) -> None:
    line = format_line([("service", value), ("end", "eof")])
    assert "\n" not in line and "\r" not in line and line.isascii() and line.isprintable()
    assert parse_line(line) == {"service": value, "end": "eof"}


@given(st.lists(st.tuples(st.from_regex(r"\A[a-z_][a-z0-9_]{0,10}\Z"), st.text(st.characters(codec=None)))))
def test_any_values_round_trip(pairs: list[tuple[str, str]]) -> None:
    line = format_line(pairs)
    assert line.isascii() and "\n" not in line
    assert parse_line(line) == dict(pairs)


@given(st.text(st.characters(blacklist_categories=())))
def test_lone_surrogates_round_trip(value: str) -> None:
    assert parse_line(format_line([("v", value)])) == {"v": value}


def test_simple_values_stay_bare() -> None:
    line = format_line([("peer", "[2001:db8::1]:5"), ("path", "unix:/run/ff/e.sock"), ("n", 3), ("x", "-")])
    assert line == "peer=[2001:db8::1]:5 path=unix:/run/ff/e.sock n=3 x=-"
    assert format_line([("e", "")]) == 'e=""'


@pytest.mark.parametrize(
    "line",
    ['a="unterminated', "a=b  c=d", "=b", "a=b=c", 'a="bad \\q escape"', "A=b", 'a="x"b', 'a="\\x4"'],
)
def test_parse_refuses_what_format_never_writes(line: str) -> None:
    with pytest.raises(ValueError):
        parse_line(line)


@pytest.mark.parametrize(
    ("addr", "text"),
    [
        (("203.0.113.7", 51234), "203.0.113.7:51234"),
        (("2001:db8::1", 443, 0, 0), "[2001:db8::1]:443"),
        ("/run/ff/e.sock", "unix:/run/ff/e.sock"),
        ("", "unix"),
        (b"\0abstract", "unix:@abstract"),
        (None, "-"),
    ],
)
def test_format_peer(addr: object, text: str) -> None:
    assert format_peer(addr) == text


def test_log_line_has_every_field_in_order(logdir: str) -> None:
    path = os.path.join(logdir, "access.log")
    alog = AccessLog(path)
    now = 1_796_191_980.1239  # 2026-12-02T06:13:00.123Z
    alog.log("echo", ("203.0.113.7", 51234), 0.0041234, 3, 4, 47, 56, "eof", proxy=("127.0.0.1", 40022), now=now)
    alog.log("files", ("::1", 5, 0, 0), 1.5, 1, 2, 10, 1 << 20, "reset")
    alog.close()
    first, second = read_lines(path)
    record = parse_line(first)
    assert list(record) == list(FIELDS)
    assert record == {
        "time": "2026-12-02T06:13:00.123Z",
        "service": "echo",
        "peer": "203.0.113.7:51234",
        "proxy": "127.0.0.1:40022",
        "duration": "0.004123",
        "frames_in": "3",
        "frames_out": "4",
        "bytes_in": "47",
        "bytes_out": "56",
        "end": "eof",
    }
    again = parse_line(second)
    assert again["peer"] == "[::1]:5" and again["proxy"] == "-" and again["bytes_out"] == str(1 << 20)
    stamp = datetime.datetime.strptime(again["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)
    assert abs(stamp.timestamp() - time.time()) < 60


# -- the writer -----------------------------------------------------------------------------------------------


def test_lines_wait_for_flush_then_append(logdir: str) -> None:
    path = os.path.join(logdir, "a.log")
    with open(path, "w") as f:
        f.write("old=1\n")
    alog = AccessLog(path)
    alog.write("n=1")
    assert read_lines(path) == ["old=1"]  # pending until the engine's end-of-wake-up flush
    alog.flush()
    assert read_lines(path) == ["old=1", "n=1"]
    alog.close()


def test_flush_by_itself_when_much_is_pending(logdir: str) -> None:
    path = os.path.join(logdir, "a.log")
    alog = AccessLog(path, max_pending=100)
    for i in range(100):
        alog.write(f"n={i}")
    assert len(read_lines(path)) >= 80  # flushed each time ~100 bytes were pending
    alog.close()
    assert read_lines(path) == [f"n={i}" for i in range(100)]


def test_writes_are_whole_lines_of_at_most_pipe_buf(monkeypatch: pytest.MonkeyPatch, logdir: str) -> None:
    alog = AccessLog(os.path.join(logdir, "a.log"))
    writes: list[bytes] = []
    real_write = os.write

    def recording_write(fd: int, data: bytes) -> int:
        writes.append(bytes(data))
        return real_write(fd, data)

    monkeypatch.setattr(accesslog.os, "write", recording_write)
    for i in range(200):
        alog.write(f"n={i} pad={'x' * 90}")
    alog.flush()
    assert len(writes) > 1 and all(len(w) <= accesslog._PIPE_BUF and w.endswith(b"\n") for w in writes)
    assert b"".join(writes).decode().splitlines() == [f"n={i} pad={'x' * 90}" for i in range(200)]
    alog.close()


def test_stdout_target_comes_after_printed_lines(logdir: str) -> None:
    script = textwrap.dedent(
        """
        from fastframe.servers.accesslog import AccessLog
        print("echo tcp 127.0.0.1:7007")  # the listening line, still in print()'s buffer
        log = AccessLog("-")
        log.log("echo", ("127.0.0.1", 5), 0.5, 1, 1, 5, 5, "eof")
        log.flush()
        log.reopen()  # a no-op for standard output
        log.close()
        print("after")
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30, cwd=logdir)
    lines = out.stdout.splitlines()
    assert out.returncode == 0, out.stderr
    assert lines[0] == "echo tcp 127.0.0.1:7007" and parse_line(lines[1])["service"] == "echo"
    assert lines[2] == "after"


def test_a_failing_write_drops_lines_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    alog = AccessLog("/dev/full")  # every write fails with ENOSPC: a full disk
    with caplog.at_level(logging.WARNING, logger="fastframe.server"):
        for i in range(3):
            alog.write(f"n={i}")
            alog.flush()  # never raises into the engine
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "No space left on device; dropping lines" in messages[0]
    alog.close()


def test_file_mode(logdir: str) -> None:
    path = os.path.join(logdir, "m.log")
    old = os.umask(0)
    try:
        AccessLog(path).close()
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == 0o640


# -- rotation -------------------------------------------------------------------------------------------------


def test_rotate_rename_reopen(logdir: str) -> None:
    path = os.path.join(logdir, "access.log")
    alog = AccessLog(path)
    for i in range(5):
        alog.write(f"n={i}")
    alog.flush()
    os.rename(path, path + ".1")  # logrotate: rename ...
    for i in range(5, 8):
        alog.write(f"n={i}")  # ... lines written before the signal: still the old file
    alog.flush()
    alog.write("n=8")  # pending when the signal comes: flushed into the old file by reopen
    alog.reopen()  # ... then SIGUSR1
    for i in range(9, 12):
        alog.write(f"n={i}")
    alog.close()
    assert read_lines(path + ".1") == [f"n={i}" for i in range(9)]
    assert read_lines(path) == [f"n={i}" for i in range(9, 12)]


WRITER = textwrap.dedent(
    """
    import signal, sys, time
    from fastframe.servers.accesslog import AccessLog
    flags = []
    signal.signal(signal.SIGUSR1, lambda *a: flags.append("reopen"))
    signal.signal(signal.SIGTERM, lambda *a: flags.append("stop"))
    log = AccessLog(sys.argv[1])
    n = 0
    print("ready", flush=True)
    while "stop" not in flags:
        for _ in range(20):  # one "wake-up": a few connections end, then the flush
            log.log("echo", ("127.0.0.1", n), 0.001, 1, 1, n, n, "eof")
            n += 1
        log.flush()
        while "reopen" in flags:  # what the engine's loop does with a recorded SIGUSR1
            flags.remove("reopen")
            log.reopen()
        time.sleep(0.001)
    log.close()
    print(n, flush=True)
    """
)


def test_logrotate_under_load_loses_nothing(logdir: str) -> None:
    """A process logging continuously; the file is renamed and SIGUSR1 sent, three times: every line written is
    in exactly one of the files, in order, and the files after each rename get new lines."""
    path = os.path.join(logdir, "access.log")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, path], stdout=subprocess.PIPE, text=True, cwd=logdir)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        for k in range(3, 0, -1):
            time.sleep(0.1)
            os.rename(path, f"{path}.{k}")
            os.kill(proc.pid, signal.SIGUSR1)
            deadline = time.monotonic() + 10
            while not os.path.exists(path):  # the reopen creates the path anew
                assert time.monotonic() < deadline, "the writer never reopened"
                time.sleep(0.01)
        time.sleep(0.1)
        os.kill(proc.pid, signal.SIGTERM)
        total = int(proc.stdout.readline())
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    files = [f"{path}.3", f"{path}.2", f"{path}.1", path]
    per_file = [[int(parse_line(line)["bytes_in"]) for line in read_lines(f)] for f in files]
    assert all(per_file), [len(p) for p in per_file]  # every file got lines
    assert [n for part in per_file for n in part] == list(range(total))  # none lost, none twice, in order


def test_error_log_handler_reopens(logdir: str) -> None:
    path = os.path.join(logdir, "error.log")
    logger = logging.getLogger("fastframe.test-reopen")
    logger.propagate = False
    handler = ReopeningFileHandler(path)
    logger.addHandler(handler)
    try:
        logger.warning("before")
        os.rename(path, path + ".1")
        logger.warning("between")  # still the old file
        assert reopen_logs(loggers=[logger]) == 1
        logger.warning("after")
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert read_lines(path + ".1") == ["before", "between"]
    assert read_lines(path) == ["after"]


def test_reopen_logs_reopens_both(logdir: str) -> None:
    access = AccessLog(os.path.join(logdir, "access.log"))
    stdout = AccessLog("-")
    logger = logging.getLogger("fastframe.test-both")
    handler = ReopeningFileHandler(os.path.join(logdir, "error.log"))
    logger.addHandler(handler)
    try:
        os.rename(os.path.join(logdir, "access.log"), os.path.join(logdir, "access.log.1"))
        os.rename(os.path.join(logdir, "error.log"), os.path.join(logdir, "error.log.1"))
        assert reopen_logs([access, stdout], loggers=[logger, logger]) == 2  # stdout is not a file; no handler twice
        assert os.path.exists(os.path.join(logdir, "access.log")) and os.path.exists(os.path.join(logdir, "error.log"))
    finally:
        logger.removeHandler(handler)
        handler.close()
        access.close()


def test_reopen_failure_keeps_the_old_file(logdir: str, caplog: pytest.LogCaptureFixture) -> None:
    sub = os.path.join(logdir, "sub")
    os.mkdir(sub)
    path = os.path.join(sub, "access.log")
    alog = AccessLog(path)
    os.rename(path, os.path.join(logdir, "moved.log"))
    os.rmdir(sub)  # the path can no longer be created
    alog.write("n=1")
    with caplog.at_level(logging.ERROR, logger="fastframe.server"):
        alog.reopen()
    assert "cannot reopen" in caplog.text
    alog.write("n=2")
    alog.close()
    assert read_lines(os.path.join(logdir, "moved.log")) == ["n=1", "n=2"]
