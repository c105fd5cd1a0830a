"""Fixtures for the server tests: real ``fastframe serve`` subprocesses on 127.0.0.1, real clients.

- ``engine`` (from the top-level conftest) is parametrized over the two engines (ids ``select`` / ``prefork``);
- ``serve(...)`` starts a server through ``harness.ServerProcess`` (ports 0, read back from its output) and
  kills it by PID at teardown; ``spawn(...)`` does the same for any other command line (the console script,
  a socket-activation wrapper).

The client helpers (written against ``struct`` only, never against the code under test) are in ``harness``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence

import harness
import pytest
from harness import ServerProcess


@pytest.fixture
def serve(workdir: str) -> Iterator:
    """``serve(*args, expect=1, engine=None, workers=2)`` -> a running ServerProcess; all stopped at teardown.

    With ``engine="prefork"`` it returns once every worker has booted (``harness.wait_booted``)."""
    started: list[ServerProcess] = []

    def start(
        *args: str,
        expect: int = 1,
        engine: str | None = None,
        workers: int = 2,
        env: dict[str, str] | None = None,
        timeout: float = 20.0,
    ) -> ServerProcess:
        full = (harness.engine_args(engine, workers) if engine else []) + list(args)
        proc = ServerProcess(full, expect=expect, env=env, timeout=timeout, cwd=workdir)
        started.append(proc)
        if engine == "prefork":
            try:
                harness.wait_booted(proc.wait_workers(workers, timeout=harness.TIMEOUT))
            except TimeoutError as exc:
                raise AssertionError(f"{exc}; stderr:\n{proc.stderr()}") from None
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def spawn(workdir: str) -> Iterator:
    """``spawn(argv, expect, env=None, pass_fds=())`` -> a running ServerProcess of that command line; all
    stopped at teardown."""
    started: list[ServerProcess] = []

    def start(argv: Sequence[str], expect: int, **kwargs: object) -> ServerProcess:
        kwargs.setdefault("cwd", workdir)
        proc = ServerProcess([], expect, command=argv, **kwargs)  # type: ignore[arg-type]
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def console_script() -> str:
    path = os.path.join(os.path.dirname(sys.executable), "fastframe")
    assert os.path.exists(path), f"the fastframe console script is not installed next to {sys.executable}"
    return path
