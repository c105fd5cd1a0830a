#!/usr/bin/env python3
"""Codec benchmark: what the C extension buys over pure Python, side by side in one run.

Every row decodes (or encodes) the same frames, of payload sizes from 16 B to 1 MiB:

decode, feed() path -- the stream arrives as 64 KiB ``bytes`` chunks (what ``recv(65536)`` returns):
  * ``fastframe._codec`` ``Decoder.feed`` (the extension)
  * ``fastframe._codec_py`` ``Decoder.feed`` (the pure-Python twin)
  * the seeds' hand-written loop (``buf += chunk``, ``struct.unpack("!I")``, slicing), as tutorials write it
  * ``asyncio.StreamReader``: ``feed_data`` per chunk, ``readexactly(4)`` + ``readexactly(n)`` per frame,
    inside a running event loop
  * ``msgpack.Unpacker`` on the same payloads packed as msgpack ``bin`` items (if msgpack is installed)

decode, get_buffer()/buffer_updated() path -- a real TCP connection on 127.0.0.1: a sender process
``sendall``s the stream, the decoder ``recv_into``s the memory lent by ``get_buffer()`` (the way asyncio's
``BufferedProtocol`` transport does it), for the extension and the twin alike, next to a plain ``recv_into``
of the same stream with no framing at all (the ceiling).  Kernel copies are part of this measurement; it
shows what the codec costs end to end.

encode -- ``encode(p)`` per payload, ``encode_many(batch)``, ``header(len(p))`` (scatter-gather sends), each
against the seeds' ``struct.pack("!I", len(p)) + p`` equivalent.

decode by layout, feed() path -- the same payloads framed as PostgreSQL messages (a type byte, a length that
counts itself: ``Framing("!I", offset=1, adjust=-4, strip=0)``) and as MySQL packets (a 3-byte little-endian
length, a sequence byte: ``Framing("<3", adjust=1)``), next to the default layout, for both implementations;
'dflt x' is the default layout's rate over this row's (1.10 = 10% slower than the default layout).

Every measurement is checked as it goes: its first run (untimed) must decode every frame equal to the one
sent, or encode exactly the reference stream; each timed run must decode the right number of frames, whose
sample (first, middle and last frame) has the right CRC-32.  A mismatch aborts the benchmark.  Times are the
best of several runs (time.perf_counter, gc disabled while timing, as timeit does), taken in interleaved
rounds.  ``python bench_codec.py --help`` lists the options; bench/README.md says how to read the table.
Needs Python 3.9+ and nothing beyond the standard library; msgpack and matplotlib are optional.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import json
import math
import os
import platform
import random
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Sequence
from typing import Any, Callable

import fastframe
from fastframe import Framing, _codec_py

try:
    from fastframe import _codec as _codec_ext
except ImportError as exc:  # reported in the header and the JSON; the extension's rows are skipped
    _codec_ext = None
    _EXT_ERROR: str | None = f"{type(exc).__name__}: {exc}"
else:
    _EXT_ERROR = None

try:
    import msgpack
except ImportError:
    msgpack = None

KiB = 1024
MiB = 1024 * KiB
DEFAULT_SIZES = (16, 256, 4 * KiB, 64 * KiB, 1 * MiB)
DEFAULT_CHUNK = 64 * KiB

# Frames per stream: enough payload that a big-frame run moves 16 MiB, and many frames for tiny payloads
# (a per-frame cost is what small sizes measure), within a cap that keeps the slowest rows bounded.
TARGET_BYTES = 16 * MiB
MAX_FRAMES = 131072
MIN_FRAMES = 16
QUICK_TARGET_BYTES = 1 * MiB
QUICK_MAX_FRAMES = 8192
QUICK_MIN_FRAMES = 4
QUICK_SECONDS = 0.02
HEADER_CALLS = 65536  # header() calls per timed run, at least
QUICK_HEADER_CALLS = 4096

ENCODE_MANY_BATCH = 64  # frames per encode_many() call ...
ENCODE_MANY_BYTES = 4 * MiB  # ... but no more payload than this per call

SECTIONS = {
    "decode-feed": "DECODE, feed() path: the stream in {chunk} chunks (bytes objects, as recv() returns them)",
    "decode-socket": "DECODE, get_buffer()/buffer_updated() path: recv_into() from a real TCP socket on 127.0.0.1",
    "encode": "ENCODE, one frame per call",
    "encode_many": "ENCODE, a batch per call (up to {batch} frames, at most {batch_mib} MiB)",
    "header": "HEADER alone, for scatter-gather sends (sendmsg([header, payload]))",
    "decode-layouts": "DECODE by layout, feed() path, {chunk} chunks: PostgreSQL- and MySQL-style framing",
}

# The framings of the decode-layouts section, and how the reference encoder (struct, never the codec) writes
# and the decoder returns a payload in each: name -> (framing, wire frame of payload i, returned frame).
LAYOUTS: dict[str, tuple[Any, Callable[[int, bytes], bytes], Callable[[bytes], bytes]]] = {
    "default": (Framing("!I"), lambda i, p: struct.pack("!I", len(p)) + p, lambda wire: wire[4:]),
    "postgres": (
        Framing("!I", offset=1, adjust=-4, strip=0, max_frame=16 * 1024 * 1024),
        lambda i, p: b"D" + struct.pack("!I", len(p) + 4) + p,
        lambda wire: wire,
    ),
    "mysql": (
        Framing("<3", adjust=1, max_frame=16 * 1024 * 1024),
        lambda i, p: struct.pack("<I", len(p))[:3] + bytes([i % 256]) + p,
        lambda wire: wire[3:],
    ),
}


class BenchError(Exception):
    """A measurement produced wrong results; the run is aborted."""


# -- the data -----------------------------------------------------------------------------------------


class Workload:
    """The frames for one payload size: payloads, the reference stream, chunks, and the expected answers.

    Payload i starts with i as 8 big-endian bytes (when it has room), the rest is fixed random bytes; so a
    frame dropped, repeated or swapped is caught even when the count happens to be right."""

    def __init__(self, size: int, frames: int, chunk: int, header_calls: int) -> None:
        self.size = size
        self.frames = frames
        rnd = random.Random(size)
        filler = rnd.randbytes(size)
        tag = min(8, size)
        self.payloads = [i.to_bytes(8, "big")[8 - tag :] + filler[tag:] for i in range(frames)]
        # The reference stream is built with struct, independently of the codec under test.
        self.stream = b"".join([struct.pack("!I", len(p)) + p for p in self.payloads])
        self.chunks = [self.stream[i : i + chunk] for i in range(0, len(self.stream), chunk)]
        self.payload_bytes = size * frames
        self.expected_sample = self.sample_crc(self.payloads[0], self.payloads[frames // 2], self.payloads[-1])
        self.stream_crc = zlib.crc32(self.stream)
        batch = max(1, min(ENCODE_MANY_BATCH, ENCODE_MANY_BYTES // max(size, 1)))
        self.batches = [self.payloads[i : i + batch] for i in range(0, frames, batch)]
        # header() costs the same for any length: time enough calls to rise well above the timer's resolution.
        self.header_lengths = [size] * max(frames, header_calls)
        self._msgpack_chunks: list[bytes] | None = None

    @staticmethod
    def sample_crc(*frames: Any) -> int:
        crc = 0
        for f in frames:
            crc = zlib.crc32(f, crc)
        return crc

    def msgpack_chunks(self, chunk: int) -> list[bytes]:
        if self._msgpack_chunks is None:
            stream = b"".join([msgpack.packb(p, use_bin_type=True) for p in self.payloads])
            self._msgpack_chunks = [stream[i : i + chunk] for i in range(0, len(stream), chunk)]
        return self._msgpack_chunks

    def check_frames(self, label: str, frames: Sequence[Any]) -> None:
        """The checked run: every frame, in order."""
        self.check_count(label, len(frames))
        for i, (got, sent) in enumerate(zip(frames, self.payloads)):
            if got != sent:
                raise BenchError(
                    f"{label}, {fmt_size(self.size)}: frame {i} differs from the one sent "
                    f"({len(got)} bytes, {bytes(got[:12])!r}... instead of {sent[:12]!r}...)"
                )

    def check_count(self, label: str, count: int) -> None:
        if count != self.frames:
            raise BenchError(f"{label}, {fmt_size(self.size)}: decoded {count} frames, expected {self.frames}")

    def check_sample(self, label: str, sample: tuple[Any, Any, Any]) -> None:
        """A timed run: the first, middle and last frames, by checksum."""
        crc = self.sample_crc(*sample)
        if crc != self.expected_sample:
            raise BenchError(
                f"{label}, {fmt_size(self.size)}: sample checksum {crc:#010x}, expected {self.expected_sample:#010x}"
            )

    def check_stream(self, label: str, data: bytes) -> None:
        if len(data) != len(self.stream) or zlib.crc32(data) != self.stream_crc:
            raise BenchError(f"{label}, {fmt_size(self.size)}: encoded output differs from struct.pack('!I', n) + p")


class LayoutWorkload(Workload):
    """The payloads of ``base`` framed in another layout: its stream, its chunks, the frames expected."""

    def __init__(self, base: Workload, layout: str, chunk: int) -> None:
        framing, wire_of, returned = LAYOUTS[layout]
        self.size = base.size
        self.frames = base.frames
        self.layout = layout
        self.framing = framing
        wires = [wire_of(i, p) for i, p in enumerate(base.payloads)]
        self.payloads = [returned(w) for w in wires]  # what check_frames() compares with
        self.stream = b"".join(wires)
        self.chunks = [self.stream[i : i + chunk] for i in range(0, len(self.stream), chunk)]
        self.payload_bytes = base.payload_bytes
        self.expected_sample = self.sample_crc(self.payloads[0], self.payloads[self.frames // 2], self.payloads[-1])
        self.stream_crc = zlib.crc32(self.stream)


# -- decoders -----------------------------------------------------------------------------------------
#
# Each decode function takes the workload and a Sink, hands the sink every list of frames it gets, and
# returns nothing; the sink counts them and keeps the sample (first, middle, last frame) that each timed run
# is checked against.  In the checked run it also keeps every frame.


class Sink:
    """Where decoded frames go: a count, the sample, and (in the checked run) every frame."""

    __slots__ = ("collect", "count", "first", "last", "mid", "middle")

    def __init__(self, frames: int, collect: bool) -> None:
        self.count = 0
        self.mid = frames // 2
        self.first: Any = None
        self.middle: Any = None
        self.last: Any = None
        self.collect: list | None = [] if collect else None

    def take(self, out: list) -> None:
        if not out:
            return
        count = self.count
        if not count:
            self.first = out[0]
        if count <= self.mid < count + len(out):
            self.middle = out[self.mid - count]
        self.last = out[-1]
        self.count = count + len(out)
        if self.collect is not None:
            self.collect.extend(out)

    @property
    def sample(self) -> tuple[Any, Any, Any]:
        return self.first, self.middle, self.last


def decode_feed(mod: Any) -> Callable[[Workload, Sink], None]:
    def run(w: Workload, sink: Sink) -> None:
        dec = mod.Decoder()
        for chunk in w.chunks:
            sink.take(dec.feed(chunk))
        dec.close()

    return run


def decode_layout(mod: Any, framing: Any) -> Callable[[Workload, Sink], None]:
    def run(w: Workload, sink: Sink) -> None:
        dec = mod.Decoder(framing)
        for chunk in w.chunks:
            sink.take(dec.feed(chunk))
        dec.close()

    return run


def decode_seeds(w: Workload, sink: Sink) -> None:
    # The seeds' receive loop, as socket tutorials write it: grow a bytes buffer, unpack the header, slice
    # the frame off the front.  Not optimised on purpose -- every slice copies the rest of the buffer.
    buf = b""
    for data in w.chunks:
        buf += data
        out = []
        while len(buf) >= 4:
            n = struct.unpack("!I", buf[:4])[0]
            if len(buf) < 4 + n:
                break
            frame = buf[4 : 4 + n]
            buf = buf[4 + n :]
            out.append(frame)
        sink.take(out)
    if buf:
        raise BenchError(f"seeds loop: {len(buf)} bytes left over")


def decode_asyncio(w: Workload, sink: Sink) -> None:
    # A producer task feeds one chunk at a time and yields; the reader task reads frames with readexactly()
    # until it runs dry and waits for the next chunk, as it would behind a real transport.
    async def main() -> None:
        reader = asyncio.StreamReader()

        async def produce() -> None:
            for chunk in w.chunks:
                reader.feed_data(chunk)
                await asyncio.sleep(0)
            reader.feed_eof()

        producer = asyncio.ensure_future(produce())
        unpack = struct.unpack
        mid = sink.mid
        frame = None
        try:
            for i in range(w.frames):
                head = await reader.readexactly(4)
                n = unpack("!I", head)[0]
                frame = await reader.readexactly(n)
                # What Sink.take does per list, done per frame without building a list for it.
                if i == 0:
                    sink.first = frame
                if i == mid:
                    sink.middle = frame
                if sink.collect is not None:
                    sink.collect.append(frame)
                sink.count += 1
            sink.last = frame
        finally:
            await producer
        if not reader.at_eof():
            raise BenchError("asyncio: bytes left over after the last frame")

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


def decode_msgpack(chunk: int) -> Callable[[Workload, Sink], None]:
    def run(w: Workload, sink: Sink) -> None:
        unpacker = msgpack.Unpacker()
        for data in w.msgpack_chunks(chunk):
            unpacker.feed(data)
            sink.take(list(unpacker))

    return run


# The sending end of the socket path runs in a child interpreter started from this source (not through
# multiprocessing, which would have to re-import this script).  Its stdin is the control channel:
# b"S" + 8-byte length + stream loads the stream of the next payload size, b"G" sends it once, EOF ends it.
_SENDER = """
import socket, struct, sys
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])))
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
control = sys.stdin.buffer
stream = b""
while True:
    op = control.read(1)
    if op == b"S":
        stream = control.read(struct.unpack("!Q", control.read(8))[0])
    elif op == b"G":
        sock.sendall(stream)
    else:
        break
