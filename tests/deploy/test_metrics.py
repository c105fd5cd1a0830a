"""servers.metrics: counts after simulated activity, prometheus_client's multiprocess mode across forked workers
(one of them dead), and the /metrics endpoint of ``fastframe serve --metrics`` under curl, urllib, and hostile or
slow clients (and driven by an asyncio loop).

Scrapes are read with a small parser of the text format written here, not with prometheus_client's.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from harness import ServerProcess, recv_frame, send_frame
from peertools import require_module, require_tool

from fastframe.servers.metrics_http import MetricsEndpoint, SelectorReactor

HERE = os.path.dirname(os.path.abspath(__file__))
TIMEOUT = 10.0
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(name, sorted labels): value} from the Prometheus text format."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        labels = tuple(sorted(LABEL.findall(m.group(2) or "")))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def value(text: str, name: str, **labels: str) -> float:
    return samples(text)[(name, tuple(sorted(labels.items())))]


class Conn:
    """The engine's connection as metrics sees it: four plain ints."""

    def __init__(self) -> None:
        self.frames_in = self.frames_out = self.bytes_in = self.bytes_out = 0

    def exchange(self, frames: int, size: int) -> None:
        self.frames_in += frames
        self.frames_out += frames
        self.bytes_in += frames * size
        self.bytes_out += frames * size


@pytest.fixture
def metrics_module():  # type: ignore[no-untyped-def]
    require_module("prometheus_client", "metrics")
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        pytest.skip("this process runs prometheus_client in multiprocess mode")
    from fastframe.servers import metrics

    return metrics


