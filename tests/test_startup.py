"""Start-up stays small: each CLI command imports what it uses and nothing else.

A client command is a whole process, so its start-up is most of a small request (issue 13: `fastframe get`
of 4 KiB took 135 ms against 15 ms for curl).  A timing assertion would be flaky; what made it slow was
imports, so these tests pin those down instead: each runs a code path in a fresh interpreter and lists the
modules it loaded.  A module that creeps back (the servers behind `get`, logging, asyncio, a metadata
scan, argparse or typing or json behind a plain client command) fails here, whatever the machine's speed.
A plain client command line is read without argparse (fastframe._quickargs); the last tests check that
reader against argparse itself.
"""

from __future__ import annotations

import ast
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

#: Never needed by a client command or by `--version`.
NEVER = (
    "fastframe.servers",
    "fastframe.aio",
    "asyncio",
    "logging",
    "importlib.metadata",
    "platform",
    "subprocess",
    "multiprocessing",
    "threading",
    "ssl",
)
#: Never needed by a plain client command line without --tls: argparse (with gettext, locale, and shutil for
#: the terminal width) reads only the unusual ones, typing and json are never imported at run time, an ASCII
#: host name is resolved without the idna codec, the sockets are the C module's (socket.py brings enum and
#: selectors, and builds its IntEnum tables at import), the codec is chosen without importlib and warnings, and
#: TLS is loaded by --tls only.  (An editable install's import hook loads some of these before the probe runs:
#: loaded_by() leaves those out, so this list bites fully on a regular install.)
CLIENT_NEVER = NEVER + (
    "argparse", "gettext", "locale", "shutil", "typing", "json", "encodings.idna", "socket", "selectors", "enum",
    "importlib", "warnings", "fastframe._tls",
)  # fmt: skip
#: Needed only by the commands that use them (get: json and the file protocol; exec: shlex and the command
#: protocol; a secret: the HMAC handshake).
ON_DEMAND = (
    "json",
    "shlex",
    "hashlib",
    "hmac",
    "secrets",
    "fastframe.wire.auth",
    "fastframe.wire.command",
    "fastframe.wire.files",
)


def loaded_by(code: str, cwd: Path) -> set[str]:
    """Run ``code`` in a fresh interpreter (after ``from fastframe.cli import main``) and return every module
    it loaded on top of the interpreter's own start-up (site, and an editable install's import hook: what
    ``python -c pass`` loads too).  The probe itself imports nothing: it prints sys.modules with builtins only."""
    probe = textwrap.dedent(
        """
        import sys
        before = set(sys.modules)
        from fastframe.cli import main
        try:
        {body}
        except SystemExit:
            pass
        print(repr(sorted(set(sys.modules) - before)))
        """
    ).format(body=textwrap.indent(textwrap.dedent(code).strip(), "    "))
    env = {k: v for k, v in os.environ.items() if k not in ("FASTFRAME_PURE_PYTHON", "PYTHONWARNINGS")}
    proc = subprocess.run(
        [sys.executable, "-c", probe], cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return set(ast.literal_eval(proc.stdout.strip().splitlines()[-1]))


def offending(modules: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == f or m.startswith(f + ".") for f in forbidden))


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound here and never listened on, so nothing else takes it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def test_importing_the_cli_loads_no_command(tmp_path: Path) -> None:
    modules = loaded_by("pass", tmp_path)
    assert "fastframe.cli" in modules  # the probe did run
    assert not offending(modules, CLIENT_NEVER + ON_DEMAND + ("fastframe.client", "fastframe._quickargs"))


def test_version_builds_no_subcommand(tmp_path: Path) -> None:
    modules = loaded_by('main(["--version"])', tmp_path)
    assert "argparse" in modules  # (it prints the version)
    assert not offending(modules, NEVER + ON_DEMAND + ("fastframe.client", "typing"))


def test_get_loads_only_what_a_download_needs(tmp_path: Path, refused_port: int) -> None:
    """Up to the connect (refused here): the client and the file protocol; no server, no argparse, no json."""
    modules = loaded_by(f'main(["get", "127.0.0.1:{refused_port}", "f", "-o", "out", "--timeout", "5"])', tmp_path)
    assert "fastframe._download" in modules and "fastframe.wire.files" in modules  # it got as far as the download
    # The metadata frame is read with FramedSocket: without a secret, nothing of the handshake is loaded.
    assert not offending(modules, CLIENT_NEVER + ("shlex", "hashlib", "hmac", "secrets", "fastframe.wire.auth",
                                                  "fastframe.wire.command"))  # fmt: skip
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.part").exists()


