#!/usr/bin/env python3
"""fastframe.aio servers for bench/bench_servers.py: the framed echo written the way an asyncio user writes it.

Wire format: the framed echo of bench/peers.py (a 4-byte big-endian length, then the payload; each request
frame gets one reply frame).  Each server calls its handler once per frame, as a service does: the identity,
or ``bytes.upper`` with ``--upper`` (then the reply is the request with ASCII a-z upper-cased, which the load
generator's ``--upper`` checks byte for byte).

Usage: ``python bench/aio_servers.py KIND [PORT] [--loop uvloop|asyncio] [--upper]`` -- listens on 127.0.0.1
(PORT 0 or nothing: an ephemeral port), prints ``echo tcp 127.0.0.1:PORT`` once listening, and serves until
SIGTERM/SIGINT.  KIND is one of:

  protocol   a ``fastframe.aio.FrameProtocol`` subclass: ``frame_received(frame)`` ->
             ``self.send_frame(handler(frame))``, the per-frame callback every user starts with
  batch      the same protocol overriding ``frames_received(frames)`` (the batch callback) ->
             ``self.send_frames([handler(f) for f in frames])``
  streams    ``fastframe.aio.start_server``: ``async for frame in reader: writer.write_frame(handler(frame));
             await writer.drain()`` -- the shape of asyncio's own streams, one frame at a time

``--loop uvloop`` (the default) needs uvloop; ``--loop asyncio`` is the standard library's default loop.
Exit status 3 means a needed package is missing (the message on stderr says which).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any, Callable

HOST = "127.0.0.1"
MAX_FRAME = 16 * 1024 * 1024


def echo(payload: bytes) -> bytes:
    return payload


def make_protocol(handler: Callable[[bytes], bytes]) -> Any:
    from fastframe import aio

    class Echo(aio.FrameProtocol):
        def __init__(self) -> None:
            super().__init__(max_frame=MAX_FRAME)

        def frame_received(self, frame: bytes) -> None:
            self.send_frame(handler(frame))

    return Echo


def make_batch_protocol(handler: Callable[[bytes], bytes]) -> Any:
    from fastframe import aio

    class BatchEcho(aio.FrameProtocol):
        def __init__(self) -> None:
            super().__init__(max_frame=MAX_FRAME)

        def frames_received(self, frames: list[bytes]) -> None:
            self.send_frames([handler(f) for f in frames])

    return BatchEcho


async def serve(kind: str, port: int, handler: Callable[[bytes], bytes]) -> None:
    from fastframe import FrameError, aio

    loop = asyncio.get_running_loop()
    server: Any
    if kind == "streams":

        async def handle(reader: aio.FrameReader, writer: aio.FrameWriter) -> None:
            try:
                async for frame in reader:
                    writer.write_frame(handler(frame))
                    await writer.drain()
            except (ConnectionError, FrameError):
                pass
            finally:
                writer.close()

        server = await aio.start_server(handle, HOST, port, max_frame=MAX_FRAME, backlog=1024)
    else:
        factory = make_protocol(handler) if kind == "protocol" else make_batch_protocol(handler)
        server = await loop.create_server(factory, HOST, port, backlog=1024)
    print(f"echo tcp {HOST}:{server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    server.close()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description="fastframe.aio framed echo servers for the server bench.")
    p.add_argument("kind", choices=["protocol", "batch", "streams"])
    p.add_argument("port", type=int, nargs="?", default=0)
    p.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    p.add_argument("--upper", action="store_true", help="reply with the request upper-cased (bytes.upper)")
    args = p.parse_args(argv)
    handler = bytes.upper if args.upper else echo
    loop: asyncio.AbstractEventLoop
    if args.loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            print("aio_servers.py: --loop uvloop needs 'uvloop', which is not installed (pip install uvloop)",
                  file=sys.stderr)  # fmt: skip
            return 3
        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(serve(args.kind, args.port, handler))
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
