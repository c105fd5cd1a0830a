"""Shell-injection corpus against a command service that allows only ``ls`` and ``echo``.

Every line tries to create a marker file (or delete a victim file) through shell syntax, another program,
a path trick or a malformed request.  Whatever the reply -- refused, or run harmlessly as plain words -- the
marker must never appear and the victim must survive: nothing outside the allow-list ever runs.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from pathlib import Path
from typing import Any, Callable

import harness
import pytest

from fastframe.client import RemoteError, exec_command


@pytest.fixture(scope="module")
def area(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("inject")
    (path / "root").mkdir()
    (path / "victim").write_text("still here")
    script = path / "vanishing"
    script.write_text("#!/bin/sh\necho vanishing\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture(scope="module")
def server(start_server: Callable[..., Any], area: Path) -> Any:
    return start_server("--command", "0", "--allow", "ls", "--allow", "echo", "--allow", str(area / "vanishing"),
                        "--root", str(area / "root"), expect=1)  # fmt: skip


CORPUS = [
    "ls; touch {m}",
    "echo hi; touch {m}",
    "ls && touch {m}",
    "ls || touch {m}",
    "ls | touch {m}",
    "ls | sh -c 'touch {m}'",
    "ls & touch {m}",
    "$(touch {m})",
    "echo $(touch {m})",
    "`touch {m}`",
    "echo `touch {m}`",
    "echo hi > {m}",
    "echo hi >> {m}",
    "ls\ntouch {m}",
    "ls\rtouch {m}",
    "touch {m}",
    "/usr/bin/touch {m}",
    "../../bin/sh -c 'touch {m}'",
    "../../usr/bin/touch {m}",
    "./touch {m}",
    "/bin/sh -c 'touch {m}'",
    "sh -c 'touch {m}'",
    "env touch {m}",
    "ls$IFS;touch$IFS{m}",
    "'ls;touch {m}'",
    "ls -la; rm -rf {victim}",
    "echo ${{PATH}}; touch {m}",
    "ls {m} ; touch {m}",
    "{{ls,touch}} {m}",
    "echo *; touch {m}",
    "/usr/bin/ls/../../bin/touch {m}",
]


@pytest.mark.parametrize("template", CORPUS, ids=range(len(CORPUS)))
def test_injection_is_refused_or_harmless(server: Any, area: Path, tmp_path: Path, template: str) -> None:
    marker = tmp_path / "MARKER"
    line = template.format(m=marker, victim=area / "victim")
    host, port = server.addr("command")
    out = bytearray()
    try:
        exec_command(host, port, line, stdout=out.extend, stderr=lambda b: None, timeout=10)
    except RemoteError as exc:
        assert exc.code in ("not-allowed", "bad-request"), exc
    time.sleep(0.05)  # a window for a wrongly run command to show (nothing to wait for)
    assert not marker.exists()
    assert (area / "victim").read_text() == "still here"


def test_redirection_is_just_words(server: Any, tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    out = bytearray()
    host, port = server.addr("command")
    assert exec_command(host, port, f"echo hi > {marker}; $(id) `id`", stdout=out.extend, timeout=10) == 0
    assert out == f"hi > {marker}; $(id) `id`\n".encode()
    assert not marker.exists()


@pytest.mark.parametrize("line", [b"echo hi\x00touch /tmp/x", b"ls\x00", b"\x00"], ids=["middle", "end", "only"])
def test_nul_byte_is_refused(server: Any, line: bytes) -> None:
    assert harness.command_replies(server.addr("command"), line)[0].startswith(b"!bad-request ")


@pytest.mark.parametrize(
    "line", [b"echo \xff", b"\xc0\xaf\xc0\xaftouch", b"echo \xed\xa0\x80"], ids=["ff", "overlong", "surrogate"]
)
def test_invalid_utf8_is_refused(server: Any, line: bytes) -> None:
    assert harness.command_replies(server.addr("command"), line)[0].startswith(b"!bad-request ")


def test_oversized_command_line(server: Any) -> None:
    # 2 MiB is more than --max-request (1 MiB): an error frame or a closed connection, and nothing runs.
    with harness.connect(server.addr("command")) as sock:
        harness.send_frame(sock, b"echo " + b"A" * (2 * 1024 * 1024))
        reply = harness.recv_frame_or_eof(sock)
    assert reply is None or reply.startswith(b"!bad-request "), reply[:100]
    assert harness.command_replies(server.addr("command"), b"echo still alive") == [b"Ostill alive\n", b"X0"]


def test_absolute_path_only_as_resolved(server: Any) -> None:
    ls = shutil.which("ls")
    assert ls is not None
    resolved = os.path.abspath(ls)
    assert harness.command_replies(server.addr("command"), f"{resolved} -d /".encode())[-1] == b"X0"
    for other in ("/usr/../usr/bin/ls", "//usr/bin/ls", "./ls", "bin/ls"):
        if other == resolved:
            continue
        assert harness.command_replies(server.addr("command"), f"{other} -d /".encode())[0].startswith(
            b"!not-allowed "
        ), other


def test_not_found_when_an_allowed_program_disappears(server: Any, area: Path) -> None:
    script = area / "vanishing"
    assert harness.command_replies(server.addr("command"), str(script).encode()) == [b"Ovanishing\n", b"X0"]
    saved = script.read_bytes()
    script.unlink()
    try:
        frames = harness.command_replies(server.addr("command"), str(script).encode())
    finally:
        script.write_bytes(saved)
        script.chmod(0o755)
    assert frames[0].startswith(b"!not-found "), frames
