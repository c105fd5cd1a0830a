"""The ``fastframe`` command line: ``serve`` with no arguments, the ``echo`` client, argument errors, ``--help``."""

from __future__ import annotations

import errno
import os
import re
import select
import signal
import socket
import subprocess
import time

import harness
import pytest

from fastframe.client import get_time

# The default ports the design fixes for `fastframe serve` with no arguments.
DEFAULTS = [("echo", "tcp", 7007), ("time", "udp", 3737), ("time", "tcp", 3737)]
OTHER_DEFAULTS = [("command", "tcp", 5140), ("files", "tcp", 2121)]


def port_in_use(port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        if kind == socket.SOCK_STREAM:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def run_cli(console_script, *args, timeout=30, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run(
        [console_script, *args], check=False, capture_output=True, text=True, timeout=timeout, env=env, **kw
    )


def assert_one_error_line(run: subprocess.CompletedProcess) -> str:
    assert run.returncode != 0, run
    assert "Traceback" not in run.stderr, run.stderr
    errors = [ln for ln in run.stderr.splitlines() if re.search(r"\berror: ", ln)]
    assert len(errors) == 1, run.stderr
    assert run.stderr.rstrip("\n").splitlines()[-1] == errors[0], "the error is not the last thing said"
    assert len(errors[0]) < 200
    return errors[0]


def read_more_lines(server, seconds: float) -> list[str]:
    """Whatever else the server prints within ``seconds`` (the harness stops reading at the expected lines)."""
    fd = server.proc.stdout.fileno()
    deadline = time.monotonic() + seconds
    buf = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            buf += chunk
    return [ln for ln in buf.decode().split("\n") if ln]


def test_serve_with_no_arguments_starts_everything_on_loopback(spawn, console_script):
    busy = [f"{port}/{t}" for name, t, port in DEFAULTS + OTHER_DEFAULTS
            if port_in_use(port, socket.SOCK_DGRAM if t == "udp" else socket.SOCK_STREAM)]  # fmt: skip
    # Another program (or a suite running beside this one) may hold them: that is the machine, not a defect.
    if busy:
        pytest.skip(f"default port(s) {', '.join(busy)} already in use on this machine: "
                    "`fastframe serve` with no arguments cannot be tested here")  # fmt: skip
    try:
        server = spawn([console_script, "serve"], expect=3, timeout=15)
    except RuntimeError as exc:  # taken between the check and the server's bind
        if "in use" not in str(exc):
            raise
        pytest.skip(f"a default port was taken while the server started: {str(exc)[-300:]}")
    for name, transport, port in DEFAULTS:
        assert server.addr(name, transport) == ("127.0.0.1", port), server.stdout_lines
    # the command service has no allow-list and the file service no root: both disabled, and they say so
    lines = list(server.stdout_lines) + read_more_lines(server, 0.5)
    assert not [ln for ln in lines if ln.startswith(("command ", "files "))], lines
    for line in lines:
        m = re.fullmatch(r"(\w+) (tcp|udp) (\S+):(\d+)", line)
        assert m and m.group(3) == "127.0.0.1", f"not on loopback: {line!r}"
    assert re.search(r"command.*disabled|disabled.*command", server.stderr(), re.IGNORECASE), server.stderr()
    assert re.search(r"files.*disabled.*--root", server.stderr(), re.IGNORECASE), server.stderr()
    with harness.connect(("127.0.0.1", 7007)) as s:
        assert harness.roundtrip(s, b"hello defaults") == b"hello defaults"
    assert abs(get_time("127.0.0.1", 3737, timeout=5) - time.time()) < 3
    assert abs(get_time("127.0.0.1", 3737, tcp=True, timeout=5) - time.time()) < 3
    server.signal(signal.SIGINT)  # Ctrl-C
    code, _took = harness.wait_exit(server, 5)
    assert code == 0, server.stderr()
    assert "Traceback" not in server.stderr()
    assert not port_in_use(7007, socket.SOCK_STREAM)


def test_echo_command_prints_the_replies(serve, console_script):
    server = serve("--echo", "0", "--upper")  # upper-case replies: what is printed really came from the server
    host, port = server.addr("echo")
    run = run_cli(console_script, "echo", f"{host}:{port}", "a", "b c", "", "héllo")
    assert run.returncode == 0, run.stderr
    assert run.stdout == "A\nB C\n\nHéLLO\n"  # --upper is ASCII-only
    # without messages: one frame per line of stdin
    run = run_cli(console_script, "echo", f"{host}:{port}", input="first\nsecond\n")
    assert run.returncode == 0, run.stderr
    assert run.stdout == "FIRST\nSECOND\n"


def test_echo_command_raw(serve, console_script):
    server = serve("--echo", "0", "--raw")
    host, port = server.addr("echo")
    run = run_cli(console_script, "echo", "--raw", f"{host}:{port}", "one", "two")
    assert run.returncode == 0, run.stderr
    assert run.stdout == "one\ntwo\n"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "args",
    [
        ["echo", "no-port-here", "a"],
        ["echo", "127.0.0.1:70000", "a"],
        ["echo"],
        ["time", "127.0.0.1:x"],
        ["time", "127.0.0.1:9", "--time-format", "ntp"],
        ["serve", "--workers", "0"],
        ["serve", "--engine", "threads"],
        ["serve", "--echo", "70000"],
        ["serve", "--echo", "seven"],
        ["serve", "--max-request", "lots"],
        ["serve", "--idle-timeout", "-1"],
        ["serve", "--frame-timeout", "0"],
        ["serve", "--no-such-flag"],
        ["serve", "--secret-file", "/nonexistent/secret"],
        ["frobnicate"],
    ],
    ids=lambda a: " ".join(a),
)
def test_bad_arguments_one_line_no_traceback(console_script, args):
    run = run_cli(console_script, *args, timeout=20)
    assert_one_error_line(run)
    assert run.stdout == ""


def test_client_errors_one_line(console_script, serve):
    closed = _closed_port()
    server = serve("--echo", "0", "--time", "0", expect=3)
    echo_port, time_port = server.port("echo"), server.port("time")
    cases = [
        (["echo", f"127.0.0.1:{closed}", "a"], r"refused"),
        (["time", f"127.0.0.1:{closed}", "--timeout", "2"], r"refused|timed out"),
        (["time", "--tcp", f"127.0.0.1:{closed}", "--timeout", "2"], r"refused"),
        (["echo", f"127.0.0.1:{time_port}", "a"], r"."),  # a time server is not an echo server
        (["time", "--tcp", f"127.0.0.1:{echo_port}", "--timeout", "1"], r"timed out"),  # nor the reverse
    ]
    for args, pattern in cases:
        run = run_cli(console_script, *args, timeout=20)
        line = assert_one_error_line(run)
        assert re.search(pattern, line, re.IGNORECASE), (args, line)


def test_serve_on_a_busy_port_one_line(console_script, workdir):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        run = run_cli(console_script, "serve", "--echo", str(port), timeout=20, cwd=workdir)
    line = assert_one_error_line(run)
    assert str(port) in line and "echo" in line, line


# Every flag the design names for `fastframe serve` (engine, workers, ports, file root, allow-list, secret,
# limits, time format, a config file), plus the echo modes and the pidfile.
SERVE_FLAGS = [
    "--config", "--engine", "--workers", "--host", "--pidfile", "--echo", "--time", "--command", "--files", "--upper", "--raw",
    "--time-format", "--allow", "--root", "--allow-hidden", "--secret-file", "--max-request", "--max-connections", "--idle-timeout",
    "--frame-timeout", "--graceful-timeout",
]  # fmt: skip


def test_serve_help_mentions_every_flag(console_script):
    run = run_cli(console_script, "serve", "--help")
    assert run.returncode == 0, run.stderr
    documented = set(re.findall(r"^\s{2,}(--[\w-]+)", run.stdout, re.MULTILINE))
    missing = [f for f in SERVE_FLAGS if f not in documented]
    assert not missing, f"serve --help does not document {missing}:\n{run.stdout}"
    for word in ("SIGTERM", "SIGHUP", "SIGTTIN"):
        assert word in run.stdout


@pytest.mark.parametrize("content, pattern", [
    ("max_conections = 100\n", r"serve\.toml: unknown setting 'max_conections' \(did you mean 'max_connections'\?\)"),
    ('workers = "four"\n', r"serve\.toml: workers: expected an integer, got a string"),
    ("echo = 7007\nworkers 4\n", r"serve\.toml: not valid TOML: .*line 2"),
    (None, r"cannot read config file .*serve\.toml: No such file or directory"),
], ids=["unknown key", "wrong type", "bad syntax", "missing file"])  # fmt: skip
def test_config_file_errors_one_line(console_script, workdir, tmp_path, content, pattern):
    config_file = tmp_path / "serve.toml"
    if content is not None:
        config_file.write_text(content)
    run = run_cli(console_script, "serve", "--config", str(config_file), timeout=20, cwd=workdir)
    line = assert_one_error_line(run)
    assert run.returncode == 2 and run.stdout == ""
    assert re.search(pattern, line), line


def test_config_file_serves_and_flags_override_it(spawn, console_script, tmp_path, workdir):
    # The file names a port the command line overrides (1: never bindable here), and a mode that stands.
    config_file = tmp_path / "serve.toml"
    config_file.write_text('echo = 1\nupper = true\nhost = "127.0.0.1"\nmax_request = "1k"\n')
    server = spawn([console_script, "serve", "--config", str(config_file), "--echo", "0"], expect=1, cwd=workdir)
    assert server.stdout_lines == [f"echo tcp 127.0.0.1:{server.port('echo')}"]  # only echo: the file named it
    with harness.connect(server.addr("echo")) as s:
        assert harness.roundtrip(s, b"from the file") == b"FROM THE FILE"
        s.sendall(harness.HEADER.pack(2048))  # over the file's max_request: refused by its header
        assert harness.wait_closed(s, 5)[0] in ("eof", "reset")
