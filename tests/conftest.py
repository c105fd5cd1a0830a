"""Shared fixtures: every codec test runs against both implementations.

``codec`` is parametrized over the C extension (id ``cython``) and the pure-Python twin (id ``python``).
Both modules are imported directly, so the extension is exercised even when ``FASTFRAME_PURE_PYTHON`` makes
the package itself use the twin.  A missing extension is an import error here, never a skip (except in a
build made without extensions on purpose, ``FASTFRAME_NO_EXTENSIONS=1``);
``test_codec.py::test_extension_really_loaded`` is the guard that says so in one line.

``engine`` (``select`` / ``prefork``, module-scoped so that a module's servers serve all its tests) and
``workdir`` (a fresh directory outside the source tree) serve the server and service tests.  This file holds
fixtures only: the helpers are in ``harness.py``, which test modules import (they cannot import a conftest
under ``--import-mode=importlib``).
"""

from __future__ import annotations

import socket
import tempfile
from collections.abc import Iterator
from types import ModuleType

import harness
import pytest

import fastframe
from fastframe import _codec_choice, _codec_py

if _codec_choice.built_without_extensions():  # FASTFRAME_NO_EXTENSIONS=1: no extension by choice, its cases skip
    _codec = None
    _CYTHON = pytest.param(None, id="cython", marks=pytest.mark.skip(reason="built with FASTFRAME_NO_EXTENSIONS=1"))
else:  # any other build: a missing extension fails right here
    from fastframe import _codec

    _CYTHON = pytest.param(_codec, id="cython")


@pytest.fixture(scope="session", params=[_CYTHON, pytest.param(_codec_py, id="python")])
def codec(request: pytest.FixtureRequest) -> ModuleType:
    """The codec module under test: ``fastframe._codec`` or ``fastframe._codec_py``.

    Session-scoped (a module has no per-test state), so hypothesis tests can use it too."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def framed_cls(codec: ModuleType) -> type[fastframe.FramedSocket]:
    """FramedSocket bound to the codec under test: a subclass whose ``codec`` class attribute is that module."""
    name = "FramedSocket_" + codec.__name__.rsplit(".", 1)[-1]
    return type(name, (fastframe.FramedSocket,), {"codec": codec})


@pytest.fixture(params=["socketpair", "tcp"])
def sock_pair(request: pytest.FixtureRequest) -> Iterator[tuple[socket.socket, socket.socket]]:
    """Two connected stream sockets, a socketpair or a real 127.0.0.1 TCP connection, with timeouts."""
    a, b = socket.socketpair() if request.param == "socketpair" else harness.tcp_pair()
    for s in (a, b):
        s.settimeout(harness.TIMEOUT)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


@pytest.fixture(scope="module", params=["select", "prefork"])
def engine(request: pytest.FixtureRequest) -> str:
    """The server engine under test; ``harness.engine_args(engine)`` turns it into flags."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def workdir() -> Iterator[str]:
    """A fresh directory outside the source tree, where subprocesses run: ``python -m fastframe`` run from the
    repository root would import the checkout's ``fastframe/`` instead of the installed package."""
    with tempfile.TemporaryDirectory(prefix="ff-test-") as d:
        yield d


# -- live servers (tests/live.py): one throwaway instance of each per session -------------------------------


@pytest.fixture(scope="session")
def postgres() -> Iterator[object]:
    from live import Postgres

    server = Postgres()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def mariadb() -> Iterator[object]:
    from live import MariaDB

    server = MariaDB()
    try:
        server.start()
        yield server
    finally:
        server.close()
