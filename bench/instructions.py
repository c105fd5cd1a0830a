#!/usr/bin/env python3
"""User-space instructions per request of the bench servers, counted by callgrind: a figure that noise cannot move.

On a shared machine, req/s and even CPU time per request move by 2x between runs.  The number of instructions a
server executes per request does not: this script runs one server of bench_servers.py's table at a time under
``valgrind --tool=callgrind``, opens C connections from this process (pinned to another CPU when there is
one), sends a fixed number of requests (closed loop: D frames of S bytes per connection, then every reply,
checked byte for byte, upper-cased for the general-path servers), zeroes callgrind's counters after a
warm-up, dumps them after the measured requests, and divides.

What it counts: every instruction the server's process executes in user space -- the interpreter, the
event loop, the codec, libc.  What it does not: the kernel (system calls cost the same per read for servers
that make the same calls: count them with ``strace -c``).  Caveat: callgrind counts a ``rep movsb`` copy
(glibc's memcpy of large blocks) one instruction per byte, so copies of kilobytes weigh more here than in
time.  The server runs ~50x slower under valgrind, so the requests each read carries may differ from a real
run; depth D is what the client sends in one go per connection.

Usage::

    python bench/instructions.py                                   # the general-path rows, 64 B, depth 1 and 16
    python bench/instructions.py --servers select-upper,uvloop-upper --depths 16 --sizes 64,16K --requests 3000

Needs valgrind (``apt-get install valgrind``) and Linux.  Servers: any single-process row of
bench_servers.py (not prefork, whose workers valgrind would not follow).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shlex
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_servers  # noqa: E402  (the server table: the same names and command lines as the server bench)
from report import fmt_bytes  # noqa: E402

DEFAULT_SERVERS = ["select-upper", "uvloop-upper", "aio-protocol-uvloop", "aio-batch-uvloop", "aio-streams-uvloop",
                   "uvloop-streams-upper"]  # fmt: skip
CONNECTIONS = 10


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise bench_servers.BenchError(f"the server closed the connection ({len(buf)} of {n} bytes)")
        buf += chunk
    return bytes(buf)


def measure(spec: Any, ctx: Any, depth: int, size: int, requests: int, outdir: str) -> dict[str, Any]:
    argv, env = spec.argv(ctx)
    out_file = os.path.join(outdir, f"callgrind.{spec.name}.{depth}.{size}.%p")
    vg = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_file}"]
    server = bench_servers.Proc(vg + argv, env=env, cpus=ctx.server_cpus)
    try:
        port = int(server.wait_line(bench_servers.LISTEN_LINE, timeout=120.0).group(3))
        payload = bytes((i * 7 + 97) % 256 for i in range(size))  # 'a'.. : bytes.upper() changes them
        reply = payload.upper() if spec.upper else payload
        frame = struct.pack("!I", size) + payload
        want = (struct.pack("!I", size) + reply) * depth
        socks = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(CONNECTIONS)]
        rounds = max(1, requests // (CONNECTIONS * depth))
        try:
            for s in socks:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def exchange(n: int) -> None:
                for _ in range(n):
                    for s in socks:
                        s.sendall(frame * depth)
                    for s in socks:
                        if _recv_exact(s, len(want)) != want:
                            raise bench_servers.BenchError("a reply differs from what the request asked for")

            exchange(max(5, rounds // 5))  # warm-up: imports, caches, the first buffers
            subprocess.run(["callgrind_control", "-z", str(server.pid)], capture_output=True, timeout=60, check=True)
            exchange(rounds)
            subprocess.run(["callgrind_control", "-d", str(server.pid)], capture_output=True, timeout=60, check=True)
        finally:
            for s in socks:
                s.close()
    finally:
        server.stop(timeout=30.0)
    dumps = sorted(glob.glob(out_file.replace("%p", "*") + ".1"))
    if not dumps:
        raise bench_servers.BenchError("callgrind wrote no dump (callgrind_control -d found no process?)")
    with open(dumps[-1]) as f:
        m = re.search(r"^(?:totals|summary): (\d+)", f.read(), re.M)
    if not m:
        raise bench_servers.BenchError(f"no totals in {dumps[-1]}")
    done = rounds * CONNECTIONS * depth
    return {"server": spec.name, "label": spec.label, "path": spec.path, "depth": depth, "size": size,
            "requests": done, "instructions": int(m.group(1)), "per_request": int(m.group(1)) / done}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    names = [s.name for s in bench_servers.all_servers(2) if not s.name.startswith("prefork")]
    p = argparse.ArgumentParser(description="User-space instructions per request under callgrind (see the docstring).")
    p.add_argument(
        "--servers",
        type=bench_servers._list(names),
        default=DEFAULT_SERVERS,
        metavar="LIST",
        help=f"rows of the server bench, comma-separated (default {','.join(DEFAULT_SERVERS)})",
    )
    p.add_argument("--depths", default="1,16", help="requests in flight per connection, comma-separated")
    p.add_argument("--sizes", default="64", help="payload sizes, comma-separated (64, 16K, ...)")
    p.add_argument("--requests", type=int, default=3000, help="measured requests per (server, depth, size)")
    p.add_argument("--json", metavar="FILE", help="save the rows as JSON")
    args = p.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("instructions.py: needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 2
    depths = [int(x) for x in args.depths.split(",")]
    sizes = [bench_servers._size(x) for x in args.sizes.split(",")]
    ctx = bench_servers.Context(argparse.Namespace(workers=1, no_pin=False, servers=args.servers))
    ctx.plan_cpus()
    if ctx.lg_cpus:
        os.sched_setaffinity(0, ctx.lg_cpus)
    specs = [s for s in bench_servers.all_servers(1) if s.name in args.servers]
    if any(s.name == "c-epoll" for s in specs):
        ctx.echo_c = bench_servers.build("echo_c")
    rows = []
    with tempfile.TemporaryDirectory(prefix="fastframe-callgrind-") as outdir:
        for size in sizes:
            for depth in depths:
                for spec in specs:
                    t0 = time.monotonic()
                    try:
                        row = measure(spec, ctx, depth, size, args.requests, outdir)
                    except (bench_servers.BenchError, OSError, subprocess.SubprocessError) as exc:
                        print(f"{spec.name:<22} {fmt_bytes(size):>7} depth {depth:<3} FAILED: {exc}")
                        rows.append({"server": spec.name, "depth": depth, "size": size, "error": str(exc)})
                        continue
                    rows.append(row)
                    print(f"{spec.label + (' [upper]' if spec.upper else ''):<46} {fmt_bytes(size):>7} "
                          f"depth {depth:<3} {row['per_request']:>10,.0f} instructions/request "
                          f"({row['requests']} requests, {time.monotonic() - t0:.0f} s)", flush=True)  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            command = "python bench/instructions.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
            json.dump({"command": command.strip(), "python": sys.version.split()[0], "rows": rows}, f, indent=1)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
