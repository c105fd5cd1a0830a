#!/usr/bin/env python3
"""A TLS load generator for the framed echo (``bench_servers.py --tls``): the C ``loadgen`` speaks no TLS.

Closed loop, like ``loadgen.c``: C connections (TLS, verifying the server against ``--cafile``), each keeping D
requests of S bytes in flight; every reply is checked byte for byte; after ``--warmup`` seconds a window of
``--duration`` seconds is measured, and the server's CPU time (the process tree of ``--pid``, from /proc) is
read at its two edges, the same way for every server.  Runs on uvloop when it is installed (else asyncio).
Prints one JSON line with the fields of ``loadgen.c`` that the TLS rows use (``req_per_s``,
``cpu_us_per_req``, ``server_cpu_s``, ``loadgen_cpu_util``, the mean latency by Little's law) and the TLS
version and cipher negotiated.

Being Python, it can saturate before the server does (then ``loadgen_cpu_util`` is near 1.0): the req/s
compare servers only below that point, the CPU per request always.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import ssl
import struct
import sys
import time
from typing import Any


def tree_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and every descendant (threads included), from /proc."""
    tck = os.sysconf("SC_CLK_TCK")
    total = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
    return total / tck


class Client(asyncio.Protocol):
    def __init__(self, frame: bytes, depth: int, counts: list[int], failed: asyncio.Future[str]) -> None:
        self.frame = frame
        self.depth = depth
        self.counts = counts
        self.failed = failed
        self.buf = bytearray()
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(self.frame * self.depth)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        n = len(buf) // len(self.frame)
        if not n:
            return
        size = n * len(self.frame)
        if buf[:size] != self.frame * n:
            if not self.failed.done():
                self.failed.set_result("a reply differs from its request")
            return
        del buf[:size]
        self.counts[0] += n
        self.transport.write(self.frame * n)

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.failed.done():
            self.failed.set_result(f"the server closed a connection ({exc or 'end of stream'})")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    ctx = ssl.create_default_context(cafile=args.cafile)
    frame = struct.pack("!I", args.size) + bytes(i % 251 for i in range(args.size))
    counts = [0]
    failed: asyncio.Future[str] = loop.create_future()
    transports = []
    for _ in range(args.connections):
        transport, _ = await loop.create_connection(
            lambda: Client(frame, args.depth, counts, failed), "127.0.0.1", args.port, ssl=ctx,
            server_hostname="localhost",
        )  # fmt: skip
        transports.append(transport)
    sslobj = transports[0].get_extra_info("ssl_object")
    negotiated = f"{sslobj.version()} {sslobj.cipher()[0]}"

    async def window(seconds: float) -> None:
        last, quiet = counts[0], time.monotonic()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await asyncio.wait([failed], timeout=min(0.1, max(0.0, end - time.monotonic())))
            if failed.done():
                raise RuntimeError(failed.result())
            if counts[0] != last:
                last, quiet = counts[0], time.monotonic()
            elif time.monotonic() - quiet > args.stall:
                raise RuntimeError(f"no reply for {args.stall:g} s")

    await window(args.warmup)
    n0, cpu0, t0 = counts[0], tree_cpu_seconds(args.pid), time.monotonic()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    await window(args.duration)
    n1, cpu1, t1 = counts[0], tree_cpu_seconds(args.pid), time.monotonic()
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    for t in transports:
        t.abort()
    secs, reqs = t1 - t0, n1 - n0
    lg_cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    server_cpu = cpu1 - cpu0
    return {
        "ok": True, "connections": args.connections, "depth": args.depth, "size": args.size, "seconds": secs,
        "requests": reqs, "req_per_s": reqs / secs, "server_cpu_s": server_cpu, "server_cpu_util": server_cpu / secs,
        "cpu_us_per_req": server_cpu * 1e6 / reqs if reqs else -1.0, "loadgen_cpu_s": lg_cpu,
        "loadgen_cpu_util": lg_cpu / secs, "latency_us": {"mean": args.connections * args.depth * 1e6 * secs / reqs
                                                           if reqs else -1.0},
        "tls": negotiated, "loop": type(loop).__module__.split(".")[0],
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cafile", required=True)
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--depth", type=int, default=1)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--stall", type=float, default=5.0)
    p.add_argument("--pid", type=int, required=True)
    args = p.parse_args(argv)
    try:
        import uvloop

        runner: Any = uvloop.run if hasattr(uvloop, "run") else None
        if runner is None:
            uvloop.install()
            runner = asyncio.run
    except ImportError:
        runner = asyncio.run
    try:
        result = runner(run(args))
    except Exception as exc:  # one JSON line, whatever went wrong
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
