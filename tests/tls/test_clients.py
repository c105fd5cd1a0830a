"""The clients over TLS (Python API and `fastframe echo|exec|get|time --tls`), against ``fastframe serve
--tls-cert --tls-key`` (the select engine; both engines are in test_engine.py).

The shared-secret handshake runs inside TLS when both are set; a download over TLS reaches ``OUT.part`` by
``recv_into`` in large blocks; every TLS mistake a user can make ends in one line and a non-zero status.
"""

from __future__ import annotations

import ast
import hashlib
import os
import re
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import pytest
from harness import ServerProcess, wait_until

from fastframe import _tls, client

SECRET = b"correct horse battery staple 0123456789"


@pytest.fixture
def files_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    (root / "small.txt").write_bytes(b"hello over tls\n")
    with open(root / "big.bin", "wb") as f:  # 24 MiB of non-repeating bytes, written in pieces
        for i in range(24):
            f.write(hashlib.sha256(b"%d" % i).digest() * (1 << 15))
    return root


class Services:
    """Several ``fastframe serve --tls-*`` processes, each service known by a name: ``port(name)``."""

    def __init__(self) -> None:
        self.where: dict[str, tuple[ServerProcess, str]] = {}

    def add(self, server: ServerProcess, **names: str) -> None:
        for name, service in names.items():
            self.where[name] = (server, service)

    def port(self, name: str) -> int:
        server, service = self.where[name]
        return server.port(service)

    def stderr(self, name: str) -> str:
        return self.where[name][0].stderr()


def _tls_flags(pki: SimpleNamespace) -> tuple[str, ...]:
    return ("--tls-cert", pki.server.cert, "--tls-key", pki.server.key)


@pytest.fixture
def services(tls_serve: Callable[..., ServerProcess], files_root: Path, pki: SimpleNamespace,
             tmp_path: Path) -> Services:  # fmt: skip
    secret = tmp_path / "server-secret"
    secret.write_bytes(SECRET)
    found = Services()
    main = tls_serve("--echo", "0", "--time", "0", "--files", "0", "--root", str(files_root), *_tls_flags(pki),
                     expect=4)  # fmt: skip
    found.add(main, echo="echo", time="time", files="files")
    found.add(tls_serve("--echo", "0", "--raw", *_tls_flags(pki)), raw="echo")
    found.add(tls_serve("--files", "0", "--root", str(files_root), "--secret-file", str(secret), *_tls_flags(pki)),
              **{"files+secret": "files"})  # fmt: skip
    return found


@pytest.fixture
def command_server(tls_serve: Callable[..., ServerProcess], pki: SimpleNamespace, tmp_path: Path) -> dict[str, int]:
    """The command service over TLS, without and with the shared secret: name -> port."""
    secret = tmp_path / "server-secret"
    secret.write_bytes(SECRET)
    plain = tls_serve("--command", "0", "--allow", "echo", *_tls_flags(pki))
    guarded = tls_serve("--command", "0", "--allow", "echo", "--secret-file", str(secret), *_tls_flags(pki))
    return {"command": plain.port("command"), "command+secret": guarded.port("command")}


def tls(ctx: ssl.SSLContext) -> dict[str, Any]:
    return {"ssl": ctx, "server_hostname": "localhost"}


# -- the Python API -------------------------------------------------------------------------------------------


def test_echo_raw_echo_and_time(services: Services, client_ctx: ssl.SSLContext) -> None:
    host = "127.0.0.1"
    messages = [b"one", b"", b"x" * 100_000]
    assert client.echo(host, services.port("echo"), messages, **tls(client_ctx)) == messages
    assert (
        client.echo_raw(host, services.port("raw"), b"raw bytes\n" * 1000, **tls(client_ctx)) == b"raw bytes\n" * 1000
    )
    assert abs(client.get_time(host, services.port("time"), **tls(client_ctx)) - time.time()) < 5  # TCP, in TLS


def test_exec_over_tls_with_and_without_the_secret(command_server: dict[str, int], client_ctx: ssl.SSLContext) -> None:
    out: list[bytes] = []
    status = client.exec_command("127.0.0.1", command_server["command"], ["echo", "hi", "there"], stdout=out.append,
                                 **tls(client_ctx))  # fmt: skip
    assert (status, b"".join(out)) == (0, b"hi there\n")
    out.clear()
    status = client.exec_command("127.0.0.1", command_server["command+secret"], ["echo", "inside"], secret=SECRET,
                                 stdout=out.append, **tls(client_ctx))  # fmt: skip
    assert (status, b"".join(out)) == (0, b"inside\n")
    with pytest.raises(client.AuthError):
        client.exec_command("127.0.0.1", command_server["command+secret"], ["echo"], secret=b"wrong secret 0123456789",
                            stdout=out.append, **tls(client_ctx))  # fmt: skip