sock.close()
"""


class Loopback:
    """A TCP connection on 127.0.0.1 whose sending end is a child process that sendall()s a stream on demand.

    A process, not a thread, sends: a sending thread would compete for the GIL with the decoder under test
    and pace the receive loop differently for each implementation.  One connection serves every run; each
    run's stream ends on a frame boundary, and the next one is sent only after the receiver has every frame
    of this one, so runs never mix."""

    def __init__(self) -> None:
        with socket.create_server(("127.0.0.1", 0)) as listener:
            host, port = listener.getsockname()[:2]
            self.process = subprocess.Popen(
                [sys.executable, "-I", "-c", _SENDER, host, str(port)], stdin=subprocess.PIPE, bufsize=0
            )
            listener.settimeout(60)
            try:
                self.rx, _ = listener.accept()
            except OSError:
                self.close()
                raise
        self.rx.settimeout(None)

    def _control(self, data: bytes) -> None:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(data)
        except OSError as exc:
            raise BenchError(f"the sender process is gone ({exc})") from None

    def load(self, stream: bytes) -> None:
        self._control(b"S" + struct.pack("!Q", len(stream)) + stream)

    def go(self) -> None:
        self._control(b"G")

    def close(self) -> None:
        if self.process.stdin is not None:
            try:
                self.process.stdin.close()
            except OSError:
                pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        rx = getattr(self, "rx", None)
        if rx is not None:
            rx.close()


def decode_socket(mod: Any, link: Loopback, sizehint: int) -> Callable[[Workload, Sink], None]:
    def run(w: Workload, sink: Sink) -> None:
        dec = mod.Decoder()
        rx = link.rx
        frames = w.frames
        link.go()
        while sink.count < frames:
            # Release the lent view before the next get_buffer(), as asyncio's transport does (its view is
            # a local of one callback); a view kept alive would make the decoder move to fresh memory.
            with dec.get_buffer(sizehint) as view:
                n = rx.recv_into(view)
            if not n:
                raise BenchError(f"socket closed after {sink.count} frames (the sender process died?)")
            sink.take(dec.buffer_updated(n))
        if dec.pending:
            raise BenchError(f"{dec.pending} bytes left over in the decoder")
        dec.close()

    return run


def receive_raw(link: Loopback, size: int) -> Callable[[Workload], int]:
    """The socket path's ceiling: the same stream received into one reused buffer, no framing at all."""
    buf = bytearray(size)

    def run(w: Workload) -> int:
        rx = link.rx
        want = len(w.stream)
        got = 0
        link.go()
        with memoryview(buf) as view:
            while got < want:
                n = rx.recv_into(view[: min(size, want - got)])
                if not n:
                    raise BenchError(f"socket closed after {got} bytes (the sender process died?)")
                got += n
        return got

    return run


