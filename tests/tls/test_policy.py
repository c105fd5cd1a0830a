"""fastframe._tls: the policy every context gets, and one clear line for each mistake in the files."""

from __future__ import annotations

import socket
import ssl
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest

from fastframe import _tls


def test_server_policy(pki: SimpleNamespace) -> None:
    ctx = _tls.server_context(pki.server.cert, pki.server.key)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.maximum_version in (ssl.TLSVersion.MAXIMUM_SUPPORTED, ssl.TLSVersion.TLSv1_3)
    assert ctx.options & ssl.OP_NO_RENEGOTIATION
    assert ctx.options & ssl.OP_NO_COMPRESSION
    assert ctx.verify_mode == ssl.CERT_NONE  # no client certificates unless asked for
    mtls = _tls.server_context(pki.server.cert, pki.server.key, client_ca=pki.ca)
    assert mtls.verify_mode == ssl.CERT_REQUIRED


def test_client_policy_verifies_by_default(pki: SimpleNamespace) -> None:
    ctx = _tls.client_context(pki.ca)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.options & ssl.OP_NO_RENEGOTIATION and ctx.options & ssl.OP_NO_COMPRESSION
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    system = _tls.client_context()  # the system's trust store
    assert system.verify_mode == ssl.CERT_REQUIRED and system.check_hostname


def test_insecure_is_explicit_and_warns(pki: SimpleNamespace) -> None:
    with pytest.warns(_tls.InsecureTLSWarning, match="not checked"):
        ctx = _tls.client_context(insecure=True)
    assert ctx.verify_mode == ssl.CERT_NONE and not ctx.check_hostname
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _tls.client_context(pki.ca)  # and nothing else warns


def test_key_in_the_certificate_file(pki: SimpleNamespace, tmp_path: Path) -> None:
    both = tmp_path / "both.pem"
    both.write_bytes(Path(pki.server.cert).read_bytes() + Path(pki.server.key).read_bytes())
    _tls.server_context(str(both))


def encrypted_key(pki: SimpleNamespace, tmp_path: Path) -> str:
    from cryptography.hazmat.primitives import serialization  # (trustme's own dependency)

    key = serialization.load_pem_private_key(Path(pki.server.key).read_bytes(), password=None)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    path = tmp_path / "encrypted.key"
    path.write_bytes(pem)
    return str(path)


def test_one_line_for_each_mistake(pki: SimpleNamespace, tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.pem")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    unreadable = tmp_path / "dir.pem"
    unreadable.mkdir()
    cases = [
        (lambda: _tls.server_context(missing, pki.server.key),
         f"cannot read the TLS certificate {missing}: No such file"),
        (lambda: _tls.server_context(str(unreadable), pki.server.key), "cannot read the TLS certificate"),
        (lambda: _tls.server_context(str(junk), pki.server.key),
         f"the TLS certificate {junk} holds no PEM certificate"),
        (lambda: _tls.server_context(pki.server.cert, str(junk)), f"the TLS key {junk} holds no PEM private key"),
        (lambda: _tls.server_context(pki.server.cert), "and no key file was given"),
        (lambda: _tls.server_context(pki.server.cert, pki.client.key),
         f"the TLS key {pki.client.key} does not belong to the certificate {pki.server.cert}"),
        (lambda: _tls.server_context(pki.server.cert, encrypted_key(pki, tmp_path)), "is encrypted"),
        (lambda: _tls.server_context(pki.server.cert, pki.server.key, client_ca=str(junk)),
         f"the TLS client CA file {junk} holds no PEM certificate"),
        (lambda: _tls.client_context(missing), f"cannot read the TLS CA file {missing}"),
        (lambda: _tls.client_context(pki.ca, key=pki.client.key), "a TLS key without its certificate"),
        (lambda: _tls.client_context(pki.ca, cert=pki.client.cert, key=pki.server.key), "does not belong"),
    ]  # fmt: skip
    for make, expected in cases:
        with pytest.raises(_tls.TLSConfigError) as info:
            make()
        message = str(info.value)
        assert expected in message and "\n" not in message and "_ssl.c" not in message, message


def test_describe_names_the_other_end() -> None:
    plain = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    plain.reason = "WRONG_VERSION_NUMBER"
    assert _tls.describe(plain, "server").startswith("the client does not speak TLS")
    assert _tls.describe(plain, "client").startswith("the server does not speak TLS")
    assert _tls.describe(ConnectionResetError(), "client") == "the server reset the connection"
    other = ssl.SSLError(1, "[SSL: SOMETHING_NEW] something new (_ssl.c:123)")
    other.reason = "SOMETHING_NEW"
    assert _tls.describe(other) == "TLS error: something new"


def test_connect_reports_a_failed_handshake_in_one_line(pki: SimpleNamespace) -> None:
    """A plain server that hangs up on the ClientHello: TLS to a plain port."""
    with socket.create_server(("127.0.0.1", 0)) as lsock:
        client = socket.create_connection(lsock.getsockname(), timeout=10)
        peer, _ = lsock.accept()
        peer.close()
        with pytest.raises(_tls.TLSError) as info:
            _tls.connect(client, _tls.client_context(pki.ca), "localhost", " with 127.0.0.1")
    message = str(info.value)
    assert message.startswith("TLS handshake with 127.0.0.1 failed: the server"), message
    assert client.fileno() == -1


def test_ktls_probe_says_no_without_ktls() -> None:
    """A socket without the kernel's TLS layer (every plain socket; every TLS socket on a kernel without
    CONFIG_TLS, like this one) has no TLS_TX: the probe says so, even for a closed socket, and never raises."""
    with socket.create_server(("127.0.0.1", 0)) as lsock, socket.create_connection(lsock.getsockname()) as s:
        assert _tls.ktls_tx(s) is False
        closed = socket.socket()
        closed.close()
        assert _tls.ktls_tx(closed) is False