def test_download_over_tls_in_large_blocks(
    services: Services, client_ctx: ssl.SSLContext, files_root: Path, tmp_path: Path, monkeypatch: Any
) -> None:
    """24 MiB through TLS into OUT.part: every write to the file is a large block (never the whole file,
    never one write per 16 KiB record), and the file is identical."""
    writes: list[int] = []
    real_write = os.write

    def counting_write(fd: int, data: Any) -> int:
        writes.append(len(data))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", counting_write)  # (the module the download writes with)
    out = tmp_path / "big.bin"
    size = client.get_file("127.0.0.1", services.port("files"), "big.bin", str(out), **tls(client_ctx))
    expected = (files_root / "big.bin").read_bytes()
    assert size == len(expected) and out.read_bytes() == expected
    assert not Path(str(out) + ".part").exists()
    assert max(writes) <= 1 << 20  # the 1 MiB buffer: never a whole-file buffer
    assert sum(writes) == len(expected)
    assert len(writes) < len(expected) // (16 * 1024)  # fewer writes than TLS records: blocks were filled
    assert "Traceback" not in services.stderr("files")


def test_download_with_secret_inside_tls_and_resume(
    services: Services, client_ctx: ssl.SSLContext, files_root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "small.txt"
    port = services.port("files+secret")
    assert client.get_file("127.0.0.1", port, "small.txt", str(out), secret=SECRET, **tls(client_ctx)) == 15
    assert out.read_bytes() == b"hello over tls\n"
    # an interrupted download resumes over TLS from the .part file (no validator saved: starts over, whole)
    part = tmp_path / "big.bin.part"
    part.write_bytes((files_root / "big.bin").read_bytes()[:1000])
    client.get_file("127.0.0.1", port, "big.bin", str(tmp_path / "big.bin"), resume=True, secret=SECRET,
                    **tls(client_ctx))  # fmt: skip
    assert (tmp_path / "big.bin").read_bytes() == (files_root / "big.bin").read_bytes()


def test_tls_to_a_plain_port_is_one_line(client_ctx: ssl.SSLContext) -> None:
    """TLS to a plain port: a framed echo that reads the ClientHello as an absurd length and hangs up."""
    with socket.create_server(("127.0.0.1", 0)) as lsock:
        port = lsock.getsockname()[1]

        def plain_server() -> None:
            conn, _ = lsock.accept()
            conn.recv(4)
            conn.close()

        import threading

        t = threading.Thread(target=plain_server, daemon=True)
        t.start()
        with pytest.raises(_tls.TLSError) as info:
            client.echo("127.0.0.1", port, [b"x"], **tls(client_ctx))
        t.join(10)
    message = str(info.value)
    assert message.startswith(f"TLS handshake with 127.0.0.1:{port} failed: the server"), message
    assert "\n" not in message


# -- the CLI ----------------------------------------------------------------------------------------------------


def cli(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FASTFRAME_PURE_PYTHON", "PYTHONWARNINGS")}
    return subprocess.run([sys.executable, "-m", "fastframe", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)  # fmt: skip


def test_cli_over_tls(
    services: Services, command_server: dict[str, int], pki: SimpleNamespace, tmp_path: Path, files_root: Path
) -> None:
    ca = ("--tls", "--cafile", pki.ca, "--server-name", "localhost")
    addr: Callable[[str], str] = lambda name: f"127.0.0.1:{services.port(name)}"  # noqa: E731
    run = cli("echo", addr("echo"), "hello", "world", *ca, cwd=tmp_path)
    assert (run.returncode, run.stdout, run.stderr) == (0, "hello\nworld\n", "")
    run = cli("echo", "--raw", addr("raw"), "raw", *ca, cwd=tmp_path)
    assert (run.returncode, run.stdout) == (0, "raw\n")
    run = cli("time", addr("time"), *ca, cwd=tmp_path)
    assert run.returncode == 0 and re.search(r"\((\d+)\)", run.stdout), run.stderr
    assert abs(int(re.search(r"\((\d+)\)", run.stdout).group(1)) - time.time()) < 5  # type: ignore[union-attr]
    run = cli("exec", f"127.0.0.1:{command_server['command']}", *ca, "--", "echo", "via", "cli", cwd=tmp_path)
    assert (run.returncode, run.stdout) == (0, "via cli\n"), run.stderr
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    run = cli("get", addr("files+secret"), "big.bin", "-o", str(tmp_path / "got.bin"), "--secret-file", str(secret),
              *ca, cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "got.bin").read_bytes() == (files_root / "big.bin").read_bytes()


def test_cli_tls_mistakes_are_one_line(services: Services, pki: SimpleNamespace, tmp_path: Path) -> None:
    addr = f"127.0.0.1:{services.port('echo')}"
    cases: list[tuple[tuple[str, ...], int, str]] = [
        (("--tls", "--cafile", pki.other_ca), 1, "the server's certificate is signed by a CA that is not trusted"),
        (("--tls", "--cafile", pki.ca, "--server-name", "other.example"), 1, "does not match the name asked for"),
        (("--tls",), 1, "not trusted"),  # the system's trust store does not know the test CA
        (("--cafile", pki.ca), 2, "--cafile needs --tls"),
        (("--tls", "--cafile", str(tmp_path / "missing.pem")), 2, "cannot read the TLS CA file"),
        (("--tls", "--cafile", pki.ca, "--cert", pki.client.cert, "--key", pki.server.key), 2, "does not belong"),
    ]
    for flags, status, text in cases:
        run = cli("echo", addr, "x", *flags, cwd=tmp_path)
        lines = run.stderr.strip().splitlines()
        assert run.returncode == status and len(lines) == 1 and text in lines[0], (flags, run.stderr)
        assert lines[0].startswith("fastframe: error: ") and "_ssl.c" not in lines[0]
    # without --server-name the HOST given is what the certificate must name: 127.0.0.1 is in it, ::1 too
    run = cli("echo", f"127.0.0.1:{services.port('raw')}", "x", "--raw", "--tls", "--cafile", pki.ca, cwd=tmp_path)
    assert (run.returncode, run.stdout) == (0, "x\n"), run.stderr
    assert wait_until(lambda: services.stderr("echo").count("TLS handshake failed") >= 3, 10), services.stderr("echo")
    assert cli("echo", addr, "still", "--tls", "--cafile", pki.ca, "--server-name", "localhost",
               cwd=tmp_path).stdout == "still\n"  # fmt: skip


def test_cli_insecure_warns_and_connects(services: Services, pki: SimpleNamespace, tmp_path: Path) -> None:
    run = cli("echo", f"127.0.0.1:{services.port('echo')}", "anyway", "--tls", "--insecure", cwd=tmp_path)
    assert run.returncode == 0 and run.stdout == "anyway\n"
    assert run.stderr.startswith("fastframe: warning: --insecure:") and len(run.stderr.splitlines()) == 1


def test_cli_mutual_tls(tls_serve: Callable[..., ServerProcess], pki: SimpleNamespace, tmp_path: Path) -> None:
    server = tls_serve("--echo", "0", *_tls_flags(pki), "--tls-client-ca", pki.ca)
    addr = f"127.0.0.1:{server.port('echo')}"
    base = ("--tls", "--cafile", pki.ca, "--server-name", "localhost")
    run = cli("echo", addr, "mine", *base, "--cert", pki.client.cert, "--key", pki.client.key, cwd=tmp_path)
    assert (run.returncode, run.stdout) == (0, "mine\n"), run.stderr
    run = cli("echo", addr, "none", *base, cwd=tmp_path)
    assert run.returncode == 1 and "the server requires a client certificate" in run.stderr, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    assert wait_until(lambda: "sent no certificate" in server.stderr(), 10), server.stderr()


def test_tls_start_up_stays_lean(services: Services, pki: SimpleNamespace, tmp_path: Path) -> None:
    """``--tls`` imports ssl (and fastframe._tls), and still nothing of the servers, asyncio or logging;
    without ``--tls`` ssl stays out (tests/test_startup.py)."""
    probe = (
        "import sys\nfrom fastframe.cli import main\n"
        f"main(['echo', '127.0.0.1:{services.port('echo')}', 'x', '--tls', '--cafile', {pki.ca!r}, "
        "'--server-name', 'localhost'])\nprint(repr(sorted(sys.modules)))"
    )
    run = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                         check=False)  # fmt: skip
    assert run.returncode == 0, run.stderr
    modules = set(ast.literal_eval(run.stdout.strip().splitlines()[-1]))
    assert {"ssl", "fastframe._tls"} <= modules
    assert not {m for m in modules if m.split(".")[0] in ("asyncio", "logging") or m.startswith("fastframe.servers")}