# -- encoders -----------------------------------------------------------------------------------------
# Each returns the frames it made (the checked run joins and compares them) or None (the timed runs).


def encode_one(fn: Callable[[bytes], bytes]) -> Callable[[Workload, bool], list[bytes] | None]:
    def run(w: Workload, keep: bool) -> list[bytes] | None:
        if keep:
            return [fn(p) for p in w.payloads]
        for p in w.payloads:
            fn(p)
        return None

    return run


def seeds_encode(p: bytes) -> bytes:
    return struct.pack("!I", len(p)) + p


def msgpack_encode(p: bytes) -> bytes:
    return msgpack.packb(p, use_bin_type=True)


def encode_batches(fn: Callable[[list[bytes]], bytes]) -> Callable[[Workload, bool], list[bytes] | None]:
    def run(w: Workload, keep: bool) -> list[bytes] | None:
        if keep:
            return [fn(batch) for batch in w.batches]
        for batch in w.batches:
            fn(batch)
        return None

    return run


def seeds_encode_many(batch: list[bytes]) -> bytes:
    return b"".join([struct.pack("!I", len(p)) + p for p in batch])


def header_only(fn: Callable[[int], bytes]) -> Callable[[Workload, bool], list[bytes] | None]:
    def run(w: Workload, keep: bool) -> list[bytes] | None:
        if keep:
            out = []
            for p in w.payloads:
                out.append(fn(len(p)))
                out.append(p)
            return out
        for n in w.header_lengths:
            fn(n)
        return None

    return run


