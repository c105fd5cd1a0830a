#!/usr/bin/env python3
"""Server benchmark: fastframe's engines against what people run today, in one run, over real TCP on 127.0.0.1.

Echo mode (the default) -- every server speaks the same framed echo protocol (a 4-byte big-endian length,
then the payload; the reply is the same frame) and is driven by ``bench/loadgen.c``, a one-thread epoll load
generator in C that this script compiles with gcc into ``bench/.build/``.  It keeps C connections each with
D requests of S bytes in flight (closed loop), checks every byte of every reply, records each request's
latency in a histogram, runs a warm-up and then a measured window, and reads the server's CPU time
(utime + stime of the server and all of its descendants, from /proc) at the two edges of that window.

Servers (``--servers``, comma-separated; default: all):

  select           fastframe serve --engine select --echo 0            (the baseline of every ratio)
  prefork          fastframe serve --engine prefork --workers N --echo 0
  select-purepy    the select engine with FASTFRAME_PURE_PYTHON=1      (the codec's pure-Python twin)
  c-epoll          bench/echo_c.c: a framed echo server in C, epoll    (the practical ceiling)
  uvloop           asyncio.Protocol + hand-written "!I" parser, on uvloop   (bench/peers.py)
  asyncio-protocol the same Protocol on the default asyncio loop
  asyncio-streams  asyncio.start_server, readexactly + write + drain
  twisted          Twisted Int32StringReceiver
  selectors        the tutorial seeds: selectors + bytes buffer + struct.unpack + slicing
  threading        socketserver.ThreadingTCPServer, recv_into exact loops

The rows above are the echo fast path (fastframe relays checked frames without an object per frame).  The
general path has rows of its own, where every server calls bytes.upper() per frame and the load generator
(--upper) checks every reply is the request upper-cased: select-upper, prefork-upper, select-purepy-upper
(``fastframe serve ... --upper``), uvloop-upper, asyncio-protocol-upper, twisted-upper (the peers above with
the function), aio-protocol-*, aio-batch-*, aio-streams-* (fastframe.aio on uvloop / the default loop,
bench/aio_servers.py) and uvloop-streams-upper, asyncio-streams-upper (readexactly).  Each path has its own
baseline for the ratios; after the tables the issue-13 targets are checked (bench/report.py).

Scenarios (``--scenarios``, default ``a,b,c``): (a) C x 64 B, depth 1; (b) C x 64 B, depth 16;
(c) C x 16 KiB, depth 1; C is ``--connections`` (default 50).

Every (scenario, server) measurement starts a fresh server and stops it afterwards (by PID, with every
descendant it had).  With two or more CPUs the server (and, through fork inheritance, its workers and
threads) is pinned to one CPU and the load generator to another; the prefork engine gets as many CPUs as it
has workers, never the load generator's (on a 2-CPU machine: the same single CPU as everyone else).
``--repeat N`` measures everything N times (round-robin, so slow drifts hit every server alike) and keeps,
per row, the run with the median req/s.

Files mode (``--files``): download files of 4 KiB (latency: start-up is most of it), 64 MiB and
``--file-size`` (default 1 GiB) through fastframe's file service (``fastframe serve --files 0`` + ``fastframe
get -o``), nginx with ``sendfile on`` + ``curl -o`` and ``python -m http.server`` + ``curl -o``, and report
milliseconds per small download (and the ratio to ``python -c pass`` in the same run) and seconds per GiB.

TLS mode (``--tls``, bench/bench_tls.py): the framed echo over TLS, fastframe select against uvloop with
``ssl=``, and a download over TLS, fastframe against nginx + curl.

Run ``python bench/bench_servers.py --help``; bench/README.md ("Server bench") says how to read the output.
Loopback only, bounded in time, stops by itself.  Linux only (epoll, /proc).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any

import report  # bench/report.py: tables and charts, shared with the README (bench/ is sys.path[0] when run)
from report import FAST, GENERAL, NOISE_CORES, fmt_bytes, fmt_ratio

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
BUILD_DIR = os.path.join(BENCH_DIR, ".build")
PEERS = os.path.join(BENCH_DIR, "peers.py")
CFLAGS = ["-O2", "-Wall"]
GiB = 1 << 30
MiB = 1 << 20
LISTEN_LINE = re.compile(rb"^(\w+) tcp (\S+):(\d+)\s*$")
UNIX_LINE = re.compile(rb"^(\w+) unix (\S+)\s*$")
METRICS_LINE = re.compile(rb"^metrics tcp (\S+):(\d+)\s*$")


class BenchError(Exception):
    """A failure that ends one row (server did not start, wrong byte, ...), not the run."""


# -- building the C programs ----------------------------------------------------------------------------


def build(name: str) -> str:
    """Compile bench/NAME.c into bench/.build/NAME-<hash of source and flags>; return the binary's path."""
    src = os.path.join(BENCH_DIR, name + ".c")
    cc = shutil.which(os.environ.get("CC", "gcc"))
    if cc is None:
        raise BenchError("gcc not found (set CC to a C compiler)")
    with open(src, "rb") as f:
        digest = hashlib.sha1(f.read() + " ".join([cc] + CFLAGS).encode()).hexdigest()[:12]
    out = os.path.join(BUILD_DIR, f"{name}-{digest}")
    if os.path.exists(out):
        return out
    os.makedirs(BUILD_DIR, exist_ok=True)
    tmp = f"{out}.{os.getpid()}.tmp"
    proc = subprocess.run([cc, *CFLAGS, "-o", tmp, src], capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise BenchError(f"compiling {name}.c failed: {proc.stderr.strip().splitlines()[-1:] or proc.returncode}")
    os.replace(tmp, out)  # atomic: two runs building at once both end with a whole binary
    return out


# -- processes ------------------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except OSError:
        return None
    return data[data.rindex(")") + 2 :].split()  # fields from 3 (state) on; comm may hold spaces


def process_tree(pid: int) -> list[int]:
    """``pid`` and all of its descendants (via /proc/PID/task/*/children)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    todo.extend(int(k) for k in f.read().split())
            except OSError:
                pass
    return out


def tree_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and its descendants, in seconds."""
    ticks = 0
    for p in process_tree(pid):
        fields = _stat_fields(p)
        if fields:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (user nice system irq softirq, from /proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:8]]
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / os.sysconf("SC_CLK_TCK")


def _pin(cpus: set[int] | None) -> Any:
    if not cpus:
        return None

    def preexec() -> None:  # runs in the child between fork and exec: the exec'd server inherits it
        os.sched_setaffinity(0, cpus)

    return preexec