def test_missing_prometheus_client_is_one_clear_line() -> None:
    script = textwrap.dedent(
        """
        import sys
        sys.modules["prometheus_client"] = None  # as if it were not installed
        from fastframe.servers.metrics import Metrics, MetricsUnavailable
        try:
            Metrics()
        except MetricsUnavailable as exc:
            print(exc)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=HERE)
    assert out.stdout == "--metrics needs prometheus_client: pip install 'fastframe[metrics]'\n", out.stderr


def test_importing_the_module_does_not_import_prometheus() -> None:
    script = "import sys, fastframe.servers.metrics; print('prometheus_client' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=HERE)
    assert out.stdout == "False\n", out.stderr  # or prepare_multiprocess() could never come first


# -- counting -------------------------------------------------------------------------------------------------


def test_counts_after_activity(metrics_module) -> None:  # type: ignore[no-untyped-def]
    m = metrics_module.Metrics()
    echo, files = m.service("echo"), m.service("files")
    a, b = Conn(), Conn()
    echo.opened(a)
    echo.opened(b)
    a.exchange(3, 10)
    b.exchange(1, 100)
    text, content_type = m.render()
    text = text.decode()
    assert content_type.startswith("text/plain")
    assert value(text, "fastframe_connections_total", service="echo") == 2
    assert value(text, "fastframe_connections_open", service="echo") == 2
    assert value(text, "fastframe_received_frames_total", service="echo") == 4  # live connections count too
    assert value(text, "fastframe_sent_bytes_total", service="echo") == 130
    a.exchange(2, 5)
    echo.closed(a)
    b.exchange(1, 1)
    echo.error("too_large")
    echo.error("too_large")
    echo.error("frame_timeout")
    echo.count(frames_in=1, frames_out=1, bytes_in=0, bytes_out=4)  # a datagram, no connection
    files.download(1 << 20)
    files.download(4096, complete=False)
    files.command("ok")
    text = m.render()[0].decode()
    assert value(text, "fastframe_connections_open", service="echo") == 1
    assert value(text, "fastframe_connections_total", service="echo") == 2
    assert value(text, "fastframe_received_frames_total", service="echo") == 3 + 1 + 2 + 1 + 1
    assert value(text, "fastframe_received_bytes_total", service="echo") == 30 + 100 + 10 + 1
    assert value(text, "fastframe_sent_bytes_total", service="echo") == 30 + 100 + 10 + 1 + 4
    assert value(text, "fastframe_errors_total", service="echo", kind="too_large") == 2
    assert value(text, "fastframe_errors_total", service="echo", kind="frame_timeout") == 1
    assert value(text, "fastframe_downloads_total", service="files") == 1
    assert value(text, "fastframe_download_sent_bytes_total", service="files") == (1 << 20) + 4096
    assert value(text, "fastframe_commands_total", service="files", outcome="ok") == 1
    assert value(text, "fastframe_connections_open", service="files") == 0  # present from the start, at zero
    assert value(text, "fastframe_received_frames_total", service="files") == 0


def test_folding_twice_counts_once(metrics_module) -> None:  # type: ignore[no-untyped-def]
    m = metrics_module.Metrics()
    echo = m.service("echo")
    c = Conn()
    echo.opened(c)
    c.exchange(5, 1)
    first = samples(m.render()[0].decode())
    m.fold()
    m.fold()
    again = samples(m.render()[0].decode())
    assert {k: v for k, v in first.items() if "_created" not in k[0]} == {
        k: v for k, v in again.items() if "_created" not in k[0]
    }
    echo.closed(c)
    echo.closed(c)  # a second close of the same connection counts nothing
    assert value(m.render()[0].decode(), "fastframe_received_frames_total", service="echo") == 5


def test_every_name_starts_with_fastframe_and_has_a_service(metrics_module) -> None:  # type: ignore[no-untyped-def]
    m = metrics_module.Metrics()
    svc = m.service("echo")
    svc.error("x")
    svc.command("ok")
    for name, labels in samples(m.render()[0].decode()):
        assert name.startswith("fastframe_") and dict(labels)["service"] == "echo"


def test_label_values_are_bounded(metrics_module) -> None:  # type: ignore[no-untyped-def]
    m = metrics_module.Metrics()
    svc = m.service("echo")
    for i in range(50):
        svc.error(f"kind{i}")
    kinds = {
        dict(labels)["kind"] for name, labels in samples(m.render()[0].decode()) if name == "fastframe_errors_total"
    }
    assert len(kinds) == metrics_module.MAX_LABEL_VALUES + 1 and "other" in kinds


def test_counting_cost_is_per_connection_not_per_frame(metrics_module, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The hot path touches no prometheus object: a wake-up is the engine's own int additions; prometheus is
    called only from fold().  (Proven by counting prometheus calls, not by timing.)"""
    from prometheus_client.metrics import MetricWrapperBase

    m = metrics_module.Metrics()
    echo = m.service("echo")
    calls = []
    original = MetricWrapperBase.labels

    def counting_labels(self, *values, **kw):  # type: ignore[no-untyped-def]
        calls.append(values)
        return original(self, *values, **kw)

    monkeypatch.setattr(MetricWrapperBase, "labels", counting_labels)
    conns = [Conn() for _ in range(100)]
    for c in conns:
        echo.opened(c)
    for _ in range(1000):  # a thousand wake-ups on every connection
        for c in conns:
            c.exchange(1, 16)
    for c in conns[:50]:
        echo.closed(c)
    assert calls == []
    m.fold()
    assert 0 < len(calls) <= 8  # one call per series, whatever the traffic was


# -- multiprocess (prefork) -----------------------------------------------------------------------------------

PREFORK = textwrap.dedent(
    """
    import os, sys
    from fastframe.servers import metrics as mm

    directory = sys.argv[1]
    with open(os.path.join(directory, "stale_1.db"), "wb") as f:  # left by a previous run
        f.write(b"junk")
    assert mm.prepare_multiprocess(directory) == directory
    assert not os.path.exists(os.path.join(directory, "stale_1.db"))
    m = mm.Metrics()  # the master: created before the fork, as the engine does
    echo = m.service("echo")

    class Conn:
        frames_in = frames_out = bytes_in = bytes_out = 0

    def worker(n_conns, frames):
        conns = [Conn() for _ in range(n_conns)]
        for c in conns:
            echo.opened(c)
            c.frames_in = c.frames_out = frames
            c.bytes_in = c.bytes_out = frames * 10
        echo.closed(conns[0])
        echo.error("too_large")
        m.fold()  # the worker's once-a-second timer

    pipes = []
    pids = []
    for n_conns, frames in ((2, 5), (3, 7)):
        r, w = os.pipe()
        go_r, go_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            worker(n_conns, frames)
            os.write(w, b"r")
            os.read(go_r, 1)  # stay alive, connections open, until told
            os._exit(0)
        pids.append(pid)
        pipes.append(go_w)
        assert os.read(r, 1) == b"r"
    print(m.render()[0].decode())  # both alive
    print("=====")
    os.write(pipes[0], b"x")  # the first worker exits (its 1 connection still counted open when it died) ...
    os.waitpid(pids[0], 0)
    mm.mark_process_dead(pids[0])  # ... and is reaped
    print(m.render()[0].decode())
    os.write(pipes[1], b"x")
    os.waitpid(pids[1], 0)
    """
)


def test_multiprocess_mode_across_forked_workers(metrics_module, tmp_path) -> None:  # type: ignore[no-untyped-def]
    directory = str(tmp_path / "prom")
    os.mkdir(directory)
    out = subprocess.run(
        [sys.executable, "-c", PREFORK, directory], capture_output=True, text=True, timeout=60, cwd=HERE,
        env={k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    alive, after = out.stdout.split("=====")
    # worker 1: 2 connections (1 closed) of 5 frames each; worker 2: 3 connections (1 closed) of 7
    assert value(alive, "fastframe_connections_total", service="echo") == 5
    assert value(alive, "fastframe_connections_open", service="echo") == 1 + 2
    assert value(alive, "fastframe_received_frames_total", service="echo") == 2 * 5 + 3 * 7
    assert value(alive, "fastframe_sent_bytes_total", service="echo") == (2 * 5 + 3 * 7) * 10
    assert value(alive, "fastframe_errors_total", service="echo", kind="too_large") == 2
    # the dead worker's open connection no longer counts; its counters stay in the totals
    assert value(after, "fastframe_connections_open", service="echo") == 2
    assert value(after, "fastframe_connections_total", service="echo") == 5
    assert value(after, "fastframe_received_frames_total", service="echo") == 2 * 5 + 3 * 7
    files = os.listdir(directory)
    assert len([f for f in files if f.startswith("counter_")]) == 3  # the master's and both workers'
    assert len([f for f in files if f.startswith("gauge_livesum_")]) == 2  # the dead worker's is gone


def test_prepare_multiprocess_must_come_first(tmp_path) -> None:  # type: ignore[no-untyped-def]
    require_module("prometheus_client", "metrics")
    script = textwrap.dedent(
        """
        import sys, prometheus_client
        from fastframe.servers.metrics import prepare_multiprocess
        try:
            prepare_multiprocess(sys.argv[1])
        except RuntimeError as exc:
            print(exc)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=60,
                         cwd=HERE, env=env)  # fmt: skip
    assert "imported before prepare_multiprocess()" in out.stdout, out.stderr


def test_prepare_multiprocess_default_directory() -> None:
    require_module("prometheus_client", "metrics")
    script = (
        "import os; from fastframe.servers.metrics import prepare_multiprocess as p; d = p(); "
        "print(d, os.environ['PROMETHEUS_MULTIPROC_DIR'] == d, os.path.isdir(d)); os.rmdir(d)"
    )
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=HERE, env=env)
    path, same, isdir = out.stdout.split()
    assert "fastframe-metrics-" in path and same == isdir == "True", out.stderr


# -- the endpoint ---------------------------------------------------------------------------------------------


class Served:
    """``fastframe serve --echo 0 --metrics 127.0.0.1:0`` (the select engine: a scrape folds the live counts), after
    this traffic: one connection that sent 3 frames of 6 bytes and closed, one still open that sent 1, and one
    cut for a frame too large."""

    def __init__(self) -> None:
        self.proc = ServerProcess(["--echo", "0", "--metrics", "127.0.0.1:0"], expect=2)
        self.addr = self.proc.addr("metrics")
        self.url = f"http://127.0.0.1:{self.addr[1]}"
        echo = self.proc.addr("echo")
        with socket.create_connection(echo, timeout=TIMEOUT) as done:
            for _ in range(3):
                send_frame(done, b"abcdef")
                assert recv_frame(done) == b"abcdef"
        self.open = socket.create_connection(echo, timeout=TIMEOUT)
        send_frame(self.open, b"abcdef")
        assert recv_frame(self.open) == b"abcdef"
        with socket.create_connection(echo, timeout=TIMEOUT) as cut:
            cut.sendall(b"\x7f\xff\xff\xff")
            self.cut_got = len(raw_read(cut))

    def stop(self) -> str:
        self.open.close()
        self.proc.signal(signal.SIGTERM)
        code = self.proc.wait(TIMEOUT)
        err = self.proc.stderr()
        self.proc.stop()
        assert code == 0, err
        return err


def raw_read(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture
def served() -> Iterator[Served]:
    require_module("prometheus_client", "metrics")
    server = Served()
    try:
        yield server
    finally:
        server.stop()


def raw_request(addr: tuple[str, int], data: bytes) -> bytes:
    with socket.create_connection(addr, timeout=TIMEOUT) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_curl(served: Served) -> None:
    curl = require_tool("curl")
    out = subprocess.run([curl, "-sS", "-i", "--max-time", "10", served.url + "/metrics"], capture_output=True,
                         timeout=30)  # fmt: skip
    assert out.returncode == 0, out.stderr
    head, _, body = out.stdout.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 200 OK") and "Content-Type: text/plain; version=" in head
    assert value(body, "fastframe_connections_total", service="echo") == 3
    assert value(body, "fastframe_connections_open", service="echo") == 1
    assert value(body, "fastframe_received_frames_total", service="echo") == 4
    assert value(body, "fastframe_errors_total", service="echo", kind="too_large") == 1
    head_only = subprocess.run([curl, "-sS", "-I", served.url + "/metrics"], capture_output=True, timeout=30)
    assert head_only.stdout.startswith(b"HTTP/1.1 200 OK") and b"Content-Length: %d" % len(body) in head_only.stdout


def test_urllib(served: Served) -> None:
    with urllib.request.urlopen(served.url + "/metrics?name[]=x", timeout=TIMEOUT) as resp:
        assert resp.status == 200
        body = resp.read().decode()
    assert value(body, "fastframe_sent_bytes_total", service="echo") == 40 + served.cut_got
    assert value(body, "fastframe_received_bytes_total", service="echo") == 40 + 4
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(served.url + "/", timeout=TIMEOUT)
    assert info.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(served.url + "/metrics", data=b"x=1", timeout=TIMEOUT)
    assert info.value.code == 405 and info.value.headers["Allow"] == "GET, HEAD"


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"garbage\r\n\r\n", b"400"),
        (b"GET /metrics\r\n\r\n", b"400"),  # HTTP/0.9
        (b"GET /metrics SPDY/3\r\n\r\n", b"400"),
        (b"\x16\x03\x01\x00\xff\x01\x00\x00\xfb\x03\x03\n\n", b"400"),  # TLS
        (b"get /metrics HTTP/1.1\r\n\r\n", b"400"),
        (b"GET metrics HTTP/1.1\r\n\r\n", b"400"),
        (b"GET /\xff HTTP/1.1\r\n\r\n", b"400"),
        (b"DELETE /metrics HTTP/1.1\r\n\r\n", b"405"),
        (b"GET /metricsx HTTP/1.1\r\n\r\n", b"404"),
        (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 10000 + b"\r\n\r\n", b"431"),
        (b"GET /metrics HTTP/1.0\n\n", b"200"),  # bare LFs, HTTP/1.0
    ],
)
def test_malformed_requests_get_an_answer(served: Served, request_bytes: bytes, status: bytes) -> None:
    reply = raw_request(served.addr, request_bytes)
    assert reply.startswith(b"HTTP/1.1 " + status), reply[:80]
    assert b"Connection: close" in reply


@pytest.mark.timing
def test_a_silent_or_slow_client_is_dropped_and_hurts_nobody(served: Served) -> None:
    silent = [socket.create_connection(served.addr, timeout=TIMEOUT) for _ in range(20)]  # > max_clients (16)
    try:
        dribbler = socket.create_connection(served.addr, timeout=TIMEOUT)
        dribbler.sendall(b"GET /met")
        start = time.monotonic()
        with urllib.request.urlopen(served.url + "/metrics", timeout=TIMEOUT) as resp:  # served meanwhile
            assert resp.status == 200
        assert time.monotonic() - start < 4.0  # sooner than any timeout could have freed a slot
        for s in silent + [dribbler]:  # every one closed by the server: evicted, or timed out after 5 s
            assert s.recv(1) == b""
    finally:
        for s in silent:
            s.close()
        dribbler.close()


def test_a_client_that_resets_does_no_harm(served: Served) -> None:
    for _ in range(20):
        s = socket.create_connection(served.addr, timeout=TIMEOUT)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.sendall(b"GET /metrics HTTP/1.1\r\n")
        s.close()  # RST
    assert raw_request(served.addr, b"GET /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 200 OK")


def test_driven_by_an_asyncio_loop(metrics_module) -> None:  # type: ignore[no-untyped-def]
    """The endpoint's five loop calls are asyncio's: an asyncio loop drives it unchanged."""
    m = metrics_module.Metrics()
    m.service("echo").opened(Conn())

    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        listener = socket.create_server(("127.0.0.1", 0))
        endpoint = MetricsEndpoint(listener, m.render, loop)
        endpoint.start()
        reader, writer = await asyncio.open_connection(*listener.getsockname()[:2])
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = await asyncio.wait_for(reader.read(), TIMEOUT)
        writer.close()
        endpoint.close()
        return reply

    reply = asyncio.run(main())
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert value(body.decode(), "fastframe_connections_open", service="echo") == 1


def test_render_failure_is_a_500(metrics_module) -> None:  # type: ignore[no-untyped-def]
    def broken() -> tuple[bytes, str]:
        raise OSError("the multiprocess directory vanished")

    endpoint = MetricsEndpoint(socket.socket(), broken, SelectorReactor())
    assert endpoint.answer(b"GET /metrics HTTP/1.1").startswith(b"HTTP/1.1 500 ")
    endpoint.listener.close()