def seeds_header(n: int) -> bytes:
    return struct.pack("!I", n)


# -- measuring ----------------------------------------------------------------------------------------
#
# A shared machine has noisy spells that last longer than one measurement.  So the rows of one payload size
# are measured in rounds: every row gets a slice of its time budget in each round, in turn, and keeps its
# best run over all rounds.  A noisy spell then costs every row a round instead of costing one row its
# whole measurement, which keeps the ratios between rows honest.


class Result(dict):
    """One row of the table (a plain dict, so that it goes to JSON as it is)."""


class Measurement:
    """One row being measured: a timed run and the check of what each run produced."""

    def __init__(
        self,
        section: str,
        key: str,
        label: str,
        w: Workload,
        run: Callable[[], Any],
        check: Callable[[Any], None],
        frames: int,
    ) -> None:
        self.section, self.key, self.label = section, key, label
        self.size = w.size
        self.frames = frames  # frames per run
        self.run = run
        self.check = check
        self.best = math.inf
        self.runs = 0

    def measure(self, seconds: float) -> None:
        """Run for about ``seconds`` (at least once), timing each run alone; keep the best time."""
        total = 0.0
        n = 0
        gc.collect()
        enabled = gc.isenabled()
        gc.disable()  # as timeit does; collections would land in arbitrary rows
        try:
            while not n or total < seconds:
                t0 = time.perf_counter()
                result = self.run()
                dt = time.perf_counter() - t0
                self.check(result)  # outside the timed region
                del result
                self.best = min(self.best, dt)
                total += dt
                n += 1
        finally:
            if enabled:
                gc.enable()
        self.runs += n

    def result(self) -> Result:
        best = self.best
        return Result(
            section=self.section,
            key=self.key,
            label=self.label,
            size=self.size,
            frames=self.frames,
            payload_bytes=self.size * self.frames,
            best_seconds=best,
            runs=self.runs,
            frames_per_s=self.frames / best,
            gb_per_s=self.size * self.frames / best / 1e9,
        )


