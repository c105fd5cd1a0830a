"""The READMEs run as written: every fenced code block of README.md and bench/README.md is exercised here.

One test per block, named by file and line (``README.md:54``).  How each kind of block runs (DEVELOP.md says
the same):

- ``python``: run as a script in a subprocess (a fresh temporary directory, a 60 s timeout, exit status 0)
  while two ``fastframe serve`` processes started by this module run on ephemeral ports: echo (``--upper``)
  and time (``--time-format rfc868``), and command and files (with a shared secret).  A block may name the
  default ports -- 7007 echo, 3737 time, 5140 command, 2121 files -- as a user would against ``fastframe
  serve``: the test rewrites each of those numbers to the port of its own server before running it.
  A block that defines ``main()`` must run it.
- ``sh``: one command at a time (``\\`` continuations joined, ``&&`` chains split, comments dropped), in a
  temporary directory holding what the commands expect there: ``secret.key``, and each ``toml`` block of the
  same file above it, written to the file its first line names (``# serve.toml``).
    - ``fastframe serve ...`` is started with every default port rewritten to 0 (plus ``--echo 0 --time 0``
      when it names no service: what no arguments serve, on free ports); it must come up and exit 0 on
      SIGTERM.
    - ``python bench/X.py ...`` is argument-checked, not run: the script's own parser must accept the line (a
      full bench takes minutes to hours; ``test_bench_smoke.py`` runs the quick modes).
    - any other command (``fastframe echo|time|exec|get``, ``rdate``, ``openssl``) runs under bash with the
      default ports rewritten to this module's servers, a 60 s timeout, exit status 0; a ``# prints X`` comment
      means the output must be X, and ``fastframe time`` must print the current time.
    - ``cd DIR`` is skipped: the test runs outside the source tree already, which is what such lines are for.
    - ``fastframe serve ... &`` stays up for the rest of the block (``kill $!`` stops it gracefully, exit status
      0): each port it names is served on a free one, and the later commands of the block have that number
      rewritten to it; ``sleep N;`` before a command is dropped (the test waits for the listening lines).
    - ``/tmp/fastframe-...`` paths (Unix sockets) are mapped into the test's directory.
- ``toml``: must parse (and is used by the commands after it, above).
- ``haproxy``: ``haproxy -c`` accepts it; ``nginx``: ``nginx -t`` accepts it inside a minimal main
  configuration that loads the stream module; ``ini`` (a systemd unit): it parses, is ``Type=notify``, and the
  ``fastframe serve`` line of its ``ExecStart`` is accepted by the parser of ``serve``; ``conf`` (logrotate):
  ``logrotate --debug`` accepts it.
- ``text``: output and diagrams, nothing to run.  A block without a language fails: say ``text``.

Example paths are mapped to what the test makes: ``/srv/share`` to the served root (which holds
``big.iso``), ``/etc/fastframe/secret.key`` to the secret, ``/path/to/fastframe`` to this checkout.  What
cannot run is listed in ``NOT_RUN`` and ``COMPILE_ONLY`` below, each with its reason; an entry that matches
nothing fails, so the lists cannot outlive the blocks they excuse.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import harness
import pytest
from peertools import require_tool

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef,import-not-found,unused-ignore]

REPO = Path(__file__).resolve().parent.parent
FILES = ("README.md", "bench/README.md")
DEFAULT_PORTS = {7007: ("echo", "tcp"), 3737: ("time", "udp"), 5140: ("command", "tcp"), 2121: ("files", "tcp")}
SECRET = b"a secret for the README's commands, 0123456789"

#: Shell commands that are not run, by how they begin, and why.
NOT_RUN = {
    "pip install": "installs into the environment this suite runs in; .ci/run makes those installs from a fresh clone",
    "FASTFRAME_NO_EXTENSIONS=1 pip install": "a pure-Python install: .ci/run builds and tests exactly that",
    "pytest": "the suite itself, which is what is running this test",
    "apt-get install": "installs a Debian package (root, network): the first step of .ci/run",
    "fastframe serve --host 10.0.0.11": "an application host's own address; tests/deploy/test_scaleout.py serves "
    "these flags on loopback (127.0.0.11-13) behind a real HAProxy",
    'echo "set server': "HAProxy's runtime API on a deployed balancer; test_scaleout.py drains through it",
    "systemctl restart": "a systemd host's unit; test_scaleout.py restarts the servers itself",
}

#: Python blocks that are compiled but not run, by (file, a line of theirs), and why.
COMPILE_ONLY = {
    ("README.md", "while True:"): "the shape of an event loop: forever, around the socket of the block above",
    ("README.md", "# PostgreSQL: a type byte"): "talks to PostgreSQL and MariaDB on their ports; "
    "tests/test_live_servers.py has the same conversation with throwaway servers",
    ("README.md", 'ssl=client_context("server.pem")'): "the asyncio client of the TLS server the block above "
    "starts (server.pem from its openssl line); tests/tls/test_aio_tls.py runs the same calls against a TLS server",
}


class Block(NamedTuple):
    file: str
    line: int  # of the opening fence
    lang: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


def blocks() -> list[Block]:
    found = []
    for name in FILES:
        lines = (REPO / name).read_text().split("\n")
        i = 0
        while i < len(lines):
            m = re.match(r"^\s*```(\S*)\s*$", lines[i])
            if m:
                start, body = i, []
                i += 1
                while not re.match(r"^\s*```\s*$", lines[i]):
                    body.append(lines[i])
                    i += 1
                found.append(Block(name, start + 1, m.group(1), "\n".join(body) + "\n"))
            i += 1
    return found


BLOCKS = blocks()


def with_ports(text: str, ports: dict[int, int]) -> str:
    """Each default port number (a whole number, not part of another) rewritten through ``ports``."""
    return re.sub(r"(?<![\d.])(7007|3737|5140|2121)(?![\d])", lambda m: str(ports[int(m.group(1))]), text)


def with_paths(text: str, root: Path, secret: Path) -> str:
    return (
        text.replace("/srv/share", str(root))
        .replace("/etc/fastframe/secret.key", str(secret))
        .replace("/path/to/fastframe", str(REPO))
    )


# -- the servers the blocks talk to -------------------------------------------------------------------------


class Env(NamedTuple):
    ports: dict[int, int]  # default port -> this module's server's
    root: Path
    secret: Path


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    base = tmp_path_factory.mktemp("readme")
    root = base / "share"
    root.mkdir()
    (root / "big.iso").write_bytes(os.urandom(1 << 20))
    secret = base / "secret.key"
    secret.write_bytes(SECRET)
    secret.chmod(0o600)
    plain = harness.ServerProcess(["--echo", "0", "--upper", "--time", "0", "--time-format", "rfc868"], expect=3)
    try:
        guarded = harness.ServerProcess(
            ["--command", "0", "--allow", "ls", "--allow", "df", "--files", "0", "--root", str(root),
             "--secret-file", str(secret)], expect=2,
        )  # fmt: skip
    except BaseException:
        plain.stop()
        raise
    servers = {"echo": plain, "time": plain, "command": guarded, "files": guarded}
    ports = {port: servers[name].port(name, transport) for port, (name, transport) in DEFAULT_PORTS.items()}
    try:
        yield Env(ports, root, secret)
    finally:
        harness.stop_gracefully(plain)
        harness.stop_gracefully(guarded)


def run(where: str, argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``argv`` in ``cwd`` with this interpreter's bin directory first on PATH (``fastframe`` and ``python`` are
    the ones under test), stdin closed, 60 s at most: a hang fails the test, naming the block."""
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    try:
        return subprocess.run(
            argv, cwd=cwd, capture_output=True, text=True, timeout=60, env=dict(os.environ, PATH=path),
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{where}: still running after 60 s: {shlex.join(argv)[-300:]}\n{exc.stdout!r}\n{exc.stderr!r}")


# -- python blocks ------------------------------------------------------------------------------------------


def compile_only_reason(block: Block) -> str | None:
    for (name, line), reason in COMPILE_ONLY.items():
        if block.file == name and line in block.text:
            return reason
    return None


def never_called(source: str) -> list[str]:
    """Functions named ``main`` that the block defines and never calls (a snippet that does nothing)."""
    tree = ast.parse(source)
    defined = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == "main"]
    called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    return [name for name in defined if name not in called]