def test_echo_loads_neither_json_nor_the_handshake(tmp_path: Path, refused_port: int) -> None:
    modules = loaded_by(f'main(["echo", "127.0.0.1:{refused_port}", "hi", "--timeout", "5"])', tmp_path)
    assert "fastframe.client" in modules
    assert not offending(modules, CLIENT_NEVER + ON_DEMAND)


def test_exec_without_a_secret_loads_no_handshake(tmp_path: Path, refused_port: int) -> None:
    modules = loaded_by(f'main(["exec", "127.0.0.1:{refused_port}", "--", "true"])', tmp_path)
    assert "fastframe.client" in modules
    assert "fastframe.wire.command" in modules
    # exec quotes its argv with shlex, and shlex (like the command splitter of fastframe.wire.command) imports re,
    # which imports enum: the one exception to CLIENT_NEVER, seen only in a regular install (an editable
    # install's import hook has loaded re before the check).
    never = tuple(m for m in CLIENT_NEVER if m != "enum")
    assert not offending(modules, never + ("json", "hashlib", "hmac", "secrets", "fastframe.wire.auth",
                                    "fastframe.wire.files"))  # fmt: skip


def test_help_still_lists_every_command(tmp_path: Path) -> None:
    """The parser is built per command; --help and a wrong command still see all of them."""
    env = {k: v for k, v in os.environ.items() if k != "FASTFRAME_PURE_PYTHON"}
    commands = ("serve", "echo", "time", "exec", "get")
    run = subprocess.run([sys.executable, "-m", "fastframe", "--help"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert all(f"    {c} " in run.stdout for c in commands), run.stdout
    run = subprocess.run([sys.executable, "-m", "fastframe", "frobnicate"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert run.returncode == 2
    assert all(repr(c) in run.stderr for c in commands), run.stderr
    run = subprocess.run([sys.executable, "-m", "fastframe", "get", "--help"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert run.returncode == 0 and run.stdout.startswith("usage: fastframe get "), run.stdout


def test_no_client_path_loads_the_servers(tmp_path: Path) -> None:
    """Clients speak the protocols of fastframe.wire and never import the server package: every client
    function, run to success against real services (one of them with a shared secret), in one fresh
    interpreter, leaves no fastframe.servers module behind."""
    from harness import ServerProcess

    root = tmp_path / "root"
    root.mkdir()
    (root / "f.txt").write_bytes(b"file bytes")
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(b"0123456789abcdef0123")
    common = ["--root", str(root), "--allow", "echo", "--command", "0", "--files", "0"]
    plain = ServerProcess(["--echo", "0", "--time", "0", *common], expect=5, cwd=str(tmp_path))
    with plain, ServerProcess([*common, "--secret-file", str(secret_file)], expect=2, cwd=str(tmp_path)) as guarded:
        probe = textwrap.dedent(
            f"""
            import sys, time
            from fastframe import client
            out = bytearray()
            assert client.echo("127.0.0.1", {plain.port("echo")}, [b"hi"]) == [b"hi"]
            assert abs(client.get_time("127.0.0.1", {plain.port("time", "udp")}) - time.time()) < 60
            assert abs(client.get_time("127.0.0.1", {plain.port("time")}, tcp=True) - time.time()) < 60
            assert client.exec_command("127.0.0.1", {plain.port("command")}, ["echo", "a b"], stdout=out.extend) == 0
            assert client.get_file("127.0.0.1", {plain.port("files")}, "f.txt", "out1") == 10
            secret = b"0123456789abcdef0123"
            assert client.exec_command("127.0.0.1", {guarded.port("command")}, "echo x", secret=secret,
                                       stdout=out.extend) == 0
            assert client.get_file("127.0.0.1", {guarded.port("files")}, "f.txt", "out2", secret=secret) == 10
            assert out == b"a b\\nx\\n", out
            print(repr(sorted(sys.modules)))
            """
        )
        env = {k: v for k, v in os.environ.items() if k != "FASTFRAME_PURE_PYTHON"}
        proc = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=60, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    modules = set(ast.literal_eval(proc.stdout.strip().splitlines()[-1]))
    assert {"fastframe.wire.auth", "fastframe.wire.files", "fastframe.wire.timeformat"} <= modules  # it ran them
    assert not offending(modules, ("fastframe.servers",))
    assert (tmp_path / "out1").read_bytes() == (tmp_path / "out2").read_bytes() == b"file bytes"


def test_plain_client_commands_run_without_argparse(tmp_path: Path) -> None:
    """`get`, `echo` and `time` through the CLI's main(), to success against real services: the file arrives,
    and none of them loaded argparse, typing, json, the idna codec, TLS or the servers."""
    from harness import ServerProcess

    root = tmp_path / "root"
    root.mkdir()
    (root / "f.txt").write_bytes(b"file bytes")
    with ServerProcess(["--echo", "0", "--time", "0", "--files", "0", "--root", str(root)], expect=4,
                       cwd=str(tmp_path)) as server:  # fmt: skip
        echo, files = f"127.0.0.1:{server.port('echo')}", f"127.0.0.1:{server.port('files')}"
        modules = loaded_by(
            f"""
            assert main(["get", "{files}", "f.txt", "-o", "out", "--timeout", "10"]) == 0
            assert main(["get", "--quiet", "{files}", "f.txt", "--output=again"]) == 0
            assert main(["echo", "{echo}", "hi"]) == 0
            assert main(["time", "127.0.0.1:{server.port("time", "udp")}"]) == 0
            """,
            tmp_path,
        )
    assert (tmp_path / "out").read_bytes() == (tmp_path / "again").read_bytes() == b"file bytes"
    assert {"fastframe._quickargs", "fastframe._download", "fastframe.wire.timeformat"} <= modules
    assert not offending(modules, CLIENT_NEVER + ("shlex", "hashlib", "hmac", "secrets", "fastframe.wire.auth",
                                                  "fastframe.wire.command"))  # fmt: skip


# -- the quick reader of plain command lines, against argparse ---------------------------------------------

#: Command lines the quick reader takes on its own (so a plain `fastframe get` never builds a parser).
PLAIN = [
    ["get", "127.0.0.1:8000", "f.txt"],
    ["get", "127.0.0.1:8000", "dir/f.txt", "-o", "out", "--timeout", "2.5", "--quiet"],
    ["get", "--resume", "--secret-file", "s", ":8000", "f", "--output=", "--timeout=7"],
    ["get", "[::1]:8000", "f", "--tls", "--cafile", "ca.pem", "--server-name", "x", "--insecure"],
    ["get", "h:1", "f", "-o", "a", "-o", "b"],
    ["get", "--", "h:1", "-f"],
    ["echo", "127.0.0.1:7"],
    ["echo", "127.0.0.1:7", "a", "b c", "", "--raw"],
    ["echo", "--timeout", "1", "h:7", "--", "-x", "y"],
    ["time", "h:37", "--tcp", "--time-format", "rfc868"],
    ["exec", "h:9", "--", "ls", "-l", "--color"],
    ["exec", "--timeout", "3", "h:9", "echo", "hi"],
]
#: Command lines that are not plain: argparse reads them (and some are errors).
UNUSUAL = [
    ["get", "h:1", "--out", "x"],  # an abbreviation
    ["get", "h:1", "f", "-ox"],
    ["get", "h:1", "f", "-h"],
    ["get", "h:1", "f", "--timeout", "-1"],
    ["get", "h:1", "f", "--timeout", "0"],
    ["get", "h:1", "f", "--timeout", "soon"],
    ["get", "h:1", "-o", "x", "f"],  # an option inside the positional run
    ["get", "h:1"],
    ["get", "h:1", "f", "g"],
    ["get", "bad address", "f"],
    ["get", "h:1", "f", "--quiet=yes"],
    ["get", "h:1", "f", "-o"],
    ["get", "h:1", "f", "-o", "--quiet"],
    ["get", "-", "f"],
    ["echo", "h:7", "--raw", "a"],  # argparse: 'a' is unrecognized (the messages took nothing)
    ["echo", "h:7", "--", "a", "--", "b"],
    ["time", "h:37", "--time-format", "iso"],
    ["exec", "h:9"],
    ["exec", "h:9", "--timeout", "3", "--", "ls"],
    ["frobnicate", "x"],
    [],
]


def _argparse_or_exit(argv: list[str]) -> object:
    from fastframe.cli import build_parser

    try:
        return vars(build_parser([argv[0]] if argv else []).parse_args(argv))
    except SystemExit as exc:
        return ("exit", exc.code)


@pytest.mark.parametrize("argv", PLAIN + UNUSUAL, ids=lambda a: " ".join(a) or "(none)")
def test_quick_reader_agrees_with_argparse(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from fastframe.cli import _quick_args

    quick = _quick_args(argv)
    if argv in PLAIN:
        assert quick is not None
    if quick is not None:
        assert vars(quick) == _argparse_or_exit(argv)
    else:
        assert argv not in PLAIN
    capsys.readouterr()  # (argparse's messages for the unusual lines)


def test_quick_reader_declines_the_unusual() -> None:
    """Each UNUSUAL line goes to argparse, so its result or error message is argparse's own."""
    from fastframe.cli import _quick_args

    taken = [argv for argv in UNUSUAL if _quick_args(argv) is not None]
    assert taken == []