def prepare_decode(
    section: str, key: str, label: str, fn: Callable[[Workload, Sink], None], w: Workload
) -> Measurement:
    """Do the checked run (every frame compared; it also warms up) and return the row to time."""
    sink = Sink(w.frames, collect=True)
    fn(w, sink)
    assert sink.collect is not None
    w.check_frames(label, sink.collect)
    del sink

    def run() -> Sink:
        sink = Sink(w.frames, collect=False)
        fn(w, sink)
        return sink

    def check(sink: Sink) -> None:
        w.check_count(label, sink.count)
        w.check_sample(label, sink.sample)

    return Measurement(section, key, label, w, run, check, w.frames)


def prepare_encode(
    section: str,
    key: str,
    label: str,
    fn: Callable[[Workload, bool], list[bytes] | None],
    w: Workload,
    reference: bytes | None = None,
) -> Measurement:
    """Do the checked run (the output must be the reference stream, byte for byte) and return the row to time."""
    out = fn(w, True)
    assert out is not None
    data = b"".join(out)
    if reference is not None:
        if data != reference:
            raise BenchError(f"{label}, {fmt_size(w.size)}: output differs from the reference encoding")
    else:
        w.check_stream(label, data)
    del out, data
    frames = len(w.header_lengths) if section == "header" else w.frames
    return Measurement(section, key, label, w, lambda: fn(w, False), lambda _: None, frames)