def run_python(block: Block, env: Env, workdir: Path) -> None:
    if compile_only_reason(block) is not None:
        compile(block.text, block.where, "exec")
        return
    assert not never_called(block.text), f"{block.where}: defines {never_called(block.text)[0]}() and never runs it"
    script = workdir / "block.py"
    script.write_text(with_ports(block.text, env.ports))
    proc = run(block.where, [sys.executable, str(script)], workdir)
    assert proc.returncode == 0, f"{block.where}: the python block failed:\n{proc.stdout}{proc.stderr[-3000:]}"


# -- sh blocks ----------------------------------------------------------------------------------------------


def commands(text: str) -> list[tuple[str, str]]:
    """(command, its comment) for each command of a shell block: continuations joined, ``&&`` chains split."""
    out: list[tuple[str, str]] = []
    for line in text.replace("\\\n", " ").split("\n"):
        m = re.match(r"^(.*?)(?:\s+#\s*(.*))?$", line.strip())
        assert m is not None
        command, comment = m.group(1).strip(), m.group(2) or ""
        if command.startswith("#"):
            command, comment = "", command[1:].strip()
        parts = [p.strip() for p in command.split(" && ")] if command else []
        out.extend((part, comment if i == len(parts) - 1 else "") for i, part in enumerate(parts))
    return out