class Proc:
    """A child process in its own session; stopped by PID together with every descendant seen."""

    def __init__(
        self,
        argv: Sequence[str],
        env: dict[str, str] | None = None,
        cpus: set[int] | None = None,
        cwd: str | None = None,
        stdout: Any = subprocess.PIPE,
    ) -> None:
        self.argv = list(argv)
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the process; closed in stop()
        full_env = dict(os.environ)
        full_env.update(env or {})
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=self._stderr,
                env=full_env,
                cwd=cwd or BENCH_DIR,  # never the repository root: `python -m fastframe` there imports the source tree
                start_new_session=True,
                preexec_fn=_pin(cpus),  # noqa: PLW1509 - the bench runs no threads
            )
        except OSError as exc:
            self._stderr.close()
            raise BenchError(f"cannot start {self.argv[0]}: {exc.strerror or exc}") from None
        self.pid = self.proc.pid
        self._seen: dict[int, str] = {}  # descendant pid -> its start time (guards against PID reuse)
        self._buf = b""

    def remember_children(self) -> None:
        for p in process_tree(self.pid)[1:]:
            fields = _stat_fields(p)
            if fields:
                self._seen.setdefault(p, fields[19])

    def stderr_tail(self, lines: int = 3) -> str:
        try:
            self._stderr.seek(0)
            text = self._stderr.read().decode(errors="replace").strip()
        except (OSError, ValueError):
            return ""
        return " | ".join(text.splitlines()[-lines:])

    def wait_line(self, pattern: re.Pattern[bytes], timeout: float) -> re.Match[bytes]:
        """Read stdout lines until one matches ``pattern``."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                m = pattern.match(line.strip())
                if m:
                    return m
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"printed no listening address within {timeout:g} s; stderr: {self.stderr_tail()}")
            ready, _, _ = select.select([fd], [], [], min(left, 0.5))
            if not ready:
                if self.proc.poll() is not None:
                    raise BenchError(f"exited with status {self.proc.returncode}: {self.stderr_tail() or 'no message'}")
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                raise BenchError(f"exited with status {self.proc.wait()}: {self.stderr_tail() or 'no message'}")
            self._buf += chunk

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc.poll() is None:
            self.remember_children()
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.remember_children()
                self.proc.kill()
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:  # pragma: no cover
                    pass
        for pid, start in self._seen.items():
            fields = _stat_fields(pid)
            if fields and fields[19] == start and fields[0] != "Z":
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


# -- servers and scenarios ------------------------------------------------------------------------------


AIO_SERVERS = os.path.join(BENCH_DIR, "aio_servers.py")


class ServerSpec:
    def __init__(self, name: str, label: str, group: str, path: str, note: str = "", needs: str = "") -> None:
        self.name = name
        self.label = label
        self.group = group  # "fastframe", "fastframe-py", "fastframe-aio", "c" or "peer": colours in the chart
        self.path = path  # FAST (echo, the engines relay) or GENERAL (a Python function per frame)
        self.note = note
        self.needs = needs  # a module beyond the standard library and fastframe ("uvloop", "twisted")
        self.skip: str | None = None  # why this server is not measured (missing package, ...)

    @property
    def upper(self) -> bool:
        return self.path == GENERAL

    def argv(self, ctx: Context) -> tuple[list[str], dict[str, str]]:
        py = sys.executable
        upper = ["--upper"] if self.upper else []
        base = self.name.removesuffix("-upper")
        if base in ("select", "select-purepy"):
            env = {"FASTFRAME_PURE_PYTHON": "1" if base == "select-purepy" else ""}
            return [py, "-m", "fastframe", "serve", "--engine", "select", "--echo", "0", *upper], env
        if base in DEPLOY_ROWS:  # the deployment options' cost, next to the plain select row
            extra = {"select-unix": ["--echo", f"unix:{ctx.unix_dir}/echo.sock"]}.get(base, ["--echo", "0"])
            if base.startswith("select-metrics"):
                extra += ["--metrics", "127.0.0.1:0"]
            return [py, "-m", "fastframe", "serve", "--engine", "select", *extra, *upper], {"FASTFRAME_PURE_PYTHON": ""}
        if base == "prefork":
            return [py, "-m", "fastframe", "serve", "--engine", "prefork", "--workers", str(ctx.workers),
                    "--echo", "0", *upper], {"FASTFRAME_PURE_PYTHON": ""}  # fmt: skip
        if base == "c-epoll":
            assert ctx.echo_c is not None
            return [ctx.echo_c, "0"], {}
        if base.startswith("aio-"):
            _, kind, loop = base.split("-")
            return [py, AIO_SERVERS, kind, "0", "--loop", loop, *upper], {"FASTFRAME_PURE_PYTHON": ""}
        return [py, PEERS, PEER_KINDS[base], "0", *upper], {}


#: Rows for the deployment options: the framed echo over a Unix socket; with --metrics, unscraped and scraped
#: once a second (by the bench, during the window).
DEPLOY_ROWS = ("select-unix", "select-metrics", "select-metrics-scraped")

PEER_KINDS = {
    "uvloop": "uvloop-protocol",
    "uvloop-raw": "uvloop-raw",
    "uvloop-streams": "uvloop-streams",
    "asyncio-raw": "asyncio-raw",
    "asyncio-protocol": "asyncio-protocol",
    "asyncio-streams": "asyncio-streams",
    "twisted": "twisted",
    "selectors": "selectors",
    "threading": "threading",
}


def all_servers(workers: int) -> list[ServerSpec]:
    F, G = FAST, GENERAL
    return [
        # the echo fast path: fastframe's engines relay checked frames; the peers parse and call echo()
        ServerSpec("select", "fastframe select", "fastframe", F, "fastframe serve --engine select"),
        ServerSpec("prefork", f"fastframe prefork x{workers}", "fastframe", F, f"--engine prefork --workers {workers}"),
        ServerSpec("select-purepy", "fastframe select, pure-Py", "fastframe-py", F, "FASTFRAME_PURE_PYTHON=1"),
        ServerSpec("select-unix", "fastframe select, Unix socket", "fastframe", F, "--echo unix:PATH"),
        ServerSpec(
            "select-metrics",
            "fastframe select --metrics",
            "fastframe",
            F,
            "--metrics, not scraped",
            "prometheus_client",
        ),  # fmt: skip
        ServerSpec(
            "select-metrics-scraped",
            "fastframe select --metrics, scraped 1/s",
            "fastframe",
            F,
            "--metrics, GET /metrics once a second",
            "prometheus_client",
        ),  # fmt: skip
        ServerSpec("c-epoll", "C epoll echo (ceiling)", "c", F, "bench/echo_c.c"),
        ServerSpec("uvloop", "uvloop Protocol", "peer", F, "asyncio.Protocol + '!I' parser on uvloop", "uvloop"),
        ServerSpec(
            "uvloop-raw",
            "uvloop raw echo (no framing)",
            "peer",
            F,
            "data_received -> write(data): parses nothing",
            "uvloop",
        ),  # fmt: skip
        ServerSpec(
            "asyncio-raw", "asyncio raw echo (no framing)", "peer", F, "data_received -> write(data): parses nothing"
        ),  # fmt: skip
        ServerSpec("asyncio-protocol", "asyncio Protocol", "peer", F, "asyncio.Protocol + '!I' parser"),
        ServerSpec("asyncio-streams", "asyncio streams", "peer", F, "readexactly + write + drain"),
        ServerSpec("twisted", "Twisted Int32String", "peer", F, "Int32StringReceiver", "twisted"),
        ServerSpec("selectors", "selectors seeds", "peer", F, "selectors + bytes buffer + slicing"),
        ServerSpec("threading", "ThreadingTCPServer", "peer", F, "socketserver, thread per connection"),
        # the general path: bytes.upper() per frame everywhere, checked by the load generator
        ServerSpec("select-upper", "fastframe select", "fastframe", G, "fastframe serve --engine select --upper"),
        ServerSpec(
            "prefork-upper",
            f"fastframe prefork x{workers}",
            "fastframe",
            G,
            f"--engine prefork --workers {workers} --upper",
        ),  # fmt: skip
        ServerSpec(
            "select-purepy-upper", "fastframe select, pure-Py", "fastframe-py", G, "FASTFRAME_PURE_PYTHON=1 --upper"
        ),  # fmt: skip
        ServerSpec("uvloop-upper", "uvloop Protocol", "peer", G, "asyncio.Protocol + '!I' parser on uvloop", "uvloop"),
        ServerSpec("asyncio-protocol-upper", "asyncio Protocol", "peer", G, "asyncio.Protocol + '!I' parser"),
        ServerSpec("twisted-upper", "Twisted Int32String", "peer", G, "Int32StringReceiver", "twisted"),
        ServerSpec(
            "aio-protocol-uvloop",
            "fastframe.aio FrameProtocol, uvloop",
            "fastframe-aio",
            G,
            "frame_received -> send_frame",
            "uvloop",
        ),  # fmt: skip
        ServerSpec(
            "aio-batch-uvloop",
            "fastframe.aio frames_received, uvloop",
            "fastframe-aio",
            G,
            "frames_received(list) -> send_frames",
            "uvloop",
        ),  # fmt: skip
        ServerSpec(
            "aio-streams-uvloop",
            "fastframe.aio streams, uvloop",
            "fastframe-aio",
            G,
            "async for frame in reader: write_frame + drain",
            "uvloop",
        ),  # fmt: skip
        ServerSpec(
            "uvloop-streams-upper", "uvloop streams readexactly", "peer", G, "readexactly + write + drain", "uvloop"
        ),  # fmt: skip
        ServerSpec(
            "aio-protocol-asyncio",
            "fastframe.aio FrameProtocol, asyncio",
            "fastframe-aio",
            G,
            "frame_received -> send_frame",
        ),  # fmt: skip
        ServerSpec(
            "aio-batch-asyncio",
            "fastframe.aio frames_received, asyncio",
            "fastframe-aio",
            G,
            "frames_received(list) -> send_frames",
        ),  # fmt: skip
        ServerSpec(
            "aio-streams-asyncio",
            "fastframe.aio streams, asyncio",
            "fastframe-aio",
            G,
            "async for frame in reader: write_frame + drain",
        ),  # fmt: skip
        ServerSpec("asyncio-streams-upper", "asyncio streams readexactly", "peer", G, "readexactly + write + drain"),
    ]


SERVER_NAMES = [s.name for s in all_servers(2)]
QUICK_SERVERS = ["select", "c-epoll", "select-upper", "uvloop-upper", "aio-protocol-uvloop", "aio-streams-uvloop"]


class Scenario:
    def __init__(self, key: str, size: int, depth: int) -> None:
        self.key = key
        self.size = size
        self.depth = depth

    def title(self, connections: int) -> str:
        return f"({self.key}) {connections} connections x {fmt_bytes(self.size)}, depth {self.depth}"


SCENARIOS = {"a": Scenario("a", 64, 1), "b": Scenario("b", 64, 16), "c": Scenario("c", 16 * 1024, 1)}


class Context:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workers: int = args.workers
        self.loadgen = ""
        self.echo_c: str | None = None
        self.lg_cpus: set[int] | None = None
        self.server_cpus: set[int] | None = None
        self.prefork_cpus: set[int] | None = None
        self.pinning = "not pinned"
        self.unix_dir = tempfile.mkdtemp(prefix="ffbench-")  # the Unix-socket row's socket file

    def plan_cpus(self) -> None:
        cpus = sorted(os.sched_getaffinity(0))
        if self.args.no_pin:
            self.pinning = "not pinned (--no-pin)"
            return
        if len(cpus) < 2:
            self.pinning = f"not pinned: only {len(cpus)} CPU available"
            return
        self.lg_cpus = {cpus[0]}
        self.server_cpus = {cpus[1]}
        self.prefork_cpus = set(cpus[1 : 1 + max(1, self.workers)])
        self.pinning = f"load generator on CPU {cpus[0]}, server on CPU {cpus[1]}"
        if any(name.startswith("prefork") for name in self.args.servers):
            pre = ",".join(map(str, sorted(self.prefork_cpus)))
            alone = len(self.prefork_cpus) == 1
            self.pinning += f"; prefork master + {self.workers} workers on CPU{'' if alone else 's'} {pre}" + (
                " (the same single CPU: this machine has no other one to give)" if alone else ""
            )

    def cpus_for(self, spec: ServerSpec) -> set[int] | None:
        return self.prefork_cpus if spec.name.startswith("prefork") else self.server_cpus


# -- one measurement ------------------------------------------------------------------------------------


def measure(ctx: Context, spec: ServerSpec, scen: Scenario) -> dict[str, Any]:
    """Start the server, run the load generator against it, stop it; the loadgen's JSON or a failure."""
    args = ctx.args
    argv, env = spec.argv(ctx)
    started = time.monotonic()
    try:
        server = Proc(argv, env=env, cpus=ctx.cpus_for(spec))
    except BenchError as exc:
        return {"ok": False, "error": f"server did not start: {exc}"}
    try:
        unix = spec.name.startswith("select-unix")
        try:
            m = server.wait_line(UNIX_LINE if unix else LISTEN_LINE, timeout=30.0)
            scraped = server.wait_line(METRICS_LINE, 30.0) if spec.name.endswith("-scraped") else None
        except BenchError as exc:
            return {"ok": False, "error": f"server did not start: {exc}"}
        port = 0 if unix else int(m.group(3))
        where = ["--unix", m.group(2).decode()] if unix else ["--port", str(port)]
        lg_argv = [
            ctx.loadgen, *where, "--connections", str(args.connections), "--depth", str(scen.depth),
            "--size", str(scen.size), "--warmup", str(args.warmup), "--duration", str(args.duration),
            "--stall", str(args.stall), "--pid", str(server.pid), *(["--upper"] if spec.upper else []),
        ]  # fmt: skip
        limit = args.warmup + args.duration + args.stall + 30.0
        lg = subprocess.Popen(
            lg_argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_pin(ctx.lg_cpus),
        )  # fmt: skip
        scraper = Scraper(scraped) if scraped is not None else None  # (a thread: only once nothing more is forked)
        spread: list[int] | None = None
        try:
            if spec.name.startswith("prefork"):
                # Mid-window, count how the connections landed on the workers (the accept spread).
                time.sleep(args.warmup + args.duration / 2)
                spread = connection_spread(server.pid, port)
            out, err = lg.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            lg.kill()
            lg.communicate()
            return {"ok": False, "error": f"load generator did not finish within {limit:g} s"}
        finally:
            if scraper is not None:
                scraper.stop()
        try:
            result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {"ok": False, "error": f"load generator failed (status {lg.returncode}): {err.strip()[-300:]}"}
        if spread is not None:
            result["connections_per_worker"] = spread
        if not result.get("ok"):
            tail = (
                ""
                if server.alive()
                else f" (server exited with status {server.proc.returncode}: {server.stderr_tail()})"
            )
            result["error"] = f"{result.get('error', 'load generator failed')}{tail}"
        return result
    finally:
        server.stop()
        if args.verbose:
            log(f"    ({time.monotonic() - started:.1f} s incl. start/stop)")