def prepare_raw(label: str, fn: Callable[[Workload], int], w: Workload) -> Measurement:
    def check(got: int) -> None:
        if got != len(w.stream):
            raise BenchError(f"{label}, {fmt_size(w.size)}: received {got} bytes, expected {len(w.stream)}")

    check(fn(w))
    return Measurement("decode-socket", "raw", label, w, lambda: fn(w), check, w.frames)


def measure_all(rows: list[Measurement], seconds: float, rounds: int) -> list[Result]:
    for _ in range(rounds):
        for row in rows:
            row.measure(seconds / rounds)
    return [row.result() for row in rows]


# -- output -------------------------------------------------------------------------------------------


def fmt_size(n: int) -> str:
    if n >= MiB and n % MiB == 0:
        return f"{n // MiB} MiB"
    if n >= KiB and n % KiB == 0:
        return f"{n // KiB} KiB"
    return f"{n} B"


def parse_size(text: str) -> int:
    t = text.strip().lower().replace(" ", "")
    for suffix, mult in (("mib", MiB), ("kib", KiB), ("m", MiB), ("k", KiB), ("b", 1)):
        if t.endswith(suffix):
            t, factor = t[: -len(suffix)], mult
            break
    else:
        factor = 1
    try:
        value = int(t) * factor
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (examples: 16, 256B, 4K, 64KiB, 1M)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"bad size {text!r}: must not be negative")
    return value


def parse_sizes(text: str) -> list[int]:
    sizes = [parse_size(s) for s in text.split(",") if s.strip()]
    if not sizes:
        raise argparse.ArgumentTypeError("no sizes given")
    return sizes


