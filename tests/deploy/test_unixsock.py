"""servers.unixsock: a Unix listener binds with its mode, replaces only a stale file, removes only its own."""

from __future__ import annotations

import errno
import os
import socket
import stat
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator

import pytest

from fastframe._address import UnixAddress
from fastframe.servers.unixsock import DEFAULT_UNIX_MODE, bind_unix, parse_mode, probe_unix


@pytest.fixture
def sockdir() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="ff-unix-") as d:
        yield d


def mode_of(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def echo_once_accepting(listener: socket.socket, path: str) -> bool:
    """Connect to ``path`` and accept on ``listener``: True if that listener is the one at the path."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.connect(path)
        listener.settimeout(5)
        conn, _ = listener.accept()
        conn.close()
    listener.setblocking(False)
    return True


def echo_once(path: str) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.settimeout(5)
        c.connect(path)
        c.sendall(b"ping")
        return c.recv(16)


@pytest.mark.parametrize(
    ("text", "mode"), [("660", 0o660), ("0660", 0o660), ("0o600", 0o600), ("777", 0o777), ("0", 0)]
)
def test_parse_mode(text: str, mode: int) -> None:
    assert parse_mode(text) == mode


@pytest.mark.parametrize("text", ["", "8", "rw", "0x1ff", "1777", "07777", "-660", "6 60"])
def test_parse_mode_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="bad mode"):
        parse_mode(text)


@pytest.mark.parametrize("mode", [0o660, 0o600, 0o666, 0o700])
def test_bound_with_the_mode_and_serves(sockdir: str, mode: int) -> None:
    path = os.path.join(sockdir, "e.sock")
    old = os.umask(0o022)  # the mode must not depend on the caller's umask, in either direction
    try:
        listener = bind_unix(UnixAddress(path), mode=mode)
    finally:
        os.umask(old)
    try:
        assert os.umask(old) == old  # bind_unix restored the process umask
        assert stat.S_ISSOCK(os.lstat(path).st_mode) and mode_of(path) == mode
        assert listener.sock.getblocking() is False
        assert echo_once_accepting(listener.sock, path)
    finally:
        listener.close()
    assert not os.path.exists(path)


def test_default_mode_is_0660(sockdir: str) -> None:
    path = os.path.join(sockdir, "d.sock")
    listener = bind_unix("unix:" + path)
    try:
        assert DEFAULT_UNIX_MODE == 0o660 and mode_of(path) == 0o660
    finally:
        listener.close()


def test_stale_file_is_replaced(sockdir: str) -> None:
    path = os.path.join(sockdir, "stale.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.listen(1)
    dead.close()  # the file stays: what a SIGKILLed server leaves behind
    assert probe_unix(path) == "stale"
    listener = bind_unix(UnixAddress(path))
    try:
        assert probe_unix(path) == "listening" and listener.owns_file()
        assert echo_once_accepting(listener.sock, path)
    finally:
        listener.close()


def test_live_socket_is_not_replaced(sockdir: str) -> None:
    path = os.path.join(sockdir, "live.sock")
    first = bind_unix(UnixAddress(path))
    try:
        inode = os.lstat(path).st_ino
        with pytest.raises(OSError, match="another process is listening on it") as info:
            bind_unix(UnixAddress(path))
        assert info.value.errno == errno.EADDRINUSE
        assert os.lstat(path).st_ino == inode and first.owns_file()
    finally:
        first.close()


def test_live_socket_with_a_full_backlog_is_not_replaced(sockdir: str) -> None:
    path = os.path.join(sockdir, "full.sock")
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(path)
    live.listen(0)
    clients = []
    try:
        for _ in range(8):  # fill the backlog: further non-blocking connects get EAGAIN
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.setblocking(False)
            clients.append(c)
            if c.connect_ex(path) == errno.EAGAIN:
                break
        else:
            pytest.fail("the backlog never filled")
        assert probe_unix(path) == "listening"
        with pytest.raises(OSError, match="listening"):
            bind_unix(UnixAddress(path))
        assert os.path.exists(path)
    finally:
        for c in clients:
            c.close()
        live.close()


def test_a_regular_file_is_never_deleted(sockdir: str) -> None:
    path = os.path.join(sockdir, "data.txt")
    with open(path, "w") as f:
        f.write("precious")
    with pytest.raises(OSError, match="not a socket; not replacing it") as info:
        bind_unix(UnixAddress(path))
    assert info.value.errno == errno.EEXIST
    with open(path) as f:
        assert f.read() == "precious"


def test_a_symlink_to_a_socket_is_not_followed(sockdir: str) -> None:
    target = os.path.join(sockdir, "target.sock")
    first = bind_unix(UnixAddress(target))
    link = os.path.join(sockdir, "link.sock")
    os.symlink(target, link)
    try:
        with pytest.raises(OSError, match="not a socket"):
            bind_unix(UnixAddress(link))
        assert os.path.islink(link) and first.owns_file()
    finally:
        first.close()


def test_missing_directory_is_one_line(sockdir: str) -> None:
    path = os.path.join(sockdir, "no", "such", "e.sock")
    with pytest.raises(OSError, match="does not exist") as info:
        bind_unix(UnixAddress(path))
    assert str(sockdir) in str(info.value) and "\n" not in str(info.value)


def test_removed_on_exit_only_if_still_ours(sockdir: str) -> None:
    path = os.path.join(sockdir, "mine.sock")
    listener = bind_unix(UnixAddress(path))
    os.unlink(path)  # an operator (or a second server) replaced it meanwhile
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(path)
    try:
        assert not listener.owns_file()
        listener.close()
        assert os.path.exists(path), "close() removed a file that is not ours"
    finally:
        other.close()


def test_close_twice_is_harmless(sockdir: str) -> None:
    path = os.path.join(sockdir, "twice.sock")
    listener = bind_unix(UnixAddress(path))
    listener.close()
    listener.close()
    assert not os.path.exists(path)


def test_an_inheriting_child_does_not_remove_it(sockdir: str) -> None:
    """A prefork worker inherits the listener; its exit must leave the master's socket file in place."""
    path = os.path.join(sockdir, "pre.sock")
    listener = bind_unix(UnixAddress(path))
    try:
        pid = os.fork()
        if pid == 0:  # the child: what a worker does on its way out
            code = 0
            try:
                code = 3 if listener.unlink() else 0
                listener.close()
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert listener.owns_file() and probe_unix(path) == "listening"
    finally:
        listener.close()
    assert not os.path.exists(path)


def test_removed_when_the_process_exits_through_close(sockdir: str) -> None:
    """A real process binds, serves one client, closes: the file is gone after it exits."""
    path = os.path.join(sockdir, "proc.sock")
    script = (
        "import sys, socket\n"
        "from fastframe.servers.unixsock import bind_unix\n"
        "l = bind_unix('unix:' + sys.argv[1], mode=0o600)\n"
        "print('ready', flush=True)\n"
        "l.sock.setblocking(True)\n"
        "c, _ = l.sock.accept(); c.sendall(c.recv(16)); c.close()\n"
        "l.close()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, path], stdout=subprocess.PIPE, cwd=sockdir)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        assert mode_of(path) == 0o600
        assert echo_once(path) == b"ping"
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not os.path.exists(path)


def test_abstract_name(sockdir: str) -> None:
    name = "@fastframe-test-" + uuid.uuid4().hex
    listener = bind_unix(UnixAddress(name))
    try:
        assert not listener.owns_file()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.connect(UnixAddress(name).sockaddr())
        with pytest.raises(OSError) as info:
            bind_unix(UnixAddress(name))
        assert info.value.errno == errno.EADDRINUSE
    finally:
        listener.close()


def test_probe_states(sockdir: str) -> None:
    assert probe_unix(os.path.join(sockdir, "nothing")) == "absent"
    os.mkdir(os.path.join(sockdir, "dir"))
    assert probe_unix(os.path.join(sockdir, "dir")) == "not-a-socket"
    dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dgram.bind(os.path.join(sockdir, "dgram.sock"))
    try:  # a live datagram socket cannot be proven stale: never replaced
        assert probe_unix(os.path.join(sockdir, "dgram.sock")).startswith("unknown")
        with pytest.raises(OSError, match="cannot tell whether it is in use"):
            bind_unix(UnixAddress(os.path.join(sockdir, "dgram.sock")))
    finally:
        dgram.close()
