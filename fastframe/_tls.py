"""TLS policy, once: the contexts every fastframe server and client uses, and one-line reasons for failures.

Imported only where TLS is asked for (``import ssl`` costs a client's start-up otherwise).

The policy:

* TLS 1.2 at least; 1.3 is negotiated whenever the peer has it (OpenSSL's maximum is left alone);
* no renegotiation (``OP_NO_RENEGOTIATION``: a client-initiated renegotiation is a cheap way to make a server
  do handshakes), no compression (``OP_NO_COMPRESSION``: CRIME);
* a client verifies the server's certificate and its name by default; ``insecure=True`` turns both off, and
  says so with an :class:`InsecureTLSWarning` every time;
* a server given ``client_ca`` requires a client certificate signed by it (mutual TLS).

Everything a user can get wrong in the files (missing, unreadable, not PEM, encrypted key, key not matching
the certificate) raises :class:`TLSConfigError` with one line that names the file.  :func:`describe` turns what
a failed connection raised into one line that says what happened, from either end's point of view.
"""

from __future__ import annotations

import socket
import ssl
import warnings

__all__ = [
    "InsecureTLSWarning",
    "TLSConfigError",
    "TLSError",
    "client_context",
    "connect",
    "describe",
    "ktls_tx",
    "server_context",
]

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
#: OpenSSL builds older than 1.1.0h have no such option; Python then leaves the constant out.
_OP_NO_RENEGOTIATION = getattr(ssl, "OP_NO_RENEGOTIATION", 0)


class TLSConfigError(ValueError):
    """A certificate, key or CA file that cannot be used; the message is one line and names the file."""


class TLSError(ConnectionError):
    """A TLS connection failed (handshake, verification); the message is one line that says why."""


class InsecureTLSWarning(UserWarning):
    """A client context that verifies neither the server's certificate nor its name."""


def _harden(ctx: ssl.SSLContext) -> ssl.SSLContext:
    ctx.minimum_version = MINIMUM_VERSION
    ctx.options |= ssl.OP_NO_COMPRESSION | _OP_NO_RENEGOTIATION
    return ctx


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise TLSConfigError(f"cannot read the TLS {what} {path}: {exc.strerror or exc}") from None


def _no_password() -> str:
    raise TLSConfigError("encrypted")


def _load_chain(ctx: ssl.SSLContext, cert: str, key: str | None) -> None:
    """``load_cert_chain`` with the mistakes named: OpenSSL's own messages ("PEM lib") name nothing."""
    cert_pem = _read(cert, "certificate")
    if b"-----BEGIN CERTIFICATE-----" not in cert_pem:
        raise TLSConfigError(f"the TLS certificate {cert} holds no PEM certificate")
    key_file = key or cert
    key_pem = cert_pem if key is None else _read(key, "key")
    if b"PRIVATE KEY-----" not in key_pem:
        where = f"the TLS key {key}" if key else f"the TLS certificate {cert} (and no key file was given)"
        raise TLSConfigError(f"{where} holds no PEM private key")
    try:
        ctx.load_cert_chain(cert, key, password=_no_password)
    except TLSConfigError:
        raise TLSConfigError(f"the TLS key {key_file} is encrypted: give an unencrypted key") from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise TLSConfigError(f"the TLS key {key_file} does not belong to the certificate {cert}") from None
        raise TLSConfigError(f"cannot load the TLS certificate {cert} and key {key_file}: {_reason(exc)}") from None


def _load_ca(ctx: ssl.SSLContext, cafile: str, what: str) -> None:
    pem = _read(cafile, what)
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        raise TLSConfigError(f"the TLS {what} {cafile} holds no PEM certificate")
    try:
        ctx.load_verify_locations(cafile)
    except ssl.SSLError as exc:
        raise TLSConfigError(f"cannot load the TLS {what} {cafile}: {_reason(exc)}") from None


def server_context(cert: str, key: str | None = None, client_ca: str | None = None) -> ssl.SSLContext:
    """The context of a TLS server: ``cert`` (a PEM chain, leaf first) and its ``key`` (None: in ``cert``).

    With ``client_ca``, every client must present a certificate signed by a CA in that PEM file."""
    ctx = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    _load_chain(ctx, cert, key)
    if client_ca is not None:
        _load_ca(ctx, client_ca, "client CA file")
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(
    cafile: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    insecure: bool = False,
) -> ssl.SSLContext:
    """The context of a TLS client.

    The server's certificate is verified against ``cafile`` (a PEM bundle; None: the system's trust store) and
    must name the server (the ``server_hostname`` given when connecting).  ``cert``/``key``: a client
    certificate, for servers that require one.  ``insecure=True`` verifies nothing -- anyone on the path can
    then read and change the traffic -- and warns (:class:`InsecureTLSWarning`)."""
    ctx = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    if insecure:
        warnings.warn(
            "TLS without verification: the server's certificate and name are not checked, so anyone on the "
            "path can read and change this connection",
            InsecureTLSWarning,
            stacklevel=2,
        )
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif cafile is not None:
        _load_ca(ctx, cafile, "CA file")
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if cert is not None:
        _load_chain(ctx, cert, key)
    elif key is not None:
        raise TLSConfigError("a TLS key without its certificate: give the certificate too")
    return ctx


