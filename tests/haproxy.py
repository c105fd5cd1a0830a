"""A real HAProxy for tests: write its configuration, start and stop it by PID, drive its runtime API.

What the scale-out tests need from a balancer, and nothing else:

* one frontend on a loopback ephemeral port: the test binds the listening socket itself (port 0) and hands it
  to haproxy as ``bind fd@N``, so there is no window in which another process could take the port;
* N backend servers (``Backend(name, host, port)``), each sent a PROXY header (``send_proxy="v2"``, the
  default, ``"v1"`` or None), round-robin, with ``retries`` and ``option redispatch`` so that a connection refused
  by a dead server is retried on another one, as a deployment would configure it;
* health checks, ``check="echo"`` by default: fastframe's framed echo answers a frame with the same frame, so
  the check sends the 8 bytes of the frame ``b"ping"`` (``00 00 00 04 p i n g``) and expects them back -- a
  server that accepts connections but no longer answers (a wedged worker) goes down too, which a plain connect
  check (``check="connect"``) would not notice.  With ``send-proxy-v2`` the checks carry a PROXY header as well
  (``LOCAL``, with HAProxy's CRC32C TLV when asked for), so a server that insists on headers from its trusted
  balancer still answers them.  Fast intervals (``inter``, ``fall``, ``rise``) keep the tests short;
* the runtime API (``stats socket ... level admin``): :meth:`HAProxy.set_state` drains, readies or puts a
  server in maintenance, :meth:`HAProxy.states` reads every server's status from ``show stat``, and
  :meth:`HAProxy.wait_state` polls it with a deadline.

Everything lives in one temporary directory (configuration, admin socket, haproxy's output), removed by
:meth:`HAProxy.stop`, which stops haproxy by its PID (SIGTERM, then SIGKILL after a deadline).
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from typing import NamedTuple

from peertools import require_tool

#: The health-check request and its expected reply: the framed-echo frame b"ping" ("!I" length + payload).
ECHO_CHECK_HEX = "0000000470696e67"


class Backend(NamedTuple):
    name: str
    host: str
    port: int


def require_haproxy() -> str:
    """The haproxy binary (Debian installs it in /usr/sbin); skip, or fail under FASTFRAME_REQUIRE_TOOLS=1."""
    return require_tool("haproxy")


class HAProxy:
    """One haproxy process balancing a loopback frontend over ``backends`` (see the module docstring)."""

    def __init__(
        self,
        backends: Sequence[Backend],
        *,
        send_proxy: str | None = "v2",
        proxy_v2_options: Sequence[str] = (),
        check: str | None = "echo",
        inter_ms: int = 200,
        fall: int = 2,
        rise: int = 2,
        frontend_host: str = "127.0.0.1",
        binary: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.binary = binary or require_haproxy()
        self.backends = list(backends)
        self.dir = tempfile.mkdtemp(prefix="ffha-")  # short: the admin socket path must fit in sun_path
        self.admin_path = os.path.join(self.dir, "admin.sock")
        self.config_path = os.path.join(self.dir, "haproxy.cfg")
        self.output_path = os.path.join(self.dir, "haproxy.out")
        self.proc: subprocess.Popen[bytes] | None = None
        family = socket.AF_INET6 if ":" in frontend_host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.bind((frontend_host, 0))
            listener.listen(1024)
            self.frontend = listener.getsockname()[:2]
            self.config = self._config(listener.fileno(), send_proxy, proxy_v2_options, check, inter_ms, fall, rise)
            with open(self.config_path, "w") as f:
                f.write(self.config)
            self._start(listener.fileno(), timeout)
        except BaseException:
            listener.close()
            self.stop()
            raise
        listener.close()  # haproxy holds its own copy; ours would keep accepting into the backlog if it died

    # -- configuration --------------------------------------------------------------------------------------

    def _config(
        self,
        fd: int,
        send_proxy: str | None,
        proxy_v2_options: Sequence[str],
        check: str | None,
        inter_ms: int,
        fall: int,
        rise: int,
    ) -> str:
        server_opts = []
        if send_proxy == "v2":
            server_opts.append("send-proxy-v2")
            if proxy_v2_options:
                server_opts.append("proxy-v2-options " + ",".join(proxy_v2_options))
        elif send_proxy == "v1":
            server_opts.append("send-proxy")
        elif send_proxy is not None:
            raise ValueError(f"send_proxy must be 'v1', 'v2' or None, not {send_proxy!r}")
        if check is not None:
            server_opts.append(f"check inter {inter_ms}ms fall {fall} rise {rise}")
        lines = [
            "global",
            f"    stats socket {self.admin_path} level admin",
            "    maxconn 4096",
            "",
            "defaults",
            "    mode tcp",
            "    timeout connect 1s",
            "    timeout client 30s",
            "    timeout server 30s",
            "    timeout check 1s",
            "    retries 3",
            "    option redispatch",
            "",
            "frontend fe",
            f"    bind fd@{fd}",
            "    unique-id-format %{+X}o%ci:%cp_%fi:%fp_%Ts_%rt",
            "    default_backend be",
            "",
            "backend be",
            "    balance roundrobin",
        ]
        if check == "echo":
            lines += [
                "    option tcp-check",
                f"    tcp-check send-binary {ECHO_CHECK_HEX}",
                f"    tcp-check expect binary {ECHO_CHECK_HEX}",
            ]
        elif check not in (None, "connect"):
            raise ValueError(f"check must be 'echo', 'connect' or None, not {check!r}")
        for b in self.backends:
            host = f"[{b.host}]" if ":" in b.host else b.host
            lines.append(f"    server {b.name} {host}:{b.port} " + " ".join(server_opts))
        return "\n".join(lines) + "\n"

    # -- process --------------------------------------------------------------------------------------------

    def _start(self, fd: int, timeout: float) -> None:
        check = subprocess.run(
            [self.binary, "-c", "-f", self.config_path],
            check=False,
            capture_output=True,
            text=True,
            pass_fds=(fd,),
            timeout=timeout,
        )
        if check.returncode != 0:
            raise RuntimeError(f"haproxy refused its configuration:\n{check.stdout}{check.stderr}\n{self.config}")
        with open(self.output_path, "wb") as out:
            self.proc = subprocess.Popen(
                [self.binary, "-db", "-f", self.config_path],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                pass_fds=(fd,),
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"haproxy exited ({self.proc.returncode}) at start:\n{self.output()}")
            try:
                if "Pid:" in self.command("show info"):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"haproxy's runtime API did not answer in {timeout} s:\n{self.output()}")
            time.sleep(0.02)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def output(self) -> str:
        try:
            with open(self.output_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 5.0) -> None:
        """Stop haproxy by PID (SIGTERM, then SIGKILL) and remove its directory.  Safe to call twice."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout)
        if os.path.isdir(self.dir):
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> HAProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- runtime API ----------------------------------------------------------------------------------------

    def command(self, line: str, timeout: float = 5.0) -> str:
        """One runtime API command (``show stat``, ``set server be/b1 state drain``); its whole answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(self.admin_path)
            s.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def states(self) -> dict[str, str]:
        """{server name: status} from ``show stat``: ``UP``, ``DOWN``, ``DRAIN``, ``MAINT``, ``no check``, or a
        transition such as ``UP 1/2`` (up, one failed check of two) -- as HAProxy prints it."""
        text = self.command("show stat").lstrip("# ")
        rows = csv.DictReader(io.StringIO(text))
        return {r["svname"]: r["status"] for r in rows if r["pxname"] == "be" and r["svname"] not in ("BACKEND",)}

    def sessions(self, server: str) -> int:
        """Connections HAProxy holds open to ``server`` now (``scur`` in ``show stat``)."""
        rows = csv.DictReader(io.StringIO(self.command("show stat").lstrip("# ")))
        return next(int(r["scur"] or 0) for r in rows if r["pxname"] == "be" and r["svname"] == server)

    def set_state(self, server: str, state: str) -> None:
        """``ready``, ``drain`` (no new connections, established ones go on) or ``maint``."""
        answer = self.command(f"set server be/{server} state {state}").strip()
        if answer:
            raise RuntimeError(f"haproxy: set server be/{server} state {state}: {answer}")

    def wait_state(self, server: str, wanted: str, timeout: float = 10.0) -> str:
        """Poll until ``server``'s status is ``wanted`` (exactly); return it, or raise with every state seen."""
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while True:
            state = self.states().get(server, "?")
            if not seen or seen[-1] != state:
                seen.append(state)
            if state == wanted:
                return state
            if time.monotonic() > deadline:
                raise TimeoutError(f"{server} never became {wanted!r} in {timeout} s; states seen: {seen}")
            time.sleep(0.05)