def not_run_reason(command: str) -> str | None:
    for start, reason in NOT_RUN.items():
        if command == start or command.startswith(start + " "):
            return reason
    return None


ARGUMENTS_ONLY = """
import argparse, runpy, sys
parse = argparse.ArgumentParser.parse_args
def accept(self, args=None, namespace=None):
    parse(self, args, namespace)
    print("arguments accepted")
    raise SystemExit(0)
argparse.ArgumentParser.parse_args = accept
sys.argv = sys.argv[1:]
sys.path.insert(0, sys.argv[0].rsplit("/", 1)[0])  # as `python SCRIPT` does
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def check_bench_arguments(where: str, argv: list[str], workdir: Path) -> None:
    script = Path(argv[1]) if os.path.isabs(argv[1]) else REPO / argv[1]
    assert script.is_file(), f"{where}: {argv[1]} does not exist"
    proc = run(where, [sys.executable, "-c", ARGUMENTS_ONLY, str(script), *argv[2:]], workdir)
    assert proc.returncode == 0 and "arguments accepted" in proc.stdout, (
        f"{where}: {shlex.join(argv)!r} is not accepted by its script:\n{proc.stdout}{proc.stderr[-2000:]}"
    )


def start_and_stop_serve(where: str, argv: list[str], workdir: Path) -> None:
    args = argv[2:]
    if not any(a.lstrip("-") in ("echo", "time", "command", "files", "config") for a in args):
        args += ["--echo", "0", "--time", "0"]  # what no arguments serve, on free ports
    server = harness.ServerProcess(args, expect=1, cwd=str(workdir))
    try:
        assert harness.wait_until(lambda: "serving with" in server.stderr()), (
            f"{where}: {shlex.join(argv)!r} never said it was serving:\n{server.stderr()[-2000:]}"
        )
        server.signal(signal.SIGTERM)
        code, _ = harness.wait_exit(server, 15)
        assert code == 0, f"{where}: {shlex.join(argv)!r} exited {code} on SIGTERM:\n{server.stderr()[-2000:]}"
    finally:
        server.stop()


def start_in_background(
    where: str, argv: list[str], workdir: Path, block_ports: dict[int, int]
) -> harness.ServerProcess:
    """``fastframe serve ... &``: serve each port it names on a free one (recorded in ``block_ports``)."""
    args, named = [], []
    for arg in argv[2:]:
        if args and args[-1].lstrip("-") in ("echo", "time", "command", "files") and arg.isdigit() and arg != "0":
            named.append((args[-1].lstrip("-"), int(arg)))
            arg = "0"
        args.append(arg)
    server = harness.ServerProcess(args, expect=len(named) or 1, cwd=str(workdir))
    for name, port in named:
        block_ports[port] = server.port(name)
    assert harness.wait_until(lambda: "serving with" in server.stderr()), f"{where}: {shlex.join(argv)!r} never served"
    return server


def stop_background(where: str, server: harness.ServerProcess) -> None:
    try:
        server.signal(signal.SIGTERM)
        code, _ = harness.wait_exit(server, 15)
        assert code == 0, f"{where}: the background server exited {code} on SIGTERM:\n{server.stderr()[-2000:]}"
    finally:
        server.stop()


def with_block_ports(text: str, ports: dict[int, int]) -> str:
    for old, new in ports.items():
        text = re.sub(rf"(?<![\d.]){old}(?![\d])", str(new), text)
    return text


def run_command(where: str, command: str, comment: str, env: Env, workdir: Path) -> None:
    if command.split()[0] in ("rdate", "openssl"):
        require_tool(command.split()[0])
    proc = run(where, ["bash", "-c", with_ports(command, env.ports)], workdir)
    said = f"{where}: {command!r} exited {proc.returncode}:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
    assert proc.returncode == 0, said
    printed = re.match(r"prints (.+?)(?: (?:with|when|if) .*)?$", comment)
    if printed:
        assert proc.stdout.strip() == printed.group(1), (
            f"{where}: {command!r} does not print {printed.group(1)!r}:\n{said}"
        )
    if command.startswith("fastframe time"):
        m = re.search(r"\((\d+)\)$", proc.stdout.strip())
        assert m and abs(int(m.group(1)) - time.time()) < 300, f"{where}: not the current time:\n{said}"


def run_sh(block: Block, env: Env, workdir: Path) -> int:
    """Run the block's commands; return how many ran (in any of the ways above)."""
    secret = workdir / "secret.key"
    secret.write_bytes(SECRET)
    secret.chmod(0o600)
    serve_ports = dict.fromkeys(DEFAULT_PORTS, 0)
    for earlier in BLOCKS:  # the toml blocks above this one, where their first line says
        if earlier.file == block.file and earlier.line < block.line and earlier.lang == "toml":
            name = re.match(r"#\s*(\S+)", earlier.text)
            if name:
                text = with_ports(with_paths(earlier.text, env.root, env.secret), serve_ports)
                (workdir / name.group(1)).write_text(text)
    ran = 0
    background: list[harness.ServerProcess] = []
    block_ports: dict[int, int] = {}
    try:
        for command, comment in commands(block.text):
            ran += run_one(block, command, comment, env, workdir, background, block_ports)
    finally:
        for server in background:
            server.stop()
    return ran


