"""fastframe._session: the TCP connect every client starts with, made without socket.py.

`tcp_connect` stands in for `socket.create_connection` (so that a client command does not import socket.py,
tests/test_startup.py), and the public `connect` still hands out a `socket.socket`; these tests hold both to
what create_connection gave.
"""

from __future__ import annotations

import socket

import pytest

from fastframe._session import connect, resolvable, tcp_connect


@pytest.mark.parametrize("family, host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_tcp_connect_reaches_a_listener_with_nodelay_and_the_timeout(family: int, host: str) -> None:
    try:
        listener = socket.socket(family)
        listener.bind((host, 0))
    except OSError:
        pytest.skip(f"no {host} on this machine")
    with listener:
        listener.listen()
        sock = tcp_connect(host, listener.getsockname()[1], 2.5)
        try:
            peer, _ = listener.accept()
            with peer:
                assert sock.family == family and sock.gettimeout() == 2.5
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                sock.sendall(b"ping")
                assert peer.recv(4) == b"ping"
        finally:
            sock.close()


def test_connect_still_gives_a_socket_socket() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        with connect("localhost", listener.getsockname()[1], timeout=None) as sock:
            assert type(sock) is socket.socket
            assert sock.gettimeout() is None and sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            peer, _ = listener.accept()
            peer.close()
            assert sock.makefile("rb").read() == b""  # (the socket.py methods are there)


def test_a_refused_connect_raises_what_create_connection_raises() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        port = holder.getsockname()[1]
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5)
        with pytest.raises(ConnectionRefusedError):
            tcp_connect("127.0.0.1", port, 5)


def test_resolvable_passes_ascii_names_as_the_idna_codec_would() -> None:
    for host in ("127.0.0.1", "localhost", "example.com.", "::1", "a" * 63 + ".b"):
        assert resolvable(host) == host.encode("idna") == host.encode("ascii")
    # Not ASCII, or a name the codec refuses: passed as it is, so getaddrinfo (and its error) is unchanged.
    for host in ("bücher.example", "a..b", "a" * 64 + ".b", "." + "b"):
        assert resolvable(host) == host
