"""``fastframe exec`` / ``fastframe get`` / ``fastframe serve`` for the command and file services."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import harness
import pytest


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cliroot")
    (path / "small.txt").write_text("small file\n")
    (path / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    return path


@pytest.fixture(scope="module")
def server(start_server: Callable[..., Any], root: Path) -> Any:
    allow = [a for name in ("sh", "echo", "sleep") for a in ("--allow", name)]
    return start_server(
        "--command", "0", "--files", "0", *allow, "--command-timeout", "1", "--root", str(root), expect=2
    )


def addr(server: Any, name: str) -> str:
    host, port = server.addr(name)
    return f"{host}:{port}"


def one_line(stderr: bytes) -> str:
    text = stderr.decode()
    assert text.count("\n") == 1 and text.startswith("fastframe: error: "), text
    return text


def test_exec_streams_and_exits_with_the_status(server: Any) -> None:
    run = harness.fastframe_cli("exec", addr(server, "command"), "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (run.returncode, run.stdout, run.stderr) == (3, b"out\n", b"err\n")
    run = harness.fastframe_cli("exec", addr(server, "command"), "--", "echo", "a  b", "$(id)")
    assert (run.returncode, run.stdout) == (0, b"a  b $(id)\n")


def test_exec_exit_codes(server: Any) -> None:
    run = harness.fastframe_cli("exec", addr(server, "command"), "--", "sh", "-c", "kill -TERM $$")
    assert run.returncode == 128 + 15
    run = harness.fastframe_cli("exec", addr(server, "command"), "--", "rm", "-rf", "/")
    assert run.returncode == 127 and "not-allowed" in one_line(run.stderr)
    run = harness.fastframe_cli("exec", addr(server, "command"), "--", "sleep", "5")
    assert run.returncode == 124 and "timeout" in one_line(run.stderr)
    run = harness.fastframe_cli("exec", addr(server, "command"))
    assert run.returncode == 2  # argparse: CMD is required


def test_exec_connection_refused_is_one_line() -> None:
    run = harness.fastframe_cli("exec", "127.0.0.1:1", "--", "echo", "x")
    assert run.returncode == 1
    one_line(run.stderr)


def test_get(server: Any, root: Path, tmp_path: Path) -> None:
    run = harness.fastframe_cli("get", addr(server, "files"), "small.txt", cwd=str(tmp_path))
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "small.txt").read_text() == "small file\n"
    out = tmp_path / "copy.bin"
    run = harness.fastframe_cli("get", addr(server, "files"), "big.bin", "-o", str(out))
    assert run.returncode == 0 and run.stderr == b""  # no progress bar: stderr is not a terminal
    assert out.read_bytes() == (root / "big.bin").read_bytes()
    (tmp_path / "resumed.part").write_bytes((root / "big.bin").read_bytes()[:1000000])
    run = harness.fastframe_cli("get", addr(server, "files"), "big.bin", "-o", str(tmp_path / "resumed"), "--resume")
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "resumed").read_bytes() == (root / "big.bin").read_bytes()


def test_get_errors_are_one_line(server: Any, tmp_path: Path) -> None:
    for path, code in (("../x", "forbidden"), ("missing", "not-found")):
        run = harness.fastframe_cli("get", addr(server, "files"), path, "-o", str(tmp_path / "out"))
        assert run.returncode == 1 and code in one_line(run.stderr)
    assert os.listdir(tmp_path) == []


def test_progress_bar_on_a_terminal(server: Any, tmp_path: Path, workdir: str) -> None:
    import pty
    import subprocess
    import sys

    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fastframe", "get", addr(server, "files"), "big.bin", "-o", str(tmp_path / "b")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave, cwd=workdir,
        )  # fmt: skip
        os.close(slave)
        slave = -1
        assert proc.wait(30) == 0
        seen = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    assert b"100%" in seen and b"3.0 MiB" in seen, seen


def test_command_refuses_a_public_address_without_a_secret() -> None:
    run = harness.fastframe_cli("serve", "--command", "0", "--allow", "ls", "--host", "0.0.0.0", timeout=20)
    assert run.returncode == 2 and run.stdout == b""
    assert "secret" in one_line(run.stderr)


def test_command_needs_an_allow_list() -> None:
    run = harness.fastframe_cli("serve", "--command", "0", timeout=20)
    assert run.returncode == 2 and "--allow" in one_line(run.stderr)
    run = harness.fastframe_cli("serve", "--command", "0", "--allow", "no-such-program-xyz", timeout=20)
    assert run.returncode == 2 and "no-such-program-xyz" in one_line(run.stderr)


def test_serve_without_service_flags_plans_echo_and_time(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # In-process and without binding: the default ports are fixed and may be taken by other test runs.
    # The services that expose the machine start only when told what to expose: an allow-list, a root.
    from fastframe.servers import config as cfg

    names = [name for name, _, _ in cfg._services(cfg.ServeConfig())]
    assert names == ["echo", "time"]
    err = capsys.readouterr().err
    assert "command service disabled: no --allow list" in err and "files service disabled: no --root" in err
    names = [name for name, _, _ in cfg._services(cfg.ServeConfig(root=str(tmp_path)))]
    assert names == ["echo", "time", "files"]
    names = [name for name, _, _ in cfg._services(cfg.ServeConfig(root=str(tmp_path), allow=["ls"]))]
    assert names == ["echo", "time", "command", "files"]
    names = [name for name, _, _ in cfg._services(cfg.ServeConfig(allow=["ls"], host="0.0.0.0"))]
    assert names == ["echo", "time"]
    assert "command service disabled: refusing" in capsys.readouterr().err


def test_files_needs_a_root(tmp_path: Path) -> None:
    # Run in a directory full of dotfiles: without --root, none of it may be served.
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "id_ed25519").write_text("PRIVATE KEY")
    run = harness.fastframe_cli("serve", "--files", "0", timeout=20, cwd=str(tmp_path))
    assert run.returncode == 2 and run.stdout == b""
    assert "--root" in one_line(run.stderr)


@pytest.mark.parametrize("host, secret, warned", [
    ("0.0.0.0", None, "without TLS or --secret-file"),
    ("0.0.0.0", b"s" * 16, "without TLS: its bytes cross the network unencrypted"),
    ("::", None, "without TLS or --secret-file"),
    ("127.0.0.2", None, None),
    ("::1", None, None),
    ("localhost", None, None),
])  # fmt: skip
def test_files_beyond_loopback_warns_once(
    caplog: pytest.LogCaptureFixture, tmp_path: Path, host: str, secret: Any, warned: Any
) -> None:
    # In-process: building the service logs the start-up warning; nothing is bound.
    from fastframe.servers import config as cfg
    from fastframe.servers.config import build_file_service

    with caplog.at_level("WARNING", logger="fastframe.server"):
        build_file_service(cfg.ServeConfig(root=str(tmp_path), host=host, secret=secret))
    lines = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    if warned is None:
        assert lines == []
    else:
        assert len(lines) == 1 and warned in lines[0] and str(tmp_path) in lines[0], lines


def test_serve_help_describes_the_exposing_services() -> None:
    run = harness.fastframe_cli("serve", "--help", timeout=20)
    text = " ".join(run.stdout.decode().split())
    assert run.returncode == 0
    assert "no --root, no file service" in text and "--allow-hidden" in text and "the current directory" not in text
