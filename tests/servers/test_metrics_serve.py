"""``fastframe serve --metrics HOST:PORT`` on both engines: the counts after real traffic, the open-connections
gauge, a killed worker's connections leaving it, one thread per process, and the multiprocess directory's life.
Scrapes are read with a regular expression of the test's own.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request

import pytest
from harness import recv_frame, send_frame, wait_until
from peertools import require_module

TIMEOUT = 10.0
SAMPLE = re.compile(r"^(fastframe_\w+)\{(.*)\} (\S+)$", re.M)
LABEL = re.compile(r'(\w+)="([^"]*)"')


def scrape(addr: tuple[str, int]) -> dict[tuple[str, str], float]:
    """{(name[:label], service): value}"""
    with urllib.request.urlopen(f"http://{addr[0]}:{addr[1]}/metrics", timeout=TIMEOUT) as resp:
        text = resp.read().decode()
    out = {}
    for name, labels, value in SAMPLE.findall(text):
        found = dict(LABEL.findall(labels))
        service = found.pop("service")
        out[(name + "".join(":" + v for v in found.values()), service)] = float(value)
    return out


def settles(addr: tuple[str, int], **wanted: float) -> bool:
    """Wait (prefork workers fold once a second) until the echo service's samples are ``wanted``."""

    def ok() -> bool:
        got = scrape(addr)
        return all(got.get((name.replace("__", ":"), "echo")) == value for name, value in wanted.items())

    settled = wait_until(ok, TIMEOUT, interval=0.1)
    if not settled:
        print(scrape(addr))
    return settled


@pytest.fixture(autouse=True)
def _prometheus() -> None:
    require_module("prometheus_client", "metrics")


def test_counts_after_real_traffic(serve, engine) -> None:  # type: ignore[no-untyped-def]
    proc = serve("--echo", "0", "--metrics", "127.0.0.1:0", engine=engine, expect=2)
    metrics = proc.addr("metrics")
    with socket.create_connection(proc.addr("echo"), timeout=TIMEOUT) as done:
        for _ in range(3):
            send_frame(done, b"abcdef")
            assert recv_frame(done) == b"abcdef"
    held = socket.create_connection(proc.addr("echo"), timeout=TIMEOUT)
    send_frame(held, b"abcdef")
    assert recv_frame(held) == b"abcdef"
    with socket.create_connection(proc.addr("echo"), timeout=TIMEOUT) as cut:
        cut.sendall(b"\x7f\xff\xff\xff")
        assert cut.recv(100) is not None
    assert settles(
        metrics,
        fastframe_connections_total=3,
        fastframe_connections_open=1,
        fastframe_received_frames_total=4,
        fastframe_sent_frames_total=4,
        fastframe_received_bytes_total=44,
        fastframe_errors_total__too_large=1,
    )
    held.close()
    assert settles(metrics, fastframe_connections_open=0, fastframe_sent_bytes_total=40 + 0)


def test_a_killed_workers_connections_stop_counting(serve) -> None:  # type: ignore[no-untyped-def]
    proc = serve("--echo", "0", "--metrics", "127.0.0.1:0", engine="prefork", workers=2, expect=2)
    metrics = proc.addr("metrics")
    held = [socket.create_connection(proc.addr("echo"), timeout=TIMEOUT) for _ in range(4)]
    for sock in held:
        send_frame(sock, b"x")
        assert recv_frame(sock) == b"x"
    assert settles(metrics, fastframe_connections_open=4, fastframe_received_frames_total=4)
    workers = proc.workers()
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    proc.wait_workers(2, exclude=workers)
    assert settles(metrics, fastframe_connections_open=0, fastframe_received_frames_total=4)
    for sock in held:
        sock.close()


def test_no_thread_and_the_directory_goes_with_the_server(serve, tmp_path) -> None:  # type: ignore[no-untyped-def]
    directory = tmp_path / "prom"
    directory.mkdir()
    (directory / "counter_999999.db").write_bytes(b"a previous run's, unreadable")  # wiped at start
    proc = serve("--echo", "0", "--metrics", "127.0.0.1:0", engine="prefork", workers=2, expect=2,
                 env={"PROMETHEUS_MULTIPROC_DIR": str(directory)})  # fmt: skip
    assert not (directory / "counter_999999.db").exists()
    assert ("fastframe_connections_open", "echo") in scrape(proc.addr("metrics"))
    for pid in [proc.pid, *proc.workers()]:
        assert len(os.listdir(f"/proc/{pid}/task")) == 1, f"process {pid} has a thread"
    proc.signal(signal.SIGTERM)
    assert proc.wait(TIMEOUT) == 0
    assert directory.exists()  # given by the operator: left in place


