"""Throwaway PostgreSQL and MariaDB servers for the live framing tests (tests/test_live_servers.py).

Each server runs from a temporary directory of its own (data, socket, log), on 127.0.0.1 and a port of its
own, as an unprivileged user when the tests run as root (PostgreSQL refuses root; MariaDB gets ``--user``),
and is stopped by its PID and deleted at the end of the session.  A server that is not installed is a skip,
or a failure under FASTFRAME_REQUIRE_TOOLS=1 (CI), as for the other peer tools.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

PASSWORD = "ff-secret"
USER = "ff"
START_TIMEOUT = 60.0


def require(path: str | None, what: str, package: str) -> str:
    if path is None or not os.access(path, os.X_OK):
        message = f"{what} is not installed (apt-get install {package})"
        if os.environ.get("FASTFRAME_REQUIRE_TOOLS") == "1":
            pytest.fail(message + " and FASTFRAME_REQUIRE_TOOLS=1", pytrace=False)
        pytest.skip(message)
    return path


def free_port() -> int:
    """A port free right now on 127.0.0.1 (the servers cannot bind port 0 and report it; a start that loses
    the port to someone else is retried with another)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A server process started from a private temporary directory, stopped by PID."""

    name = "server"

    def __init__(self, account: str) -> None:
        self.account = account if os.geteuid() == 0 else None
        self.base = tempfile.mkdtemp(prefix=f"fastframe-{self.name}-")
        os.chmod(self.base, 0o755)
        self.proc: subprocess.Popen | None = None  # type: ignore[type-arg]
        self.port = 0
        self.log = os.path.join(self.base, "server.log")

    def chown(self, path: str) -> None:
        if self.account:
            entry = pwd.getpwnam(self.account)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def run(self, argv: list[str], **kwargs: object) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, **self._as_account(), **kwargs)
        if proc.returncode:
            raise RuntimeError(f"{argv[0]} failed ({proc.returncode}): {proc.stdout[-1500:]}{proc.stderr[-1500:]}")
        return proc

    def _as_account(self) -> dict:  # type: ignore[type-arg]
        return {}

    def command(self, port: int) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        for _attempt in range(3):
            port = free_port()
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen(
                    self.command(port), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True, **self._as_account(),
                )  # fmt: skip
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline and self.proc.poll() is None:
                if self.ready(port):
                    self.port = port
                    return
                time.sleep(0.05)
            self.stop_process()
        raise RuntimeError(f"{self.name} did not start; its log:\n{self.read_log()[-3000:]}")

    def ready(self, port: int) -> bool:
        """True once the server takes connections on ``port``."""
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
        return True

    def read_log(self) -> str:
        try:
            with open(self.log, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop_process(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def close(self) -> None:
        try:
            self.stop_process()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)


class Postgres(Server):
    """A PostgreSQL cluster: user ``ff`` with a password, checked in clear (``password``) on TCP."""

    name = "postgres"

    def __init__(self) -> None:
        bindirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
        bindir = bindirs[-1] if bindirs else None
        require(bindir and os.path.join(bindir, "postgres"), "PostgreSQL", "postgresql")
        super().__init__("postgres")
        self.bindir = bindir
        self.data = os.path.join(self.base, "data")
        self.chown(self.base)
        pwfile = os.path.join(self.base, "pw")
        with open(pwfile, "w") as f:
            f.write(PASSWORD + "\n")
        self.chown(pwfile)
        self.run([
            os.path.join(bindir, "initdb"), "-D", self.data, "-U", USER, f"--pwfile={pwfile}",
            "--auth-local=trust", "--auth-host=password", "-E", "UTF8", "--locale=C", "--no-sync",
        ])  # fmt: skip

    def _as_account(self) -> dict:  # type: ignore[type-arg]
        if not self.account:
            return {}
        entry = pwd.getpwnam(self.account)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def command(self, port: int) -> list[str]:
        return [
            os.path.join(self.bindir, "postgres"), "-D", self.data, "-p", str(port), "-k", self.base,
            "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "logging_collector=off",
        ]  # fmt: skip

    def ready(self, port: int) -> bool:
        # PostgreSQL accepts TCP connections while it starts up, only to refuse the login ("the database system
        # is starting up"): ready means pg_isready says it accepts sessions.
        check = [os.path.join(self.bindir, "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port), "-t", "1"]
        return subprocess.run(check, stdin=subprocess.DEVNULL, timeout=10).returncode == 0

    def stop_process(self) -> None:
        # SIGINT is PostgreSQL's fast shutdown: it ends the backends and leaves at once.
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        super().stop_process()


class MariaDB(Server):
    """A MariaDB server: user ``ff``@127.0.0.1 with a mysql_native_password password, database ``fftest``."""

    name = "mariadb"

    def __init__(self) -> None:
        mariadbd = shutil.which("mariadbd", path="/usr/sbin:/usr/bin:/sbin:/bin")
        install = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
        require(mariadbd, "MariaDB", "mariadb-server")
        require(install, "mariadb-install-db", "mariadb-server")
        super().__init__("mysql")
        self.mariadbd = mariadbd
        self.data = os.path.join(self.base, "data")
        self.chown(self.base)
        user = ["--user=" + self.account] if self.account else []
        self.run([
            install, "--no-defaults", f"--datadir={self.data}", *user, "--auth-root-authentication-method=normal",
            "--skip-test-db", "--skip-name-resolve",
        ])  # fmt: skip
        self.init = os.path.join(self.base, "init.sql")
        with open(self.init, "w") as f:
            f.write(
                f"CREATE USER '{USER}'@'127.0.0.1' IDENTIFIED VIA mysql_native_password USING PASSWORD('{PASSWORD}');\n"
                f"GRANT ALL ON *.* TO '{USER}'@'127.0.0.1';\n"
                "CREATE DATABASE fftest;\n"
            )
        self.chown(self.init)

    def command(self, port: int) -> list[str]:
        user = ["--user=" + self.account] if self.account else []
        return [
            self.mariadbd, "--no-defaults", f"--datadir={self.data}", f"--port={port}", "--bind-address=127.0.0.1",
            f"--socket={os.path.join(self.base, 'mysqld.sock')}", f"--pid-file={os.path.join(self.base, 'mysqld.pid')}",
            f"--init-file={self.init}", "--skip-name-resolve", "--skip-log-bin", "--innodb-buffer-pool-size=16M",
            "--max-allowed-packet=64M", *user,
        ]  # fmt: skip