def connect(
    sock: socket.socket, context: ssl.SSLContext, server_hostname: str | None, where: str = ""
) -> ssl.SSLSocket:
    """Wrap a connected blocking ``sock`` (its timeout applies) and complete the handshake.

    A failed handshake closes ``sock`` and raises :class:`TLSError` with :func:`describe`'s line."""
    try:
        return context.wrap_socket(sock, server_hostname=server_hostname)
    except socket.timeout:
        sock.close()
        raise TLSError(f"TLS handshake{where} timed out") from None
    except (ssl.SSLError, OSError) as exc:
        sock.close()
        raise TLSError(f"TLS handshake{where} failed: {describe(exc, 'client')}") from None


# -- what went wrong, in one line -----------------------------------------------------------------------------

_NOT_TLS = {
    "WRONG_VERSION_NUMBER", "HTTP_REQUEST", "HTTPS_PROXY_REQUEST", "UNKNOWN_PROTOCOL", "PACKET_LENGTH_TOO_LONG",
    "RECORD_LAYER_FAILURE", "WRONG_SSL_VERSION", "UNEXPECTED_RECORD", "RECORD_TOO_LARGE", "LENGTH_TOO_SHORT",
}  # fmt: skip
_VERIFY = {
    9: "is not valid yet",
    10: "has expired",
    18: "is self-signed and not trusted",
    19: "is signed by a CA that is not trusted",
    20: "is signed by a CA that is not trusted",
    21: "is signed by a CA that is not trusted",
    2: "is signed by a CA that is not trusted",
    23: "has been revoked",
}


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    text = str(reason).lower().replace("_", " ") if reason else str(exc)
    return text.split(" (_ssl.c")[0]


def describe(exc: BaseException, side: str = "server") -> str:
    """One line for what ``exc`` (raised by a TLS handshake, read or write) means, seen from ``side``
    (``"server"`` or ``"client"``): the peer is the other one."""
    peer = "client" if side == "server" else "server"
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        whose = f"the {peer}'s certificate"
        if code == 62:  # X509_V_ERR_HOSTNAME_MISMATCH
            return f"{whose} does not match the name asked for ({exc.verify_message})"
        return f"{whose} {_VERIFY.get(code, 'was refused: ' + str(exc.verify_message))}"
    if isinstance(exc, ssl.SSLEOFError) or getattr(exc, "reason", None) == "UNEXPECTED_EOF_WHILE_READING":
        return f"the {peer} closed the connection without a TLS close_notify (mid-record or mid-handshake)"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or ""
        if reason in _NOT_TLS:
            return f"the {peer} does not speak TLS (plaintext on a TLS port, or TLS to a plain port?)"
        if reason in ("TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_BAD_CERTIFICATE", "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE"):
            return f"the {peer} does not trust this {side}'s certificate ({_reason(exc)})"
        if reason == "SSLV3_ALERT_CERTIFICATE_EXPIRED":
            return f"the {peer} refused this {side}'s certificate as expired"
        if reason in ("PEER_DID_NOT_RETURN_A_CERTIFICATE", "TLSV13_ALERT_CERTIFICATE_REQUIRED"):
            if side == "server":
                return "the client sent no certificate, and this server requires one"
            return "the server requires a client certificate (give one with its key)"
        if reason in ("UNSUPPORTED_PROTOCOL", "TLSV1_ALERT_PROTOCOL_VERSION", "NO_PROTOCOLS_AVAILABLE"):
            return f"the {peer} offers no TLS version this {side} accepts (1.2 or newer)"
        if reason == "NO_SHARED_CIPHER":
            return f"no cipher in common with the {peer}"
        if reason == "SSLV3_ALERT_HANDSHAKE_FAILURE":
            return f"the {peer} refused the handshake (no cipher in common, or a client certificate it requires)"
        return f"TLS error: {_reason(exc)}"
    if isinstance(exc, ConnectionResetError):
        return f"the {peer} reset the connection"
    if isinstance(exc, (BrokenPipeError, ConnectionAbortedError)):
        return f"the {peer} went away"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


# -- kernel TLS ---------------------------------------------------------------------------------------------

SOL_TLS = 282  # linux/socket.h; socket.SOL_TLS where Python defines it
TLS_TX = 1  # linux/tls.h


def ktls_tx(sock: socket.socket) -> bool:
    """True when the kernel does this socket's TLS encryption (``SOL_TLS``/``TLS_TX`` is set): only then may
    ``os.sendfile`` on its descriptor carry a file through TLS.  It needs Python 3.12+ (``ssl.OP_ENABLE_KTLS``
    on the context), an OpenSSL built with kTLS, a cipher the kernel implements and a kernel with its ``tls``
    module; where any of these is missing the answer is False."""
    try:
        # The crypto info starts with (version, cipher_type), two u16; without kTLS TX the call fails
        # (ENOPROTOOPT when the socket has no "tls" upper layer, EBUSY when only RX is set up).
        return len(sock.getsockopt(getattr(socket, "SOL_TLS", SOL_TLS), TLS_TX, 4)) == 4
    except OSError:
        return False