def run_one(block: Block, command: str, comment: str, env: Env, workdir: Path,
            background: list[harness.ServerProcess], block_ports: dict[int, int]) -> int:  # fmt: skip
    """Run one command of a shell block (see the module docstring); 1 if it ran, 0 if excused."""
    if not command or not_run_reason(command) is not None:
        return 0
    command = re.sub(r"^sleep [\d.]+;\s*", "", command)
    command = with_block_ports(with_paths(command, env.root, env.secret), block_ports)
    command = command.replace("/tmp/fastframe-", f"{workdir}/fastframe-")
    argv = shlex.split(command)
    if argv == ["kill", "$!"]:
        assert background, f"{block.where}: `kill $!` with nothing in the background"
        stop_background(block.where, background.pop())
    elif argv[:2] == ["fastframe", "serve"] and argv[-1] == "&":
        background.append(start_in_background(block.where, argv[:-1], workdir, block_ports))
    else:
        run_plain(block, command, comment, env, workdir)
    return 1


def run_plain(block: Block, command: str, comment: str, env: Env, workdir: Path) -> None:
    argv = shlex.split(command)
    if argv[0] == "cd":
        pass
    elif argv[:2] == ["fastframe", "serve"]:
        start_and_stop_serve(block.where, shlex.split(with_ports(command, dict.fromkeys(DEFAULT_PORTS, 0))), workdir)
    elif argv[0] == "python" and argv[1].endswith(".py") and "/bench/" in "/" + argv[1]:
        check_bench_arguments(block.where, argv, workdir)
    else:
        run_command(block.where, command, comment, env, workdir)


# -- configuration files ------------------------------------------------------------------------------------