def test_a_directory_of_its_own_is_removed(serve) -> None:  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    proc = subprocess.Popen([sys.executable, "-m", "fastframe", "serve", "--echo", "0", "--metrics", "127.0.0.1:0",
                             "--engine", "prefork", "--workers", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, cwd="/", start_new_session=True)  # fmt: skip
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        proc.stdout.readline()
        assert wait_until(lambda: len(os.listdir(f"/proc/{proc.pid}/task")) == 1, TIMEOUT)
        with open(f"/proc/{proc.pid}/environ", "rb") as f:
            assert b"PROMETHEUS_MULTIPROC_DIR" not in f.read()  # chosen by the server, not given
        dirs = [d for d in os.listdir("/tmp") if d.startswith("fastframe-metrics-")]
        before = set(dirs)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0
        after = {d for d in os.listdir("/tmp") if d.startswith("fastframe-metrics-")}
        assert len(before - after) >= 1, "the server's own multiprocess directory was left behind"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(TIMEOUT)
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]


@pytest.mark.parametrize("where, message", [("nowhere", "--metrics: bad address"), ("unix:/x", "not allowed here")])
def test_bad_metrics_address(where: str, message: str) -> None:
    run = subprocess.run([sys.executable, "-m", "fastframe", "serve", "--echo", "0", "--metrics", where],
                         capture_output=True, text=True, timeout=60, cwd="/", check=False)  # fmt: skip
    assert run.returncode != 0 and message in run.stderr, run.stderr
    assert "Traceback" not in run.stderr


def test_commands_by_outcome_and_downloads(serve, engine, tmp_path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "root"
    root.mkdir()
    (root / "data.bin").write_bytes(os.urandom(100_000))
    proc = serve("--command", "0", "--allow", "true", "--allow", "false", "--files", "0", "--root", str(root),
                 "--metrics", "127.0.0.1:0", engine=engine, expect=3)  # fmt: skip
    command = "{}:{}".format(*proc.addr("command"))
    for argv, status in ((["true"], 0), (["false"], 1), (["ls"], 127)):
        run = subprocess.run([sys.executable, "-m", "fastframe", "exec", command, "--", *argv], capture_output=True,
                             timeout=60, cwd="/", check=False)  # fmt: skip
        assert run.returncode == status, run.stderr
    out = tmp_path / "copy.bin"
    run = subprocess.run([sys.executable, "-m", "fastframe", "get", "{}:{}".format(*proc.addr("files")), "data.bin", "-o",
                          str(out), "--quiet"], capture_output=True, timeout=60, cwd="/", check=False)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert out.read_bytes() == (root / "data.bin").read_bytes()
    metrics = proc.addr("metrics")

    def ok() -> bool:
        got = scrape(metrics)
        return (
            got.get(("fastframe_commands_total:ok", "command")) == 1
            and got.get(("fastframe_commands_total:failed", "command")) == 1
            and got.get(("fastframe_commands_total:not-allowed", "command")) == 1
            and got.get(("fastframe_downloads_total", "files")) == 1
            and got.get(("fastframe_download_sent_bytes_total", "files")) == 100_000
        )

    assert wait_until(ok, TIMEOUT, interval=0.1), scrape(metrics)


def test_time_datagrams_are_counted(serve, engine) -> None:  # type: ignore[no-untyped-def]
    proc = serve("--time", "0", "--metrics", "127.0.0.1:0", engine=engine, expect=3)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.settimeout(TIMEOUT)
        for _ in range(3):
            udp.sendto(b"x", proc.addr("time", "udp"))
            assert len(udp.recv(16)) == 4
    metrics = proc.addr("metrics")

    def ok() -> bool:
        got = scrape(metrics)
        return (got.get(("fastframe_received_frames_total", "time")), got.get(("fastframe_sent_bytes_total", "time"))) \
            == (3, 12)  # fmt: skip

    assert wait_until(ok, TIMEOUT, interval=0.1), scrape(metrics)
