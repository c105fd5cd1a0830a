"""Shared fixtures: every codec test runs against both implementations.

``codec`` is parametrized over the C extension (id ``cython``) and the pure-Python twin (id ``python``).
Both modules are imported directly, so the extension is exercised even when ``FASTFRAME_PURE_PYTHON`` makes
the package itself use the twin.  A missing extension is an import error here, never a skip (except in a
build made without extensions on purpose, ``FASTFRAME_NO_EXTENSIONS=1``);
``test_codec.py::test_extension_really_loaded`` is the guard that says so in one line.

Test modules cannot import this file (``--import-mode=importlib``), so shared helpers are handed out by the
session fixture ``ref``: reference encoders written with :mod:`struct` and a hand-rolled LEB128 (never the code
under test), decoder drivers and socket helpers.
"""

from __future__ import annotations

import random
import socket
from types import ModuleType, SimpleNamespace
from typing import Iterator, List, Sequence, Tuple, Type

import pytest
import reference
from reference import leb128

import fastframe
from fastframe import _codec_choice, _codec_py

if _codec_choice.built_without_extensions():  # FASTFRAME_NO_EXTENSIONS=1: no extension by choice, its cases skip
    _codec = None
    _CYTHON = pytest.param(None, id="cython", marks=pytest.mark.skip(reason="built with FASTFRAME_NO_EXTENSIONS=1"))
else:  # any other build: a missing extension fails right here
    from fastframe import _codec

    _CYTHON = pytest.param(_codec, id="cython")

#: Timeout (seconds) on every socket the fixtures create: a hang becomes a failure, not a stuck run.
SOCKET_TIMEOUT = 10.0


@pytest.fixture(scope="session", params=[_CYTHON, pytest.param(_codec_py, id="python")])
def codec(request: pytest.FixtureRequest) -> ModuleType:
    """The codec module under test: ``fastframe._codec`` or ``fastframe._codec_py``.

    Session-scoped (a module has no per-test state), so hypothesis tests can use it too."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def framed_cls(codec: ModuleType) -> Type[fastframe.FramedSocket]:
    """FramedSocket bound to the codec under test: a subclass whose ``codec`` class attribute is that module."""
    name = "FramedSocket_" + codec.__name__.rsplit(".", 1)[-1]
    return type(name, (fastframe.FramedSocket,), {"codec": codec})


def _tcp_pair() -> Tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(SOCKET_TIMEOUT)
        client = socket.create_connection(listener.getsockname(), timeout=SOCKET_TIMEOUT)
        server, _ = listener.accept()
    return client, server


@pytest.fixture(params=["socketpair", "tcp"])
def sock_pair(request: pytest.FixtureRequest) -> Iterator[Tuple[socket.socket, socket.socket]]:
    """Two connected stream sockets, a socketpair or a real 127.0.0.1 TCP connection, with timeouts."""
    a, b = socket.socketpair() if request.param == "socketpair" else _tcp_pair()
    for s in (a, b):
        s.settimeout(SOCKET_TIMEOUT)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


# -- the ``ref`` helpers ----------------------------------------------------------------------------------

STRUCT_PREFIXES = reference.STRUCT_OF
ALL_PREFIXES = reference.SPEC_PREFIXES
ref_header = reference.header


def ref_encode(payloads: Sequence[bytes], prefix: str = "!I") -> bytes:
    return b"".join(ref_header(len(p), prefix) + bytes(p) for p in payloads)


def max_payload(prefix: str) -> int:
    return reference.MAX_OF[prefix]


def feed_via_buffer(decoder: object, chunk: bytes, sizehint: int = -1) -> List[bytes]:
    """Deliver ``chunk`` the BufferedProtocol way: copy into get_buffer() views, then buffer_updated()."""
    out: List[bytes] = []
    pos = 0
    while pos < len(chunk):
        view = decoder.get_buffer(sizehint)  # type: ignore[attr-defined]
        assert len(view) > 0, "get_buffer() lent an empty window while input remains"
        n = min(len(view), len(chunk) - pos)
        view[:n] = chunk[pos : pos + n]
        view.release()
        out.extend(decoder.buffer_updated(n))  # type: ignore[attr-defined]
        pos += n
    return out


def decode_chunks(decoder: object, chunks: Sequence[bytes], mode: str) -> List[bytes]:
    """Feed every chunk; ``mode`` is "feed", "buffer" or "mixed" (alternating per chunk)."""
    out: List[bytes] = []
    for i, chunk in enumerate(chunks):
        if mode == "buffer" or (mode == "mixed" and i % 2 == 1):
            out.extend(feed_via_buffer(decoder, chunk))
        else:
            out.extend(decoder.feed(chunk))  # type: ignore[attr-defined]
    return out


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise EOFError(f"peer closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def recv_until_eof(sock: socket.socket, limit: int = 64 << 20) -> bytes:
    buf = bytearray()
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            return bytes(buf)
        buf += chunk
        assert len(buf) <= limit, "peer sent more than the test expected"


def pseudo_random(n: int, seed: int = 0) -> bytes:
    return random.Random(seed * 1_000_003 + n).randbytes(n)


@pytest.fixture(scope="session")
def ref() -> SimpleNamespace:
    """Helpers for test modules (which cannot import conftest under --import-mode=importlib)."""
    return SimpleNamespace(
        PREFIXES=ALL_PREFIXES,
        STRUCT_PREFIXES=STRUCT_PREFIXES,
        SOCKET_TIMEOUT=SOCKET_TIMEOUT,
        leb128=leb128,
        header=ref_header,
        encode=ref_encode,
        max_payload=max_payload,
        feed_via_buffer=feed_via_buffer,
        decode_chunks=decode_chunks,
        recv_exactly=recv_exactly,
        recv_until_eof=recv_until_eof,
        pseudo_random=pseudo_random,
        tcp_pair=_tcp_pair,
    )


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
