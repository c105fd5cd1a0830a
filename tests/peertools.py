"""Finding the Debian tools the tests use as real peers (haproxy, systemd-notify, curl, ...).

A missing tool skips the test that needs it, except under ``FASTFRAME_REQUIRE_TOOLS=1`` (set by ``.ci/run``),
where it fails: CI installs every tool, so a missing one there is a broken install step, not a reason to pass.
(``tests/servers/conftest.py`` has the same rule as a fixture helper; this module is the importable form.)
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import time

import pytest

#: Debian package for each tool whose package is not named after it.
PACKAGES = {"nc": "netcat-openbsd", "systemd-notify": "systemd", "ngx_stream_module": "libnginx-mod-stream"}


def require_tool(name: str) -> str:
    """The path of ``name``; skip when missing, unless FASTFRAME_REQUIRE_TOOLS=1 (CI), then fail."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if path is None:
        message = f"{name} is not installed (apt-get install {PACKAGES.get(name, name)})"
        if os.environ.get("FASTFRAME_REQUIRE_TOOLS") == "1":
            pytest.fail(message + " and FASTFRAME_REQUIRE_TOOLS=1", pytrace=False)
        pytest.skip(message)
    return path


def require_module(name: str, extra: str) -> None:
    """Import-check an optional dependency: skip when missing, fail under FASTFRAME_REQUIRE_TOOLS=1."""
    try:
        __import__(name)
    except ModuleNotFoundError:
        message = f"{name} is not installed (pip install 'fastframe[{extra}]')"
        if os.environ.get("FASTFRAME_REQUIRE_TOOLS") == "1":
            pytest.fail(message + " and FASTFRAME_REQUIRE_TOOLS=1", pytrace=False)
        pytest.skip(message)


def read_until(proc: subprocess.Popen[bytes], want: bytes, timeout: float = 10.0) -> bytes:
    """Read the peer's stdout until ``want`` is in it (or it ends); fail after ``timeout``."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    got = b""
    deadline = time.monotonic() + timeout
    while want not in got:
        left = deadline - time.monotonic()
        assert left > 0, f"no {want!r} in {got!r}"
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            got += chunk
    return got


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Kill the peer (by its PID) and close its pipes."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)
    for f in (proc.stdin, proc.stdout, proc.stderr):
        if f is not None:
            f.close()