class Scraper:
    """GET /metrics once a second, in a thread of the bench, until stopped (a Prometheus server's habit)."""

    def __init__(self, line: re.Match[bytes]) -> None:
        self.url = f"http://{line.group(1).decode()}:{int(line.group(2))}/metrics"
        self.done = threading.Event()
        self.scrapes = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import urllib.request

        while not self.done.wait(1.0):
            with urllib.request.urlopen(self.url, timeout=5) as resp:
                resp.read()
            self.scrapes += 1

    def stop(self) -> None:
        self.done.set()
        self.thread.join(10)


def connection_spread(pid: int, port: int) -> list[int]:
    """Established TCP connections on local ``port`` held by each child (worker) of ``pid``, from /proc."""
    children: list[int] = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as f:
            children.extend(int(c) for c in f.read().split())
    established: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for row in f:
                    parts = row.split()
                    if parts[3] == "01" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                        established.add(parts[9])
        except FileNotFoundError:
            pass
    counts = []
    for child in sorted(children):
        n = 0
        try:
            for fd in os.listdir(f"/proc/{child}/fd"):
                try:
                    target = os.readlink(f"/proc/{child}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith("socket:[") and target[8:-1] in established:
                    n += 1
        except FileNotFoundError:
            continue
        counts.append(n)
    return counts


def spread_note(counts: list[int]) -> str:
    if not counts or not sum(counts):
        return "connections per worker: not measured"
    fair = sum(counts) / len(counts)
    worst = max(abs(c - fair) for c in counts) / fair
    return f"connections per worker {'/'.join(map(str, counts))} (at most {worst:.0%} from an even share)"


def pick_median(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    ok = sorted((r for r in runs if r.get("ok")), key=lambda r: r["req_per_s"])
    if not ok:
        return None
    return ok[(len(ok) - 1) // 2]  # for an even count, the lower of the two middle runs: a real run, not a mean


# -- output ---------------------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """req_ratio / cpu_ratio: this row's req/s / CPU per request over the select engine's on the same path.

    The fast-path rows are compared with ``select`` (the echo relay), the general-path rows with
    ``select-upper`` (the engine calling the service per frame)."""
    base: dict[tuple[str, str], dict[str, Any]] = {
        (r["scenario"], r.get("path", FAST)): r["chosen"]
        for r in rows
        if r["server"] in ("select", "select-upper") and r["chosen"]
    }
    for r in rows:
        b = base.get((r["scenario"], r.get("path", FAST)))
        c = r["chosen"]
        r["req_ratio"] = c["req_per_s"] / b["req_per_s"] if b and c and b["req_per_s"] else None
        ok_cpu = b and c and b["cpu_us_per_req"] > 0 and c["cpu_us_per_req"] >= 0
        r["cpu_ratio"] = c["cpu_us_per_req"] / b["cpu_us_per_req"] if ok_cpu else None  # type: ignore[index]


# -- the echo benchmark ---------------------------------------------------------------------------------


def fastframe_info() -> dict[str, Any]:
    probe = (
        "import json, fastframe; print(json.dumps({'version': fastframe.__version__, "
        "'implementation': fastframe.IMPLEMENTATION, 'path': fastframe.__file__}))"
    )
    info: dict[str, Any] = {}
    for key, env in (("default", {"FASTFRAME_PURE_PYTHON": ""}), ("pure", {"FASTFRAME_PURE_PYTHON": "1"})):
        proc = subprocess.run(
            [sys.executable, "-c", probe],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
            timeout=60,
            check=False,
            cwd=BENCH_DIR,
        )
        info[key] = json.loads(proc.stdout) if proc.returncode == 0 else {"error": proc.stderr.strip()[-300:]}
    return info


def run_echo(args: argparse.Namespace) -> int:
    ctx = Context(args)
    try:
        ctx.loadgen = build("loadgen")
    except BenchError as exc:
        log(f"bench_servers: cannot build the load generator: {exc}")
        return 1
    specs = [s for s in all_servers(args.workers) if s.name in args.servers]
    specs.sort(key=lambda s: args.servers.index(s.name))
    info = fastframe_info()
    found: dict[str, bool] = {}
    for spec in specs:
        if spec.name == "c-epoll":
            try:
                ctx.echo_c = build("echo_c")
            except BenchError as exc:
                spec.skip = str(exc)
        elif spec.group in ("fastframe", "fastframe-aio") and "error" in info["default"]:
            spec.skip = f"fastframe is not importable by {sys.executable}: {info['default']['error']}"
        elif spec.group == "fastframe-py" and "error" in info["pure"]:
            spec.skip = f"fastframe (pure Python) is not importable: {info['pure']['error']}"
        if spec.needs and not spec.skip:
            if spec.needs not in found:
                probe = subprocess.run([sys.executable, "-c", f"import {spec.needs}"], capture_output=True,
                                       cwd=BENCH_DIR, check=False, timeout=60)  # fmt: skip
                found[spec.needs] = probe.returncode == 0
            if not found[spec.needs]:
                spec.skip = f"{spec.needs} is not installed (pip install {spec.needs})"
    if "error" not in info["default"] and info["default"]["implementation"] != "cython":
        log(
            f"warning: fastframe runs its {info['default']['implementation']} codec: the 'select' rows are not the extension"
        )
    ctx.plan_cpus()
    scenarios = [SCENARIOS[k] for k in args.scenarios]
    live = [s for s in specs if not s.skip]
    total = len(live) * len(scenarios) * args.repeat
    per = args.warmup + args.duration + 1.0
    log(f"bench_servers: {len(live)} servers x {len(scenarios)} scenarios x {args.repeat} repeat(s) = {total} runs, "
        f"about {total * per / 60:.1f} min; {ctx.pinning}")  # fmt: skip
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {(sc.key, s.name): [] for sc in scenarios for s in specs}
    t_start = time.monotonic()
    i = 0
    for rep in range(args.repeat):
        for scen in scenarios:
            for spec in live:
                i += 1
                r = measure(ctx, spec, scen)
                r["repeat"] = rep
                runs[(scen.key, spec.name)].append(r)
                what = (
                    f"{r['req_per_s']:>10,.0f} req/s  {r['cpu_us_per_req']:.2f} us/req"
                    if r.get("ok")
                    else f"FAILED: {r['error']}"
                )
                log(f"[{i:>3}/{total}] ({scen.key}) {spec.name:<17} {what}")
    elapsed = time.monotonic() - t_start

    rows: list[dict[str, Any]] = []
    for scen in scenarios:
        for spec in specs:
            rs = runs[(scen.key, spec.name)]
            chosen = pick_median(rs)
            failed = [r for r in rs if not r.get("ok")]
            if spec.skip:
                status, reason = "skipped", spec.skip
            elif chosen is None:
                status, reason = "failed", failed[0]["error"] if failed else "no run"
            else:
                status = "ok"
                reason = f"{len(failed)} of {len(rs)} runs failed: {failed[0]['error']}" if failed else ""
            if chosen is not None and spec.name.startswith("prefork"):
                extra = f"{chosen['server_procs']} processes (master + workers) counted for CPU; "
                extra += spread_note(chosen.get("connections_per_worker", []))
                reason = f"{reason}; {extra}" if reason else extra
            rows.append({"scenario": scen.key, "server": spec.name, "label": spec.label, "group": spec.group,
                         "path": spec.path, "status": status, "reason": reason, "chosen": chosen,
                         "runs": rs})  # fmt: skip
    add_ratios(rows)

    date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    meta = {
        "date": date,
        "command": _command_line(),
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "fastframe": info,
        "pinning": ctx.pinning,
        "pinning_short": "server and load generator on separate CPUs" if ctx.lg_cpus else "not pinned",
        "connections": args.connections,
        "warmup": args.warmup,
        "duration": args.duration,
        "repeat": args.repeat,
        "workers": args.workers,
        "choice": "per row, the run with the median req/s (lower middle for an even count)",
        "loadgen": os.path.basename(ctx.loadgen),
        "elapsed_s": round(elapsed, 1),
        "units": {
            "req_per_s": "replies completed per second in the measured window",
            "payload_mb_per_s": "request payload bytes echoed per second / 1e6 (one direction, headers excluded)",
            "latency_us": "from the writev carrying a request's first byte to the recv completing its reply",
            "cpu_us_per_req": "server utime+stime (server + descendants) over the window / requests",
            "server_cpu_util": "server CPU seconds / window seconds (1.0 = one CPU busy)",
            "loadgen_cpu_util": "load generator CPU seconds / window seconds",
            "other_cpu_cores": "CPU used by every other process on the machine during the window, in CPUs",
        },
    }
    print(f"fastframe server bench - {date} - {meta['cpu_model']}, {meta['cpu_count']} CPUs, Python {meta['python']}")
    d = info["default"]
    print(f"fastframe {d.get('version', '?')} ({d.get('implementation', d.get('error', '?'))} codec); {ctx.pinning}")
    print(f"{args.connections} connections, {args.warmup:g} s warm-up + {args.duration:g} s measured per run, "
          f"{args.repeat} repeat(s), median req/s run kept; command: {meta['command']}")  # fmt: skip
    saved = {"meta": meta, "scenarios": {s.key: {"size": s.size, "depth": s.depth, "title": s.title(args.connections)}
                                         for s in scenarios}, "results": rows}  # fmt: skip
    print()
    print(report.servers_text(saved))
    print("\nx req/s: req/s / the select engine's on the same path (higher is better); x CPU: server CPU per "
          "request / the select engine's (lower is better).\nsrv CPU / lg CPU: server / load generator CPU use "
          "during the window (100% = one CPU; a server below ~95% was not the bottleneck).")  # fmt: skip
    noisy = [r for r in rows if r["chosen"] and r["chosen"].get("other_cpu_cores", 0) > NOISE_CORES]
    if noisy:
        worst = max(r["chosen"]["other_cpu_cores"] for r in noisy)
        print(f"~ : other processes used more than {NOISE_CORES:g} CPU during that window (up to {worst:.2f}): "
              "a noisy neighbour; compare those rows with care.")  # fmt: skip
    goals = report.targets_text(saved)
    if goals:
        print(f"\nissue 13 targets (ratios of the chosen runs):\n{goals}")
    for spec in specs:
        if spec.skip:
            print(f"note: {spec.name} skipped: {spec.skip}")
    print(f"total time {elapsed / 60:.1f} min")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(saved, f, indent=1)
        print(f"results saved to {args.json}")
    if args.plot:
        os.makedirs(os.path.dirname(os.path.abspath(args.plot)), exist_ok=True)
        problem = report.plot_servers(saved, args.plot)
        print(f"note: {problem}" if problem else f"chart saved to {args.plot}")
    return 0 if all(r["status"] != "failed" for r in rows) else 1


def replot(json_path: str, png: str) -> int:
    """Draw the chart of a saved JSON file (echo or --files mode, or bench_codec.py's)."""
    data = report.load(json_path)
    draw = {"servers": report.plot_servers, "files": report.plot_files, "codec": report.plot_codec}
    kind = report.kind_of(data)
    if kind not in draw:
        print(f"bench_servers: no chart for {kind} results", file=sys.stderr)
        return 1
    problem = draw[kind](data, png)
    print(f"note: {problem}" if problem else f"chart saved to {png}")
    return 1 if problem else 0


def _command_line() -> str:
    script = os.path.relpath(sys.argv[0]) if sys.argv and sys.argv[0] else "bench/bench_servers.py"
    return "python " + " ".join(shlex.quote(a) for a in [script, *sys.argv[1:]])


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


# -- the file-transfer benchmark ------------------------------------------------------------------------

NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    default_type application/octet-stream;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{ }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_connectable(proc: Proc, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
            return
        except OSError:
            if not proc.alive():
                raise BenchError(
                    f"exited with status {proc.proc.returncode}: {proc.stderr_tail() or 'no message'}"
                ) from None
            if time.monotonic() > deadline:
                raise BenchError(f"not accepting connections on port {port} after {timeout:g} s") from None
            time.sleep(0.05)


def make_file(path: str, size: int) -> str:
    """Write ``size`` pseudo-random bytes (8 MiB block, varied per block); return the BLAKE2b digest."""
    h = hashlib.blake2b()
    block = bytearray(os.urandom(8 * MiB))
    left = size
    n = 0
    with open(path, "wb") as f:
        while left:
            block[:8] = n.to_bytes(8, "big")  # no two blocks alike
            chunk = memoryview(block)[: min(left, len(block))]
            f.write(chunk)
            h.update(chunk)
            left -= len(chunk)
            n += 1
    return h.hexdigest()


def digest_of(path: str) -> str:
    h = hashlib.blake2b()
    with open(path, "rb") as f:
        while True:
            chunk = f.read(8 * MiB)
            if not chunk:
                return h.hexdigest()
            h.update(chunk)


def fastframe_files_available() -> str | None:
    """None if `fastframe get` and the file service exist, else why not."""
    proc = subprocess.run(
        [sys.executable, "-m", "fastframe", "get", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=BENCH_DIR,
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return f"file service not available ('fastframe get' is missing: {last})"
    return None


class FilePeer:
    def __init__(self, name: str, label: str) -> None:
        self.name = name
        self.label = label
        self.skip: str | None = None


#: Files at most this large are latency rows: each round downloads them SMALL_BATCH times in a row, since one
#: download is a few milliseconds of mostly process start-up.
SMALL_FILE = 1 * MiB
SMALL_BATCH = 20
#: Rows every files run has besides --file-size: start-up dominated (4 KiB) and start-up visible (64 MiB).
FIXED_FILE_SIZES = (4 * 1024, 64 * MiB)
#: Rows beside the small files: `python -c CODE` for the interpreter's own start-up (the target of issue 13 is
#: `fastframe get` of 4 KiB within 2x of `python -c pass`) and for what pip's console-script wrapper imports.
FLOORS = {"python -c pass": "pass", "python -c 'import re' (pip's script wrapper)": "import re"}


def fastframe_client() -> list[str]:
    """How a user runs the client: the `fastframe` console script beside this interpreter (`python -m
    fastframe` costs runpy's imports on top), or `-m` where no script is installed."""
    script = os.path.join(os.path.dirname(sys.executable), "fastframe")
    return [script] if os.access(script, os.X_OK) else [sys.executable, "-m", "fastframe"]


def run_files(args: argparse.Namespace) -> int:
    sizes = sorted({*(n for n in FIXED_FILE_SIZES if n < args.file_size), args.file_size})
    peers = [
        FilePeer("fastframe", "fastframe serve --files + fastframe get -o"),
        FilePeer("nginx", "nginx (sendfile on) + curl -o"),
        FilePeer("http.server", "python -m http.server + curl -o"),
    ]
    curl = shutil.which("curl")
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    peers[0].skip = fastframe_files_available()
    if nginx is None:
        peers[1].skip = "nginx is not installed"
    if curl is None:
        for p in peers[1:]:
            p.skip = "curl is not installed"
    cpus = sorted(os.sched_getaffinity(0))
    client_cpus = {cpus[0]} if len(cpus) >= 2 and not args.no_pin else None
    server_cpus = {cpus[1]} if len(cpus) >= 2 and not args.no_pin else None
    pinning = f"client on CPU {cpus[0]}, server on CPU {cpus[1]}" if client_cpus else "not pinned"
    base = tempfile.mkdtemp(prefix="fastframe-files-", dir=args.file_dir)
    results: list[dict[str, Any]] = []
    t_start = time.monotonic()
    try:
        need = sum(sizes) + max(sizes) + 64 * MiB
        free = shutil.disk_usage(base).free
        if free < need:
            log(f"bench_servers: {base} has {free / GiB:.1f} GiB free, the file bench needs {need / GiB:.1f} GiB")
            return 1
        root = os.path.join(base, "root")
        os.makedirs(root)
        wants: dict[int, str] = {}
        for size in sizes:
            src = os.path.join(root, f"blob-{size}.bin")
            log(f"bench_servers: writing a {fmt_bytes(size)} test file in {root} ...")
            wants[size] = make_file(src, size)
            with open(src, "rb") as f:  # read it once: every download starts from a hot page cache
                while f.read(8 * MiB):
                    pass
        out = os.path.join(base, "download.bin")
        servers: dict[str, tuple[Proc, str]] = {}
        rows: dict[tuple[int, str], dict[str, Any]] = {}
        try:
            for size in sizes:
                for peer in peers:
                    rows[size, peer.name] = row = {
                        "size": size, "server": peer.name, "label": peer.label, "status": "ok", "reason": "",
                        "runs": [], "warmup": None,
                    }  # fmt: skip
                    results.append(row)
                    if peer.skip:
                        row.update(status="skipped", reason=peer.skip)
            for peer in peers:  # every server runs for the whole bench, so the rounds can interleave them
                if peer.skip:
                    log(f"  {peer.name}: skipped: {peer.skip}")
                    continue
                try:
                    servers[peer.name] = start_file_server(peer.name, root, base, nginx, server_cpus)
                except BenchError as exc:
                    for size in sizes:
                        rows[size, peer.name].update(status="failed", reason=f"server did not start: {exc}")
                    log(f"  {peer.name}: FAILED: server did not start: {exc}")

            def argv_for(name: str, where: str, size: int) -> list[str]:
                if name == "fastframe":
                    return [*fastframe_client(), "get", where, f"blob-{size}.bin", "-o", out]
                assert curl is not None
                return [curl, "-sS", "--fail", "-o", out, f"{where}/blob-{size}.bin"]

            # The floors every Python client stands on, timed in the same rounds as the small downloads: the
            # interpreter alone, and with `import re`, which pip's console-script wrapper runs before fastframe's
            # first line (fastframe_client() runs that script).
            floors: dict[str, list[float]] = {label: [] for label in FLOORS}
            for rep in range(-1, args.repeat):  # round -1: one untimed warm-up download per server and size
                for label, code in FLOORS.items():
                    times = [run_seconds([sys.executable, "-c", code], client_cpus) for _ in range(SMALL_BATCH)]
                    floors[label].extend(times if rep >= 0 else [])
                for size in sizes:
                    batch = SMALL_BATCH if size <= SMALL_FILE and rep >= 0 else 1
                    for name, (server, where) in servers.items():
                        row = rows[size, name]
                        runs = [download(argv_for(name, where, size), server, out, size, wants[size], client_cpus)
                                for _ in range(batch)]  # fmt: skip
                        if rep < 0:
                            row["warmup"] = runs[0]
                            what = "warm-up"
                        else:
                            row["runs"].extend(runs)
                            what = f"{rep + 1}/{args.repeat}"
                        failed = [r["error"] for r in runs if not r["ok"]]
                        ok = sorted(r["seconds"] for r in runs if r["ok"])
                        took = f"{ok[(len(ok) - 1) // 2] * 1000:.1f} ms" if ok else ""
                        took += f" (median of {len(ok)})" if batch > 1 else ""
                        log(f"  {fmt_bytes(size)} {name} [{what}]: " + (f"FAILED: {failed[0]}" if failed else took))
        finally:
            for server, _ in servers.values():
                server.stop()
        for (_, name), row in rows.items():
            if name not in servers:
                continue
            ok = sorted((r for r in row["runs"] if r["ok"]), key=lambda r: r["seconds"])
            row["chosen"] = ok[(len(ok) - 1) // 2] if ok else None
            if not ok:
                row.update(status="failed", reason=row["runs"][0]["error"] if row["runs"] else "no run")
            elif len(ok) < len(row["runs"]):
                row.update(status="failed", reason=next(r["error"] for r in row["runs"] if not r["ok"]))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    floor_s = {label: sorted(times)[(len(times) - 1) // 2] for label, times in floors.items()}
    python_pass_s = floor_s["python -c pass"]
    startup = {"fastframe get": startup_seconds([*fastframe_client(), "--version"])}
    if curl:
        startup["curl"] = startup_seconds([curl, "--version"])
    elapsed = time.monotonic() - t_start

    date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    print(f"fastframe file-transfer bench - {date} - {_cpu_model()}, {os.cpu_count()} CPUs")
    print(f"files of {', '.join(fmt_bytes(n) for n in sizes)}, source in the page cache, client writes to "
          f"{args.file_dir or tempfile.gettempdir()} (no fsync); {pinning}; one untimed warm-up download each, then "
          f"the median of {args.repeat} interleaved rounds (files up to {fmt_bytes(SMALL_FILE)}: "
          f"{SMALL_BATCH} downloads a round)")  # fmt: skip
    width = max(len(label) for label in [*(r["label"] for r in results), *FLOORS]) + 1
    for size in sizes:
        size_rows = [r for r in results if r["size"] == size]
        ours = next((r for r in size_rows if r["server"] == "fastframe" and r.get("chosen")), None)
        base_s = ours["chosen"]["seconds"] if ours else None
        small = size <= SMALL_FILE
        title = f"{fmt_bytes(size) + ' file':<{width}}"
        if small:
            head = f"{title} {'ms':>8} {'x py -c pass':>12} {'x fastframe':>11}"
        else:
            head = f"{title} {'s/GiB':>7} {'GiB/s':>6} {'srv CPU s':>9} {'cli CPU s':>9} {'x fastframe':>11}"
        print("\n" + head)
        print("-" * len(head))
        for r in size_rows:
            c = r.get("chosen")
            if r["status"] == "skipped":
                print(f"{r['label']:<{width}} skipped: {r['reason']}")
                continue
            if not c or r["status"] == "failed":
                print(f"{r['label']:<{width}} FAILED: {r['reason']}")
                continue
            r["ratio"] = c["seconds"] / base_s if base_s else None
            noisy = "~" if c["other_cpu_cores"] > NOISE_CORES else ""
            if small:
                r["x_python_pass"] = c["seconds"] / python_pass_s
                print(f"{r['label']:<{width}} {c['seconds'] * 1000:>8.1f} {r['x_python_pass']:>12.2f} "
                      f"{fmt_ratio(r['ratio']):>11}{noisy}")  # fmt: skip
            else:
                per_gib = c["seconds"] / (size / GiB)
                r["s_per_gib"] = per_gib
                print(f"{r['label']:<{width}} {per_gib:>7.3f} {1 / per_gib:>6.2f} {c['server_cpu_s']:>9.2f} "
                      f"{c['client_cpu_s']:>9.2f} {fmt_ratio(r['ratio']):>11}{noisy}")  # fmt: skip
        for label, seconds in floor_s.items() if small else ():
            ratio = fmt_ratio(seconds / base_s) if base_s else ""
            print(f"{label:<{width}} {seconds * 1000:>8.1f} {seconds / python_pass_s:>12.2f} {ratio:>11}")
    print("\nms, s/GiB: wall time from starting the client to its exit (start-up and connect included); "
          "x fastframe: time / fastframe's (above 1: slower than fastframe); x py -c pass: time / the median "
          f"'{sys.executable} -c pass' of this run ({python_pass_s * 1000:.1f} ms).")  # fmt: skip
    print("client start-up alone (best of 3 '--version' runs): "
          + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in startup.items() if v is not None))  # fmt: skip
    if any(r.get("chosen") and r["chosen"]["other_cpu_cores"] > NOISE_CORES for r in results):
        print(f"~ : other processes used more than {NOISE_CORES:g} CPU during that download: compare with care.")
    print(f"total time {elapsed:.0f} s")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        meta = {"date": date, "command": _command_line(), "file_size": max(sizes), "file_sizes": sizes,
                "small_batch": SMALL_BATCH, "python_pass_s": python_pass_s, "floors_s": floor_s,
                "client_startup_s": startup, "client": fastframe_client(), "repeat": args.repeat, "pinning": pinning, "cpu_model": _cpu_model(),
                "cpu_count": os.cpu_count(), "python": sys.version.split()[0], "elapsed_s": round(elapsed, 1)}  # fmt: skip
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=1)
        print(f"results saved to {args.json}")
    return 0 if all(r["status"] != "failed" for r in results) else 1


def start_file_server(name: str, root: str, base: str, nginx: str | None, cpus: set[int] | None) -> tuple[Proc, str]:
    if name == "fastframe":
        proc = Proc([sys.executable, "-m", "fastframe", "serve", "--files", "0", "--root", root], cpus=cpus)
        try:
            m = proc.wait_line(LISTEN_LINE, timeout=30.0)
        except BenchError:
            proc.stop()
            raise
        return proc, f"127.0.0.1:{int(m.group(3))}"
    if name == "nginx":
        assert nginx is not None
        tmp = os.path.join(base, "nginx")
        os.makedirs(tmp, exist_ok=True)
        port = free_port()
        conf = os.path.join(tmp, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(tmp=tmp, port=port, root=root))
        proc = Proc(
            [nginx, "-p", tmp, "-c", conf, "-e", os.path.join(tmp, "error.log")], cpus=cpus, stdout=subprocess.DEVNULL
        )
    else:
        proc = Proc(
            [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", root], cpus=cpus
        )
        try:
            m = proc.wait_line(re.compile(rb".* port (\d+) "), timeout=30.0)
        except BenchError:
            proc.stop()
            raise
        port = int(m.group(1))
    try:
        wait_connectable(proc, port, 15.0)
    except BenchError:
        proc.stop()
        raise
    return proc, f"http://127.0.0.1:{port}"


def run_seconds(argv: list[str], cpus: set[int] | None) -> float:
    """Wall time of one run of ``argv`` (pinned like the clients), from start to exit."""
    t0 = time.perf_counter()
    subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   cwd=BENCH_DIR, timeout=60, check=True, preexec_fn=_pin(cpus))  # noqa: PLW1509  # fmt: skip
    return time.perf_counter() - t0


def startup_seconds(argv: list[str]) -> float | None:
    best = None
    for _ in range(3):
        t0 = time.perf_counter()
        if subprocess.run(argv, capture_output=True, cwd=BENCH_DIR, timeout=60, check=False).returncode != 0:
            return None
        took = time.perf_counter() - t0
        best = took if best is None else min(best, took)
    return best


def download(argv: list[str], server: Proc, out: str, size: int, want: str, cpus: set[int] | None) -> dict[str, Any]:
    """Run one client to completion (bounded: 600 s), timed from start to exit; check what it wrote."""
    try:
        os.unlink(out)
    except FileNotFoundError:
        pass
    os.sync()  # the previous download's dirty pages are written back before the clock starts, not during
    with tempfile.TemporaryFile() as errf:
        busy0 = machine_busy_seconds()
        cpu0 = tree_cpu_seconds(server.pid)
        t0 = time.perf_counter()
        try:
            client = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errf, cwd=BENCH_DIR,
                preexec_fn=_pin(cpus),  # noqa: PLW1509 - the bench runs no threads
            )  # fmt: skip
        except OSError as exc:
            return {"ok": False, "error": f"cannot start {argv[0]}: {exc.strerror}"}
        deadline = time.monotonic() + 600.0
        # A pidfd turns readable the moment the client exits, so a 4 KiB download is not rounded up to a
        # polling step; where there is none (Linux < 5.3), poll every 2 ms.
        pidfd = os.pidfd_open(client.pid) if hasattr(os, "pidfd_open") else None
        try:
            while True:
                pid, status, usage = os.wait4(client.pid, os.WNOHANG)  # wait4: the client's own CPU time
                if pid:
                    break
                if time.monotonic() > deadline:
                    client.kill()
                    client.wait()
                    return {"ok": False, "error": "client did not finish within 600 s"}
                if pidfd is not None:
                    select.select([pidfd], [], [], 1.0)
                else:
                    time.sleep(0.002)
        finally:
            if pidfd is not None:
                os.close(pidfd)
        t1 = time.perf_counter()
        code = os.waitstatus_to_exitcode(status)
        client.returncode = code  # already reaped: keep Popen from waiting for it again
        cpu1 = tree_cpu_seconds(server.pid)
        busy1 = machine_busy_seconds()
        errf.seek(0)
        err = errf.read().decode(errors="replace").strip()
    if code != 0:
        return {
            "ok": False,
            "error": f"client exited with status {code}: {' | '.join(err.splitlines()[-2:]) or 'no message'}",
        }
    got = os.path.getsize(out) if os.path.exists(out) else -1
    if got != size:
        return {"ok": False, "error": f"downloaded {got} bytes, expected {size}"}
    if digest_of(out) != want:
        return {"ok": False, "error": "downloaded file differs from the source"}
    client_cpu = usage.ru_utime + usage.ru_stime
    others = max(0.0, (busy1 - busy0 - client_cpu - (cpu1 - cpu0)) / (t1 - t0))
    return {"ok": True, "seconds": t1 - t0, "server_cpu_s": cpu1 - cpu0, "client_cpu_s": client_cpu,
            "other_cpu_cores": others}  # fmt: skip


# -- command line ---------------------------------------------------------------------------------------


def _list(choices: Sequence[str]) -> Any:
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(bad) or 'empty list'}; choose from {','.join(choices)}"
            )
        return list(dict.fromkeys(items))

    return parse


def _size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([kmg]?)(?:i?b)?\s*", text.lower())
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (examples: 64M, 1G)")
    return int(m.group(1)) * {"": 1, "k": 1024, "m": MiB, "g": GiB}[m.group(2)]


class _Defaults(argparse.ArgumentDefaultsHelpFormatter):
    """Show a default once: not when the help already states it, nor when it is None (decided later)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default is None or "(default" in text:
            return text
        return super()._get_help_string(action)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Framed-echo server benchmark (default) or file-transfer benchmark (--files); see bench/README.md.",
        formatter_class=_Defaults,
    )
    p.add_argument("--servers", type=_list(SERVER_NAMES), default=None, metavar="LIST",
                   help=f"servers to measure, in this order (default: all): {','.join(SERVER_NAMES)}")  # fmt: skip
    p.add_argument("--scenarios", type=_list(list(SCENARIOS)), default=["a", "b", "c"], metavar="LIST",
                   help="a: 64 B depth 1; b: 64 B depth 16; c: 16 KiB depth 1")  # fmt: skip
    p.add_argument("--connections", type=int, default=50, metavar="C", help="connections per run")
    p.add_argument("--duration", type=float, default=None, metavar="S", help="measured seconds per run (default 5)")
    p.add_argument(
        "--warmup", type=float, default=None, metavar="S", help="warm-up seconds before each window (default 1)"
    )
    p.add_argument("--repeat", type=int, default=None, metavar="N",
                   help="measure N times, keep the median-req/s run (default 1; 5 with --files)")  # fmt: skip
    p.add_argument("--workers", type=int, default=2, metavar="N", help="prefork workers")
    p.add_argument("--stall", type=float, default=5.0, metavar="S", help="fail a run after S seconds without a reply")
    p.add_argument("--no-pin", action="store_true", help="do not pin the server and the load generator to CPUs")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: 1 s per run, 0.2 s warm-up, servers {','.join(QUICK_SERVERS)} "
                   "(64 MiB file with --files)")  # fmt: skip
    p.add_argument("--json", metavar="FILE", help="save all results and the environment as JSON")
    p.add_argument("--plot", metavar="FILE.png",
                   help="chart (matplotlib): req/s and CPU us/request with min-max whiskers; with --files, download "
                   "times (needs --json)")  # fmt: skip
    p.add_argument("--verbose", action="store_true", help="more progress output on stderr")
    f = p.add_argument_group("file-transfer mode")
    p.add_argument("--replot", metavar="JSON", help="draw --plot from a saved --json file instead of measuring")
    f.add_argument("--files", action="store_true", help="run the file-transfer bench instead of the echo bench")
    f.add_argument("--file-size", type=_size, default=None, metavar="SIZE",
                   help="the largest test file (default 1G, 64M with --quick); 4 KiB and 64 MiB rows run too")  # fmt: skip
    f.add_argument(
        "--file-dir", metavar="DIR", default=None, help="where the test file and the download go (default: $TMPDIR)"
    )
    t = p.add_argument_group("TLS mode (bench/bench_tls.py)")
    t.add_argument("--tls", action="store_true", help="run the TLS rows instead: framed echo (64 B, depth 1 and 16) "
                   "fastframe select vs uvloop ssl=, and a --file-size download fastframe vs nginx ssl + curl")  # fmt: skip
    t.add_argument("--no-download", action="store_true", help="with --tls: the echo rows only")
    args = p.parse_args(argv)
    if args.tls:
        import bench_tls

        args.duration = args.duration if args.duration is not None else (1.0 if args.quick else 5.0)
        args.warmup = args.warmup if args.warmup is not None else (0.2 if args.quick else 1.0)
        args.repeat = args.repeat or (1 if args.quick else 3)
        args.file_size = args.file_size or (64 * MiB if args.quick else GiB)
        return bench_tls.run_tls(args)
    if args.replot:
        if not args.plot:
            p.error("--replot needs --plot FILE.png")
        return replot(args.replot, args.plot)
    if not sys.platform.startswith("linux"):
        p.error("Linux only (epoll, /proc)")
    if args.files:
        args.repeat = args.repeat or (1 if args.quick else 5)
        args.file_size = args.file_size or (64 * MiB if args.quick else GiB)
        if args.repeat < 1 or args.file_size < 1:
            p.error("--repeat and --file-size must be positive")
        if args.plot and not args.json:
            p.error("--files --plot draws from the saved results: give --json FILE too")
        status = run_files(args)
        if args.plot and os.path.exists(args.json):
            replot(args.json, args.plot)
        return status
    args.duration = args.duration if args.duration is not None else (1.0 if args.quick else 5.0)
    args.warmup = args.warmup if args.warmup is not None else (0.2 if args.quick else 1.0)
    args.repeat = args.repeat or 1
    args.servers = args.servers or (QUICK_SERVERS if args.quick else SERVER_NAMES)
    if args.connections < 1 or args.duration <= 0 or args.warmup < 0 or args.repeat < 1 or args.workers < 1:
        p.error("--connections, --duration, --repeat and --workers must be positive")
    return run_echo(args)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