def check_haproxy(block: Block, workdir: Path) -> None:
    haproxy = require_tool("haproxy")
    path = workdir / "haproxy.cfg"
    path.write_text(block.text)
    proc = run(block.where, [haproxy, "-c", "-f", str(path)], workdir)
    assert proc.returncode == 0, f"{block.where}: haproxy -c refuses it:\n{proc.stdout}{proc.stderr}"


STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"


def check_nginx(block: Block, workdir: Path) -> None:
    nginx = require_tool("nginx")
    if not os.path.exists(STREAM_MODULE):
        require_tool("ngx_stream_module")  # not a command: fails in CI, skips elsewhere, naming the package
    path = workdir / "nginx.conf"
    path.write_text(f"load_module {STREAM_MODULE};\nerror_log stderr;\npid {workdir}/nginx.pid;\n"
                    f"events {{}}\n{block.text}")  # fmt: skip
    proc = run(block.where, [nginx, "-t", "-c", str(path), "-p", str(workdir)], workdir)
    assert proc.returncode == 0, f"{block.where}: nginx -t refuses it:\n{proc.stdout}{proc.stderr}"


def check_unit(block: Block, workdir: Path) -> None:
    import configparser

    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(block.text.replace("\\\n", " "))
    assert unit["Service"]["Type"] == "notify", f"{block.where}: not a Type=notify unit"
    argv = shlex.split(unit["Service"]["ExecStart"])
    assert argv[0].endswith("/fastframe") and argv[1] == "serve", f"{block.where}: ExecStart is not fastframe serve"
    proc = run(block.where, [sys.executable, "-c", ARGUMENTS_ONLY.replace("runpy.run_path(sys.argv[0]",
               "runpy.run_module('fastframe'"), "fastframe", *argv[1:]], workdir)  # fmt: skip
    assert proc.returncode == 0 and "arguments accepted" in proc.stdout, (
        f"{block.where}: serve refuses the unit's ExecStart:\n{proc.stdout}{proc.stderr[-2000:]}"
    )


def check_logrotate(block: Block, workdir: Path) -> None:
    logrotate = require_tool("logrotate")
    path = workdir / "fastframe.logrotate"
    path.write_text(block.text)
    proc = run(block.where, [logrotate, "--debug", "--state", str(workdir / "state"), str(path)], workdir)
    assert proc.returncode == 0 and "error" not in proc.stderr.lower(), (
        f"{block.where}: logrotate refuses it:\n{proc.stdout}{proc.stderr}"
    )


CONFIG_CHECKS = {"haproxy": check_haproxy, "nginx": check_nginx, "ini": check_unit, "conf": check_logrotate}


# -- the tests ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("block", BLOCKS, ids=[b.where for b in BLOCKS])
def test_block_runs_as_written(block: Block, env: Env, tmp_path: Path) -> None:
    assert block.lang, f"{block.where}: a code block without a language (say `text` for output)"
    if block.lang == "python":
        run_python(block, env, tmp_path)
    elif block.lang == "sh":
        ran = run_sh(block, env, tmp_path)
        runnable = [c for c, _ in commands(block.text) if c and not_run_reason(c) is None]
        assert ran == len(runnable), f"{block.where}: {len(runnable) - ran} commands skipped without a reason"
    elif block.lang == "toml":
        tomllib.loads(block.text)
    elif block.lang in CONFIG_CHECKS:
        CONFIG_CHECKS[block.lang](block, tmp_path)
    else:
        assert block.lang == "text", f"{block.where}: no rule for a `{block.lang}` block (see this test's docstring)"


def test_every_excuse_still_excuses_something() -> None:
    shell = [c for b in BLOCKS if b.lang == "sh" for c, _ in commands(b.text) if c]
    for start in NOT_RUN:
        assert any(c == start or c.startswith(start + " ") for c in shell), f"NOT_RUN[{start!r}] matches no command"
    for name, line in COMPILE_ONLY:
        assert any(b.file == name and line in b.text for b in BLOCKS), f"COMPILE_ONLY: no block of {name} has {line!r}"
    assert len(BLOCKS) >= 20, "the block extraction found too little: is the fence syntax still ```lang?"
