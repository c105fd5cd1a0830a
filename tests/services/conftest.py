"""Fixtures for the command, file and authentication tests: real ``fastframe serve`` subprocesses.

Every server runs under both engines (ids ``select`` and ``prefork``: two workers), on 127.0.0.1 with
ephemeral ports.  Servers are stopped with SIGTERM (so that commands they run are killed by the service
itself) and then killed by PID, with every worker the harness saw.  Test modules cannot import this file
(``--import-mode=importlib``): the helpers are in ``harness``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Callable

import harness
import pytest
from harness import ServerProcess


@pytest.fixture(scope="module")
def start_server(engine: str) -> Iterator[Callable[..., ServerProcess]]:
    """``start_server(*args, expect=N)``: a server on this module's engine, stopped at the module's end."""
    started: list[ServerProcess] = []

    def start(*args: str, expect: int, cwd: str | None = None) -> ServerProcess:
        server = ServerProcess([*harness.engine_args(engine), *args], expect=expect, cwd=cwd)
        started.append(server)
        if engine == "prefork":
            harness.wait_booted(server.wait_workers(2))
        return server

    yield start
    for server in started:
        harness.stop_gracefully(server)


@pytest.fixture(scope="session")
def secret_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("secret") / "secret"
    path.write_bytes(harness.SECRET + b"\n")
    os.chmod(path, 0o600)
    return str(path)