def fmt_rate(x: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= div:
            return f"{x / div:.3g} {unit}"
    return f"{x:.3g}  "


def fmt_gb(x: float) -> str:
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    if x >= 0.01:
        return f"{x:.3f}"
    return f"{x:.4f}"


def add_ratios(results: list[Result]) -> None:
    """ext_ratio = the extension's rate in the same section and size / this row's rate; in the layouts
    section, layout_ratio = the same implementation's default-layout rate / this row's rate."""
    base = {(r["section"], r["size"]): r["frames_per_s"] for r in results if r["key"] == "ext"}
    default = {
        (r["key"].split("-")[0], r["size"]): r["frames_per_s"]
        for r in results
        if r["section"] == "decode-layouts" and r["key"].endswith("-default")
    }
    for r in results:
        b = base.get((r["section"], r["size"]))
        r["ext_ratio"] = b / r["frames_per_s"] if b else None
        if r["section"] == "decode-layouts":
            d = default.get((r["key"].split("-")[0], r["size"]))
            r["layout_ratio"] = d / r["frames_per_s"] if d else None


def print_table(results: list[Result], sections: dict[str, str], out: Any = sys.stdout) -> None:
    width = max(len(r["label"]) for r in results) if results else 20
    for section, title in sections.items():
        rows = [r for r in results if r["section"] == section]
        if not rows:
            continue
        print(f"\n{title}", file=out)
        ratio_key, ratio_name = ("layout_ratio", "dflt x") if section == "decode-layouts" else ("ext_ratio", "ext x")
        head = f"{'size':>8}  {'implementation':<{width}}  {'frames/s':>9}  {'GB/s':>7}  {ratio_name:>7}"
        print(head, file=out)
        print("-" * len(head), file=out)
        last = None
        for r in rows:
            size = fmt_size(r["size"]) if r["size"] != last else ""
            if r["size"] != last and last is not None:
                print(file=out)
            last = r["size"]
            gb = "-" if section == "header" else fmt_gb(r["gb_per_s"])
            ratio = "-" if r.get(ratio_key) is None else f"{r[ratio_key]:.2f}"
            print(f"{size:>8}  {r['label']:<{width}}  {fmt_rate(r['frames_per_s']):>9}  {gb:>7}  {ratio:>7}", file=out)


def plot(results: list[Result], path: str, meta: dict[str, Any], titles: dict[str, str]) -> str | None:
    """The ratio chart of bench/report.py (the extension's rate over each row's, per size, every point labelled)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import report

    return report.plot_codec({"meta": meta, "sections": titles, "results": results}, path)


# -- main ---------------------------------------------------------------------------------------------


def frames_for(size: int, quick: bool) -> int:
    if quick:
        return max(QUICK_MIN_FRAMES, min(QUICK_MAX_FRAMES, QUICK_TARGET_BYTES // max(size, 1)))
    return max(MIN_FRAMES, min(MAX_FRAMES, TARGET_BYTES // max(size, 1)))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="fastframe codec benchmark: the extension, the pure-Python twin and the usual alternatives, "
        "side by side, decode and encode, 16 B to 1 MiB payloads.",
    )
    p.add_argument(
        "--sizes",
        type=parse_sizes,
        default=list(DEFAULT_SIZES),
        metavar="LIST",
        help="comma-separated payload sizes, e.g. 16,256,4K,64K,1M (the default)",
    )
    p.add_argument(
        "--seconds",
        type=float,
        default=None,
        metavar="S",
        help="time budget per row and size, shared by the rounds; the best run is kept (default 0.3)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        metavar="N",
        help="measure the rows of a size in N interleaved rounds (default 3), see bench/README.md",
    )
    p.add_argument(
        "--chunk",
        type=parse_size,
        default=DEFAULT_CHUNK,
        metavar="SIZE",
        help="chunk size of the feed() path and get_buffer() size hint of the socket path (default 64K)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: short streams and a tiny time budget (numbers are not meaningful)",
    )
    p.add_argument("--no-socket", action="store_true", help="skip the get_buffer()/recv_into() socket path")
    p.add_argument("--json", metavar="FILE", help="save every result and the environment as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="draw decode GB/s per size and implementation (matplotlib)")
    args = p.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else (QUICK_SECONDS if args.quick else 0.3)
    if args.chunk <= 0:
        p.error("--chunk must be positive")
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    if seconds < 0:
        p.error("--seconds must not be negative")

    meta: dict[str, Any] = {
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "platform_short": f"{platform.system()} {platform.machine()}",
        "cpu_count": os.cpu_count(),
        "fastframe_version": fastframe.__version__,
        "fastframe_file": fastframe.__file__,
        "IMPLEMENTATION": fastframe.IMPLEMENTATION,
        "extension": getattr(_codec_ext, "__file__", None),
        "extension_error": _EXT_ERROR,
        "msgpack_version": ".".join(map(str, msgpack.version)) if msgpack else None,
        "msgpack_unpacker": f"{msgpack.Unpacker.__module__}" if msgpack else None,
        "sizes": args.sizes,
        "chunk": args.chunk,
        "seconds": seconds,
        "rounds": args.rounds,
        "quick": args.quick,
        "socket_path": not args.no_socket,
    }
    print(f"fastframe {meta['fastframe_version']} codec benchmark   {meta['time']}")
    print(
        f"Python {meta['python_version']} ({meta['python_implementation']}) on {meta['platform']}, "
        f"{meta['cpu_count']} CPUs"
    )
    print(f"fastframe.IMPLEMENTATION = {fastframe.IMPLEMENTATION!r}  ({fastframe.__file__})")
    notes: list[str] = []
    if _codec_ext is None:
        notes.append(
            f"the extension fastframe._codec is not importable ({_EXT_ERROR}): its rows are skipped, no ratios"
        )
    if msgpack is None:
        notes.append("msgpack is not installed: the msgpack rows are skipped (pip install msgpack)")
    else:
        notes.append(f"msgpack {meta['msgpack_version']} ({meta['msgpack_unpacker']})")
    if os.path.dirname(os.path.abspath(fastframe.__file__)) == os.path.join(os.getcwd(), "fastframe"):
        notes.append("fastframe is imported from the current directory (a source tree?), not the installed package")
    for n in notes:
        print(f"note: {n}")
    print(
        f"each row: best run of {args.rounds} interleaved rounds, {seconds:g} s in all; GB/s counts payload "
        "bytes (1 GB = 1e9 B); 'ext x' = the extension's rate in the same table / this row's rate"
    )
    sys.stdout.flush()

    impls: list[tuple[str, str, Any]] = []
    if _codec_ext is not None:
        impls.append(("ext", "fastframe._codec", _codec_ext))
    impls.append(("py", "fastframe._codec_py", _codec_py))

    results: list[Result] = []
    started = time.perf_counter()
    link = None if args.no_socket else Loopback()
    try:
        for size in args.sizes:
            w = Workload(
                size, frames_for(size, args.quick), args.chunk, QUICK_HEADER_CALLS if args.quick else HEADER_CALLS
            )
            t0 = time.perf_counter()
            rows: list[Measurement] = []
            for key, name, mod in impls:
                rows.append(prepare_decode("decode-feed", key, f"{name} feed()", decode_feed(mod), w))
            rows.append(
                prepare_decode("decode-feed", "seeds", "seeds loop: bytes += / unpack / slice", decode_seeds, w)
            )
            rows.append(prepare_decode("decode-feed", "asyncio", "asyncio StreamReader.readexactly", decode_asyncio, w))
            if msgpack is not None:
                rows.append(
                    prepare_decode(
                        "decode-feed", "msgpack", "msgpack Unpacker (bin items)", decode_msgpack(args.chunk), w
                    )
                )
            if link is not None:
                link.load(w.stream)
                for key, name, mod in impls:
                    rows.append(
                        prepare_decode(
                            "decode-socket", key, f"{name} get_buffer()", decode_socket(mod, link, args.chunk), w
                        )
                    )
                rows.append(
                    prepare_raw(f"raw recv_into({fmt_size(args.chunk)}), no framing", receive_raw(link, args.chunk), w)
                )
            for layout in LAYOUTS:
                lw = w if layout == "default" else LayoutWorkload(w, layout, args.chunk)
                for key, name, mod in impls:
                    rows.append(
                        prepare_decode(
                            "decode-layouts",
                            f"{key}-{layout}",
                            f"{name} feed(), {layout}",
                            decode_layout(mod, LAYOUTS[layout][0]),
                            lw,
                        )
                    )
            for key, name, mod in impls:
                rows.append(prepare_encode("encode", key, f"{name} encode()", encode_one(mod.encode), w))
            rows.append(prepare_encode("encode", "seeds", 'struct.pack("!I", len(p)) + p', encode_one(seeds_encode), w))
            if msgpack is not None:
                ref = b"".join([msgpack_encode(p) for p in w.payloads])
                rows.append(
                    prepare_encode(
                        "encode", "msgpack", "msgpack.packb(p)", encode_one(msgpack_encode), w, reference=ref
                    )
                )
                del ref
            for key, name, mod in impls:
                rows.append(
                    prepare_encode("encode_many", key, f"{name} encode_many()", encode_batches(mod.encode_many), w)
                )
            rows.append(
                prepare_encode(
                    "encode_many", "seeds", 'b"".join(struct.pack(...) + p ...)', encode_batches(seeds_encode_many), w
                )
            )
            for key, name, mod in impls:
                rows.append(prepare_encode("header", key, f"{name} header()", header_only(mod.header), w))
            rows.append(prepare_encode("header", "seeds", 'struct.pack("!I", n)', header_only(seeds_header), w))
            results.extend(measure_all(rows, seconds, args.rounds))
            print(
                f"  {fmt_size(size)}: {w.frames} frames, {w.payload_bytes / MiB:.1f} MiB of payload per run, "
                f"{len(rows)} rows measured in {time.perf_counter() - t0:.1f} s",
                flush=True,
            )
            del rows
            del w
    except BenchError as exc:
        print(f"\nERROR: wrong result, benchmark aborted: {exc}", file=sys.stderr)
        return 1
    finally:
        if link is not None:
            link.close()
    meta["elapsed_seconds"] = round(time.perf_counter() - started, 2)

    add_ratios(results)
    titles = {
        k: v.format(chunk=fmt_size(args.chunk), batch=ENCODE_MANY_BATCH, batch_mib=ENCODE_MANY_BYTES // MiB)
        for k, v in SECTIONS.items()
    }
    print_table(results, titles)
    print(f"\nall results verified (decoded frames, encoded bytes); total {meta['elapsed_seconds']} s")

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "sections": titles, "results": results}, f, indent=1)
            f.write("\n")
        print(f"results saved to {args.json}")
    if args.plot:
        problem = plot(results, args.plot, meta, titles)
        print(f"note: {problem}" if problem else f"chart saved to {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
