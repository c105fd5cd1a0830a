"""Certificates for the TLS tests, made by ``trustme`` once per session, and the servers they run.

``pki`` holds PEM files on disk (what the CLI and ``fastframe._tls`` take): a CA and a second, unrelated CA;
a server certificate for ``localhost``/``127.0.0.1``/``::1``, an expired one, and client certificates (valid
and expired) from the first CA.  ``tls_serve(*args, engine=...)`` and ``serve_plain`` start
``fastframe serve`` processes (``engine`` is parametrized select/prefork), killed by PID at the test's end.
"""

from __future__ import annotations

import datetime
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import pytest

trustme = pytest.importorskip("trustme", reason="the TLS tests need trustme (the test extra)")

from harness import ServerProcess  # noqa: E402

from fastframe import _tls  # noqa: E402

PAST = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)


def _write(leaf: Any, directory: Path, name: str) -> SimpleNamespace:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    for pem in leaf.cert_chain_pems[1:]:
        pem.write_to_path(str(cert), append=True)
    leaf.private_key_pem.write_to_path(str(key))
    return SimpleNamespace(cert=str(cert), key=str(key))


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    d = tmp_path_factory.mktemp("pki")
    ca, other = trustme.CA(), trustme.CA()
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    other.cert_pem.write_to_path(str(d / "other-ca.pem"))
    return SimpleNamespace(
        dir=d,
        ca=str(d / "ca.pem"),
        other_ca=str(d / "other-ca.pem"),
        server=_write(ca.issue_cert("localhost", "127.0.0.1", "::1"), d, "server"),
        expired=_write(
            ca.issue_cert("localhost", "127.0.0.1", not_before=PAST, not_after=PAST + datetime.timedelta(1)),
            d,
            "expired",
        ),  # fmt: skip
        client=_write(ca.issue_cert("client.example"), d, "client"),
        expired_client=_write(
            ca.issue_cert("client.example", not_before=PAST, not_after=PAST + datetime.timedelta(1)),
            d,
            "expired-client",
        ),  # fmt: skip
        other_server=_write(other.issue_cert("localhost", "127.0.0.1"), d, "other-server"),
    )


@pytest.fixture(scope="session")
def server_ctx(pki: SimpleNamespace) -> ssl.SSLContext:
    return _tls.server_context(pki.server.cert, pki.server.key)


@pytest.fixture(scope="session")
def client_ctx(pki: SimpleNamespace) -> ssl.SSLContext:
    return _tls.client_context(pki.ca)


@pytest.fixture(params=["select", "prefork"])
def engine(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def serve_plain() -> Iterator[Callable[..., ServerProcess]]:
    """``serve_plain(*args, expect=1, engine=None, workers=2)``: ``fastframe serve ARGS``, killed at the end."""
    started: list[ServerProcess] = []
    with tempfile.TemporaryDirectory(prefix="ff-tls-") as workdir:

        def start(*args: str, expect: int = 1, engine: str = "select", workers: int = 2) -> ServerProcess:
            full = ["--engine", engine] + (["--workers", str(workers)] if engine == "prefork" else []) + list(args)
            proc = ServerProcess(full, expect=expect, cwd=workdir)
            started.append(proc)
            if engine == "prefork":
                proc.wait_workers(workers)
            return proc

        try:
            yield start
        finally:
            for proc in started:
                proc.stop()


@pytest.fixture
def tls_serve(serve_plain: Callable[..., ServerProcess]) -> Callable[..., ServerProcess]:
    """The same, for servers given ``--tls-*`` flags (a name for what the test means)."""
    return serve_plain
